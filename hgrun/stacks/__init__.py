"""Stacks: which language an app folder holds, and the Dockerfile hgrun writes for it.

Pure: values in, values out. The caller lists the app folder's top-level entries and reads the
few small files named in :data:`READ` (package.json, go.mod, ...); this module decides the stack
and writes the Dockerfile, and never touches the disk. docs/stacks.md documents the result.

Every generated Dockerfile follows the same rules, so a change to the code alone rebuilds only
the layers after the source copy (the classic builder and BuildKit both key a COPY on the
content of what it copies, and a RUN on the layer below it):

- the dependency manifests (and lockfiles) are copied, and the dependencies installed, before
  the source is copied;
- compiled stacks (go, rust, java) and php build in a ``build`` stage on ``builder``; the run
  image on ``base`` receives only the binaries, the jar, or the app with its vendor folder;
- the run image works in ``/app`` (so Procfile commands find the app as on Heroku) and runs as
  uid 10001, made with ``useradd`` (Debian, Ubuntu) or written into /etc/passwd (busybox).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hgrun.errors import InputError
from hgrun.stacks.dockerfiles import WRITERS
from hgrun.stacks.model import REQUIREMENTS, UID, USER_HOME, AppFiles, Images

__all__ = [
    "DEFAULTS",
    "MARKERS",
    "ORDER",
    "READ",
    "REQUIREMENTS",
    "UID",
    "USER_HOME",
    "AppFiles",
    "Detection",
    "Images",
    "Plan",
    "detect",
    "hint_for",
    "plan",
]

# Detection order: the first stack whose marker file is present wins. Compiled stacks first,
# because their manifest defines the program; node last, because a package.json is often only
# the front-end tooling of an app written in another language (Rails, Laravel, Django).
ORDER = ("go", "rust", "java", "ruby", "php", "python", "node")

MARKERS: Mapping[str, tuple[str, ...]] = {
    "go": ("go.mod",),
    "rust": ("Cargo.toml",),
    "java": ("pom.xml", "build.gradle", "build.gradle.kts"),
    "ruby": ("Gemfile",),
    "php": ("composer.json",),
    "python": ("requirements.txt", "pyproject.toml", "Pipfile", "setup.py", "manage.py"),
    "node": ("package.json",),
}

# The small files a plan reads; the caller passes their text when they exist.
READ = (
    "package.json",
    "go.mod",
    "Cargo.toml",
    "pom.xml",
    "pyproject.toml",
    "Pipfile",
    "Pipfile.lock",
)

# Docker official images, all Debian bookworm based (eclipse-temurin is Ubuntu based) so the
# generated Dockerfiles can rely on useradd and /bin/sh.
DEFAULTS: Mapping[str, Images] = {
    "go": Images("debian:bookworm-slim", "golang:1-bookworm"),
    "rust": Images("debian:bookworm-slim", "rust:1-bookworm"),
    "java": Images("eclipse-temurin:21-jre", "maven:3.9-eclipse-temurin-21"),
    "java-gradle": Images("eclipse-temurin:21-jre", "gradle:8-jdk21"),
    "ruby": Images("ruby:3.3-slim-bookworm"),
    "php": Images("php:8.3-cli-bookworm", "composer:2"),
    "python": Images("python:3.12-slim-bookworm"),
    "node": Images("node:22-bookworm-slim"),
}


@dataclasses.dataclass(frozen=True)
class Detection:
    """The stack chosen, why, and the other stacks that matched too (in :data:`ORDER`)."""

    stack: str
    marker: str
    others: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """One line for a person: ``detected go (go.mod)``, naming what lost to it, if any."""
        line = f"detected {self.stack} ({self.marker})"
        if self.others:
            lost = ", ".join(f"{stack} ({marker})" for stack, marker in self.others)
            line += f"; also matched {lost}: {self.stack} comes first, set build.stack to choose"
        return line


@dataclasses.dataclass(frozen=True)
class Plan:
    """A generated build: the Dockerfile, any file it needs added to the context, and hints.

    ``reason`` is the line shown at deploy (``detected go (go.mod)`` or ``stack go (build.stack)``).
    ``hints`` maps a Dockerfile instruction, as the builder echoes it (``RUN go mod download``),
    to what to check when that step fails.
    """

    stack: str
    reason: str
    dockerfile: str
    generated: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    hints: Mapping[str, str] = dataclasses.field(default_factory=dict)


def detect(names: frozenset[str] | set[str]) -> Detection | None:
    """The stack of an app folder with these top-level ``names``; None when none matches."""
    found: list[tuple[str, str]] = []
    for stack in ORDER:
        marker = next((m for m in MARKERS[stack] if m in names), None)
        if marker is not None:
            found.append((stack, marker))
    if not found:
        return None
    (stack, marker), *others = found
    return Detection(stack, marker, tuple(others))


def plan(
    files: AppFiles,
    *,
    stack: str | None = None,
    base: str | None = None,
    builder: str | None = None,
) -> Plan | None:
    """The generated build for ``files``: for ``stack`` when given, else the detected one.

    None when no stack is given and none is detected (the caller then wants a Dockerfile).
    Raises :class:`InputError` when the named stack lacks its manifest (``build.stack: go``
    without a go.mod) or ``builder`` is given for a one-stage stack, and
    :class:`LocatedError` for a manifest that cannot be read (package.json that is not JSON,
    a go.mod without a module line).
    """
    if stack is None:
        found = detect(files.names)
        if found is None:
            return None
        stack, reason = found.stack, found.describe()
    else:
        if not any(files.has(m) for m in MARKERS[stack]):
            raise InputError(
                f"build.stack is {stack}, but the app has no {' or '.join(MARKERS[stack])}",
                f"add the {stack} project files, or remove build.stack to detect the stack",
            )
        reason = f"stack {stack} (build.stack in hgrun.yaml)"
    write = WRITERS[stack]
    key = "java-gradle" if stack == "java" and not files.has("pom.xml") else stack
    defaults = DEFAULTS[key]
    if builder is not None and defaults.builder is None:
        staged = ", ".join(s for s in ORDER if DEFAULTS[s].builder)
        raise InputError(
            f"build.builder does not apply to {stack}: its Dockerfile has one stage",
            f"remove build.builder, or set build.base; builder applies to {staged}",
        )
    images = Images(base or defaults.base, builder or defaults.builder)
    dockerfile, generated, hints = write(files, images)
    header = (
        f"# Generated by hgrun for a {stack} app: {reason}.\n"
        "# `hgrun deploy --show-dockerfile` prints it; docs/stacks.md explains each step.\n"
    )
    return Plan(stack, reason, header + dockerfile, generated, hints)


def hint_for(made: Plan, step: str) -> str | None:
    """The hint for a failed ``step`` (as the builder echoes it: ``RUN go mod download``)."""
    wanted = _squash(step)
    for instruction, hint in made.hints.items():
        if _squash(instruction) == wanted:
            return hint
    return None


def _squash(instruction: str) -> str:
    """An instruction with its line continuations joined and runs of blanks made one."""
    return " ".join(instruction.replace("\\\n", " ").split())
