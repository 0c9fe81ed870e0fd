"""Turn stored output chunks into log lines (pure: chunks in, lines out)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from hgrun.models import OutputChunk

STREAMS = {1: "stdout", 2: "stderr"}


@dataclasses.dataclass(frozen=True)
class LogLine:
    cursor: int
    run_id: int
    stream: str
    time: float
    text: str

    def to_json(self) -> dict[str, object]:
        return {
            "cursor": self.cursor,
            "run": self.run_id,
            "source": f"run.{self.run_id}",
            "stream": self.stream,
            "time": self.time,
            "line": self.text,
        }


class LineAssembler:
    """Split chunks into lines per (run, stream); a partial line waits for its newline.

    Chunks are ``(cursor, run_id, stream, ts, data)`` in cursor order. A line carries the cursor
    and time of the chunk that completed it.
    """

    def __init__(self) -> None:
        self._partial: dict[tuple[int, int], bytearray] = {}
        self._partial_at: dict[tuple[int, int], tuple[int, float]] = {}

    def feed(self, chunks: Iterable[OutputChunk]) -> list[LogLine]:
        lines: list[LogLine] = []
        for chunk in chunks:
            cursor, run_id, stream, ts, data = (
                chunk.cursor,
                chunk.run_id,
                chunk.stream,
                chunk.ts,
                chunk.data,
            )
            key = (run_id, stream)
            buffer = self._partial.setdefault(key, bytearray())
            buffer += data
            *complete, rest = bytes(buffer).split(b"\n")
            for raw in complete:
                lines.append(_line(cursor, run_id, stream, ts, raw))
            self._partial[key] = bytearray(rest)
            if rest:
                self._partial_at[key] = (cursor, ts)
        return lines

    def pending_runs(self) -> list[int]:
        return sorted({run_id for (run_id, _), rest in self._partial.items() if rest})

    def flush(self, run_id: int | None = None) -> list[LogLine]:
        """Lines still waiting for a newline (all, or one run's), emitted as they are."""
        lines = []
        for key in list(self._partial):
            if run_id is not None and key[0] != run_id:
                continue
            rest = self._partial.pop(key)
            cursor, ts = self._partial_at.pop(key, (0, 0.0))
            if rest:
                lines.append(_line(cursor, key[0], key[1], ts, bytes(rest)))
        return sorted(lines, key=lambda line: line.cursor)


def _line(cursor: int, run_id: int, stream: int, ts: float, raw: bytes) -> LogLine:
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return LogLine(cursor, run_id, STREAMS.get(stream, "stdout"), ts, text)
