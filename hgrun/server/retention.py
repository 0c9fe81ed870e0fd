"""How much the server keeps: output per run, and one-off runs by count and age.

Scripts bound their own history (``history:`` in the manifest, pruned as each run ends); one-off
runs are pruned here, in the background: the newest ``keep_runs`` of each app are kept, and none
finished more than ``keep_days`` ago. Only finished runs are ever deleted (the store checks it in
the same transaction as the delete), with their output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from hgrun.server.workers import run_in
from hgrun.store import Store

log = logging.getLogger("hgrun.retention")

DAY = 86400.0
PASS = 1000  # runs deleted per store call; a pass lets other writers in between


@dataclasses.dataclass(frozen=True)
class Retention:
    """The server's bounds (flags of ``hgrun server``)."""

    max_output: int = 100 * 1024 * 1024  # bytes of output kept per run, the newest
    keep_runs: int = 1000  # one-off runs kept per app, the newest
    keep_days: float = 30.0  # one-off runs finished longer ago than this go
    every: float = 600.0  # seconds between two prunes

    def __post_init__(self) -> None:
        if self.max_output <= 0 or self.keep_runs < 0 or self.keep_days < 0 or self.every <= 0:
            raise ValueError(f"bad retention settings: {self}")


class Pruner:
    """Prunes one-off runs now and then, on ``pool`` (a prune may delete much: never on the
    event loop, nor on the engine's pool where output is stored)."""

    def __init__(
        self,
        store: Store,
        retention: Retention,
        *,
        pool: concurrent.futures.Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retention = retention
        self.clock = clock
        self.pool = pool
        self._task: asyncio.Task[None] | None = None

    def prune(self) -> int:
        """One pass (blocking); the number of runs deleted."""
        older_than = self.clock() - self.retention.keep_days * DAY
        deleted = 0
        while True:
            count = self.store.prune_runs(
                keep=self.retention.keep_runs, older_than=older_than, limit=PASS
            )
            deleted += count
            if count < PASS:
                break
        if deleted:
            log.info("retention: %d finished one-off runs deleted", deleted)
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await run_in(self.pool, self.prune)
            except Exception:
                log.exception("retention: the prune failed; trying again later")
            await asyncio.sleep(self.retention.every)
