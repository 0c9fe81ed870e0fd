"""The values a stack's plan works on: the app's files, the images, the run user."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

UID = 10001
USER_HOME = "/home/app"
# A generated file the Dockerfile copies for python apps whose dependencies are not in a
# requirements.txt (Pipfile, Pipfile.lock, pyproject.toml): one requirement per line.
REQUIREMENTS = ".hgrun-requirements.txt"


@dataclasses.dataclass(frozen=True)
class Images:
    """The default images of a stack: ``base`` runs the app, ``builder`` (if any) builds it."""

    base: str
    builder: str | None = None


@dataclasses.dataclass(frozen=True)
class AppFiles:
    """What a plan may know of an app folder.

    ``names``: the entries at the top of the folder (after .dockerignore), folders with a
    trailing ``/`` (``vendor/``). ``texts``: the content of those of :data:`READ` that exist.
    """

    names: frozenset[str]
    texts: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.names
