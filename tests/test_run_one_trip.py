"""``/v1/apps/{app}/runs/attach``: a run created and attached in one WebSocket handshake, and
`hgrun run` using it (one connection to the server, where it took two), on a real engine.

The server's side is driven with websockets' own client (not hgrun's), so both ends are checked
against an implementation of RFC 6455 that is not ours.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
from support.apps import deploy_busybox_app, unique
from support.cli import Cli, check
from support.server import HgrunServer
from websockets.typing import Subprotocol

from hgrun.relay import protocol, runheader


@pytest.fixture(scope="module")
def app(cli: Cli, busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return deploy_busybox_app(cli, tmp_path_factory.mktemp("one-trip"), unique("trip"))


def _url(server: HgrunServer, app: str) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/apps/{app}/runs/attach"


def _headers(server: HgrunServer, request: Any, token: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token or server.token}"}
    if request is not None:
        headers[runheader.HEADER] = (
            request if isinstance(request, str) else runheader.encode(request)
        )
    return headers


def test_one_handshake_creates_the_run_attaches_and_reports_its_exit(
    server: HgrunServer, app: str
) -> None:
    request = {
        "command": ["sh", "-c", 'cat; echo "$GREETING"; echo err >&2; exit 3'],
        "env": {"GREETING": "héllo"},  # UTF-8 travels in the header's base64url
    }
    with websockets.sync.client.connect(
        _url(server, app),
        additional_headers=_headers(server, request),
        subprotocols=[Subprotocol(protocol.V5)],
        open_timeout=30,
    ) as ws:
        assert ws.response is not None
        made = runheader.decode(ws.response.headers[runheader.HEADER])
        conn = protocol.ClientConnection(ws.subprotocol or "")
        for frame in conn.stdin(b"in\n"):
            ws.send(frame)
        closing = conn.close_stdin()
        assert closing is not None
        ws.send(closing)
        out, err, code = b"", b"", None
        while code is None:
            for event in conn.receive(ws.recv(timeout=60)):
                if isinstance(event, protocol.StdoutData):
                    out += event.data
                elif isinstance(event, protocol.StderrData):
                    err += event.data
                elif isinstance(event, protocol.Exited):
                    code = event.exit_code
    assert (out, err, code) == ("in\nhéllo\n".encode(), b"err\n", 3)
    assert made["app"] == app and made["command"][:1] == ["sh"] and made["tty"] is False
    with httpx.Client(base_url=server.url, headers=_headers(server, None)) as api:
        stored = api.get(f"/v1/runs/{made['id']}").json()
    assert stored["exit_code"] == 3 and stored["status"] == "failed"
    assert stored["trigger"]["kind"] == "user"


@pytest.mark.parametrize(
    ("request_header", "token", "status", "error"),
    [
        ({"command": ["true"]}, "hgr_garbage", 401, "unauthorized"),
        ("not base64 at all!", None, 400, "invalid_input"),
        (runheader.encode(["a", "list"]), None, 400, "invalid_input"),
        ({"command": ["true"], "detached": True}, None, 400, "invalid_input"),
        ({"command": ["true"], "uploads": True}, None, 400, "invalid_input"),
        ({"command": "true"}, None, 400, "invalid_input"),
        ({"command": ["true"], "size": "huge"}, None, 400, "invalid_input"),
        ({"command": ["true"], "env": {"1BAD": "x"}}, None, 400, "invalid_input"),
        (None, None, 400, "invalid_input"),
        ({"command": ["echo", "\ud800"]}, None, 400, "invalid_input"),
        (runheader.encode({"command": ["true"], "timeout": math.nan}), None, 400, "invalid_input"),
    ],
    ids=[
        "bad-token",
        "not-base64",
        "not-an-object",
        "detached",
        "uploads",
        "command-string",
        "unknown-size",
        "bad-env-name",
        "no-header",
        "lone-surrogate",
        "nan",
    ],  # fmt: skip
)
def test_a_refused_handshake_is_the_post_s_json_error(
    server: HgrunServer, app: str, request_header: Any, token: str | None, status: int, error: str
) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(
            _url(server, app),
            additional_headers=_headers(server, request_header, token),
            subprotocols=[Subprotocol(protocol.V5)],
            open_timeout=30,
        )
    response = refused.value.response
    assert response.status_code == status
    body = json.loads(response.body or b"")
    assert body["error"] == error and body["message"], body


def test_an_unknown_app_is_404_and_nothing_is_made(server: HgrunServer) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(
            _url(server, "no-such-app"),
            additional_headers=_headers(server, {"command": ["true"]}),
            subprotocols=[Subprotocol(protocol.V5)],
            open_timeout=30,
        )
    assert refused.value.response.status_code == 404


def test_the_openapi_document_describes_it(server: HgrunServer) -> None:
    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    operation = document["paths"]["/v1/apps/{app}/runs/attach"]["get"]
    assert operation["x-websocket"] is True and operation["security"]
    header = next(p for p in operation["parameters"] if p["name"] == runheader.HEADER)
    post = document["paths"]["/v1/apps/{app}/runs"]["post"]["requestBody"]
    assert header["schema"]["contentSchema"] == post["content"]["application/json"]["schema"]
    assert runheader.HEADER in operation["responses"]["101"]["headers"]


HOOK = """\
import os, sys
def _hook(event, args):
    if event == "socket.connect":
        with open(os.environ["CONNECTS_LOG"], "a") as f:
            f.write(repr(args[1]) + "\\n")
sys.addaudithook(_hook)
"""


def _connections(cli: Cli, tmp_path: Path, *argv: str, **env: str) -> tuple[str, list[str]]:
    """The CLI's stdout and the connections it opened (an audit hook, PEP 578, logs them)."""
    (tmp_path / "hook").mkdir(exist_ok=True)
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "connects.log"
    log.unlink(missing_ok=True)
    path = os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")])
    done = cli(*argv, cwd=tmp_path, env={"PYTHONPATH": path, "CONNECTS_LOG": str(log), **env})
    out = check(done)
    return out, log.read_text().splitlines() if log.exists() else []


def test_hgrun_run_makes_one_connection_where_it_made_two(
    cli: Cli, app: str, tmp_path: Path
) -> None:
    out, connects = _connections(cli, tmp_path, "run", "--no-tty", "-a", app, "echo", "once")
    assert out == "once\n"
    assert len(connects) == 1, connects
    # A request too long for a header (many --env) still runs: a POST, then the attach.
    big = "x" * (runheader.MAX_REQUEST + 1)
    out, connects = _connections(
        cli, tmp_path, "run", "--no-tty", "-a", app, "-e", f"BIG={big}", "sh", "-c",
        'echo "${#BIG}"',
    )  # fmt: skip
    assert out == f"{len(big)}\n"
    assert len(connects) == 2, connects


def test_hgrun_run_errors_on_the_one_trip_are_the_post_s(
    cli: Cli, app: str, tmp_path: Path
) -> None:
    done = cli("run", "--no-tty", "-a", app, "--type", "nope", cwd=tmp_path)
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "has no process type 'nope'" in err and "Traceback" not in err, err
