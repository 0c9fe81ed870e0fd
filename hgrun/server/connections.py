"""Limits on HTTP connections, checked before a request reaches the app (before authentication).

uvicorn 0.54 with httptools (the parser hgrun serves with) bounds neither the request head nor
the time a client takes to send it: ``on_url`` and ``on_header`` accumulate whatever arrives, so a
100 MB header is buffered whole, and a client that never finishes its head holds its connection
for ever. Its ``limit_concurrency`` answers a plain-text 503 without ``Retry-After``.
:func:`guarded_protocol` makes uvicorn's own httptools protocol class with four additions:

- the request head (request line and headers) is capped: past ``max_head`` bytes the client gets
  ``431 Request Header Fields Too Large`` (RFC 6585 section 5) and the connection is closed; at
  most one read (256 KB) past the cap is ever held;
- a head not complete ``head_timeout`` seconds after it began gets ``408 Request Timeout``
  (RFC 9110 section 15.5.9) and a close, so slow clients cannot pin connections;
- the request's scope carries a :class:`hgrun.server.rawbody.BodyTap`, so a handler can read
  a large body straight off the socket instead of piece by piece;
- over the connection cap (uvicorn's ``limit_concurrency``), the answer is a JSON 503 with
  ``Retry-After`` (RFC 9110 section 10.2.3), as every other hgrun error. uvicorn checks its cap
  only for plain requests: a WebSocket upgrade skips it (``on_headers_complete`` returns early
  and ``handle_websocket_upgrade`` hands the socket to the WebSocket protocol), so an attach over
  the cap would be accepted. The upgrade is refused the same way, before the handshake.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hgrun.server.rawbody import EXTENSION, BodyTap

MAX_HEAD = 64 * 1024
"""Bytes of request line plus headers; nginx allows 32 KB by default, Node.js 16 KB."""
HEAD_TIMEOUT = 10.0
"""Seconds a client has to send a whole request head."""
MAX_CONNECTIONS = 1000
"""Connections open at once (HTTP and WebSocket) before new requests get a 503."""
RETRY_AFTER = 1

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
_BUSY = ("unavailable", "the server has too many connections open", f"retry in {RETRY_AFTER} s")


def refusal(status: int, error: str, message: str, hint: str | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection: hgrun's JSON error body (a 503
    carries ``Retry-After``)."""
    body = json.dumps({"error": error, "message": message, "hint": hint}).encode()
    retry = b"retry-after: %d\r\n" % RETRY_AFTER if status == 503 else b""
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            retry,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


async def service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a request over the connection cap gets instead of hgrun's."""
    error, message, hint = _BUSY
    body = json.dumps({"error": error, "message": message, "hint": hint}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def guarded_protocol(
    max_head: int = MAX_HEAD, head_timeout: float = HEAD_TIMEOUT
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the head cap, the head timeout and the JSON 503."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_open = True  # between the start of a request and the end of its headers
        _head_bytes = 0  # raw bytes received while the head was open
        _head_parsed = 0  # request line and header bytes the parser has handed over
        _head_timer: asyncio.TimerHandle | None = None
        _tap: BodyTap | None = None  # the current request's

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._begin_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._head_open:
                self._head_bytes += len(data)
            super().data_received(data)
            # Checked after the parser ran, so a small head and its body in one read pass; the
            # parser holds at most this one read beyond the cap.
            if self._head_open and self._head_bytes > max_head and self.parser is not None:
                self._refuse(431, "header_too_large", f"request head over {max_head // 1024} KB")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_parsed = 0
            if not self._head_open:
                self._begin_head()

        def on_url(self, url: bytes) -> None:
            self._head_parsed += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_parsed += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._cancel_head_timer()
            if self._head_parsed > max_head:
                # The whole head came in one read: refused all the same, the app never sees it.
                self._refuse(431, "header_too_large", f"request head over {max_head // 1024} KB")
                return
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before and self.cycle is not None:
                # The request's handler may take a large body off the socket (rawbody.py).
                self._tap = BodyTap(self, self.cycle)
                # An ASGI extension is a dict (ASGI spec, "Extensions").
                self.cycle.scope.setdefault("extensions", {})[EXTENSION] = {"tap": self._tap}

        def on_body(self, body: bytes) -> None:
            if self._tap is not None and not self._tap.on_body(len(body)):
                return  # the handler reads the body off the socket itself
            super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._begin_head()

        def handle_websocket_upgrade(self) -> None:
            # The connection becomes the WebSocket protocol's: no more heads to time here.
            self._cancel_head_timer()
            self._head_open = False
            if self._over_the_cap():
                self._refuse(503, *_BUSY)
                return
            super().handle_websocket_upgrade()

        def _over_the_cap(self) -> bool:
            # uvicorn's own test for plain requests; this connection is among those counted.
            cap = self.limit_concurrency
            return cap is not None and (len(self.connections) >= cap or len(self.tasks) >= cap)

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if app is httptools_impl.service_unavailable:
                app = service_unavailable
            super()._start_asgi_task(cycle, app)

        def _begin_head(self) -> None:
            self._head_open = True
            self._head_bytes = 0
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            # Only a connection with no request in progress: a long upload or a streamed
            # response is not a slow head.
            if (
                not self._head_open
                or self.transport.is_closing()
                or self.transport.get_protocol() is not self  # upgraded to a WebSocket
            ):
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # The previous response is still going (a stream, a long call): the next head
                # has not really begun, so look again later.
                self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)
            elif self._head_bytes:
                self._refuse(408, "timeout", f"request head not sent within {head_timeout:g} s")
            else:
                self.transport.close()

        def _refuse(self, status: int, error: str, message: str, hint: str | None = None) -> None:
            self._cancel_head_timer()
            self._head_open = False
            if not self.transport.is_closing():
                self.transport.write(refusal(status, error, message, hint))
                self.transport.close()

    return GuardedHttpToolsProtocol
