"""The folder check's GET on a bare socket (hgrun/cli/quickget.py): the same answer as the API
client's from a real server, None for anything but a 200 with JSON, and HTTP/1.1 bodies read
by Content-Length, chunked or to the connection's end, from a scripted peer on loopback."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.apps import deploy_busybox_app, unique
from support.cli import Cli
from support.server import https_server
from support.tls import certificate

from hgrun.cli.client import Api, Settings
from hgrun.cli.quickget import get_json, unchunk


@pytest.mark.docker
def test_the_answer_is_the_api_clients(cli: Cli, tmp_path: Path, busybox_image: str) -> None:
    name = deploy_busybox_app(cli, tmp_path / "app", unique("quick"))
    settings = Settings(cli.server.url, cli.server.token, None)
    api = Api(settings)
    try:
        expected = api.get(f"/v1/apps/{name}")
    finally:
        api.close()
    got = get_json(settings, f"/v1/apps/{name}")
    assert got == expected and got["release"]["context_hash"]
    assert get_json(settings, f"/v1/apps/{unique('none')}") is None  # 404
    assert get_json(Settings(cli.server.url, "wrong", None), f"/v1/apps/{name}") is None  # 401


@pytest.mark.docker
def test_over_tls_the_server_is_verified(
    docker_host: str, tmp_path: Path, busybox_image: str
) -> None:
    ca = certificate(tmp_path, "ca", ca=None)
    certificate(tmp_path, "server", ca=ca)
    certificate(tmp_path, "other-ca", ca=None)
    (tmp_path / "data").mkdir()
    srv = https_server(tmp_path, tmp_path / "data", docker_host).start()
    try:
        trusted = Settings(srv.url, srv.token, None, ca_cert=str(tmp_path / "ca.pem"))
        api = Api(trusted)
        try:
            api.post("/v1/apps", {"name": "tls-app"})
            expected = api.get("/v1/apps/tls-app")
        finally:
            api.close()
        assert srv.url.startswith("https://")
        assert get_json(trusted, "/v1/apps/tls-app") == expected
        other = Settings(srv.url, srv.token, None, ca_cert=str(tmp_path / "other-ca.pem"))
        assert get_json(other, "/v1/apps/tls-app") is None
    finally:
        srv.stop(signal.SIGKILL)


def test_no_server_is_none() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert get_json(Settings(f"http://127.0.0.1:{port}", None, None), "/v1/apps/x") is None


class Peer:
    """A loopback server that answers each connection with ``answer`` (in pieces), then
    closes it, or leaves it open (``close=False``); ``requests`` holds what it was sent."""

    def __init__(self, answer: list[bytes], close: bool = True) -> None:
        self.answer = answer
        self.close = close
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(4096)
            self.requests.append(received)
            for piece in self.answer:
                conn.sendall(piece)
            if not self.close:
                self.done.wait(30)

    def settings(self) -> Settings:
        return Settings(f"http://127.0.0.1:{self.port}/prefix", "tok", "ws1")

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)
        self.sock.close()


@pytest.fixture
def peer() -> Iterator[Callable[[list[bytes], bool], Peer]]:
    made: list[Peer] = []

    def make(answer: list[bytes], close: bool = True) -> Peer:
        p = Peer(answer, close)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


OK = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    ("answer", "close", "expected"),
    [
        ([OK + b"Content-Length: 11\r\n\r\n", b'{"a": [1]}\n'], False, {"a": [1]}),
        ([OK + b"Content-Length: 2\r\n\r\n{}", b"garbage after"], False, {}),
        ([OK + b"\r\n", b'{"to": ', b'"the end"}'], True, {"to": "the end"}),
        (
            [
                OK + b"Transfer-Encoding: chunked\r\n\r\n",
                b'4;ext=1\r\n{"k"\r\n',
                b"3\r\n:1}\r\n0\r\n\r\n",
            ],
            False,
            {"k": 1},
        ),
        ([b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"], False, None),
        ([OK + b"Content-Length: 9\r\n\r\nnot json!"], False, None),
        ([OK + b"Content-Length: 20\r\n\r\n{}"], True, None),  # cut short
        ([OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"], True, None),
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], True, None),
    ],
    ids=[
        "length",
        "length-then-more",
        "to-the-end",
        "chunked",
        "404",
        "not-json",
        "cut-short",
        "bad-chunk",
        "not-http",
    ],
)
def test_the_body_is_read_as_http_1_1_says(
    peer: Callable[[list[bytes], bool], Peer], answer: list[bytes], close: bool, expected: object
) -> None:
    p = peer(answer, close)
    assert get_json(p.settings(), "/v1/apps/x", timeout=10) == expected
    head = p.requests[0].decode()
    assert head.startswith("GET /prefix/v1/apps/x HTTP/1.1\r\n")
    for line in (f"Host: 127.0.0.1:{p.port}", "Authorization: Bearer tok", "X-Workspace-Id: ws1"):
        assert f"\r\n{line}\r\n" in head
    assert "\r\nConnection: close\r\n" in head


@pytest.mark.parametrize(
    ("data", "body"),
    [
        (b"0\r\n\r\n", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"A\r\n0123456789\r\n1;x=y\r\n!\r\n0\r\nTrailer: v\r\n\r\n", b"0123456789!"),
        (b"5\r\nhel", None),
        (b"5\r\nhello\r\n", None),
        (b"", None),
    ],
)
def test_unchunk(data: bytes, body: bytes | None) -> None:
    assert unchunk(data) == body


@pytest.mark.parametrize(
    "data", [b"x\r\n", b"-1\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX"]
)
def test_unchunk_refuses_what_is_not_chunked(data: bytes) -> None:
    with pytest.raises(ValueError):
        unchunk(data)
