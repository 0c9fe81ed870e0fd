"""The channel protocol, sans-I/O: bytes in, events out, no sockets."""

from __future__ import annotations

import json

import pytest

from hgrun.errors import InputError
from hgrun.relay.protocol import (
    MAX_STDIN_FRAME,
    SUBPROTOCOLS,
    V4,
    V5,
    ClientConnection,
    Exited,
    ProtocolError,
    Resize,
    ServerConnection,
    StderrData,
    StdinClosed,
    StdinData,
    StdoutData,
    negotiate,
)

BOTH = pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([V5, V4], V5),
        ([V4, V5], V5),
        ([V4], V4),
        (["v4.channel.k8s.io", "channel.k8s.io"], V4),
        ([" v5.channel.k8s.io "], V5),
        (["v3.channel.k8s.io", "base64.channel.k8s.io"], None),
        (["v4.base64.channel.k8s.io"], None),
        ([], None),
    ],
)
def test_negotiate(offered: list[str], chosen: str | None) -> None:
    assert negotiate(offered) == chosen


def test_subprotocols_prefer_v5() -> None:
    assert SUBPROTOCOLS == ("v5.channel.k8s.io", "v4.channel.k8s.io")


@pytest.mark.parametrize("make", [ServerConnection, ClientConnection])
def test_unknown_subprotocol_is_refused(make: type) -> None:
    with pytest.raises(ProtocolError):
        make("v3.channel.k8s.io")


def test_protocol_error_is_an_input_error() -> None:
    assert issubclass(ProtocolError, InputError)


# --- client -> server -------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("data", "sizes"),
    [
        (b"", []),
        (b"x", [1]),
        (b"\x00\xff" * 10, [20]),
        (bytes(MAX_STDIN_FRAME), [MAX_STDIN_FRAME]),
        (bytes(MAX_STDIN_FRAME + 1), [MAX_STDIN_FRAME, 1]),
        (bytes(3 * MAX_STDIN_FRAME + 7), [MAX_STDIN_FRAME] * 3 + [7]),
    ],
)
def test_stdin_round_trip(subprotocol: str, data: bytes, sizes: list[int]) -> None:
    client, server = ClientConnection(subprotocol), ServerConnection(subprotocol)
    frames = client.stdin(data)
    assert [len(f) - 1 for f in frames] == sizes
    assert all(f[0] == 0 for f in frames)
    events = [e for f in frames for e in server.receive(f)]
    assert all(isinstance(e, StdinData) for e in events)
    assert b"".join(e.data for e in events if isinstance(e, StdinData)) == data


def test_stdin_accepts_bytearray_and_memoryview() -> None:
    client = ClientConnection(V5)
    assert client.stdin(bytearray(b"ab")) == [b"\x00ab"]
    assert client.stdin(memoryview(b"cd")) == [b"\x00cd"]


@pytest.mark.parametrize(
    ("width", "height", "wire"),
    [
        (80, 24, b'\x04{"Width":80,"Height":24}'),
        (0, 0, b'\x04{"Width":0,"Height":0}'),
        (65535, 1, b'\x04{"Width":65535,"Height":1}'),
    ],
)
def test_resize_round_trip(width: int, height: int, wire: bytes) -> None:
    frame = ClientConnection(V5).resize(width, height)
    assert frame == wire
    assert ServerConnection(V4).receive(frame) == [Resize(width, height)]


@pytest.mark.parametrize(("width", "height"), [(-1, 24), (80, 65536), (True, 24), (80.0, 24)])
def test_resize_out_of_range_is_refused(width: int, height: int) -> None:
    with pytest.raises(ValueError):
        ClientConnection(V5).resize(width, height)


def test_v5_close_stdin() -> None:
    client, server = ClientConnection(V5), ServerConnection(V5)
    frame = client.close_stdin()
    assert frame == b"\xff\x00"
    assert server.receive(frame) == [StdinClosed()]
    assert not server.stdin_open and not client.stdin_open


def test_v4_cannot_close_stdin() -> None:
    client = ClientConnection(V4)
    assert not client.can_close_stdin
    assert client.close_stdin() is None
    assert not client.stdin_open


@BOTH
def test_client_refuses_stdin_after_close(subprotocol: str) -> None:
    client = ClientConnection(subprotocol)
    client.close_stdin()
    with pytest.raises(ProtocolError):
        client.stdin(b"late")
    with pytest.raises(ProtocolError):
        client.close_stdin()


def test_server_ignores_empty_stdin() -> None:
    assert ServerConnection(V5).receive(b"\x00") == []


