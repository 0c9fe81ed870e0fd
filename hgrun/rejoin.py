"""Where an engine's replay of a run's output joins what the store already holds. Pure.

After a restart of the server (even a SIGKILL), recovery reads a run's output again from the
engine (Docker's log of the run, replayed by an attach with ``logs=1`` or the logs API) and must
store only what the store lacks: nothing stored is dropped, nothing doubled. The store counts the
run's bytes (``total``: kept and dropped past its cap); the engine's log holds the container's
output from some byte ``P`` on, ``P`` > 0 once the log has rotated, and says nothing of ``P``.
So ``P`` is found from the bytes themselves, in this order:

1. The engine's first bytes are the run's first bytes as stored: nothing rotated away (``P`` = 0),
   and the join is at ``total`` (a count; exact whatever the content).
2. Else the engine's first :data:`PROBE` bytes are looked for in the bytes the store kept (the
   caller searches the store: :attr:`Rejoin.asks`, answered by :meth:`Rejoin.answer`); found at
   byte ``p`` of the run, ``P`` = ``p``. Output that repeats itself exactly (``yes``) may match at
   several places: the last one is taken (the least is skipped; a repeat of identical lines may
   then be doubled, never a line lost).
3. Else the store's last bytes and the engine's first bytes overlap by fewer than ``PROBE`` bytes
   (the log rotated up to just before what is stored): the longest such overlap, at least
   :data:`MIN_OVERLAP` bytes.
4. Else, when the store dropped none of the run's bytes, the engine's log begins after the
   store's end: bytes were written while no server held the run and the log rotated them away.
   They cannot be recovered and their number cannot be known (Docker does not count what it
   rotated): a line on stderr says so (:func:`lost_line`), then everything the engine has.
5. Else (the store dropped the run's oldest bytes, and the engine's log may begin inside them)
   the store's last bytes are looked for in the engine's output as it comes: found, the join is
   just after them; not found where they must be (by byte ``total`` of the replay), as 4, with
   the newest :data:`SEARCH_HOLD` bytes of what was searched (the rest is counted as lost).

Streams are compared as one sequence of bytes (stdout and stderr together, in the engine's order),
as the store counts them.

Where 1-3 place the store's end, one more step (``TRAIL``): Docker's log writes a line once
its newline comes (moby ``daemon/logger/copier.go``: a line without one waits in the copier's
buffer until it has one, fills 16 KB, or the container ends), so a replay made while the container
runs lacks the run's last line when it is unfinished: a shell's prompt, say, in a TTY session.
The store's bytes after its last newline (:meth:`Rejoin._partial`) are then compared with the
engine's bytes where they would be: the same, the log had them (the join is after them); else
it lacked them, and what the engine gives there is new. Without this a TTY session taken over
showed nothing until 4 KB more came, then all of it twice.
"""

from __future__ import annotations

import collections
import dataclasses
import enum

PROBE = 4096  # bytes compared or looked for at each end
MIN_OVERLAP = 16  # the shortest overlap of the store's end and the engine's start believed
SEARCH_HOLD = 4 * 1024 * 1024  # engine bytes held while the store's tail is looked for
STDERR = 2

Piece = tuple[int, bytes]


def lost_line() -> bytes:
    """The stderr line standing for output that neither the store nor the engine has."""
    return (
        b"[hgrun: output lost while the server was down: Docker's log rotated it away before"
        b" it was stored; the count of bytes lost is not known]\n"
    )


@dataclasses.dataclass(frozen=True)
class Stored:
    """What the store holds of a run: ``total`` bytes counted (kept and dropped); ``head``, its
    first bytes (up to PROBE) when none were dropped, else None; ``tail``, the last bytes
    stored (up to PROBE), ending at ``total``; ``kept``, the bytes kept."""

    total: int
    head: bytes | None
    tail: bytes
    kept: int


class Mode(enum.Enum):
    PROBE = enum.auto()  # reading the engine's first bytes
    ASK = enum.auto()  # waiting for the store's answer
    TRAIL = enum.auto()  # is the store's unfinished last line in the engine's log? (docstring)
    COUNT = enum.auto()  # passing on every byte from ``join`` on
    SEARCH = enum.auto()  # looking for the store's tail in the engine's output


