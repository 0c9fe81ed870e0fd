"""The sans-I/O WebSocket client core (hgrun.relay.websocket): RFC 6455 without sockets.

The round trips against a real server (websockets' own) are in tests/test_attach_client.py.
"""

from __future__ import annotations

import os
import struct

import pytest

from hgrun.relay import websocket as ws


def _server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A frame as a server sends it: unmasked."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def _unmask(data: bytes) -> tuple[int, bytes]:
    """Opcode and payload of one client frame (checks the mask bit and the length)."""
    first, second = data[0], data[1]
    assert first & 0x80 and second & 0x80
    n, at = second & 0x7F, 2
    if n == 126:
        (n,) = struct.unpack_from("!H", data, 2)
        at = 4
    elif n == 127:
        (n,) = struct.unpack_from("!Q", data, 2)
        at = 10
    mask, body = data[at : at + 4], data[at + 4 :]
    assert len(body) == n
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def test_accept_is_the_rfc_example() -> None:
    # RFC 6455 section 1.3's worked example.
    assert ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_003])
def test_client_frames_are_masked_and_sized(size: int) -> None:
    payload = os.urandom(size)
    assert _unmask(ws.frame(ws.BINARY, payload)) == (ws.BINARY, payload)


def test_the_mask_is_the_one_given() -> None:
    assert ws.frame(ws.BINARY, b"\x00\x00\x00\x00\x00", mask=b"\x01\x02\x03\x04") == (
        b"\x82\x85\x01\x02\x03\x04\x01\x02\x03\x04\x01"
    )


@pytest.mark.parametrize(
    ("frames", "events"),
    [
        ([_server_frame(ws.BINARY, b"\x01hi")], [ws.Message(True, b"\x01hi")]),
        ([_server_frame(ws.TEXT, b"t")], [ws.Message(False, b"t")]),
        (
            [
                _server_frame(ws.BINARY, b"ab", fin=False),
                _server_frame(ws.PING, b"p"),  # control frames may come between fragments
                _server_frame(ws.CONTINUATION, b"cd", fin=False),
                _server_frame(ws.CONTINUATION, b"e"),
            ],
            [ws.Ping(b"p"), ws.Message(True, b"abcde")],
        ),
        ([_server_frame(ws.PONG, b"x")], []),
        (
            [_server_frame(ws.CLOSE, struct.pack("!H", 1013) + b"behind")],
            [ws.Closed(1013, "behind")],
        ),
        ([_server_frame(ws.CLOSE, b"")], [ws.Closed(1005, "")]),
        (
            [_server_frame(ws.CLOSE, b""), _server_frame(ws.BINARY, b"after")],
            [ws.Closed(1005, "")],
        ),
        ([_server_frame(ws.BINARY, b"x" * 70_000)], [ws.Message(True, b"x" * 70_000)]),
    ],
    ids=["binary", "text", "fragments", "pong", "close", "close-no-code", "after-close", "big"],
)
def test_reader_events_whole_and_byte_by_byte(frames: list[bytes], events: list[ws.Event]) -> None:
    data = b"".join(frames)
    assert ws.FrameReader(1 << 20).feed(data) == events
    reader = ws.FrameReader(1 << 20)
    dribbled = [e for i in range(len(data)) for e in reader.feed(data[i : i + 1])]
    assert dribbled == events


