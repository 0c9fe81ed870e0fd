"""An app folder on the user's machine: its Procfile, its manifest, its build context."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hgrun.errors import InputError, ManifestError

if TYPE_CHECKING:
    from hgrun.models import Manifest

MANIFEST = "hgrun.yaml"
PROCFILE = "Procfile"
DEFAULT_BASES = {"python": "hgrun/python:bookworm", "node": "hgrun/node:bookworm"}
CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class AppDir:
    root: Path
    manifest: Manifest
    manifest_text: str
    procfile_text: str
    dockerfile: str
    generated: dict[str, bytes]

    @property
    def name(self) -> str:
        return self.manifest.name

    def context_hash(self) -> str:
        from hgrun.context import context_hash

        extra = b"".join(k.encode() + b"\0" + v for k, v in sorted(self.generated.items()))
        return context_hash(self.root, extra, dockerfile=self.dockerfile)

    def tar_chunks(self, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The build context as tar chunks, spooled to disk first (never whole in memory)."""
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
    for folder in (start, *start.parents):
        if (folder / MANIFEST).is_file():
            return folder
    return None


_NAME_LINE = re.compile(r"^name:[ \t]*['\"]?([a-z][a-z0-9-]{0,62})['\"]?[ \t]*(?:#.*)?$", re.M)


def quick_name(root: Path) -> str | None:
    """The app's name from a plain top-level ``name:`` line, without parsing the YAML.

    For commands that only need the name; None when the line is not that simple (then parse).
    """
    try:
        text = (root / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = _NAME_LINE.findall(text)
    return found[0] if len(found) == 1 else None


def load(root: Path) -> AppDir:
    """Read and validate the app in ``root`` (errors name file:line:col); decide the build."""
    # Imported here: YAML and cron validation are not needed by commands given --app.
    from hgrun.manifest import parse_manifest
    from hgrun.procfile import parse_procfile

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
    dockerfile, generated = _build_plan(root, manifest, manifest_text, _shown(manifest_path))
    return AppDir(root, manifest, manifest_text, procfile_text, dockerfile, generated)


def _shown(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _build_plan(
    root: Path, manifest: Manifest, text: str, file: str
) -> tuple[str, dict[str, bytes]]:
    """The Dockerfile to build with, and any generated file to add to the context."""
    from hgrun.manifest import locate

    build = manifest.build
    if build.dockerfile:
        if not (root / build.dockerfile).is_file():
            line, col = locate(text, ("build", "dockerfile")) or (None, None)
            raise ManifestError(
                f"build.dockerfile: {build.dockerfile} does not exist",
                file=file,
                line=line,
                col=col,
                hint="fix the path, or remove build.dockerfile to let hgrun generate one",
            )
        return build.dockerfile, {}
    stack = build.stack or detect_stack(root)
    if stack is None:
        if (root / "Dockerfile").is_file():
            return "Dockerfile", {}
        line, col = locate(text, ("build",)) or locate(text, ("name",)) or (None, None)
        raise ManifestError(
            "build: no Dockerfile, and no Python or Node app detected",
            file=file,
            line=line,
            col=col,
            hint="add a Dockerfile, or set build.stack to python or node",
        )
    base = build.base or DEFAULT_BASES[stack]
    return "Dockerfile.hgrun", {"Dockerfile.hgrun": generated_dockerfile(stack, base).encode()}


def detect_stack(root: Path) -> str | None:
    if any((root / f).is_file() for f in ("requirements.txt", "pyproject.toml", "manage.py")):
        return "python"
    if (root / "package.json").is_file():
        return "node"
    return None


def generated_dockerfile(stack: str, base: str) -> str:
    """A Dockerfile for a detected stack on ``base``; dependencies install only when declared."""
    lines = [f"FROM {base}", "WORKDIR /app", "COPY . /app"]
    if stack == "python":
        lines.append(
            "RUN if [ -f requirements.txt ] && command -v pip3 >/dev/null;"
            " then pip3 install --no-cache-dir -r requirements.txt; fi"
        )
    elif stack == "node":
        lines.append("RUN if [ -f package-lock.json ]; then npm ci --omit=dev; fi")
    return "\n".join(lines) + "\n"
