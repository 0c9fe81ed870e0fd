"""Group commit for the event loop: what arrives in one turn of the loop is handled by one call.

A storm of API triggers reaches the server as many requests ready at once; recording each run in
a transaction of its own made every trigger pay a ``BEGIN``/``COMMIT``, the WAL frames of every
page it touched (a run row and its dozen indexes) and a count of its script's queue. A
:class:`Batch` collects the items submitted during one turn of the event loop and hands them,
in submission order, to one synchronous call at the start of the next turn (``call_soon``): the
callers of one turn share one transaction. A lone request waits for nothing: its batch is
flushed as soon as the loop comes round, with no timer.

The handler runs on the loop with no ``await`` inside, so nothing else in the process runs
between the decisions it makes and the records it writes. A caller cancelled before the flush
is dropped from its batch (nothing is done for it); one cancelled after gets nothing back, and
the handler's result for it must not need a caller (see ``ScriptRunner._record``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from hgrun.models import Release, RunStatus, ScriptRecord, Trigger
from hgrun.server.launcher import Request

INPUT_VAR = "HOSTINGGURU_RUN_INPUT"
INPUT_VAR_SHORT = "HGRUN_RUN_INPUT"  # the same bytes, under hgrun's own prefix

T = TypeVar("T")
R = TypeVar("R")


class Batch(Generic[T, R]):
    """Submit items one by one; ``handle(items)`` gets those of one loop turn, in order, and
    returns one result per item (an exception it raises goes to every caller of the batch)."""

    def __init__(self, handle: Callable[[Sequence[T]], Sequence[R]]) -> None:
        self._handle = handle
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self.flushes = 0  # batches handled so far (how well a storm was grouped: tests, logs)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        batch = [(item, future) for item, future in self._pending if not future.cancelled()]
        self._pending = []
        if not batch:
            return
        self.flushes += 1
        try:
            results = self._handle([item for item, _ in batch])
        except Exception as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


@dataclasses.dataclass(frozen=True)
class Due:
    """A run of a script someone (a token, a person, cron) asked for, before the script's
    concurrency policy has decided it (see ``ScriptRunner._record``)."""

    script: ScriptRecord
    release: Release
    trigger: Trigger
    input_json: str | None = None
    slot: float | None = None  # a cron slot (epoch seconds): the run's unique key per script
    parent_run: int | None = None
    detached: bool = True
    tty: bool = False

    def request(self, status: RunStatus, why: str | None, held: bool) -> Request:
        """The launcher's request for this run, recorded with ``status`` (``why``: the reason
        it is skipped); ``held``: made with its lease, to be launched here at once."""
        spec = self.script.spec
        text = self.input_json
        return Request(
            workspace=self.script.workspace,
            app_id=self.script.app_id,
            release=self.release,
            trigger=self.trigger,
            process=spec.process,
            shell=None if spec.process else spec.command,
            size=spec.size,
            timeout=spec.timeout,
            env={} if text is None else {INPUT_VAR: text, INPUT_VAR_SHORT: text},
            detached=self.detached,
            tty=self.tty,
            script=spec.name,
            script_id=self.script.id,
            slot=None if self.slot is None else slot_key(self.slot),
            parent_run=self.parent_run,
            status=status,
            why=why,
            held=held,
        )


@functools.lru_cache(maxsize=64)
def slot_key(slot: float) -> str:
    """A cron slot's key in the store (its UTC instant, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))
