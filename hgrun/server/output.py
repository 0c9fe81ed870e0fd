"""A run's output between the pump, the store and its viewers.

The pump appends to the session's log in memory (:meth:`RunSession.add`); :meth:`OutputLog.flush`
writes what is held to the store from a worker thread, and moves the session's ``stored`` mark
only once the rows are committed, so every byte is always in memory or in the store. Viewers
catching up read the store by byte offset (:meth:`OutputLog.read`), in bounded pieces.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from hgrun.engine import STDERR, AttachStream
from hgrun.models import OutputChunk
from hgrun.rejoin import PROBE, Piece, Rejoin, Stored
from hgrun.server.session import Hint, Output, RunSession
from hgrun.store import NewChunk, Store

ROWS = 256  # store rows read at a time
# A flush stores what the pump added as few rows as it can: the pieces of one stream that came
# one after another, within ROW_SECONDS of the row's first (whose time the row keeps: a log
# line's time is off by no more than that), up to ROW_BYTES. A TTY gives the engine reads of a
# few KB: one row each cost the store more than the bytes themselves (4 KB rows 0.41-0.58 s of
# CPU per 100 MB, 64 KB ones 0.21-0.33 s). The cap (--max-output) drops whole rows, oldest
# first, so a run keeps at least its cap less one row: 64 KB, 6 % of the smallest cap (1 MB).
ROW_BYTES = 64 * 1024
ROW_SECONDS = 0.01

Find = Callable[[bytes], Awaitable[int | None]]


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
            await asyncio.to_thread(self._append, session.run.id, session.run.app_id, batch)
            del session.unstored[: len(batch)]
            session.stored = batch[-1].end

    def _append(self, run_id: int, app_id: int, batch: list[Output]) -> None:
        """In a worker thread: the pieces as rows (:func:`rows`), stored."""
        self.store.append_output(run_id, app_id, rows(batch, ROW_BYTES, ROW_SECONDS))

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
        # Newest first, joined once at the end (prepending each row would move all the rest).
        output: dict[int, list[bytes]] = {1: [], STDERR: []}
        held = 0
        before = None
        while held < 2 * cap:
            chunks = self.store.output(run_id=run_id, before=before, limit=ROWS, newest_first=True)
            if not chunks:
                break
            for chunk in chunks:
                output[STDERR if chunk.stream == STDERR else 1].append(chunk.data)
                held += len(chunk.data)
            before = chunks[-1].cursor
        stdout, stderr = (b"".join(reversed(output[key])) for key in (1, STDERR))
        return stdout[-cap:], stderr[-cap:]

    # -- what recovery needs to join the engine's replay (hgrun.rejoin) -------------------------

    def stored(self, run_id: int) -> Stored:
        """What the store holds of the run: its byte count and its ends, as :class:`Stored`."""
        run = self.store.run(run_id)
        total = run.output_bytes + run.output_dropped
        head = None
        if run.output_dropped == 0:
            first = bytearray()
            for chunk in self._chunks(run_id):
                first += chunk.data
                if len(first) >= PROBE:
                    break
            head = bytes(first[:PROBE])
        last = bytearray()
        before = None
        while len(last) < PROBE:
            chunks = self.store.output(run_id=run_id, before=before, limit=ROWS, newest_first=True)
            if not chunks:
                break
            for chunk in chunks:
                if chunk.offset is not None:
                    last[:0] = chunk.data
            before = chunks[-1].cursor
        return Stored(total=total, head=head, tail=bytes(last[-PROBE:]), kept=run.output_bytes)

    def find(self, run_id: int, needle: bytes) -> int | None:
        """The run's byte at which ``needle`` last begins in its stored output, or None; read
        in pieces of ROWS chunks, holding no more than a chunk and ``needle``."""
        found = None
        carry, carry_at = b"", 0
        for chunk in self._chunks(run_id):
            if chunk.offset is None:
                continue
            if carry and carry_at + len(carry) != chunk.offset:
                carry = b""  # never across a gap
            window = carry + chunk.data
            base = chunk.offset - len(carry)
            at = window.rfind(needle)
            if at >= 0:
                found = base + at
            keep = len(needle) - 1
            carry = window[-keep:] if keep else b""
            carry_at = base + len(window) - len(carry)
        return found

    def _chunks(self, run_id: int) -> Iterator[OutputChunk]:
        """The run's stored chunks in order, markers left out, ROWS at a time."""
        cursor = 0
        while chunks := self.store.output(run_id=run_id, after=cursor, limit=ROWS):
            for chunk in chunks:
                if chunk.offset is not None:
                    yield chunk
            cursor = chunks[-1].cursor


def rows(pieces: list[Output], max_bytes: int, seconds: float) -> list[NewChunk]:
    """``pieces`` (in order, contiguous) as store rows ``(stream, ts, data)``: each run of
    pieces on one stream within ``seconds`` of its first piece joined, up to ``max_bytes`` a
    row, with its first piece's time. A piece larger than that is cut: no row is ever over
    ``max_bytes``, so the cap, which drops whole rows, keeps at least the cap less one row."""
    out: list[NewChunk] = []
    group: list[bytes | memoryview] = []
    size, stream, ts = 0, 0, 0.0

    def close() -> None:
        nonlocal group, size
        if group:
            data = group[0] if len(group) == 1 else b"".join(group)
            out.append((stream, ts, data if isinstance(data, bytes) else bytes(data)))
        group, size = [], 0

    for piece in pieces:
        if group and (piece.stream != stream or piece.ts - ts > seconds):
            close()
        data: bytes | memoryview = piece.data
        while data:
            if not group:
                stream, ts = piece.stream, piece.ts
            if len(data) > max_bytes - size:
                data = memoryview(data)  # cut without copying the rest at each cut
            room = max_bytes - size
            group.append(data[:room])
            size += min(room, len(data))
            data = data[room:]
            if size >= max_bytes:
                close()
    close()
    return out


async def rejoined(
    source: AsyncIterator[Piece], rejoin: Rejoin, find: Find
) -> AsyncIterator[Piece]:
    """The pieces of ``source`` (an engine's replay of a run's output, maybe going on live)
    that the store lacks, as :class:`~hgrun.rejoin.Rejoin` decides; ``find`` answers its
    questions (:meth:`OutputLog.find`, off the event loop)."""
    async for stream, data in source:
        out = rejoin.feed(stream, data)
        while (probe := rejoin.asks) is not None:
            out += rejoin.answer(await find(probe))
        for piece in out:
            if piece[1]:
                yield piece
    out = rejoin.close()
    while (probe := rejoin.asks) is not None:
        out += rejoin.answer(await find(probe))
    for piece in out:
        if piece[1]:
            yield piece


class RejoinedStream:
    """An attach stream whose replay (``logs=1``) is joined to what the store holds."""

    def __init__(self, inner: AttachStream, rejoin: Rejoin, find: Find) -> None:
        self._inner = inner
        self._pieces = rejoined(self._reads(), rejoin, find)

    async def _reads(self) -> AsyncIterator[Piece]:
        while (piece := await self._inner.read()) is not None:
            yield piece

    async def read(self) -> Piece | None:
        return await anext(self._pieces, None)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close_stdin(self) -> None:
        await self._inner.close_stdin()

    async def close(self) -> None:
        await self._inner.close()
