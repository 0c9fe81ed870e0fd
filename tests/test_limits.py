"""Limits checked before authentication, and bad values that must be a JSON 4xx naming the field.

Real sockets over loopback against a real ``hgrun server`` (issue 8, item 1): an oversized or
endless request head, too many connections, a head that never ends; then malformed numbers,
deep JSON, NaN and out-of-range parameters on the API of a deployed app.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from support.api import Api
from support.apps import deploy_script_app, unique
from support.cli import Cli
from support.server import HgrunServer
from support.waits import wait_for

from hgrun.errors import ManifestError
from hgrun.manifest import parse_manifest
from hgrun.server.connections import HEAD_TIMEOUT, MAX_HEAD

pytestmark = pytest.mark.docker

MB = 1024 * 1024


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _connect(server: HgrunServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    return sock


def _response(sock: socket.socket) -> bytes:
    """What the server sent until it closed the connection (or a reset ended it)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.fixture(scope="module")
def guarded(hgrun_server) -> HgrunServer:
    """A server of its own (so its memory is ours to measure), with a cap of 3 connections."""
    return hgrun_server("--max-connections", "3")


def test_a_100_mb_header_is_refused_without_being_buffered(guarded: HgrunServer) -> None:
    assert guarded.process is not None
    before = _peak_rss(guarded.process.pid)
    sock = _connect(guarded)
    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, piece = 0, b"a" * MB
    try:
        while sent < 100 * MB:
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _response(sock)
    sock.close()
    # The server closed the connection long before 100 MB (socket buffers take a few MB)...
    assert sent < 32 * MB, sent
    # ...answering 431 when the client could still read it (a reset may swallow the answer).
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    # ...and its memory did not grow by anything like the header.
    grown = _peak_rss(guarded.process.pid) - before
    assert grown < 16 * MB, grown
    assert httpx.get(f"{guarded.url}/v1/health").status_code == 200


@pytest.mark.parametrize("size", [MAX_HEAD + 1024, 2 * MAX_HEAD])
def test_a_whole_head_over_the_cap_gets_431(guarded: HgrunServer, size: int) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
    answer = _response(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(body)["error"] == "header_too_large"


def test_a_head_under_the_cap_with_its_body_passes(guarded: HgrunServer) -> None:
    """A head near the cap and a body in the same read are not mistaken for a long head."""
    response = httpx.post(
        f"{guarded.url}/v1/apps",
        headers={"X-Pad": "a" * (MAX_HEAD - 2048), "Authorization": f"Bearer {guarded.token}"},
        content=json.dumps({"name": unique("pad"), "pad": "b" * 200_000}),
    )
    assert response.status_code == 201, response.text


def test_over_the_connection_cap_requests_get_503_with_retry_after(guarded: HgrunServer) -> None:
    held = [_connect(guarded) for _ in range(3)]
    try:
        response = httpx.get(f"{guarded.url}/v1/health")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "unavailable"
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: httpx.get(f"{guarded.url}/v1/health").status_code == 200,
        timeout=10,
        what="the server to take connections again",
    )


_UPGRADE = (
    b"GET /v1/runs/1/attach HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
)


def _upgrade(server: HgrunServer) -> bytes:
    """The head of the answer to a WebSocket upgrade (no token: the app refuses it, if reached)."""
    sock = _connect(server)
    try:
        sock.sendall(_UPGRADE)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        if answer.startswith(b"HTTP/1.1 503 "):
            answer += _response(sock)  # the body, then the server closes the connection
        return answer
    finally:
        sock.close()


