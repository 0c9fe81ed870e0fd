"""Turn stored output chunks into log lines (pure: chunks in, lines out)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from hgrun.models import OutputChunk

STREAMS = {1: "stdout", 2: "stderr"}
STDERR = 2
TAIL_PAGE = 16  # chunks read at a time from the newest end: a chunk is at most a few 100 KB


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


# A line longer than this is emitted in pieces of this size (cut at a UTF-8 boundary): a
# progress bar redrawn with "\r" and never a newline must not grow one line without bound.
MAX_LINE = 64 * 1024


@dataclasses.dataclass
class _Partial:
    """The bytes of a line still waiting for its newline, and the chunk that last extended it."""

    data: bytearray = dataclasses.field(default_factory=bytearray)
    cursor: int = 0
    ts: float = 0.0
    first: int = 0  # the cursor of the chunk where the waiting bytes began


class LineAssembler:
    """Split chunks into lines per (run, stream); a partial line waits for its newline.

    Chunks come in cursor order. A line carries the cursor and time of the chunk that completed
    it. Linear in the input: each chunk is searched for newlines once, and a partial line is only
    appended to, never searched again; a partial line over ``max_line`` bytes is emitted in
    pieces of at most ``max_line`` bytes. ``work`` counts the bytes searched and copied (a
    measure for tests: it stays within a small multiple of the bytes fed).
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 4:
            raise ValueError("max_line must hold at least one UTF-8 character")
        self.max_line = max_line
        self.work = 0
        self._partial: dict[tuple[int, int], _Partial] = {}

    def feed(self, chunks: Iterable[OutputChunk]) -> list[LogLine]:
        lines: list[LogLine] = []
        for chunk in chunks:
            key = (chunk.run_id, chunk.stream)
            partial = self._partial.get(key)
            if partial is None:
                partial = self._partial[key] = _Partial()
            data = chunk.data
            self.work += len(data)  # one search for newlines over the new bytes only
            start = 0
            end = data.find(b"\n")
            while end != -1:
                if partial.data:
                    partial.data += data[start:end]
                    raw = bytes(partial.data)
                    partial.data.clear()
                else:
                    raw = data[start:end]
                self.work += len(raw)
                self._emit(lines, chunk, raw)
                start = end + 1
                end = data.find(b"\n", start)
            if start < len(data):
                if not partial.data:
                    partial.first = chunk.cursor
                partial.cursor, partial.ts = chunk.cursor, chunk.ts
                # Over the cap: fill the partial line to max_line, emit it (cut at a character
                # boundary), go on; each round copies at most max_line bytes and consumes at
                # least max_line - 3 of them, so a 16 MB line costs 16 MB of copying, not more.
                while len(partial.data) + len(data) - start > self.max_line:
                    take = self.max_line - len(partial.data)
                    partial.data += data[start : start + take]
                    start += take
                    cut = _utf8_cut(partial.data)
                    raw = bytes(partial.data[:cut])
                    partial.data = partial.data[cut:]
                    self.work += take + self.max_line
                    lines.append(_piece(chunk, raw))
                partial.data += data[start:]
                self.work += len(data) - start
        return lines

    def _emit(self, lines: list[LogLine], chunk: OutputChunk, raw: bytes) -> None:
        """A complete line; one longer than max_line (a whole line in one chunk) in pieces."""
        pos = 0
        while len(raw) - pos > self.max_line:
            piece = raw[pos : pos + self.max_line]
            cut = _utf8_cut(piece)
            lines.append(_piece(chunk, piece[:cut]))
            pos += cut
            self.work += 2 * self.max_line
        lines.append(_line(chunk.cursor, chunk.run_id, chunk.stream, chunk.ts, raw[pos:]))

    def pending_since(self) -> int | None:
        """The cursor of the oldest chunk whose bytes still wait for a newline (None: none do).
        A reader that stops here and goes on later from a cursor before it loses nothing."""
        firsts = [p.first for p in self._partial.values() if p.data]
        return min(firsts) if firsts else None

    def pending_runs(self) -> list[int]:
        return sorted({run_id for (run_id, _), rest in self._partial.items() if rest.data})

    def flush(self, run_id: int | None = None) -> list[LogLine]:
        """Lines still waiting for a newline (all, or one run's), emitted as they are."""
        lines = []
        for key in list(self._partial):
            if run_id is not None and key[0] != run_id:
                continue
            rest = self._partial.pop(key)
            if rest.data:
                lines.append(_line(rest.cursor, key[0], key[1], rest.ts, bytes(rest.data)))
        return sorted(lines, key=lambda line: line.cursor)


def _utf8_cut(data: bytes | bytearray) -> int:
    """Where to cut ``data`` so that no UTF-8 sequence (RFC 3629) is split: before a lead byte
    among the last four whose sequence runs past the end; the end when there is none."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        if byte >= 0xF0:
            length = 4
        elif byte >= 0xE0:
            length = 3
        elif byte >= 0xC0:
            length = 2
        else:
            length = 1
        return n - back if length > back and n - back > 0 else n
    return n


def _line(cursor: int, run_id: int, stream: int, ts: float, raw: bytes) -> LogLine:
    """A line as shown: a CRLF line's CR goes with its LF."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return LogLine(cursor, run_id, STREAMS.get(stream, "stdout"), ts, text)


def _piece(chunk: OutputChunk, raw: bytes) -> LogLine:
    """A piece of an over-long line, kept byte for byte (its end is no line end)."""
    text = raw.decode("utf-8", errors="replace")
    return LogLine(chunk.cursor, chunk.run_id, STREAMS.get(chunk.stream, "stdout"), chunk.ts, text)


# One page of a run's chunks, newest first, strictly before the cursor given (None: the newest).
NewestFirst = Callable[[int | None], list[OutputChunk]]


def tail_lines(pages: NewestFirst, n: int, *, max_bytes: int | None = None) -> list[LogLine]:
    """The last ``n`` lines of the chunks ``pages`` reads, oldest first.

    Reads newest-first page by page, only until ``n`` complete lines are covered or
    ``max_bytes`` (default: ``n`` lines of MAX_LINE) are read, never the whole output: a tail
    of a run that printed 100 MB costs what its last lines weigh. Blocking (it reads the
    store): call it from a worker thread.
    """
    if n <= 0:
        return []
    limit = max_bytes if max_bytes is not None else (n + 1) * MAX_LINE
    taken: list[OutputChunk] = []
    newlines = read = 0
    before: int | None = None
    # n + 1 newlines: the oldest line of the tail then starts after a newline, so it is whole.
    while newlines <= n and read < limit:
        page = pages(before)
        if not page:
            break
        for chunk in page:
            taken.append(chunk)
            newlines += chunk.data.count(b"\n")
            read += len(chunk.data)
            if newlines > n or read >= limit:
                break
        before = page[-1].cursor
    assembler = LineAssembler()
    lines = assembler.feed(reversed(taken)) + assembler.flush()
    return lines[-n:]