def test_reader_hands_out_views_of_bytes_and_copies_of_a_reused_buffer() -> None:
    # Many messages in one feed, the last one cut short: the whole ones come out in order; a
    # message lying in immutable bytes is a view of them (no copy) ...
    frames = [_server_frame(ws.BINARY, bytes([i]) * (100 + i)) for i in range(50)]
    data = b"".join(frames)
    cut = len(data) - 7
    reader = ws.FrameReader(1 << 20)
    events = reader.feed(data[:cut])
    assert [e.data for e in events] == [bytes([i]) * (100 + i) for i in range(49)]  # type: ignore[union-attr]
    assert all(isinstance(e.data, memoryview) for e in events)  # type: ignore[union-attr]
    # ... while a buffer the caller reuses is copied out of, the incomplete frame's bytes too.
    buffer = bytearray(data[cut:])
    assert reader.feed(buffer) == [ws.Message(True, bytes([49]) * 149)]
    buffer[:] = b"\xff" * len(buffer)
    head = _server_frame(ws.BINARY, b"xyz")
    buffer = bytearray(head[:3])
    assert reader.feed(buffer) == []
    buffer[:] = b"\x00\x00\x00"
    assert reader.feed(head[3:]) == [ws.Message(True, b"xyz")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x82\x81\x00\x00\x00\x00x", "masked a frame"),
        (b"\xc2\x00", "reserved bits"),
        (_server_frame(ws.CONTINUATION, b"x"), "never began"),
        (_server_frame(ws.BINARY, b"a", fin=False) + _server_frame(ws.BINARY, b"b"), "inside"),
        (_server_frame(ws.PING, b"p", fin=False), "control frame"),
        (_server_frame(0x3, b""), "unknown opcode 3"),
        (_server_frame(ws.BINARY, b"x" * 11), "over 10 bytes"),
        (_server_frame(ws.CLOSE, b"\x03"), "one byte"),
    ],
)
def test_reader_refuses_what_rfc_6455_forbids(data: bytes, message: str) -> None:
    with pytest.raises(ws.WebSocketError, match=message):
        ws.FrameReader(10).feed(data)


def _answer(*headers: str, status: str = "101 Switching Protocols") -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = (
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    "Sec-WebSocket-Protocol: v5.channel.k8s.io",
)


def test_handshake_request_and_a_good_answer() -> None:
    request = ws.handshake_request(
        "h:8", "/v1/runs/1/attach?offset=3", KEY, ["v5.channel.k8s.io"], {"X-A": "b"}
    )
    assert request.startswith(b"GET /v1/runs/1/attach?offset=3 HTTP/1.1\r\nHost: h:8\r\n")
    assert b"Sec-WebSocket-Key: " + KEY.encode() in request and request.endswith(b"X-A: b\r\n\r\n")
    data = _answer(*GOOD) + b"\x82\x01\x01"
    assert ws.parse_answer(data[:20]) is None  # not all of the head yet
    answer = ws.parse_answer(data)
    assert answer is not None and answer.status == 101 and answer.rest == b"\x82\x01\x01"
    assert ws.check_handshake(answer, KEY, ["v5.channel.k8s.io"]) == "v5.channel.k8s.io"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (GOOD[1:], "does not upgrade"),
        ((GOOD[0], *GOOD[2:]), "Connection: Upgrade"),
        ((*GOOD[:2], "Sec-WebSocket-Accept: nope", GOOD[3]), "does not match"),
        ((*GOOD, "Sec-WebSocket-Extensions: permessage-deflate"), "extension"),
        ((*GOOD[:3], "Sec-WebSocket-Protocol: v9"), "not offered"),
    ],
)
def test_bad_answers(headers: tuple[str, ...], message: str) -> None:
    answer = ws.parse_answer(_answer(*headers))
    assert answer is not None
    with pytest.raises(ws.WebSocketError, match=message):
        ws.check_handshake(answer, KEY, ["v5.channel.k8s.io"])


def test_a_refusal_keeps_its_status_and_body() -> None:
    answer = ws.parse_answer(_answer("Content-Length: 2", status="403 Forbidden") + b"{}")
    assert answer is not None and (answer.status, answer.rest) == (403, b"{}")
    assert answer.headers["content-length"] == "2"


@pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
def test_not_http(data: bytes) -> None:
    with pytest.raises(ws.WebSocketError, match="did not answer in HTTP"):
        ws.parse_answer(data)
