"""The REST API over loopback: auth on every route, JSON errors for bad input, the OpenAPI
document, tokens stored only as hashes, and the attach WebSocket's auth."""

from __future__ import annotations

import json
import re
import secrets
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
from support.api import Api
from support.apps import deploy_busybox_app, unique
from support.cli import Cli, check
from support.server import HgrunServer
from websockets.typing import Subprotocol

from hgrun.models import Scope
from hgrun.store import Store

HASH = "0" * 64
SUBPROTOCOL = Subprotocol("v5.channel.k8s.io")

# One request per route family; {app} and {run} are filled in per test.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps"),
    ("GET", "/v1/apps/{app}"),
    ("GET", "/v1/apps/{app}/config"),
    ("PATCH", "/v1/apps/{app}/config"),
    ("GET", f"/v1/apps/{{app}}/builds/{HASH}"),
    ("POST", "/v1/apps/{app}/builds"),
    ("GET", "/v1/apps/{app}/releases"),
    ("POST", "/v1/apps/{app}/releases"),
    ("GET", "/v1/apps/{app}/runs"),
    ("POST", "/v1/apps/{app}/runs"),
    ("GET", "/v1/apps/{app}/logs"),
    ("GET", "/v1/runs/{run}"),
    ("POST", "/v1/runs/{run}/stop"),
    ("PUT", "/v1/runs/{run}/files"),
    ("GET", "/v1/apps/{app}/scripts"),
    ("POST", "/v1/scripts/{run}/runs"),
    ("GET", "/v1/scripts/{run}/runs"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{app}"),
    ("GET", "/v1/audit"),
]


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is a JSON error with ``status`` and the three error fields."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert {"error", "message", "hint"} <= set(body), body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["hint"] is None or isinstance(body["hint"], str), body
    return body