def test_an_upgrade_over_the_connection_cap_gets_503_and_a_close(guarded: HgrunServer) -> None:
    """uvicorn checks its cap for plain requests only: without hgrun's guard the attach below
    reached the app over the cap."""
    held = [_connect(guarded) for _ in range(3)]
    try:
        answer = _upgrade(guarded)  # returns only once the server closed the connection
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer[:300]
        assert b"\r\nretry-after: 1\r\n" in head.lower() + b"\r\n"
        assert json.loads(body)["error"] == "unavailable"
    finally:
        for sock in held:
            sock.close()
    # Under the cap the same upgrade reaches the app again (which refuses it: no token).
    wait_for(
        lambda: not _upgrade(guarded).startswith(b"HTTP/1.1 503 "),
        timeout=10,
        what="the server to take upgrades again",
    )
    answer = _upgrade(guarded)
    assert answer.startswith((b"HTTP/1.1 101 ", b"HTTP/1.1 401 ", b"HTTP/1.1 403 ")), answer[:300]


def test_a_head_never_finished_is_closed_with_408(guarded: HgrunServer) -> None:
    sock = _connect(guarded)
    start = time.monotonic()
    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert HEAD_TIMEOUT - 1 < time.monotonic() - start < HEAD_TIMEOUT + 10


def test_an_attached_run_outlives_the_head_timeout(cli: Cli, app: str) -> None:
    """The head timer stops at a WebSocket upgrade: the attach is not a slow request head."""
    done = cli("run", "--app", app, "sh", "-c", f"sleep {HEAD_TIMEOUT + 3:g}; echo done", input=b"")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"done"


# -- malformed values: a JSON 4xx naming the field -------------------------------------------


@pytest.fixture(scope="module")
def app(cli: Cli, busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return deploy_script_app(
        cli,
        tmp_path_factory.mktemp("limits-app"),
        unique("limits"),
        "  echo:\n    command: cat /dev/null\n",
    )


def _error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["message"]
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    "body, words",
    [
        ({"command": ["true"], "timeout": 10**400}, ["timeout"]),
        ({"command": ["true"], "timeout": "9" * 400}, ["timeout"]),
        ({"command": ["true"], "timeout": "1e999"}, ["timeout"]),
        ({"command": ["true"], "timeout": -1}, ["timeout"]),
        ({"command": ["true"], "detached": "yes"}, ["detached"]),
        ({"command": "true"}, ["command"]),
        ({"command": ["true"], "env": {"A": 1}}, ["A"]),
        ({"command": ["true"], "size": ["x"]}, ["size"]),
    ],
)
def test_bad_run_fields_are_400_naming_the_field(
    server: HgrunServer, app: str, body: dict, words: list[str]
) -> None:
    with Api(server) as api:
        _error(api.http.post(f"/v1/apps/{app}/runs", content=json.dumps(body)), 400, *words)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"[" * 200_000, ["nests too deep"]),
        (b'{"command": ["true"], "timeout": NaN}', ["NaN"]),
        (b'{"command": ["true"], "timeout": Infinity}', ["Infinity"]),
        (b'{"command": ["true"], "timeout": -Infinity}', ["Infinity"]),
        (b"\xff\xfe", ["UTF-8"]),
        (b'{"command": ["echo", "\\ud800"]}', ["surrogate", "\\ud800"]),
        (b'{"command": ["echo"], "env": {"A\\udfff": "1"}}', ["surrogate", "\\udfff"]),
    ],
    ids=["deep", "nan", "inf", "-inf", "not-utf8", "lone-surrogate", "lone-surrogate-key"],
)
def test_bad_json_bodies_are_400(server: HgrunServer, app: str, content: bytes, words) -> None:
    with Api(server) as api:

        def ids() -> list[int]:
            return [run["id"] for run in api.http.get(f"/v1/apps/{app}/runs").json()]

        before = ids()
        _error(api.http.post(f"/v1/apps/{app}/runs", content=content), 400, *words)
        assert ids() == before  # no run made


def test_a_surrogate_pair_is_a_character_not_an_error(server: HgrunServer, app: str) -> None:
    """JSON's escaped pair for one character beyond U+FFFF is valid, and echoed as it."""
    with Api(server) as api:
        body = b'{"command": ["echo", "\\ud83d\\ude00"], "detached": true}'
        made = api.http.post(f"/v1/apps/{app}/runs", content=body)
        assert made.status_code == 201, made.text
        assert made.json()["command"] == ["echo", "\U0001f600"]