@pytest.mark.parametrize(
    ("subprotocol", "message", "match"),
    [
        (V5, "\x00hello", "text frame"),
        (V4, "", "text frame"),
        (V5, b"", "empty frame"),
        (V5, b"\x01out", "stdout frame from the client"),
        (V5, b"\x02err", "stderr frame from the client"),
        (V4, b'\x03{"status":"Success"}', "status frame from the client"),
        (V5, b"\x05", "unknown channel 5"),
        (V4, b"\x7fx", "unknown channel 127"),
        (V4, b"\xff\x00", "only v5 has a close channel"),
        (V5, b"\xff", "0 payload bytes"),
        (V5, b"\xff\x00\x00", "2 payload bytes"),
        (V5, b"\xff\x01", "only stdin, not stdout"),
        (V5, b"\xff\x04", "only stdin, not resize"),
        (V5, b"\x04", "not JSON"),
        (V5, b"\x04{", "not JSON"),
        (V5, b"\x04\xff\xfe", "not JSON"),
        (V5, b"\x04[80, 24]", "not a JSON object"),
        (V5, b'\x04{"Width":80}', "Height must be"),
        (V5, b'\x04{"width":80,"height":24}', "Width must be"),
        (V5, b'\x04{"Width":"80","Height":24}', "Width must be"),
        (V5, b'\x04{"Width":80.5,"Height":24}', "Width must be"),
        (V5, b'\x04{"Width":true,"Height":24}', "Width must be"),
        (V5, b'\x04{"Width":-1,"Height":24}', "Width must be"),
        (V5, b'\x04{"Width":80,"Height":70000}', "Height must be"),
    ],
)
def test_server_refuses_bad_frames(subprotocol: str, message: bytes | str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ServerConnection(subprotocol).receive(message)


@pytest.mark.parametrize(
    ("message", "match"),
    [(b"\x00more", "after the client closed stdin"), (b"\xff\x00", "closed twice")],
)
def test_server_refuses_stdin_after_close(message: bytes, match: str) -> None:
    server = ServerConnection(V5)
    server.receive(b"\xff\x00")
    with pytest.raises(ProtocolError, match=match):
        server.receive(message)


def test_server_still_takes_resize_after_stdin_closed() -> None:
    server = ServerConnection(V5)
    server.receive(b"\xff\x00")
    assert server.receive(b'\x04{"Width":1,"Height":2}') == [Resize(1, 2)]


@pytest.mark.parametrize("message", [b"\x00late", b"\xff\x00", b'\x04{"Width":1,"Height":1}'])
def test_server_drops_client_frames_after_exit(message: bytes) -> None:
    # The client may have sent these before it saw the status: not an error.
    server = ServerConnection(V5)
    server.exit(0)
    assert server.receive(message) == []


# --- server -> client -------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("send", "event"),
    [
        ("stdout", StdoutData(b"hello\n")),
        ("stderr", StderrData(b"oops\n")),
        ("stdout", StdoutData(bytes(range(256)))),
        ("stderr", StderrData(bytes(1 << 20))),
    ],
)
def test_output_round_trip(subprotocol: str, send: str, event: StdoutData | StderrData) -> None:
    server, client = ServerConnection(subprotocol), ClientConnection(subprotocol)
    frame = getattr(server, send)(event.data)
    assert frame[0] == (1 if send == "stdout" else 2)
    assert client.receive(frame) == [event]


def test_client_ignores_empty_output() -> None:
    client = ClientConnection(V5)
    assert client.receive(b"\x01") == [] and client.receive(b"\x02") == []


@BOTH
@pytest.mark.parametrize(
    ("args", "exited"),
    [
        ((0,), Exited(0)),
        ((7,), Exited(7, "NonZeroExitCode", "command terminated with non-zero exit code 7")),
        ((255,), Exited(255, "NonZeroExitCode", "command terminated with non-zero exit code 255")),
        (
            (124, "TimedOut", "run timed out after 15m"),
            Exited(124, "TimedOut", "run timed out after 15m"),
        ),
        ((125, "InternalError", "no such image"), Exited(125, "InternalError", "no such image")),
        ((0, "Canceled", "stopped"), Exited(0, "Canceled", "stopped")),
    ],
)
def test_exit_round_trip(subprotocol: str, args: tuple, exited: Exited) -> None:
    server, client = ServerConnection(subprotocol), ClientConnection(subprotocol)
    assert client.receive(server.exit(*args)) == [exited]
    assert server.exited and client.exited