@pytest.fixture
def anon(server: HgrunServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def admin(server: HgrunServer) -> Iterator[httpx.Client]:
    with Api(server) as api:
        yield api.http


@pytest.fixture(scope="module")
def deployed(cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> str:
    """A busybox app with a release (so that run bodies reach validation)."""
    root = tmp_path_factory.mktemp("api-app")
    return deploy_busybox_app(cli, root, unique("api"))


def add_token(server: HgrunServer, scope: Scope) -> str:
    """A new token of ``scope`` in the default workspace, made with the tokens API."""
    with Api(server) as api:
        response = api.http.post("/v1/tokens", json={"name": unique(scope.value), "scope": scope})
    assert response.status_code == 201, response.text
    secret: str = response.json()["token"]
    return secret


def add_foreign_token(server: HgrunServer) -> str:
    """An admin token of a new workspace. The API makes tokens only in the caller's own
    workspace, so this one goes straight into the server's store."""
    secret = "hgr_" + secrets.token_urlsafe(32)
    workspace = unique("ws")
    store = Store(server.data_dir / "hgrun.db")
    try:
        store.ensure_workspace(workspace)
        store.add_token(workspace, "admin", secret, Scope.ADMIN)
    finally:
        store.close()
    return secret


def ws_url(server: HgrunServer, run: int) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/runs/{run}/attach"


def ws_refusal(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status with which the server refuses a WebSocket handshake."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        with websockets.sync.client.connect(
            url, additional_headers=headers or {}, subprotocols=[SUBPROTOCOL], open_timeout=10
        ):
            pass
    return int(refused.value.response.status_code)


# -- 401 without a valid token ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer garbage", "Bearer", "Basic YWRtaW46YWRtaW4=", "hgr_notbearer"],
    ids=["none", "garbage", "empty", "basic", "no-scheme"],
)
def test_every_route_refuses_a_request_without_a_valid_token(
    anon: httpx.Client, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    url = path.format(app="someapp", run=1)
    response = anon.request(method, url, headers=headers, content=b"{}")
    body = assert_error(response, 401)
    assert body["error"] == "unauthorized"


def test_every_secured_route_in_the_openapi_document_needs_a_token(anon: httpx.Client) -> None:
    document = anon.get("/v1/openapi.json").json()
    checked = 0
    for path, methods in document["paths"].items():
        if path.endswith("/attach"):
            continue  # a WebSocket: tested below
        for method, operation in methods.items():
            if not operation.get("security"):
                continue
            url = re.sub(r"\{\w+_id\}", "1", path).replace("{hash}", HASH)
            url = re.sub(r"\{\w+\}", "someapp", url)
            response = anon.request(method.upper(), url, content=b"{}")
            assert_error(response, 401)
            checked += 1
    assert checked >= len(ROUTES)


def test_health_needs_no_token(anon: httpx.Client) -> None:
    response = anon.get("/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_attach_websocket_refuses_a_handshake_without_a_token(server: HgrunServer) -> None:
    assert ws_refusal(ws_url(server, 1)) == 401
    assert ws_refusal(ws_url(server, 1), {"Authorization": "Bearer garbage"}) == 401


def test_attach_websocket_for_an_unknown_run_is_404(server: HgrunServer) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    assert ws_refusal(ws_url(server, 999_999), headers) == 404


# -- scopes and workspaces -------------------------------------------------------------------


def test_workspace_header_naming_another_workspace_is_403(admin: httpx.Client) -> None:
    for method, path in [("GET", "/v1/apps"), ("POST", "/v1/apps"), ("GET", "/v1/runs/1")]:
        response = admin.request(
            method, path, headers={"X-Workspace-Id": "someone-else"}, json={"name": "x"}
        )
        body = assert_error(response, 403)
        assert body["error"] == "forbidden"


def test_workspace_header_naming_its_own_workspace_is_fine(admin: httpx.Client) -> None:
    response = admin.get("/v1/apps", headers={"X-Workspace-Id": "default"})
    assert response.status_code == 200, response.text


def test_a_token_of_another_workspace_sees_nothing_of_this_one(
    server: HgrunServer, admin: httpx.Client, deployed: str
) -> None:
    other = add_foreign_token(server)
    with Api(server, other) as api:
        listed = api.http.get("/v1/apps")
        assert listed.status_code == 200, listed.text
        assert deployed not in [a["name"] for a in listed.json()]
        assert_error(api.http.get(f"/v1/apps/{deployed}"), 404)
        assert_error(api.http.get(f"/v1/apps/{deployed}/releases"), 404)
        assert_error(api.http.post(f"/v1/apps/{deployed}/runs", json={"command": ["true"]}), 404)
        body = assert_error(api.http.get("/v1/apps", headers={"X-Workspace-Id": "default"}), 403)
        assert body["error"] == "forbidden"


def test_run_scoped_token_may_read_and_run_but_not_deploy(
    server: HgrunServer, deployed: str
) -> None:
    token = add_token(server, Scope.RUN)
    with Api(server, token) as api:
        assert api.http.get("/v1/apps").status_code == 200
        assert api.http.get(f"/v1/apps/{deployed}/runs").status_code == 200
        assert_error(api.http.post("/v1/apps", json={"name": unique("nope")}), 403)
        assert_error(api.http.patch(f"/v1/apps/{deployed}/config", json={"A": "1"}), 403)
        assert_error(api.http.get(f"/v1/apps/{deployed}/config"), 403)
        assert_error(api.http.post(f"/v1/apps/{deployed}/releases", json={}), 403)
        assert_error(api.http.get("/v1/tokens"), 403)
        assert_error(api.http.post("/v1/tokens", json={"name": "x", "scope": "admin"}), 403)
        # Allowed to run: a bad body gets past auth and fails validation instead.
        assert_error(api.http.post(f"/v1/apps/{deployed}/runs", json={"command": []}), 400)


def test_trigger_scoped_token_may_not_read_apps_or_start_runs(
    server: HgrunServer, deployed: str
) -> None:
    token = add_token(server, Scope.TRIGGER)
    with Api(server, token) as api:
        assert_error(api.http.get("/v1/apps"), 403)
        assert_error(api.http.get(f"/v1/apps/{deployed}/runs"), 403)
        assert_error(api.http.post(f"/v1/apps/{deployed}/runs", json={"command": ["true"]}), 403)
        assert_error(api.http.post("/v1/apps", json={"name": unique("nope")}), 403)
    # A one-off run of this test's own (run 1 may not exist, or be a script's, by test order).
    with Api(server) as admin:
        made = admin.http.post(
            f"/v1/apps/{deployed}/runs", json={"command": ["true"], "detached": True}
        )
        assert made.status_code == 201, made.text
    number = made.json()["id"]
    assert ws_refusal(ws_url(server, number), {"Authorization": f"Bearer {token}"}) == 403


# -- 404s ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/apps/no-such-app"),
        ("GET", "/v1/apps/no-such-app/releases"),
        ("GET", "/v1/apps/no-such-app/runs"),
        ("GET", "/v1/apps/no-such-app/logs"),
        ("GET", "/v1/apps/no-such-app/config"),
        ("POST", "/v1/apps/no-such-app/runs"),
        ("GET", "/v1/runs/999999"),
        ("POST", "/v1/runs/999999/stop"),
        ("PUT", "/v1/runs/999999/files"),
    ],
)
def test_unknown_app_or_run_is_404(admin: httpx.Client, method: str, path: str) -> None:
    body = {"command": ["true"]} if method == "POST" else None
    response = admin.request(method, path, json=body)
    assert assert_error(response, 404)["error"] == "not_found"


def test_logs_of_an_unknown_run_is_404(admin: httpx.Client, deployed: str) -> None:
    assert_error(admin.get(f"/v1/apps/{deployed}/logs", params={"run": 999_999}), 404)


# -- bad input is a JSON 4xx, never a 500 ----------------------------------------------------


BAD_BODIES: list[tuple[str, bytes]] = [
    ("malformed", b"{not json"),
    ("truncated", b'{"name": "x"'),
    ("array", b'["x"]'),
    ("string", b'"x"'),
    ("number", b"42"),
    ("null", b"null"),
    ("not utf-8", b'{"name": "\xff\xfe"}'),
    ("nan", b'{"name": NaN}'),
]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/apps"),
        ("PATCH", "/v1/apps/{app}/config"),
        ("POST", "/v1/apps/{app}/releases"),
        ("POST", "/v1/apps/{app}/runs"),
    ],
)
@pytest.mark.parametrize(("kind", "raw"), BAD_BODIES, ids=[k for k, _ in BAD_BODIES])
def test_a_body_that_is_not_a_json_object_is_400(
    admin: httpx.Client, deployed: str, method: str, path: str, kind: str, raw: bytes
) -> None:
    response = admin.request(
        method,
        path.format(app=deployed),
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        {"name": 5},
        {"name": None},
        {"name": ["x"]},
        {"name": {"x": 1}},
        {"name": True},
        {"name": ""},
        {"name": "Upper"},
        {"name": "has space"},
        {"name": "x" * 200},
        {"name": "../etc"},
    ],
    ids=repr,
)
def test_create_app_refuses_bad_names_and_types(admin: httpx.Client, body: dict[str, Any]) -> None:
    assert_error(admin.post("/v1/apps", json=body), 400)


