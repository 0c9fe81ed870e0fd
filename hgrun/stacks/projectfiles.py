"""Reading the project files a plan needs: package.json, go.mod, Pipfile(.lock), TOML.

Each error is a :class:`LocatedError` naming the file (relative to the app folder), the line
and the column, with a hint; the CLI prefixes the app folder's path.
"""

from __future__ import annotations

import json
import re

from hgrun.errors import LocatedError

# tomllib (with typing: ~5 ms of import) only for the apps that have a TOML project file:
# `hgrun run`'s folder check loads every app folder it runs from (tests/test_cli_imports.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def pipfile_requirements(text: str) -> bytes:
    packages = toml("Pipfile", text).get("packages", {})
    if not isinstance(packages, dict):
        raise LocatedError("packages must be a table", file="Pipfile", hint="write [packages]")
    lines = []
    for name, spec in packages.items():
        if isinstance(spec, str):
            lines.append(name if spec in ("*", "") else f"{name}{spec}")
        elif isinstance(spec, dict) and set(spec) <= {"version", "extras", "markers"}:
            extras = f"[{','.join(spec['extras'])}]" if spec.get("extras") else ""
            version = spec.get("version", "*")
            marker = f" ; {spec['markers']}" if spec.get("markers") else ""
            lines.append(f"{name}{extras}{'' if version == '*' else version}{marker}")
        else:
            raise LocatedError(
                f"packages.{name}: only versions, extras and markers are supported here",
                file="Pipfile",
                hint="install git or path packages from a requirements.txt or your own Dockerfile",
            )
    return "".join(f"{line}\n" for line in lines).encode()


def pipfile_lock_requirements(text: str) -> bytes:
    try:
        lock = json.loads(text)
    except json.JSONDecodeError as e:
        raise LocatedError(
            f"not JSON: {e.msg}",
            file="Pipfile.lock",
            line=e.lineno,
            col=e.colno,
            hint="run `pipenv lock` again",
        ) from e
    default = lock.get("default") if isinstance(lock, dict) else None
    if not isinstance(default, dict):
        raise LocatedError(
            'has no "default" section', file="Pipfile.lock", hint="run `pipenv lock`"
        )
    entries = []
    for name, spec in sorted(default.items()):
        if not isinstance(spec, dict) or "version" not in spec:
            raise LocatedError(
                f"default.{name}: no version (a git or path package)",
                file="Pipfile.lock",
                hint="install it from a requirements.txt or your own Dockerfile",
            )
        entries.append((name, spec))
    # pip's hash-checking mode is all or nothing: hashes only when every entry has them.
    hashed = all(spec.get("hashes") for _, spec in entries)
    lines = []
    for name, spec in entries:
        line = f"{name}{spec['version']}"
        if spec.get("markers"):
            line += f" ; {spec['markers']}"
        if hashed:
            line += "".join(f" --hash={h}" for h in spec["hashes"])
        lines.append(line)
    return "".join(f"{line}\n" for line in lines).encode()


def package_json(text: str) -> dict[str, object]:
    try:
        package = json.loads(text)
    except json.JSONDecodeError as e:
        raise LocatedError(
            f"not valid JSON: {e.msg}",
            file="package.json",
            line=e.lineno,
            col=e.colno,
            hint="fix the JSON (a trailing comma, a missing quote?); `npm pkg get` checks it",
        ) from e
    if not isinstance(package, dict):
        raise LocatedError(
            "must be a JSON object",
            file="package.json",
            line=1,
            col=1,
            hint='start it with {"name": ...}',
        )
    return package


# The directives of the go.mod reference (https://go.dev/ref/mod#go-mod-file), up to Go 1.25's
# ignore: a newer one is refused with a clear line, better than a build that fails on it.
_GO_DIRECTIVES = (
    "module",
    "go",
    "toolchain",
    "godebug",
    "require",
    "replace",
    "exclude",
    "retract",
    "tool",
    "ignore",
)


def check_go_mod(text: str) -> None:
    """Refuse a go.mod the go command would refuse, before a build is started for it."""
    module = False
    block = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block:
            block = line != ")"
            continue
        word = line.split()[0]
        if word not in _GO_DIRECTIVES:
            raise LocatedError(
                f"unknown directive {word!r}",
                file="go.mod",
                line=number,
                col=raw.index(word) + 1,
                hint="go.mod's lines start with module, go, toolchain, godebug, require, "
                "replace, exclude, retract, tool or ignore; `go mod tidy` rewrites it",
            )
        module = module or word == "module"
        block = line.endswith("(")
    if not module:
        raise LocatedError(
            "no module line",
            file="go.mod",
            line=1,
            hint="start it with `module example.com/myapp` (`go mod init` writes one)",
        )


def toml(name: str, text: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line, col = (int(match[1]), int(match[2])) if match else (None, None)
        raise LocatedError(
            f"not valid TOML: {str(e).split(' (at')[0]}",
            file=name,
            line=line,
            col=col,
            hint="fix the TOML syntax",
        ) from e
