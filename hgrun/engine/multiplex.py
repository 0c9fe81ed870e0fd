"""Docker's multiplexed stdio stream, sans I/O.

Without a TTY, ``attach`` and ``logs`` interleave stdout and stderr as frames: an 8-byte header
``[stream, 0, 0, 0, size (uint32, big-endian)]`` then ``size`` bytes (Docker Engine API, "Attach
to a container", section "Stream format"). Stream 1 is stdout, 2 is stderr. With a TTY the
stream is raw bytes, all of them stdout.
"""

from __future__ import annotations

import struct

from hgrun.engine import STDERR, STDOUT
from hgrun.errors import EngineError

__all__ = ["STDERR", "STDOUT", "Demuxer", "frame"]
_HEADER = struct.Struct(">BxxxL")


class Demuxer:
    """Feed raw bytes in any chunking; get ``(stream, payload)`` pairs out, in order.

    Consecutive frames on one stream within what was fed come out as one payload (a command
    writing 4 KB at a time makes 4 KB frames: one piece each would cost the relay a message
    each), copied once from the bytes fed; an incomplete frame is held for the next feed.
    """

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """The pieces ``data`` completes; a view is read only during the call (what is kept
        of it, payloads or an incomplete frame, is copied)."""
        if self.tty:
            return [(STDOUT, bytes(data))] if data else []
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray | memoryview = self._buffer
        else:
            buf = data
        out: list[tuple[int, bytes]] = []
        pos = 0
        with memoryview(buf) as view:
            run: list[memoryview] = []
            run_stream = STDOUT
            while len(buf) - pos >= _HEADER.size:
                stream, size = _HEADER.unpack_from(buf, pos)
                if stream not in (0, STDOUT, STDERR):
                    raise EngineError(f"malformed stream from the engine: stream byte {stream}")
                end = pos + _HEADER.size + size
                if len(buf) < end:
                    break
                stream = stream or STDOUT
                if size:
                    if run and stream != run_stream:
                        out.append((run_stream, _joined(run)))
                    run_stream = stream
                    run.append(view[pos + _HEADER.size : end])
                pos = end
            if run:
                out.append((run_stream, _joined(run)))
            run.clear()  # no slice of the buffer may outlive the view (the buffer shrinks next)
        if buf is self._buffer:
            del self._buffer[:pos]
        elif pos < len(data):
            self._buffer += data[pos:]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back; non-zero at EOF means a truncated stream."""
        return len(self._buffer)


def _joined(run: list[memoryview]) -> bytes:
    """One copy of the payloads of ``run``, emptied."""
    data = run[0].tobytes() if len(run) == 1 else b"".join(run)
    for piece in run:
        piece.release()
    run.clear()
    return data


def frame(stream: int, payload: bytes) -> bytes:
    """Encode one frame (used by tests and by fakes at our own seam)."""
    return _HEADER.pack(stream, len(payload)) + payload
