"""Upload bodies the server reads straight off the socket (hgrun/server/rawbody.py): a body
with a Content-Length on a plain connection, sent by hand in uneven pieces, lands whole; the
answer closes the connection; ``Expect: 100-continue`` is honoured; a client that stops short of
its Content-Length fails the upload (a 400) and the run. Against a real server and dockerd."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tarfile

import pytest
from support.api import Api
from support.apps import deploy_busybox_app
from support.cli import Cli
from support.server import HgrunServer
from test_uploadtar import entry, make_tar

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def app(cli: Cli, busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return deploy_busybox_app(cli, tmp_path_factory.mktemp("upload-raw-app"))


def _head(server: HgrunServer, run: int, length: int, extra: str = "") -> bytes:
    return (
        f"PUT /v1/runs/{run}/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token}\r\nContent-Type: application/x-tar\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of the one answer on ``sock``, read to the server's close
    (which is itself checked: such a connection serves no next request)."""
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_large_body_sent_in_uneven_pieces_lands_whole(server: HgrunServer, app: str) -> None:
    content = os.urandom(3 * 1024 * 1024 + 333)
    data = make_tar(entry("uploads/big.bin", content), entry("uploads/small", b"tail\n"))
    with Api(server) as api:
        run = api.run_taking_upload(
            app, ["sh", "-c", "md5sum /tmp/uploads/big.bin; cat /tmp/uploads/small"]
        )
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            # The head with the first bytes in one send (the server's parser holds those),
            # then pieces of odd sizes: what uvicorn read ahead and what comes later both count.
            sock.sendall(_head(server, run, len(data)) + data[:1000])
            pos, step = 1000, 1
            while pos < len(data):
                step = step * 7 % 700_001 + 1
                sock.sendall(data[pos : pos + step])
                pos += step
            status, headers, body = _answer(sock)
        assert status == 200, body
        assert body["bytes"] == len(data)
        assert headers.get("connection") == "close"
        assert api.finished_run(run)["status"] == "succeeded"
        digest, tail = api.log_text(app, run).split("\n")[:2]
        assert digest.split()[0] == hashlib.md5(content).hexdigest()  # noqa: S324
        assert tail == "tail"


def test_expect_100_continue_is_answered_before_the_body(server: HgrunServer, app: str) -> None:
    data = make_tar(entry("uploads/a.txt", b"after continue\n"))
    with Api(server) as api:
        run = api.run_taking_upload(app, ["cat", "/tmp/uploads/a.txt"])
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_head(server, run, len(data), "Expect: 100-continue\r\n"))
            sock.settimeout(30)
            interim = sock.recv(4096)
            assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
            sock.sendall(data)
            status, _, body = _answer(sock)
        assert status == 200, body
        assert api.finished_run(run)["status"] == "succeeded"
        assert api.log_text(app, run) == "after continue\n"


def test_a_body_short_of_its_content_length_fails_the_run(server: HgrunServer, app: str) -> None:
    data = make_tar(entry("uploads/a.bin", os.urandom(2 * 1024 * 1024)))
    with Api(server) as api:
        run = api.run_taking_upload(app, ["true"])
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_head(server, run, len(data)) + data[: 1024 * 1024])
            sock.shutdown(socket.SHUT_WR)  # the client is done: 1 MB short
            status, _, body = _answer(sock)
        assert status == 400, body
        assert "ended before the end of the tar archive" in body["message"]
        ended = api.finished_run(run)
        assert ended["status"] == "failed"
        assert "upload" in (ended["error"] or "")


def test_a_refused_entry_past_the_first_read_is_a_400(server: HgrunServer, app: str) -> None:
    """The hostile entry comes after megabytes of good content, read off the socket, and
    megabytes follow it: the server reads them to the end and drops them, so the client,
    still sending, gets the answer (a close with unread bytes would be a reset)."""
    size = 2 * 1024 * 1024
    data = make_tar(
        entry("uploads/ok.bin", os.urandom(size)),
        entry("uploads/ln", kind=tarfile.SYMTYPE, linkname="/etc/shadow"),
        entry("uploads/after.bin", os.urandom(8 * size)),
    )
    with Api(server) as api:
        run = api.run_taking_upload(app, ["true"])
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_head(server, run, len(data)) + data)
            status, _, body = _answer(sock)
        assert status == 400, body
        assert body["error"] == "bad_upload"
        assert "uploads/ln" in body["message"]
        assert api.finished_run(run)["status"] == "failed"


def test_an_answer_before_the_body_is_read_keeps_the_connection(
    server: HgrunServer, app: str
) -> None:
    """A run that takes no upload: the 404 comes before any body is read, uvicorn skips the
    body (it is not taken over) and the connection serves the next request."""
    data = make_tar(entry("uploads/a.bin", os.urandom(3 * 1024 * 1024)))
    with Api(server) as api:
        response = api.http.post(f"/v1/apps/{app}/runs", json={"command": ["true"]})
        assert response.status_code == 201, response.text
        run = int(response.json()["id"])
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(60)
            sock.sendall(_head(server, run, len(data)) + data)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answers = b""
            while chunk := sock.recv(65536):
                answers += chunk
        assert answers.startswith(b"HTTP/1.1 404 "), answers[:300]
        assert answers.count(b"HTTP/1.1 200 ") == 1, answers[:600]
