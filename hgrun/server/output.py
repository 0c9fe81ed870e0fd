"""A run's output between the pump, the store and its viewers.

The pump appends to the session's log in memory (:meth:`RunSession.add`); :meth:`OutputLog.flush`
writes what is held to the store from a worker thread, and moves the session's ``stored`` mark
only once the rows are committed, so every byte is always in memory or in the store. Viewers
catching up read the store by byte offset (:meth:`OutputLog.read`), in bounded pieces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hgrun.engine import STDERR
from hgrun.server.session import Hint, Output, RunSession
from hgrun.store import Store

ROWS = 256  # store rows read at a time


class OutputLog:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    async def flush(self, session: RunSession) -> None:
        """Store the output held in memory; one flush at a time per run."""
        async with session.flush_lock:
            batch = list(session.unstored)
            session.last_flush = self.clock()
            if not batch:
                return
            chunks = [(p.stream, p.ts, p.data) for p in batch]
            await asyncio.to_thread(
                self.store.append_output, session.run.id, session.run.app_id, chunks
            )
            del session.unstored[: len(batch)]
            session.stored = batch[-1].end

    async def read(
        self, run_id: int, hint: Hint, position: int, limit: int
    ) -> tuple[list[Output], Hint]:
        """Stored pieces from byte ``position`` on, about ``limit`` bytes, and the next hint."""
        return await asyncio.to_thread(self._read, run_id, hint, position, limit)

    def _read(
        self, run_id: int, hint: Hint, position: int, limit: int
    ) -> tuple[list[Output], Hint]:
        cursor, offset = hint
        pieces: list[Output] = []
        taken = 0
        while taken < limit:
            chunks = self.store.output(run_id=run_id, after=cursor, limit=ROWS)
            if not chunks:
                break
            for chunk in chunks:
                cursor = chunk.cursor
                if chunk.offset is None:
                    # The cap's marker, in front of what was kept: it counts no byte.
                    pieces.append(Output(chunk.stream, chunk.data, offset, chunk.ts, marker=True))
                    continue
                piece = Output(chunk.stream, chunk.data, chunk.offset, chunk.ts)
                offset = piece.end
                if piece.end > position:
                    pieces.append(piece)
                    taken += len(piece.data)
                    if taken >= limit:
                        break
        return pieces, (cursor, offset)

    def audit(self, session: RunSession, cap: int) -> dict[str, Any]:
        """The audit record of a run that ended: its outcome, input, and output tails."""
        run = session.run
        stdout, stderr = self.tail(run.id, cap)
        return {
            "status": run.status.value,
            "exit_code": run.exit_code,
            "oom": run.oom,
            "error": run.error,
            "duration": run.duration,
            "input": session.stdin_log.decode("utf-8", "replace") if session.stdin_log else None,
            "stdout": stdout.decode("utf-8", "replace"),
            "stderr": stderr.decode("utf-8", "replace"),
        }

    def tail(self, run_id: int, cap: int) -> tuple[bytes, bytes]:
        """The last ``cap`` bytes of the run's stdout and of its stderr (newest rows first)."""
        output = {1: bytearray(), STDERR: bytearray()}
        before = None
        while sum(map(len, output.values())) < 2 * cap:
            chunks = self.store.output(run_id=run_id, before=before, limit=ROWS, newest_first=True)
            if not chunks:
                break
            for chunk in chunks:
                output[STDERR if chunk.stream == STDERR else 1][:0] = chunk.data
            before = chunks[-1].cursor
        return bytes(output[1][-cap:]), bytes(output[STDERR][-cap:])
