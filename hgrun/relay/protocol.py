"""The Kubernetes WebSocket channel protocol, sans-I/O.

This is the framing ``kubectl exec``/``attach`` speak over WebSocket (``v4.channel.k8s.io`` and
``v5.channel.k8s.io``, see k8s.io/apimachinery/pkg/util/remotecommand/constants.go and KEP-4006).
Nothing here touches a socket: callers feed complete WebSocket messages in with ``receive`` and get
events out; methods that produce output return the bytes of the binary messages to send.

Every binary message is one channel byte followed by the payload:

====  =======  ==============================================================================
 0    stdin    client -> server, raw bytes
 1    stdout   server -> client, raw bytes
 2    stderr   server -> client, raw bytes
 3    status   server -> client, once, last: a ``metav1.Status`` JSON carrying the exit code
 4    resize   client -> server, JSON ``{"Width": W, "Height": H}``
255   close    v5 only: one payload byte naming the channel closed; ``[255, 0]`` is stdin EOF
====  =======  ==============================================================================

v4 has no close channel, so a v4 client cannot deliver EOF on stdin; prefer v5 (:func:`negotiate`
does). Text messages and the ``base64`` variants of the protocol are not supported.
"""

from __future__ import annotations

import json

from hgrun.errors import ExitStatus, InputError
from hgrun.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Iterable
    from typing import Final, TypeAlias

V5: Final = "v5.channel.k8s.io"
V4: Final = "v4.channel.k8s.io"
SUBPROTOCOLS: Final[tuple[str, ...]] = (V5, V4)
"""The subprotocols we speak, preferred first."""

STDIN: Final = 0
STDOUT: Final = 1
STDERR: Final = 2
STATUS: Final = 3
RESIZE: Final = 4
CLOSE: Final = 255

MAX_STDIN_FRAME: Final = 32 * 1024
"""Largest stdin payload a client puts in one message; bigger writes are split."""

# metav1.Status values the kubelet sends and kubectl's errorDecoderV4 reads
# (k8s.io/client-go/tools/remotecommand/v4.go): the exit code travels as a cause of type
# "ExitCode" whose message is the decimal code, parsed by kubectl as an 8-bit unsigned integer.
_SUCCESS: Final = "Success"
_FAILURE: Final = "Failure"
NON_ZERO_EXIT_CODE: Final = "NonZeroExitCode"
EXIT_CODE_CAUSE: Final = "ExitCode"

_CHANNEL_NAMES: Final = {
    STDIN: "stdin",
    STDOUT: "stdout",
    STDERR: "stderr",
    STATUS: "status",
    RESIZE: "resize",
    CLOSE: "close",
}


class ProtocolError(InputError):
    """The peer broke the channel protocol: a frame we cannot accept in this state."""

    code = "protocol_error"


class StdinData(Record):
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class StdinClosed(Record):
    """The client closed stdin (v5 only): the process should see EOF."""

    __slots__ = ()


class Resize(Record):
    __slots__ = ("width", "height")

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height


class StdoutData(Record):
    """Output on stdout; on the client's side a view of the message received when that was a
    view (:meth:`ClientConnection.receive`), else bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data


class StderrData(Record):
    """Output on stderr, as :class:`StdoutData`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data


class Exited(Record):
    """The run finished. ``reason``/``message`` are None on success.

    A failure the server sent without an exit code (say ``InternalError``) arrives as
    :attr:`~hgrun.errors.ExitStatus.CANNOT_RUN` (125).
    """

    __slots__ = ("exit_code", "reason", "message")

    def __init__(
        self, exit_code: int, reason: str | None = None, message: str | None = None
    ) -> None:
        self.exit_code = exit_code
        self.reason = reason
        self.message = message


ClientEvent: TypeAlias = StdinData | StdinClosed | Resize
"""What a server receives from a client."""
ServerEvent: TypeAlias = StdoutData | StderrData | Exited
"""What a client receives from a server."""


def negotiate(offered: Iterable[str]) -> str | None:
    """Pick the subprotocol to accept from those a client offered: v5 over v4, else None."""
    offered_set = {p.strip() for p in offered}
    for subprotocol in SUBPROTOCOLS:
        if subprotocol in offered_set:
            return subprotocol
    return None


def _check_subprotocol(subprotocol: str) -> None:
    if subprotocol not in SUBPROTOCOLS:
        raise ProtocolError(
            f"unsupported attach subprotocol {subprotocol!r}",
            hint=f"hgrun speaks {' and '.join(SUBPROTOCOLS)}.",
        )


def _split(message: bytes | str, side: str) -> tuple[int, bytes]:
    if isinstance(message, str):
        raise ProtocolError(f"text frame from the {side}: the channel protocol uses binary frames")
    if not message:
        raise ProtocolError(f"empty frame from the {side}: a frame starts with a channel byte")
    return message[0], bytes(message[1:])


