"""The server's asyncio adapter for the attach protocol: one WebSocket to one run.

The framing and its rules live in :mod:`.protocol`; this module only moves what the client sends to
the run and what the run prints to the client. What a run is, and how one is reached, belongs to the
server: it hands in an :class:`Attachment` (a live run's session, or the stored output of one that
ended), so nothing here imports ``hgrun.server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from hgrun.errors import HgrunError, InputError
from hgrun.models import RunStatus
from hgrun.relay import protocol

log = logging.getLogger("hgrun.relay")


@dataclasses.dataclass(frozen=True)
class Output:
    """Bytes the run wrote on ``stream`` (:data:`protocol.STDOUT` or :data:`protocol.STDERR`)."""

    stream: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class Exit:
    """The run ended: its exit code and, for anything but success, the reason and a message."""

    code: int
    reason: str | None = None
    message: str | None = None


@dataclasses.dataclass(frozen=True)
class Close:
    """Let the client go without an exit status, saying why; it may attach again (RFC 6455
    close code 1013, "try again later")."""

    reason: str


def exit_reason(status: RunStatus) -> str | None:
    """The ``metav1.Status`` reason a run's final status is reported with (None: success)."""
    if status is RunStatus.SUCCEEDED:
        return None
    return {
        RunStatus.FAILED: protocol.NON_ZERO_EXIT_CODE,
        RunStatus.TIMED_OUT: "TimedOut",
        RunStatus.CANCELED: "Canceled",
    }.get(status, "InternalError")


class Attachment(Protocol):
    """One client's hold on a run, as the server hands it to :func:`relay`."""

    run_id: int

    def events(self) -> AsyncIterator[Output | Exit | Close]:
        """The run's output in order, ending with its :class:`Exit` (or a :class:`Close`)."""
        ...

    async def stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    def detach(self) -> None:
        """The client is gone; called once, whatever ended the relay."""
        ...


Opener = Callable[[], Attachment]


async def serve(websocket: WebSocket, admit: Callable[[WebSocket], Opener]) -> None:
    """Handshake, then relay: the WebSocket attach endpoint.

    ``admit`` checks the caller (raising an :class:`HgrunError`, answered as the JSON error with its
    status instead of the upgrade) and returns what opens the attachment once the upgrade is done.
    """
    try:
        opener = admit(websocket)
    except HgrunError as e:
        await websocket.send_denial_response(JSONResponse(e.to_json(), status_code=e.http_status))
        return
    subprotocol = protocol.negotiate(websocket.scope.get("subprotocols", []))
    if subprotocol is None:
        error = InputError(
            "no supported subprotocol", f"offer one of {', '.join(protocol.SUBPROTOCOLS)}"
        )
        await websocket.send_denial_response(JSONResponse(error.to_json(), status_code=400))
        return
    await websocket.accept(subprotocol=subprotocol)
    await relay(websocket, opener(), protocol.ServerConnection(subprotocol))


async def relay(
    websocket: WebSocket, attachment: Attachment, connection: protocol.ServerConnection
) -> None:
    """Move bytes both ways until the run's exit is sent or the client leaves."""

    async def downstream() -> None:
        async for event in attachment.events():
            if isinstance(event, Output):
                frame = (
                    connection.stdout(event.data)
                    if event.stream == protocol.STDOUT
                    else connection.stderr(event.data)
                )
                await websocket.send_bytes(frame)
            elif isinstance(event, Close):
                # A close reason is at most 123 bytes (RFC 6455 section 5.5).
                reason = event.reason.encode()[:123].decode(errors="ignore")
                await websocket.close(code=1013, reason=reason)
                return
            else:
                await websocket.send_bytes(connection.exit(event.code, event.reason, event.message))
                return

    async def upstream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            try:
                events = connection.receive(data)
            except protocol.ProtocolError as e:
                log.warning("run %s: protocol error from client: %s", attachment.run_id, e.message)
                return
            for event in events:
                if isinstance(event, protocol.StdinData):
                    await attachment.stdin(event.data)
                elif isinstance(event, protocol.StdinClosed):
                    await attachment.close_stdin()
                elif isinstance(event, protocol.Resize):
                    await attachment.resize(event.width, event.height)

    down = asyncio.create_task(downstream())
    up = asyncio.create_task(upstream())
    try:
        done, _pending = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if down in done and down.exception() is None:
            with contextlib.suppress(Exception):
                await websocket.close()
    except WebSocketDisconnect:
        pass
    finally:
        for task in (down, up):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        attachment.detach()
