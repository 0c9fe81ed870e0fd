"""The client side of a WebSocket (RFC 6455), sans-I/O: bytes in, events out.

The attach client needs one WebSocket, binary messages, no extensions. ``websockets`` does that
well, but its import (with asyncio's) costs more than a whole ``docker run`` start; this module is
the few parts the CLI needs, on the standard library only. Nothing here touches a socket: the
handshake is a request to send (:func:`handshake_request`) and a head to check
(:func:`check_handshake`); a :class:`FrameReader` takes received bytes and returns whole messages
(control frames answered by the caller), and :func:`frame` makes the bytes of one frame to send.
"""

from __future__ import annotations

import base64
import os
import struct

from hgrun.errors import InputError
from hgrun.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Mapping, Sequence
    from typing import Final

try:
    from _sha1 import sha1  # CPython's own: hashlib would load OpenSSL first (ms at start-up)
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import sha1

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

MAX_HEAD: Final = 64 * 1024
"""Largest handshake answer head accepted."""


class WebSocketError(InputError):
    """The server broke RFC 6455 (a bad handshake answer or frame)."""

    code = "websocket_error"


class Answer(Record):
    """The server's answer to the upgrade request: status, headers (names lower-case), and for
    a refusal its body as far as it has arrived (``rest``: the bytes after the head, the first
    frames of a 101 or the body of any other status)."""

    __slots__ = ("status", "reason", "headers", "rest")

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], rest: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.rest = rest


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (section 4.1)."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with (section 4.2.2)."""
    return base64.b64encode(sha1(key.encode() + GUID).digest()).decode()


