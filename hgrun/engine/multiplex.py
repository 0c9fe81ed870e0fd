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
    """Feed raw bytes in any chunking; get ``(stream, payload)`` pairs out, in order."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.tty:
            return [(STDOUT, data)] if data else []
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while len(self._buffer) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(self._buffer)
            if stream not in (0, STDOUT, STDERR):
                raise EngineError(f"malformed stream from the engine: stream byte {stream}")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            if payload:
                out.append((stream or STDOUT, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back; non-zero at EOF means a truncated stream."""
        return len(self._buffer)


def frame(stream: int, payload: bytes) -> bytes:
    """Encode one frame (used by tests and by fakes at our own seam)."""
    return _HEADER.pack(stream, len(payload)) + payload