def test_creating_an_existing_app_is_409(admin: httpx.Client) -> None:
    name = unique("dup")
    assert admin.post("/v1/apps", json={"name": name}).status_code == 201
    assert_error(admin.post("/v1/apps", json={"name": name}), 409)


@pytest.mark.parametrize(
    "body",
    [
        {"1BAD": "x"},
        {"BAD-NAME": "x"},
        {"": "x"},
        {"A B": "x"},
        {"GOOD": 1},
        {"GOOD": True},
        {"GOOD": ["x"]},
        {"GOOD": {"x": "y"}},
    ],
    ids=repr,
)
def test_config_refuses_bad_names_and_values(
    admin: httpx.Client, deployed: str, body: dict[str, Any]
) -> None:
    assert_error(admin.patch(f"/v1/apps/{deployed}/config", json=body), 400)


@pytest.mark.parametrize(
    "body",
    [
        {"context_hash": 5, "manifest": "name: x\n"},
        {"context_hash": HASH, "manifest": 5},
        {"context_hash": HASH, "manifest": "name: x\n", "procfile": ["web: x"]},
        {"context_hash": HASH},
    ],
    ids=repr,
)
def test_create_release_refuses_wrong_types(
    admin: httpx.Client, deployed: str, body: dict[str, Any]
) -> None:
    assert_error(admin.post(f"/v1/apps/{deployed}/releases", json=body), 400)


def test_create_release_of_an_unbuilt_context_is_404(admin: httpx.Client, deployed: str) -> None:
    body = {"context_hash": HASH, "manifest": f"name: {deployed}\n", "procfile": ""}
    assert_error(admin.post(f"/v1/apps/{deployed}/releases", json=body), 404)