def _split_view(message: bytes | memoryview | str, side: str) -> tuple[int, bytes | memoryview]:
    """:func:`_split`, the payload a view of ``message`` when that is a view (no copy)."""
    if isinstance(message, memoryview) and message:
        return message[0], message[1:]
    return _split(message.tobytes() if isinstance(message, memoryview) else message, side)


def _channel_name(channel: int) -> str:
    return _CHANNEL_NAMES.get(channel, f"unknown channel {channel}")


def _frame(channel: int, payload: bytes | bytearray | memoryview) -> bytes:
    return bytes((channel,)) + bytes(payload)


def _json_frame(channel: int, value: object) -> bytes:
    return _frame(channel, json.dumps(value, separators=(",", ":")).encode())


def _check_u8(exit_code: int) -> None:
    # kubectl parses the ExitCode cause with strconv.ParseUint(s, 10, 8).
    if isinstance(exit_code, bool) or not 0 <= exit_code <= 255:
        raise ValueError(f"exit code must be in 0..255, not {exit_code!r}")


def _check_u16(name: str, value: int) -> None:
    # remotecommand.TerminalSize is two uint16.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an integer in 0..65535, not {value!r}")


class ServerConnection:
    """The server side of one attach session.

    State: :attr:`stdin_open` (False once the client closed stdin) and :attr:`exited` (True once
    :meth:`exit` made the status frame; no output may follow it).
    """

    def __init__(self, subprotocol: str) -> None:
        _check_subprotocol(subprotocol)
        self.subprotocol = subprotocol
        self.stdin_open = True
        self.exited = False

    def receive(self, message: bytes | str) -> list[ClientEvent]:
        """Parse one message from the client.

        Returns no event for an empty stdin payload, and for anything arriving after :meth:`exit`
        (a client may have sent it before it saw the status; it is not an error). Raises
        :class:`ProtocolError` for a text frame, an unknown channel, an output channel, a bad
        resize, a close frame on v4 or for anything but stdin, and stdin after stdin was closed.
        """
        channel, payload = _split(message, "client")
        if self.exited:
            return []
        if channel == STDIN:
            if not self.stdin_open:
                raise ProtocolError("stdin data after the client closed stdin")
            return [StdinData(payload)] if payload else []
        if channel == RESIZE:
            return [_parse_resize(payload)]
        if channel == CLOSE and self.subprotocol == V5:
            if len(payload) != 1:
                raise ProtocolError(
                    f"close frame with {len(payload)} payload bytes: it names exactly one channel"
                )
            if payload[0] != STDIN:
                raise ProtocolError(
                    f"the client may close only stdin, not {_channel_name(payload[0])}"
                )
            if not self.stdin_open:
                raise ProtocolError("stdin closed twice")
            self.stdin_open = False
            return [StdinClosed()]
        if channel in (STDOUT, STDERR, STATUS):
            raise ProtocolError(f"{_channel_name(channel)} frame from the client")
        if channel == CLOSE:
            raise ProtocolError(f"close frame on {self.subprotocol}: only v5 has a close channel")
        raise ProtocolError(f"frame on unknown channel {channel} from the client")

    def stdout(self, data: bytes | bytearray | memoryview) -> bytes:
        """The message carrying ``data`` on stdout, in one frame whatever its size."""
        return self._output(STDOUT, data)

    def stderr(self, data: bytes | bytearray | memoryview) -> bytes:
        """The message carrying ``data`` on stderr, in one frame whatever its size."""
        return self._output(STDERR, data)

    def exit(self, exit_code: int, reason: str | None = None, message: str | None = None) -> bytes:
        """The status message ending the session; send it last.

        ``exit(0)`` is ``Success``. A non-zero code with no ``reason`` is kubectl's
        ``NonZeroExitCode`` failure, which kubectl turns back into the exit code. Any other
        ``reason`` (``TimedOut``, ``InternalError`` ...) is a ``Failure`` that still carries the
        code as an ``ExitCode`` cause; kubectl shows its message and exits 1, hgrun's client uses
        the code. Raises ValueError for a code outside 0..255 and :class:`ProtocolError` if the
        session already exited.
        """
        _check_u8(exit_code)
        if self.exited:
            raise ProtocolError("exit status sent twice")
        self.exited = True
        if exit_code == 0 and reason is None:
            return _json_frame(STATUS, {"metadata": {}, "status": _SUCCESS})
        if reason is None:
            reason = NON_ZERO_EXIT_CODE
        if message is None:
            message = f"command terminated with non-zero exit code {exit_code}"
        status = {
            "metadata": {},
            "status": _FAILURE,
            "message": message,
            "reason": reason,
            "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(exit_code)}]},
        }
        return _json_frame(STATUS, status)

    def _output(self, channel: int, data: bytes | bytearray | memoryview) -> bytes:
        if self.exited:
            raise ProtocolError(f"{_channel_name(channel)} after the exit status")
        return _frame(channel, data)