# The exact JSON the kubelet sends, which kubectl's errorDecoderV4 decodes
# (k8s.io/client-go/tools/remotecommand/v4.go): cause "reason" is metav1.CauseType.
@pytest.mark.parametrize(
    ("args", "wire"),
    [
        ((0,), {"metadata": {}, "status": "Success"}),
        (
            (7,),
            {
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code 7",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "7"}]},
            },
        ),
        (
            (124, "TimedOut", "timed out"),
            {
                "metadata": {},
                "status": "Failure",
                "message": "timed out",
                "reason": "TimedOut",
                "details": {"causes": [{"reason": "ExitCode", "message": "124"}]},
            },
        ),
    ],
)
def test_status_json_is_what_kubectl_expects(args: tuple, wire: dict) -> None:
    frame = ServerConnection(V5).exit(*args)
    assert frame[0] == 3
    assert json.loads(frame[1:]) == wire


@pytest.mark.parametrize(
    ("status", "exited"),
    [
        # Sent by a real kubelet for `sh -c 'exit 3'`.
        (
            b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit'
            b' code: error executing command [sh -c exit 3], exit code 3","reason":'
            b'"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}',
            Exited(
                3,
                "NonZeroExitCode",
                "command terminated with non-zero exit code: error executing command"
                " [sh -c exit 3], exit code 3",
            ),
        ),
        (b'{"status":"Success"}', Exited(0)),
        (
            b'{"metadata":{},"status":"Failure","message":"boom","reason":"InternalError"}',
            Exited(125, "InternalError", "boom"),
        ),
        (b'{"status":"Failure"}', Exited(125)),
        (
            b'{"status":"Failure","details":{"causes":[{"reason":"Other","message":"x"}]}}',
            Exited(125),
        ),
        (
            b'{"status":"Failure","details":{"causes":[{"reason":"Other"},'
            b'{"reason":"ExitCode","message":"9"}]}}',
            Exited(9),
        ),
        (b'{"status":"Failure","details":null}', Exited(125)),
    ],
)
def test_client_reads_status(status: bytes, exited: Exited) -> None:
    assert ClientConnection(V5).receive(b"\x03" + status) == [exited]


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ("\x01hi", "text frame"),
        (b"", "empty frame"),
        (b"\x00in", "stdin frame from the server"),
        (b'\x04{"Width":1,"Height":1}', "resize frame from the server"),
        (b"\xff\x01", "close frame from the server"),
        (b"\x09", "unknown channel 9"),
        (b"\x03", "not JSON"),
        (b"\x03nope", "not JSON"),
        (b'\x03"Success"', "not a JSON object"),
        (b'\x03{"status":"Pending"}', "Success or Failure"),
        (b"\x03{}", "Success or Failure"),
        (
            b'\x03{"status":"Failure","details":{"causes":[{"reason":"ExitCode","message":"x"}]}}',
            "bad ExitCode",
        ),
        (
            b'\x03{"status":"Failure","details":{"causes":[{"reason":"ExitCode","message":"256"}]}}',
            "bad ExitCode",
        ),
        (
            b'\x03{"status":"Failure","details":{"causes":[{"reason":"ExitCode","message":"-1"}]}}',
            "bad ExitCode",
        ),
        (b'\x03{"status":"Failure","details":{"causes":[{"reason":"ExitCode"}]}}', "bad ExitCode"),
    ],
)
def test_client_refuses_bad_frames(message: bytes | str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ClientConnection(V5).receive(message)


@pytest.mark.parametrize("message", [b"\x01late", b"\x02late", b'\x03{"status":"Success"}'])
def test_client_refuses_frames_after_exit(message: bytes) -> None:
    client = ClientConnection(V5)
    client.receive(b'\x03{"status":"Success"}')
    with pytest.raises(ProtocolError, match="after the exit status"):
        client.receive(message)


@pytest.mark.parametrize("send", ["stdout", "stderr"])
def test_server_refuses_output_after_exit(send: str) -> None:
    server = ServerConnection(V5)
    server.exit(0)
    with pytest.raises(ProtocolError, match="after the exit status"):
        getattr(server, send)(b"late")


def test_server_refuses_second_exit() -> None:
    server = ServerConnection(V5)
    server.exit(1)
    with pytest.raises(ProtocolError, match="twice"):
        server.exit(0)


@pytest.mark.parametrize("code", [-1, 256, 1000, True])
def test_exit_code_out_of_range(code: int) -> None:
    server = ServerConnection(V5)
    with pytest.raises(ValueError):
        server.exit(code)
    assert not server.exited
