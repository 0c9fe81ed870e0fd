"""Docker on the wire: the hijacked attach pipe, a chunked upload body and the answers' heads,
over an asyncio connection :class:`hgrun.engine.docker.DockerEngine` opens; and a container's
inspect answer (its state and RFC 3339 times) read into the interface's words.

docker-py buffers these calls (and its requests layer can swallow the first bytes of an attach,
docker-py#2466), so they are spoken here directly: HTTP/1.1 written by hand, one copy between
the sockets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import os
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hgrun import execfailure
from hgrun.engine import ContainerState, ContainerStatus
from hgrun.engine.attachpipe import Pipe
from hgrun.engine.multiplex import STDOUT, Demuxer
from hgrun.engine.span import SocketSpan
from hgrun.errors import EngineError

SEND_BUFFER = 2 * 1024 * 1024  # bytes of an upload in the kernel's send buffer, at most
ERROR_BODY = 65536  # bytes of an error answer read for its message
# Docker's container states (Engine API, ContainerState.Status) in the interface's three words.
STATUS = {
    "created": ContainerStatus.CREATED,
    "running": ContainerStatus.RUNNING,
    "paused": ContainerStatus.RUNNING,
    "restarting": ContainerStatus.RUNNING,
    "removing": ContainerStatus.EXITED,
    "exited": ContainerStatus.EXITED,
    "dead": ContainerStatus.EXITED,
}


class RawAttach:
    """A hijacked attach connection: after the HTTP upgrade it is a plain byte pipe, carrying
    Docker's multiplexed stream (raw stdout with a TTY), demultiplexed here. ``pipe`` is the
    connection's protocol (its head already read), ``transport`` its transport."""

    def __init__(self, pipe: Pipe, transport: asyncio.Transport, tty: bool) -> None:
        self._pipe = pipe
        self._transport = transport
        self._demuxer = Demuxer(tty)
        self._tty = tty
        self._ready: collections.deque[tuple[int, bytes]] = collections.deque()
        self._first = True

    async def _fill(self) -> bool:
        """At least one piece ready; False at the end of the stream. All that arrived is taken
        at once: with a TTY one piece, copied once out of the pipe's buffer; else the frames,
        each run of one stream copied once (the demuxer's)."""
        while not self._ready:
            if not await self._pipe.wait():
                return False
            if self._tty:
                self._ready.append((STDOUT, self._pipe.take(memoryview.tobytes)))
            else:
                self._ready.extend(self._pipe.take(self._demuxer.feed))
        return True

    async def read(self) -> tuple[int, bytes] | None:
        if not await self._fill():
            return None
        stream, data = self._ready.popleft()
        if self._first:
            # docker-init's exec failure, in the user's words (hgrun/execfailure.py); its line
            # may come in pieces, so the first line is gathered whole first.
            while execfailure.incomplete(data) and (more := await self._more(stream)):
                data += more
            self._first = False
            data = execfailure.explain(data) or data
        return stream, data

    async def _more(self, stream: int) -> bytes:
        """The next piece if it is on ``stream`` too (else it is put back): b"" at the end."""
        if not await self._fill() or self._ready[0][0] != stream:
            return b""
        return self._ready.popleft()[1]

    async def write(self, data: bytes) -> None:
        try:
            if self._transport.is_closing():
                raise ConnectionResetError("closed")
            self._transport.write(data)
            await self._pipe.drain()
        except (ConnectionError, OSError) as e:
            raise EngineError(f"the container's stdin is closed ({e})") from e

    async def close_stdin(self) -> None:
        # A half-close of the hijacked connection closes the container's stdin (StdinOnce).
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if not self._transport.is_closing() and self._transport.can_write_eof():
                self._transport.write_eof()

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._transport.close()


async def answer_head(reader: asyncio.StreamReader) -> tuple[bytes, int, str]:
    """The answer's head, its status code (0 when unreadable) and its status line. Raises what
    ``readuntil`` raises when the engine closes first."""
    return head_status(await reader.readuntil(b"\r\n\r\n"))


def head_status(head: bytes) -> tuple[bytes, int, str]:
    """An answer's head, its status code (0 when unreadable) and its status line."""
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return head, code, status_line