def test_build_needs_a_well_formed_context_hash(admin: httpx.Client, deployed: str) -> None:
    for header in [{}, {"X-Context-Hash": "abc"}, {"X-Context-Hash": "Z" * 64}]:
        response = admin.post(
            f"/v1/apps/{deployed}/builds",
            content=b"",
            headers={"Content-Type": "application/x-tar", **header},
        )
        assert_error(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"command": []},
        {"command": "echo hi"},
        {"command": [1, 2]},
        {"command": [None]},
        {"command": ["true"], "env": []},
        {"command": ["true"], "env": "A=1"},
        {"command": ["true"], "env": {"1A": "x"}},
        {"command": ["true"], "env": {"A-B": "x"}},
        {"command": ["true"], "env": {"A=B": "x"}},
        {"command": ["true"], "env": {"": "x"}},
        {"command": ["true"], "env": {"A": 1}},
        {"command": ["true"], "env": {"A": None}},
        {"command": ["true"], "size": "huge"},
        {"command": ["true"], "size": 5},
        {"command": ["true"], "timeout": "abc"},
        {"command": ["true"], "timeout": "-5s"},
        {"command": ["true"], "timeout": "10 parsecs"},
        {"command": ["true"], "timeout": ["1m"]},
        {"command": ["true"], "timeout": True},
        {"command": ["true"], "detached": "yes"},
        {"command": ["true"], "tty": 1},
        {"command": ["true"], "uploads": "no"},
    ],
    ids=repr,
)
def test_create_run_refuses_bad_bodies_with_400(
    admin: httpx.Client, deployed: str, body: dict[str, Any]
) -> None:
    assert_error(admin.post(f"/v1/apps/{deployed}/runs", json=body), 400)


def test_create_run_of_an_app_without_a_release_is_404(admin: httpx.Client) -> None:
    name = unique("norel")
    assert admin.post("/v1/apps", json={"name": name}).status_code == 201
    body = assert_error(admin.post(f"/v1/apps/{name}/runs", json={"command": ["true"]}), 404)
    assert body["hint"]


@pytest.mark.parametrize(
    "params",
    [{"limit": "abc"}, {"limit": "-1"}, {"status": "bogus"}, {"trigger": "bogus"}],
    ids=repr,
)
def test_bad_query_parameters_are_400(
    admin: httpx.Client, deployed: str, params: dict[str, str]
) -> None:
    assert_error(admin.get(f"/v1/apps/{deployed}/runs", params=params), 400)


@pytest.mark.parametrize(
    "params",
    [
        {"tail": "x"},
        {"run": "abc"},
        {"after": "-3"},
        {"limit": "many"},
        {"limit": "10001"},
        {"tail": "10001"},
    ],
    ids=repr,
)
def test_bad_log_parameters_are_400(
    admin: httpx.Client, deployed: str, params: dict[str, str]
) -> None:
    assert_error(admin.get(f"/v1/apps/{deployed}/logs", params=params), 400)


def test_a_body_over_one_megabyte_is_413(admin: httpx.Client, deployed: str) -> None:
    huge = json.dumps({"name": "x", "pad": "a" * (1024 * 1024 + 10)}).encode()
    for method, path in [
        ("POST", "/v1/apps"),
        ("PATCH", f"/v1/apps/{deployed}/config"),
        ("POST", f"/v1/apps/{deployed}/runs"),
    ]:
        response = admin.request(
            method, path, content=huge, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 413)


