"""The words every layer shares: run statuses, trigger kinds, policies, scopes, sizes, and the
rules for names. No I/O here.

They are apart from :mod:`hgrun.models` (the records built on them) because the CLI's start path
reads them: ``hgrun run`` checks a size and an env name, and lists the statuses in its help, but
makes no records, and a dozen dataclasses cost it milliseconds on every run (nor does it
import this module unless given ``--env`` or ``--size``; :class:`Size` is a plain record).
:mod:`hgrun.models` re-exports every name here.
"""

from __future__ import annotations

import enum
import re

from hgrun.record import Record

# A name a POSIX shell accepts as a variable (IEEE Std 1003.1, XBD 3.235 "Name").
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: "$" would take a final newline
# App, script and process-type names: lowercase letters, digits, dashes and underscores.
APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")


class RunStatus(enum.StrEnum):
    """The lifecycle of a run: queued -> starting -> running -> one of the final states."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    SKIPPED = "skipped"
    LOST = "lost"

    @property
    def active(self) -> bool:
        """Queued, starting or running: the run may still change."""
        return self in ACTIVE_STATUSES

    @property
    def finished(self) -> bool:
        """A final state: the run never changes again (the first final state wins)."""
        return self not in ACTIVE_STATUSES


# The one spelling of "in flight"; hgrun.lifecycle builds the state machine on it.
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING})
FINAL_STATUSES = frozenset(RunStatus) - ACTIVE_STATUSES


class TriggerKind(enum.StrEnum):
    USER = "user"
    API = "api"
    CRON = "cron"
    RUN = "run"  # started from inside another run (fan-out)


class Concurrency(enum.StrEnum):
    QUEUE = "queue"
    SKIP = "skip"
    ALLOW = "allow"
    REPLACE = "replace"


class Catchup(enum.StrEnum):
    SKIP = "skip"
    LATEST = "latest"


class Scope(enum.StrEnum):
    ADMIN = "admin"
    DEPLOY = "deploy"
    RUN = "run"
    TRIGGER = "trigger"


class Size(Record):
    """A run size: memory (bytes), CPUs and a pids limit, after Render's instance table."""

    __slots__ = ("name", "memory", "cpus", "pids")

    def __init__(self, name: str, memory: int, cpus: float, pids: int) -> None:
        self.name = name
        self.memory = memory
        self.cpus = cpus
        self.pids = pids

    @property
    def memory_mb(self) -> int:
        return self.memory // (1024 * 1024)


_MB = 1024 * 1024
SIZES: dict[str, Size] = {
    s.name: s
    for s in (
        Size("starter", 512 * _MB, 0.5, 256),
        Size("standard", 2048 * _MB, 1.0, 512),
        Size("pro", 4096 * _MB, 2.0, 1024),
        Size("pro-plus", 8192 * _MB, 4.0, 2048),
        Size("pro-max", 16384 * _MB, 4.0, 4096),
        Size("pro-ultra", 32768 * _MB, 8.0, 4096),
    )
}
DEFAULT_SIZE = "starter"