async def send_chunked(
    writer: asyncio.StreamWriter, data: AsyncIterator[bytes | memoryview | SocketSpan]
) -> None:
    """``data`` as a chunked request body (RFC 9112 section 7.1), each piece as it comes, never
    joined: the engine's pace is the sender's. On a plain connection the pieces go straight to
    the socket (:func:`send_chunked_raw`); through TLS, through the writer."""
    raw = plain_socket(writer)
    if raw is not None:
        with raw:
            await send_chunked_raw(raw, data)
        return
    async for chunk in data:
        pieces = chunk.chunks() if isinstance(chunk, SocketSpan) else _one(chunk)
        async for piece in pieces:
            if piece:
                writer.write(b"%x\r\n" % len(piece))
                writer.write(piece)
                writer.write(b"\r\n")
                await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def plain_socket(writer: asyncio.StreamWriter) -> socket.socket | None:
    """A duplicate of the writer's socket to write to directly, once everything written
    through the writer is out; None through TLS (the socket carries records, not bytes)."""
    raw = writer.get_extra_info("socket")
    if raw is None or writer.get_extra_info("sslcontext") is not None:
        return None
    if writer.transport.get_write_buffer_size():
        return None  # the head still queued: the pieces must not overtake it
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        # Room for a whole piece in the kernel (capped by net.core.wmem_max): one send per
        # piece instead of one per 200 KB (the default), and as many fewer wake-ups.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return sock


async def send_chunked_raw(
    sock: socket.socket, data: AsyncIterator[bytes | memoryview | SocketSpan]
) -> None:
    """:func:`send_chunked` on a non-blocking socket of its own: each piece is sent whole
    before the next is asked for (so it may be a view of a buffer its source reuses), never
    copied into a write buffer; a chunk's size line, its bytes and its end in one ``sendmsg``
    as far as the socket takes them. A :class:`SocketSpan` is spliced, never read."""
    loop = asyncio.get_running_loop()
    async for chunk in data:
        if not chunk:
            continue
        if isinstance(chunk, SocketSpan):
            # Spliced, never read: the size line, the bytes, the chunk's end.
            await loop.sock_sendall(sock, b"%x\r\n" % len(chunk))
            await chunk.move_to(sock)
            await loop.sock_sendall(sock, b"\r\n")
            continue
        parts = (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        try:
            sent = sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
                continue
            await loop.sock_sendall(sock, memoryview(part)[sent:])
            sent = 0
    await loop.sock_sendall(sock, b"0\r\n\r\n")


async def _one(piece: bytes | memoryview) -> AsyncIterator[bytes | memoryview]:
    yield piece


def unchunked(head: bytes, body: bytes) -> bytes:
    """The first chunk of a chunked body (an error's JSON fits in one), else ``body``."""
    if b"chunked" not in head.lower():
        return body
    size, _, rest = body.partition(b"\r\n")
    try:
        return rest[: int(size.strip() or b"0", 16)]
    except ValueError:
        return body


def json_message(body: bytes) -> str:
    """The ``message`` of the engine's JSON error, else the body as text."""
    try:
        return str(json.loads(body).get("message", "")).strip() or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()


def container_state(raw: Mapping[str, Any]) -> ContainerState:
    """A container's inspect answer as the interface's state."""
    state = raw.get("State", {})
    return ContainerState(
        id=str(raw["Id"]),
        labels=dict(raw.get("Config", {}).get("Labels") or {}),
        status=STATUS.get(
            str(state.get("Status", "")),
            ContainerStatus.RUNNING if state.get("Running") else ContainerStatus.EXITED,
        ),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        finished_at=timestamp(state.get("FinishedAt")),
        started_at=timestamp(state.get("StartedAt")),
    )


def listed_state(summary: Mapping[str, Any]) -> ContainerState:
    """A container as a listing (``GET /containers/json``) tells it: id, labels and status."""
    return ContainerState(
        id=str(summary["Id"]),
        labels=dict(summary.get("Labels") or {}),
        status=STATUS.get(str(summary.get("State", "")), ContainerStatus.EXITED),
        exit_code=None,
        oom_killed=False,
        error="",
        partial=True,
    )


def timestamp(text: str | None) -> float | None:
    """Docker's RFC 3339 times carry nanoseconds; the zero time means "not yet"."""
    if not text or text.startswith("0001-"):
        return None
    main, _, rest = text.partition(".")
    fraction = "".join(c for c in rest if c.isdigit())[:6]
    zone = rest[len(rest.rstrip("Z+-:0123456789")) :] if rest else text[19:]
    zone = "+00:00" if zone.endswith("Z") or not zone else zone[-6:]
    try:
        stamp = datetime.datetime.fromisoformat(f"{main[:19]}{zone}")
    except ValueError:
        return None
    return stamp.timestamp() + (int(fraction.ljust(6, "0")) / 1e6 if fraction else 0.0)