def test_a_chunked_body_over_one_megabyte_is_413(admin: httpx.Client) -> None:
    """No Content-Length to go by: the cap holds while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "x", "pad": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    response = admin.post(
        "/v1/apps", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413)


def test_a_lying_content_length_is_refused_up_front(server: HgrunServer) -> None:
    """A Content-Length over the cap is refused from the headers, without waiting for a body
    that never comes (a raw socket: an HTTP client would not send such a request)."""
    request = (
        "POST /v1/apps HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.token}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n"
        "\r\n"
        '{"name": "x"}'
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                break
            head += data
    status_line = head.split(b"\r\n", 1)[0].decode()
    assert status_line.split()[1] == "413", head[:500]


# -- the OpenAPI document --------------------------------------------------------------------


def test_openapi_document_is_served_and_lists_the_routes(anon: httpx.Client) -> None:
    response = anon.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]
    paths = document["paths"]
    listed = {(m.upper(), p) for p, methods in paths.items() for m in methods}
    expected = {
        (method, path.replace("{run}", "{run_id}").replace(HASH, "{hash}"))
        for method, path in ROUTES
        if not path.startswith(("/v1/scripts", "/v1/tokens/"))
    }
    assert expected <= listed, expected - listed
    assert "/v1/runs/{run_id}/attach" in paths
    assert "bearer" in json.dumps(document["components"]["securitySchemes"]).lower()
    for path, methods in paths.items():
        for method, operation in methods.items():
            assert operation.get("summary"), (method, path)


# -- tokens are stored only as hashes --------------------------------------------------------


def test_the_store_holds_no_plaintext_token(server: HgrunServer, admin: httpx.Client) -> None:
    extra = add_token(server, Scope.RUN)
    secrets_ = [server.token, extra]
    listed = admin.get("/v1/tokens")
    assert listed.status_code == 200, listed.text
    for secret in secrets_:
        assert secret.removeprefix("hgr_") not in listed.text
    db_path = server.data_dir / "hgrun.db"
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT * FROM tokens").fetchall()
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert len(rows) >= 2
    for secret in secrets_:
        bare = secret.removeprefix("hgr_")
        for row in rows:
            for value in row:
                assert bare not in str(value), "a token is stored in plain text"
        assert bare not in dump
    # Nor anywhere in the files (the WAL included, where fresh writes sit before a checkpoint).
    for path in Path(server.data_dir).glob("hgrun.db*"):
        raw = path.read_bytes()
        for secret in secrets_:
            assert secret.removeprefix("hgr_").encode() not in raw, path


def test_the_admin_token_is_saved_never_logged_and_works(server: HgrunServer, cli: Cli) -> None:
    assert server.token.startswith("hgr_")
    # stdout is a pipe here, not a terminal: the token is only in its 0600 file.
    assert server.log.count(server.token) == 0
    saved = server.data_dir / "admin.token"
    assert saved.read_text().strip() == server.token
    assert saved.stat().st_mode & 0o777 == 0o600
    check(cli("apps", "--json"))


def _log_lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_logs_are_bounded_by_default_and_page_on(server: HgrunServer, deployed: str) -> None:
    script = "seq 1 2500; seq 1 30 >&2"
    with Api(server) as api:
        created = api.http.post(
            f"/v1/apps/{deployed}/runs",
            json={"command": ["sh", "-c", script], "detached": True},
        )
        assert created.status_code == 201, created.text
        number = created.json()["id"]
        api.finished_run(number)
        url = f"/v1/apps/{deployed}/logs"
        # after=0 and a limit: whole lines, page after page (a page holds whole chunks, so it
        # may run past the limit), nothing lost or repeated.
        seen: list[tuple[str, str]] = []
        cursor = 0
        while True:
            params = {"run": number, "after": cursor, "limit": 400}
            page = _log_lines(api.http.get(url, params=params))
            if not page:
                break
            seen += [(ln["stream"], ln["line"]) for ln in page]
            cursor = page[-1]["cursor"]
        # Docker keeps no order between stdout and stderr: each stream is checked on its own.
        assert [line for stream, line in seen if stream == "stdout"] == [
            str(i) for i in range(1, 2501)
        ]
        assert [line for stream, line in seen if stream == "stderr"] == [
            str(i) for i in range(1, 31)
        ]
        # No tail, no after: the newest 1000 lines of the same log.
        newest = _log_lines(api.http.get(url, params={"run": number}))
        assert [(ln["stream"], ln["line"]) for ln in newest] == seen[-1000:]
        # The stderr tail of runs:info.
        info = api.http.get(f"/v1/runs/{number}", params={"stderr_tail": 3}).json()
        assert info["stderr_tail"] == ["28", "29", "30"]


def test_a_run_keeps_its_newest_output_under_the_servers_cap(
    hgrun_server: Any, cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    """--max-output 1 (MB): a run printing 3 MB keeps its last MB, with the marker first."""
    srv = hgrun_server("--max-output", "1", "--keep-runs", "5", "--keep-days", "7")
    name = deploy_busybox_app(cli, tmp_path / "capped", unique("cap"), server=srv)
    with Api(srv) as api:
        script = "i=0; while [ $i -lt 3000 ]; do printf '%01023d\\n' $i; i=$((i+1)); done"
        created = api.http.post(
            f"/v1/apps/{name}/runs", json={"command": ["sh", "-c", script], "detached": True}
        )
        assert created.status_code == 201, created.text
        number = created.json()["id"]
        api.finished_run(number)
        lines = _log_lines(
            api.http.get(
                f"/v1/apps/{name}/logs", params={"run": number, "after": 0, "limit": 10000}
            )
        )
        first, rest = lines[0], lines[1:]
        assert first["stream"] == "stderr"
        assert re.fullmatch(
            r"hgrun: \d+ bytes of earlier output were dropped \(cap 1 MB\)", first["line"]
        ), first
        # Whole chunks are dropped, so the first kept line may be the end of one: skip it.
        kept = [int(line["line"]) for line in rest[1:]]
        assert kept[-1] == 2999 and kept == list(range(kept[0], 3000))
        assert 900 < len(kept) <= 1024
        info = api.http.get(f"/v1/runs/{number}").json()
        assert info["output"]["bytes"] <= 1024 * 1024
        assert info["output"]["bytes"] + info["output"]["dropped"] == 3000 * 1024
