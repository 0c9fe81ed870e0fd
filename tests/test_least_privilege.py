"""Least privilege (issue 8, item 5): a run's own token reaches its own app's scripts only,
fan-out stops at a depth, who started a run comes from the token, and networks beyond none and
bridge need the server's permission."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from conftest import ServerFactory
from support.apps import deploy_script_app, unique, write_script_app
from support.cli import Cli, check, text

from hgrun.server.networks import check_network

CALL = (
    '      wget -q -O- --header "Authorization: Bearer $HGRUN_TOKEN"\n'
    "      --header 'Content-Type: application/json' --post-data '{}'\n"
)


def _api(srv_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _finished(client: httpx.Client, run_id: int) -> dict[str, object]:
    from support.waits import wait_for

    def done() -> dict[str, object] | None:
        run = client.get(f"/v1/runs/{run_id}").json()
        return run if run["finished"] else None

    return wait_for(done, 60, f"run {run_id} to finish")


def test_networks_need_the_servers_permission() -> None:
    for open_network in ("none", "bridge"):
        check_network(open_network, frozenset(), "x")
    check_network("host", {"host"}, "x")
    check_network("backend", {"backend"}, "x")
    import pytest

    from hgrun.errors import ForbiddenError

    for refused, allowed in (("host", set()), ("backend", {"host"}), ("container:abc", {"x"})):
        with pytest.raises(ForbiddenError, match="does not allow"):
            check_network(refused, allowed, "x")
    with pytest.raises(ForbiddenError, match="does not allow"):
        check_network("container:abc", {"container:abc"}, "x")


def test_host_network_refused_at_deploy_and_build_without_permission(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    srv = hgrun_server()
    name = unique("net")
    write_script_app(tmp_path / "app", name, "  s:\n    command: 'true'\n", top="network: host\n")
    check(cli("apps:create", name, server=srv))
    done = cli("deploy", cwd=tmp_path / "app", server=srv)
    assert done.returncode != 0
    error = text(done.stderr)
    assert "network 'host'" in error and "--allow-network host" in error, error
    assert "Traceback" not in error
    with _api(srv.url, srv.token) as api:
        answer = api.post(
            f"/v1/apps/{name}/builds?network=host",
            content=b"",
            headers={"X-Context-Hash": "a" * 64, "Content-Type": "application/x-tar"},
        )
        assert answer.status_code == 403, answer.text
        assert "does not allow" in answer.json()["message"]


def test_a_runs_token_reaches_its_own_app_only_and_fan_out_stops(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    srv = hgrun_server("--allow-network", "host")
    other = deploy_script_app(
        cli, tmp_path / "other", unique("other"), "  target:\n    command: echo hit\n", server=srv
    )
    with _api(srv.url, srv.token) as api:
        target = api.get(f"/v1/apps/{other}/scripts").json()[0]["id"]
        name = unique("fan")
        # `reach` triggers another app's script with its own token; `loop` triggers itself,
        # detached, until refused: each run prints the answer it got.
        deploy_script_app(
            cli,
            tmp_path / "fan",
            name,
            "  reach:\n    command: >-\n"
            + CALL
            + f'      "$HGRUN_URL/v1/scripts/{target}/runs" || echo refused\n'
            "  loop:\n    concurrency: allow\n    command: >-\n"
            + CALL
            + '      "$HGRUN_URL/v1/scripts/$LOOP_ID/runs" || echo refused\n',
            top="network: host\n",
            server=srv,
        )
        scripts = {s["name"]: s["id"] for s in api.get(f"/v1/apps/{name}/scripts").json()}
        check(cli("config:set", f"LOOP_ID={scripts['loop']}", "--app", name, server=srv))

        reach = api.post(f"/v1/scripts/{scripts['reach']}/runs").json()
        run = _finished(api, reach["id"])
        log = api.get(f"/v1/apps/{name}/logs", params={"run": reach["id"]}).text
        assert run["status"] == "succeeded" and "refused" in log, log
        assert api.get(f"/v1/scripts/{target}/runs").json() == [], "another app's script ran"

        first = api.post(f"/v1/scripts/{scripts['loop']}/runs").json()
        assert first["trigger"]["kind"] == "user"
        # Five deep, then refused: the sixth trigger gets a 403 and prints "refused".
        from support.waits import wait_for

        def chain() -> list[dict[str, object]] | None:
            runs = api.get(f"/v1/scripts/{scripts['loop']}/runs").json()
            finished = [r for r in runs if r["finished"]]
            return runs if len(runs) >= 5 and len(finished) == len(runs) else None

        runs = wait_for(chain, 120, "the fan-out chain to end")
        assert len(runs) == 5, [(r["id"], r["parent_run"]) for r in runs]
        deepest = max(runs, key=lambda r: r["id"])
        log = api.get(f"/v1/apps/{name}/logs", params={"run": deepest["id"]}).text
        assert "refused" in log, log
        assert {r["trigger"]["kind"] for r in runs if r["id"] != first["id"]} == {"run"}


def test_the_trigger_kind_comes_from_the_token_not_the_request(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    srv = hgrun_server()
    name = deploy_script_app(
        cli, tmp_path / "app", unique("via"), "  s:\n    command: 'true'\n", server=srv
    )
    with _api(srv.url, srv.token) as admin:
        script = admin.get(f"/v1/apps/{name}/scripts").json()[0]["id"]
        made = admin.post("/v1/tokens", json={"name": unique("ci"), "scope": "trigger"}).json()
    with _api(srv.url, made["token"]) as ci:
        run = ci.post(f"/v1/scripts/{script}/runs?via=cli").json()
        assert run["trigger"] == {"kind": "api", "name": made["name"]}, json.dumps(run)
    with _api(srv.url, srv.token) as admin:
        run = admin.post(f"/v1/scripts/{script}/runs?via=api").json()
        assert run["trigger"]["kind"] == "user", json.dumps(run)