class Rejoin:
    """Fed the engine's replay piece by piece, gives back the pieces the store lacks.

    Sans-I/O: :meth:`feed` and :meth:`close` return pieces; when :attr:`asks` is set the caller
    looks it up in the store's kept bytes and calls :meth:`answer` before feeding more.
    """

    def __init__(self, stored: Stored) -> None:
        self.stored = stored
        self.mode = Mode.PROBE if stored.total > 0 else Mode.COUNT
        self.position = 0  # bytes of the engine's output seen
        self.join = 0  # the engine's byte at which the run goes on past the store
        self.lost = False
        self._held: list[Piece] = []
        self._probe = bytearray()
        self._window = b""  # SEARCH: the last len(tail) - 1 bytes seen
        self._searched: collections.deque[Piece] = collections.deque()  # SEARCH: the newest
        self._searched_bytes = 0
        self._matched = 0  # TRAIL: bytes of the store's unfinished line found in the engine's
        self._trail_held: list[Piece] = []  # TRAIL: those bytes, held until it is decided
        self._closed = False

    @property
    def asks(self) -> bytes | None:
        """The engine's first bytes, to be found in the store (:meth:`answer`), or None."""
        return bytes(self._probe) if self.mode is Mode.ASK else None

    def feed(self, stream: int, data: bytes) -> list[Piece]:
        if self.mode is Mode.ASK:
            raise RuntimeError("Rejoin.feed before the store's answer")  # a caller's bug
        if self.mode is Mode.PROBE:
            self._held.append((stream, data))
            self._probe += data[: max(0, PROBE - len(self._probe))]
            self.position += len(data)
            return self._probed() if len(self._probe) >= self._probe_size() else []
        start = self.position
        self.position += len(data)
        return self._step(stream, data, start)

    def close(self) -> list[Piece]:
        """The engine's output ended (settle with what came)."""
        self._closed = True
        if self.mode is Mode.PROBE:
            return self._probed()
        if self.mode is Mode.TRAIL:
            # Ended on a beginning of the store's unfinished line: the log's copy of it (the
            # copier writes what it holds when the container ends). Nothing new.
            self.mode = Mode.COUNT
            self._trail_held = []
        if self.mode is Mode.SEARCH:
            return self._give_up()  # not found by the end: as if not found by ``total``
        return []

    def answer(self, at: int | None) -> list[Piece]:
        """The store's answer to :attr:`asks`: the run's byte where the engine's first bytes
        are stored (the last such place), or None."""
        if self.mode is not Mode.ASK:
            raise RuntimeError("Rejoin.answer with no question asked")  # a caller's bug
        probe = bytes(self._probe)
        stored = self.stored
        if at is not None:
            return self._count(stored.total - at)
        overlap = _overlap(stored.tail, probe)
        if overlap >= MIN_OVERLAP:
            return self._count(overlap)
        if stored.head is not None:
            self.lost = True
            return [(STDERR, lost_line()), *self._count(0, trail=False)]
        return self._start_search()

    # -- the steps -----------------------------------------------------------------------------

    def _partial(self) -> bytes:
        """The store's last bytes after its last newline: an unfinished line the engine's log
        may not hold yet (module docstring). Empty when the store ends a line, or when its
        tail has no newline but is not the whole run (a line too long to tell)."""
        tail = self.stored.tail
        at = tail.rfind(b"\n")
        if at >= 0:
            return tail[at + 1 :]
        return tail if len(tail) == self.stored.total else b""

    def _probe_size(self) -> int:
        """The engine's bytes needed to compare its start with the store's: a probe, or, when
        the store holds the whole run in fewer bytes, its finished lines (the engine's log
        may lack the rest, and a session's next output may be far off)."""
        head = self.stored.head
        if head is not None and len(head) < PROBE:
            return len(head) - len(self._partial())
        return PROBE

    def _probed(self) -> list[Piece]:
        head, probe = self.stored.head, bytes(self._probe)
        if not probe:  # the engine has no output: nothing the store lacks
            return self._count(self.stored.total)
        if head is not None:
            n = min(len(head), len(probe))
            whole = self._probe_size()  # the head's finished lines, when it is the whole run
            if probe[:n] == head[:n] or (len(head) < PROBE and probe[:whole] == head[:whole]):
                return self._count(self.stored.total)
        self.mode = Mode.ASK
        return self.answer(None) if self.stored.kept == 0 else []

    def _count(self, join: int, *, trail: bool = True) -> list[Piece]:
        """From now on, pass on the engine's bytes from ``join`` on (the held ones too); with
        ``trail`` (``join`` is the store's end), first see whether the engine's log holds the
        store's unfinished last line (``TRAIL``)."""
        partial = self._partial() if trail else b""
        self.mode = Mode.COUNT
        self.join = max(0, join)
        if partial and join >= len(partial):
            self.mode = Mode.TRAIL
            self.join = join - len(partial)  # where that line is in the log, if it is there
        return self._replay_held()

    def _replay_held(self) -> list[Piece]:
        """The pieces held while probing, through the mode now decided."""
        held, self._held = self._held, []
        out: list[Piece] = []
        start = 0
        for stream, data in held:
            out += self._step(stream, data, start)
            start += len(data)
        return out

    def _step(self, stream: int, data: bytes, start: int) -> list[Piece]:
        if self.mode is Mode.SEARCH:
            return self._search(stream, data, start)
        return self._pass(stream, data, start)

    def _pass(self, stream: int, data: bytes, start: int) -> list[Piece]:
        if self.mode is Mode.TRAIL:
            return self._trail(stream, data, start)
        return self._from_join(stream, data, start)

    def _trail(self, stream: int, data: bytes, start: int) -> list[Piece]:
        """Compare the engine's bytes at ``join`` with the store's unfinished line: all of it,
        the log had it (the run goes on after it); a difference, the log lacked it (what the
        engine gives from ``join`` on is new); a beginning of it, held until it is told."""
        if start + len(data) <= self.join:
            return []
        partial = self._partial()
        at = self.join + self._matched - start  # where the next byte to compare is in ``data``
        want = partial[self._matched :]
        got = data[at : at + len(want)]
        if got == want:
            self.mode = Mode.COUNT
            self.join += len(partial)
            self._trail_held = []
            return self._from_join(stream, data, start)
        if want.startswith(got):
            self._matched += len(got)
            self._trail_held.append((stream, data[at:]))
            return []
        self.mode = Mode.COUNT
        held, self._trail_held = self._trail_held, []
        return held + self._from_join(stream, data, start)

    def _from_join(self, stream: int, data: bytes, start: int) -> list[Piece]:
        end = start + len(data)
        if end <= self.join:
            return []
        return [(stream, data[max(0, self.join - start) :])]

    def _start_search(self) -> list[Piece]:
        self.mode = Mode.SEARCH
        out = self._replay_held()
        if self.mode is Mode.SEARCH and self._closed:
            out += self.close()
        return out

    def _search(self, stream: int, data: bytes, start: int) -> list[Piece]:
        tail = self.stored.tail
        window = self._window + data
        at = window.find(tail)
        if at >= 0:
            # The store's last byte is the engine's byte ``end`` - 1: what follows is new
            # (it lies in this piece: the window holds fewer than len(tail) earlier bytes).
            self._searched.clear()
            self.mode = Mode.COUNT
            self.join = start - len(self._window) + at + len(tail)
            return self._from_join(stream, data, start)
        self._window = window[-(len(tail) - 1) :] if len(tail) > 1 else b""
        self._searched.append((stream, data))
        self._searched_bytes += len(data)
        while self._searched_bytes > SEARCH_HOLD and len(self._searched) > 1:
            self._searched_bytes -= len(self._searched.popleft()[1])
        if start + len(data) >= self.stored.total:
            # Not found where it must end (by the store's ``total``, had the log kept the run's
            # start): the log begins after what is stored, and all it holds is new.
            return self._give_up()
        return []

    def _give_up(self) -> list[Piece]:
        """Output was lost: say so, then keep what the engine has (the newest SEARCH_HOLD bytes
        of what was searched, and all that comes after)."""
        self.mode = Mode.COUNT
        self.lost = True
        self.join = self.position
        held = list(self._searched)
        self._searched.clear()
        return [(STDERR, lost_line()), *held]


def _overlap(tail: bytes, probe: bytes) -> int:
    """The longest ``k`` < len(probe) with the last ``k`` bytes of ``tail`` the first of
    ``probe`` (0 if none)."""
    for k in range(min(len(tail), len(probe) - 1), 0, -1):
        if tail[-k:] == probe[:k]:
            return k
    return 0