def test_trigger_input_refuses_nan_and_deep_nesting(server: HgrunServer, app: str) -> None:
    with Api(server) as api:
        script = api.script_id(app, "echo")
        for content in (b'{"x": NaN}', b"[1, Infinity]", b"[" * 60_000, b'"\\udc80"'):
            _error(api.trigger(script, content), 400, "the run input")
        for params in ({"detached": "maybe"}, {"tty": "2"}, {"via": "user"}):
            _error(api.trigger(script, b"", **params), 400, next(iter(params)))


@pytest.mark.parametrize(
    "path, params, status, words",
    [
        ("/v1/apps/{app}/runs", {"limit": "²"}, 400, ["limit"]),
        ("/v1/apps/{app}/runs", {"limit": "١٢"}, 400, ["limit"]),
        ("/v1/apps/{app}/runs", {"limit": "10001"}, 400, ["limit", "10000"]),
        ("/v1/apps/{app}/runs", {"limit": "9" * 30}, 400, ["limit"]),
        ("/v1/apps/{app}/runs", {"active": "banana"}, 400, ["active"]),
        ("/v1/apps/{app}/logs", {"tail": "10001"}, 400, ["tail"]),
        ("/v1/apps/{app}/logs", {"limit": "99999999999"}, 400, ["limit"]),
        ("/v1/apps/{app}/logs", {"after": "-5"}, 400, ["after"]),
        ("/v1/apps/{app}/logs", {"run": "9" * 25}, 400, ["run"]),
        ("/v1/apps/{app}/logs", {"follow": "yes"}, 400, ["follow"]),
        ("/v1/runs/1", {"stderr_tail": "1001"}, 400, ["stderr_tail"]),
        ("/v1/runs/99999999999999999999", {}, 404, ["run"]),
        ("/v1/scripts/99999999999999999999/runs", {}, 404, ["script"]),
        ("/v1/audit", {"limit": "10001"}, 400, ["limit"]),
        ("/v1/audit", {"run": "1e3"}, 400, ["run"]),
    ],
)
def test_bad_query_values_are_4xx_naming_the_parameter(
    server: HgrunServer, app: str, path: str, params: dict, status: int, words: list[str]
) -> None:
    with Api(server) as api:
        if path == "/v1/runs/1":
            run = api.http.post(
                f"/v1/apps/{app}/runs", json={"command": ["true"], "detached": True}
            )
            path = f"/v1/runs/{run.json()['id']}"
        _error(api.http.get(path.format(app=app), params=params), status, *words)


def test_every_route_has_its_parameters_and_response_schema_in_the_document() -> None:
    from hgrun.server.api import ROUTES
    from hgrun.server.api.openapi import _operations, document

    described = _operations()
    missing = [(m, p) for m, p, *_ in ROUTES if (m, p.replace(":int", "")) not in described]
    assert not missing, f"describe these routes in hgrun/server/api/openapi.py: {missing}"
    for path, methods in document(ROUTES)["paths"].items():
        for method, operation in methods.items():
            ok = [s for s in operation["responses"] if s.startswith(("1", "2"))]
            assert ok, (method, path)
            for status in ok:
                content = operation["responses"][status].get("content", {})
                assert status == "101" or content, (method, path, status)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, "- " * 5000 + "x", "name: x\nscripts: " + "{a: " * 3000, "a: &a [*a]"],
    ids=["flow", "block", "mapping", "alias"],
)
def test_deep_yaml_is_a_manifest_error(text: str) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(text)


def test_an_unknown_query_parameter_is_400_naming_it(server: HgrunServer, app: str) -> None:
    with Api(server) as api:
        response = api.http.get(f"/v1/apps/{app}/runs", params={"limt": "5"})
        _error(response, 400, "limt")
        assert "limit" in response.json()["hint"]
        response = api.http.request("OPTIONS", "/v1/apps")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, POST, HEAD"
        assert response.json()["error"] == "method_not_allowed"
        assert api.http.get("/v1/runs/abc").json()["error"] == "not_found"