def handshake_request(
    host: str, target: str, key: str, subprotocols: Sequence[str], headers: Mapping[str, str]
) -> bytes:
    """The upgrade request (section 4.1); ``host`` as the Host header wants it (with the port
    when not the scheme's default), ``target`` the path and query."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_answer(data: bytes) -> Answer | None:
    """The answer's head once ``data`` holds all of it, else None (read more)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise WebSocketError("the server's handshake answer has no end")
        return None
    head = data[:end].decode("latin-1").split("\r\n")
    version, _, rest = head[0].partition(" ")
    status_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        raise WebSocketError(f"the server did not answer in HTTP: {head[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise WebSocketError(f"bad header line in the handshake answer: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Answer(int(status_text), reason, headers, data[end + 4 :])


def check_handshake(answer: Answer, key: str, offered: Sequence[str]) -> str | None:
    """Check a 101 answer (section 4.2.2 from the client's side); the subprotocol chosen."""
    headers = answer.headers
    if headers.get("upgrade", "").lower() != "websocket":
        raise WebSocketError("the server's answer does not upgrade to websocket")
    if "upgrade" not in {t.strip().lower() for t in headers.get("connection", "").split(",")}:
        raise WebSocketError("the server's answer lacks Connection: Upgrade")
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise WebSocketError("the server's Sec-WebSocket-Accept does not match the key")
    if headers.get("sec-websocket-extensions"):
        raise WebSocketError("the server chose an extension the client did not offer")
    chosen = headers.get("sec-websocket-protocol")
    if chosen is not None and chosen not in offered:
        raise WebSocketError(f"the server chose subprotocol {chosen!r}, which was not offered")
    return chosen


def frame(opcode: int, payload: bytes = b"", *, mask: bytes | None = None) -> bytes:
    """One final frame, masked as a client's must be (section 5.3); ``mask`` is for tests."""
    mask = os.urandom(4) if mask is None else mask
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + mask + _masked(payload, mask)


def _masked(payload: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: C speed, where a Python loop would be ~100x slower.
    if not payload:
        return b""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a close frame (section 5.5.1)."""
    return struct.pack("!H", code) + reason.encode()[:123]


class Message(Record):
    """A whole data message (fragments joined). ``data`` may be a read-only view of the bytes
    fed (see :meth:`FrameReader.feed`), which never change."""

    __slots__ = ("binary", "data")

    def __init__(self, binary: bool, data: bytes | memoryview) -> None:
        self.binary = binary
        self.data = data


class Ping(Record):
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Closed(Record):
    """The server's close frame: its code (1005 when it gave none) and reason."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = Message | Ping | Closed


class FrameReader:
    """Received bytes in, whole messages and control frames out (sections 5.2 to 5.5).

    Messages larger than ``max_size`` are refused. After :class:`Closed`, nothing more is read.

    Bytes fed are parsed where they lie, and what was parsed is dropped once per feed (a feed
    holding many frames costs one pass over its bytes, not one move of the rest per frame);
    only an incomplete frame's bytes are kept. A message lying whole in ``data`` of type
    ``bytes`` (immutable) is handed out as a view of it, not copied; from anything else (a
    receive buffer the caller reuses, or a frame that came in pieces) it is copied out once.
    """

    def __init__(self, max_size: int) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._parts: list[bytes | memoryview] = []
        self._parts_size = 0
        self._binary = True
        self._closed = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self._closed:
            return []
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray | memoryview = self._buffer
        else:
            buf = data
        events: list[Event] = []
        pos = 0
        with memoryview(buf) as view:
            keep = isinstance(buf, bytes)  # views of it stay valid: hand them out
            while (parsed := self._next(view, pos, keep)) is not None:
                event, pos = parsed
                if event is not _PARTIAL:
                    events.append(event)  # type: ignore[arg-type]
                if isinstance(event, Closed):
                    self._closed = True
                    break
        if self._closed:
            self._buffer.clear()
        elif buf is self._buffer:
            del self._buffer[:pos]
        elif pos < len(data):
            self._buffer += data[pos:]
        return events

    def _next(self, buffer: memoryview, pos: int, keep: bool) -> tuple[Event | object, int] | None:
        """The frame at ``pos`` as an event (or :data:`_PARTIAL`) and the position after it;
        None while it is incomplete. ``keep``: a data payload may be a view of ``buffer``."""
        have = len(buffer) - pos
        if have < 2:
            return None
        first, second = buffer[pos], buffer[pos + 1]
        if first & 0x70:
            raise WebSocketError("the server set reserved bits (no extension was agreed)")
        if second & 0x80:
            raise WebSocketError("the server masked a frame (RFC 6455 section 5.1 forbids it)")
        fin, opcode, length, at = bool(first & 0x80), first & 0x0F, second & 0x7F, 2
        if length == 126:
            if have < 4:
                return None
            (length,) = struct.unpack_from("!H", buffer, pos + 2)
            at = 4
        elif length == 127:
            if have < 10:
                return None
            (length,) = struct.unpack_from("!Q", buffer, pos + 2)
            at = 10
        if length > self._max_size or self._parts_size + length > self._max_size:
            raise WebSocketError(f"the server sent a message over {self._max_size} bytes")
        if have < at + length:
            return None
        end = pos + at + length
        if opcode >= 0x8:
            return self._control(fin, opcode, buffer[pos + at : end].tobytes()), end
        payload = buffer[pos + at : end]
        return self._data(fin, opcode, payload if keep else payload.tobytes()), end

    def _control(self, fin: bool, opcode: int, payload: bytes) -> Event | object:
        length = len(payload)
        if not fin or length > 125:
            raise WebSocketError("the server sent a fragmented or long control frame")
        if opcode == CLOSE:
            if length == 0:
                return Closed(1005, "")
            if length == 1:
                raise WebSocketError("the server sent a close frame of one byte")
            (code,) = struct.unpack_from("!H", payload)
            return Closed(code, payload[2:].decode(errors="replace"))
        if opcode == PING:
            return Ping(payload)
        if opcode == PONG:
            return _PARTIAL
        raise WebSocketError(f"the server sent unknown control opcode {opcode}")

    def _data(self, fin: bool, opcode: int, payload: bytes | memoryview) -> Event | object:
        length = len(payload)
        if opcode == CONTINUATION:
            if not self._parts:
                raise WebSocketError("the server continued a message it never began")
        elif opcode in (TEXT, BINARY):
            if self._parts:
                raise WebSocketError("the server began a message inside another")
            self._binary = opcode == BINARY
        else:
            raise WebSocketError(f"the server sent unknown opcode {opcode}")
        if fin and not self._parts:
            return Message(self._binary, payload)
        self._parts.append(payload)
        self._parts_size += length
        if not fin:
            return _PARTIAL
        data = b"".join(self._parts)
        self._parts, self._parts_size = [], 0
        return Message(self._binary, data)


_PARTIAL = object()
"""A frame that makes no event yet (a fragment, a pong)."""