class ClientConnection:
    """The client side of one attach session.

    State: :attr:`stdin_open` (False after :meth:`close_stdin`) and :attr:`exited` (the
    :class:`Exited` event arrived; nothing may follow it).
    """

    def __init__(self, subprotocol: str) -> None:
        _check_subprotocol(subprotocol)
        self.subprotocol = subprotocol
        self.stdin_open = True
        self.exited = False

    @property
    def can_close_stdin(self) -> bool:
        """Whether this subprotocol can deliver EOF on stdin (v5 only)."""
        return self.subprotocol == V5

    def stdin(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The messages carrying ``data`` on stdin: frames of at most :data:`MAX_STDIN_FRAME`
        payload bytes, in order; none for empty data. Raises :class:`ProtocolError` after
        :meth:`close_stdin`."""
        if not self.stdin_open:
            raise ProtocolError("stdin data after stdin was closed")
        view = memoryview(data).cast("B")
        return [
            _frame(STDIN, view[i : i + MAX_STDIN_FRAME])
            for i in range(0, len(view), MAX_STDIN_FRAME)
        ]

    def close_stdin(self) -> bytes | None:
        """The message closing stdin (EOF for the process), or None on v4.

        v4 has no close channel, so there the process never sees EOF: it keeps reading stdin
        until it ends by itself. Either way no stdin may be sent afterwards. Closing twice raises
        :class:`ProtocolError`.
        """
        if not self.stdin_open:
            raise ProtocolError("stdin closed twice")
        self.stdin_open = False
        if not self.can_close_stdin:
            return None
        return _frame(CLOSE, bytes((STDIN,)))

    def resize(self, width: int, height: int) -> bytes:
        """The message telling the server the terminal is now ``width`` x ``height`` cells."""
        _check_u16("width", width)
        _check_u16("height", height)
        return _json_frame(RESIZE, {"Width": width, "Height": height})

    def receive(self, message: bytes | memoryview | str) -> list[ServerEvent]:
        """Parse one message from the server.

        Returns no event for an empty output payload. Raises :class:`ProtocolError` for a text
        frame, a client channel, an unknown channel, a status that is not a ``metav1.Status``,
        and any frame after the status. The output of a message given as a view is a view of it
        (a large output is not copied on its way to the terminal).
        """
        channel, payload = _split_view(message, "server")
        if self.exited:
            raise ProtocolError(f"{_channel_name(channel)} frame after the exit status")
        if channel == STDOUT:
            return [StdoutData(payload)] if payload else []
        if channel == STDERR:
            return [StderrData(payload)] if payload else []
        if channel == STATUS:
            event = _parse_status(bytes(payload))
            self.exited = True
            return [event]
        if channel in _CHANNEL_NAMES:
            raise ProtocolError(f"{_channel_name(channel)} frame from the server")
        raise ProtocolError(f"frame on unknown channel {channel} from the server")


def _parse_json_object(payload: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"{what} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


def _parse_resize(payload: bytes) -> Resize:
    value = _parse_json_object(payload, "resize frame")
    return Resize(_u16_field(value, "Width"), _u16_field(value, "Height"))


def _u16_field(value: dict[str, object], name: str) -> int:
    v = value.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
        raise ProtocolError(f"resize frame: {name} must be an integer in 0..65535, not {v!r}")
    return v


def _parse_status(payload: bytes) -> Exited:
    status = _parse_json_object(payload, "status frame")
    state = status.get("status")
    if state == _SUCCESS:
        return Exited(0)
    if state != _FAILURE:
        raise ProtocolError(f"status frame: status must be Success or Failure, not {state!r}")
    reason = status.get("reason")
    message = status.get("message")
    return Exited(
        _exit_code_cause(status.get("details")),
        reason if isinstance(reason, str) else None,
        message if isinstance(message, str) else None,
    )


def _exit_code_cause(details: object) -> int:
    """The code of the first ``ExitCode`` cause, or 125 (hgrun could not run it)."""
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict) and cause.get("reason") == EXIT_CODE_CAUSE:
            text = cause.get("message")
            if isinstance(text, str) and text.isascii() and text.isdigit() and int(text) <= 255:
                return int(text)
            raise ProtocolError(f"status frame: bad ExitCode cause {text!r}")
    return int(ExitStatus.CANNOT_RUN)
