"""One GET of a small JSON resource on a bare socket, for ``hgrun run``'s folder check.

The check asks the app's live release in a thread while the run is created. :class:`~hgrun.cli.
client.Api` is built on http.client, whose import (with email, ssl, urllib.parse, ipaddress and
the idna codec) costs ~25 ms of CPU, taken from the create on a small machine; the answer is a
few hundred bytes. So: HTTP/1.1 (RFC 9112) on a fresh connection with ``Connection: close``, the
answer's head read by :func:`hgrun.relay.websocket.parse_answer`, the body by its
Content-Length, chunked, or to the connection's end. Anything but a 200 with JSON is None: the
caller uses the answer as a hint only, and the run's own request meets any real error.
"""

from __future__ import annotations

import contextlib
import json
import socket

from hgrun.cli.wsclient import split_url
from hgrun.errors import HgrunError
from hgrun.relay.websocket import parse_answer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from hgrun.cli.client import Settings

MAX_BODY = 1024 * 1024
TIMEOUT = 15.0


def get_json(settings: Settings, path: str, timeout: float = TIMEOUT) -> Any | None:
    """The JSON body of ``GET path`` on ``settings``' server when it answers 200, else None
    (another status, a connection or TLS failure, a timeout, a body that is not JSON)."""
    try:
        secure, host, port, target = split_url(settings.ws_url(path))
        default_port = port == (443 if secure else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
        headers = {
            "Host": host_header,
            **settings.headers(),
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (head + "\r\n").encode("latin-1")
        context = settings.ssl_context() if secure else None
        # An ASCII name as bytes: a str goes through the idna codec (wsclient does the same).
        address: Any = host.encode("ascii") if host.isascii() else host
        with contextlib.closing(socket.create_connection((address, port), timeout)) as sock:
            conn = sock if context is None else context.wrap_socket(sock, server_hostname=host)
            with contextlib.closing(conn):
                conn.sendall(request)
                return _answer(conn)
    except (OSError, HgrunError, UnicodeError, ValueError):
        return None


def _answer(sock: socket.socket) -> Any | None:
    received = b""
    answer = None
    head = 0  # the length of the answer's head, once read
    while True:
        chunk = sock.recv(65536)
        received += chunk
        if answer is None:
            answer = parse_answer(received)
            head = len(received) - len(answer.rest) if answer is not None else 0
        if answer is not None:
            if answer.status != 200:
                return None
            body = received[head:]
            done = _body(body, answer.headers, ended=not chunk)
            if done is not None:
                return json.loads(done)
        if not chunk:
            return None  # the connection ended before the answer did
        if len(received) > MAX_BODY:
            return None


def _body(data: bytes, headers: Mapping[str, str], *, ended: bool) -> bytes | None:
    """The whole body once ``data`` holds it, else None (read more)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return unchunk(data)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"bad Content-Length {length!r}")
        return data[: int(length)] if len(data) >= int(length) else None
    return data if ended else None


def unchunk(data: bytes) -> bytes | None:
    """The body of a chunked transfer coding (RFC 9112 section 7.1) once ``data`` holds its
    last chunk, else None; ValueError when it is not one. Extensions and trailers are ignored."""
    out = bytearray()
    at = 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return None
        size_text = data[at:end].split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise ValueError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            return bytes(out)  # the trailer section, if any, is not needed
        start = end + 2
        if len(data) < start + size + 2:
            return None
        out += data[start : start + size]
        if data[start + size : start + size + 2] != b"\r\n":
            raise ValueError("a chunk does not end with CRLF")
        at = start + size + 2
