"""An app folder on the user's machine: its Procfile, its manifest, its build context."""

from __future__ import annotations

import os
import re

from hgrun.errors import InputError, LocatedError, ManifestError

# On the start path of `hgrun run` (find_app_folder, quick_name): pathlib, typing and
# dataclasses are not imported here at run time (tests/test_cli_imports.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import IO

    from hgrun.models import Manifest
    from hgrun.stacks import AppFiles, Plan

MANIFEST = "hgrun.yaml"
PROCFILE = "Procfile"
GENERATED_DOCKERFILE = "Dockerfile.hgrun"
MAX_PROJECT_FILE = 4 * 1024 * 1024  # a package.json or Pipfile.lock beyond this is not one
CHUNK = 1024 * 1024


class AppDir:
    """An app folder as loaded: ``plan`` is set when hgrun generated the Dockerfile for a
    stack. Not changed once made."""

    __slots__ = (
        "root", "manifest", "manifest_text", "procfile_text", "dockerfile", "generated", "plan"
    )  # fmt: skip

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        manifest_text: str,
        procfile_text: str,
        dockerfile: str,
        generated: dict[str, bytes],
        plan: Plan | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.manifest_text = manifest_text
        self.procfile_text = procfile_text
        self.dockerfile = dockerfile
        self.generated = generated
        self.plan = plan

    @property
    def name(self) -> str:
        return self.manifest.name

    def context_hash(self) -> str:
        from hgrun.context import context_hash

        extra = b"".join(k.encode() + b"\0" + v for k, v in sorted(self.generated.items()))
        return context_hash(self.root, extra, dockerfile=self.dockerfile)

    def tar_chunks(self, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The build context as tar chunks, spooled to disk first (never whole in memory)."""
        import tempfile  # here: with shutil and random, ms that `hgrun run` need not pay

        from hgrun.context import write_context_tar

        with tempfile.TemporaryFile(prefix="hgrun-context-") as spool:
            write_context_tar(self.root, spool, self.generated, dockerfile=self.dockerfile)
            spool.seek(0)
            yield from read_chunks(spool, progress)


def read_chunks(f: IO[bytes], progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        if progress:
            progress(len(chunk))
        yield chunk


def find_app_dir(start: Path) -> Path | None:
    """The folder holding an ``hgrun.yaml``: ``start`` or the nearest one above it."""
    found = find_app_folder(os.fspath(start.absolute()))
    return None if found is None else as_path(found)


def find_app_folder(start: str) -> str | None:
    """:func:`find_app_dir` on strings (``start`` absolute): ``hgrun run``'s, without pathlib."""
    folder = start
    while True:
        if os.path.isfile(os.path.join(folder, MANIFEST)):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def as_path(folder: str | Path) -> Path:
    """``folder`` as a :class:`~pathlib.Path` (pathlib imported only by who needs one)."""
    from pathlib import Path

    return Path(folder)


_NAME_LINE = re.compile(r"^name:[ \t]*['\"]?([a-z][a-z0-9-]{0,62})['\"]?[ \t]*(?:#.*)?$", re.M)


def quick_name(root: str | Path) -> str | None:
    """The app's name from a plain top-level ``name:`` line, without parsing the YAML.

    For commands that only need the name; None when the line is not that simple (then parse).
    """
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    found = _NAME_LINE.findall(text)
    return found[0] if len(found) == 1 else None


def load(root: Path, consulted: list[str] | None = None) -> AppDir:
    """Read and validate the app in ``root`` (errors name file:line:col); decide the build.

    ``consulted``: when given, each path (relative to ``root``) whose existence or content the
    answer may depend on is appended to it before it is looked at, whether the load succeeds
    or raises; what else it depends on is the listing of ``root`` the build context sees
    (:func:`app_files`). ``hgrun run``'s folder cache (:mod:`hgrun.cli.foldercache`) stats them.
    """
    # Imported here: YAML and cron validation are not needed by commands given --app.
    from hgrun.manifest import parse_manifest
    from hgrun.procfile import parse_procfile

    seen = consulted if consulted is not None else []
    seen += [MANIFEST, PROCFILE]
    manifest_path = root / MANIFEST
    try:
        manifest_text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError(
            f"{manifest_path}: not found", "run hgrun from your app's folder, or pass --app"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{manifest_path}: cannot read it ({e})") from e
    procfile_path = root / PROCFILE
    procfile_text = ""
    if procfile_path.is_file():
        try:
            procfile_text = procfile_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{procfile_path}: cannot read it ({e})") from e
    procfile = parse_procfile(procfile_text, file=_shown(procfile_path)) if procfile_text else {}
    manifest = parse_manifest(manifest_text, file=_shown(manifest_path), procfile=procfile)
    dockerfile, generated, made = _build_plan(
        root, manifest, manifest_text, _shown(manifest_path), seen
    )
    return AppDir(root, manifest, manifest_text, procfile_text, dockerfile, generated, made)


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _build_plan(
    root: Path, manifest: Manifest, text: str, file: str, seen: list[str]
) -> tuple[str, dict[str, bytes], Plan | None]:
    """The Dockerfile to build with, the files to add to the context, and the stack's plan.

    ``build.dockerfile``, else a ``Dockerfile`` in the folder, else a generated one for
    ``build.stack`` or the detected stack (hgrun/stacks.py); none of these is an error.
    """
    from hgrun.stacks import ORDER, plan
    from hgrun.yamlnodes import locate

    def at(*keys: str) -> tuple[int | None, int | None]:
        return locate(text, keys) or locate(text, ("build",)) or (None, None)

    build = manifest.build
    if build.dockerfile:
        seen.append(build.dockerfile)
        if not (root / build.dockerfile).is_file():
            line, col = at("build", "dockerfile")
            raise ManifestError(
                f"build.dockerfile: {build.dockerfile} does not exist",
                file=file,
                line=line,
                col=col,
                hint="fix the path, or remove build.dockerfile to let hgrun generate one",
            )
        return build.dockerfile, {}, None
    seen.append("Dockerfile")
    if build.stack is None and (root / "Dockerfile").is_file():
        return "Dockerfile", {}, None
    try:
        made = plan(
            app_files(root, seen), stack=build.stack, base=build.base, builder=build.builder
        )
    except LocatedError as e:
        # The stack's own file (go.mod, package.json ...), named as the user would open it.
        raise LocatedError(
            e.what, file=_shown(root / e.file), line=e.line, col=e.col, hint=e.hint
        ) from e
    except InputError as e:
        line, col = at("build", "builder" if "build.builder" in e.message else "stack")
        raise ManifestError(e.message, file=file, line=line, col=col, hint=e.hint) from e
    if made is None:
        line, col = locate(text, ("build",)) or locate(text, ("name",)) or (None, None)
        raise ManifestError(
            "build: no Dockerfile, and no stack detected",
            file=file,
            line=line,
            col=col,
            hint="add a Dockerfile, or the project file of a stack (go.mod, package.json, "
            f"requirements.txt ...), or set build.stack to one of {', '.join(ORDER)}",
        )
    generated = {GENERATED_DOCKERFILE: made.dockerfile.encode(), **made.generated}
    return GENERATED_DOCKERFILE, generated, made


def app_files(root: Path, consulted: list[str] | None = None) -> AppFiles:
    """The top-level entries of ``root`` the build sees (after .dockerignore), and the text of
    the small project files a stack's plan reads (``consulted``: as :func:`load`'s)."""
    from hgrun.dockerignore import DOCKERIGNORE, is_ignored, load_dockerignore
    from hgrun.stacks import READ, AppFiles

    seen = consulted if consulted is not None else []
    seen.append(DOCKERIGNORE)
    patterns = load_dockerignore(root)
    names: set[str] = set()
    with os.scandir(root) as entries:
        for entry in entries:
            if is_ignored(entry.name, patterns):
                continue
            names.add(entry.name + "/" if entry.is_dir() else entry.name)
    texts: dict[str, str] = {}
    for name in READ:
        if name not in names:
            continue
        seen.append(name)
        path = root / name
        try:
            if path.stat().st_size > MAX_PROJECT_FILE:
                raise InputError(
                    f"{_shown(path)}: over {MAX_PROJECT_FILE // 1024} KB",
                    "is it the right file? hgrun reads it to plan the build",
                )
            texts[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{_shown(path)}: cannot read it ({e})") from e
    return AppFiles(frozenset(names), texts)
