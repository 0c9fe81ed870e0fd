"""Scripts as a user meets them, against a real server and a real dockerd: the listing, manual,
API and fan-out triggers, cron, concurrency policies under a storm, catch-up across restarts,
timeouts, bounded history, webhook and SMTP notifications, scoped tokens and the audit log.

Every app is a busybox folder with an hgrun.yaml declaring scripts, named uniquely so the tests
can share a server and run in parallel (pytest -n 2). Tests that stop a server or change its
store or flags start a server of their own.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import http.server
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import ServerFactory
from support.api import ACTIVE, Api
from support.apps import deploy_script_app, unique
from support.cli import Cli, check, cli_popen, text
from support.server import HgrunServer, free_port, store_rows
from support.waits import wait_for

USAGE = 2
TIMED_OUT = 124


def minute_of(stamp: float) -> float:
    return stamp - stamp % 60


def slot_name(stamp: float) -> str:
    """How a cron run names its slot: the slot's UTC instant, ``2024-05-01T12:34:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def parse_slot(name: str) -> float:
    at = datetime.datetime.strptime(name, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return at.timestamp()


def overlaps(runs: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Pairs of runs whose [started, finished] intervals intersect."""
    timed = sorted((r for r in runs if r["started"] is not None), key=lambda r: r["started"])
    found = []
    for a, b in zip(timed, timed[1:], strict=False):
        if b["started"] < a["finished"]:
            found.append((a["id"], b["id"]))
    return found


def storm(api: Api, script_id: int, n: int) -> list[httpx.Response]:
    """``n`` simultaneous triggers, one thread (and connection) each, released together."""
    gate = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=api.server.url, headers=api.http.headers, timeout=60) as c:
            gate.wait()
            return c.post(
                f"/v1/scripts/{script_id}/runs",
                content=json.dumps({"i": i}).encode(),
                headers={"Content-Type": "application/json"},
            )

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(autouse=True, scope="module")
def _busybox(busybox_image: str) -> str:
    """Every app here is built FROM the busybox test image: make it before any test of this
    module, so a test run alone (or first) does not depend on another having made it."""
    return busybox_image


@pytest.fixture
def api(server: HgrunServer) -> Iterator[Api]:
    with Api(server) as client:
        yield client


# -- 1. the listing ------------------------------------------------------------------------


def test_scripts_lists_command_schedule_next_fire_policy_and_last_run(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("sl"),
        "  nightly:\n"
        "    command: echo nightly-report\n"
        '    cron: "30 4 * * *"\n'
        "    timezone: Europe/Paris\n"
        "    concurrency: skip\n"
        "    catchup: latest\n"
        "  adhoc:\n"
        "    command: echo adhoc-job\n"
        "  hourly:\n"
        "    process: hello\n"
        '    cron: "@hourly"\n',
    )
    run = api.start(api.script_id(name, "adhoc"))
    assert api.finished_run(run["id"])["status"] == "succeeded"

    out = check(cli("scripts", "--app", name))
    header, *lines = out.splitlines()
    columns = [c.strip().lower() for c in header.split("\t")]
    rows = {}
    for line in filter(None, lines):
        row = dict(zip(columns, line.split("\t"), strict=False))
        rows[row["name"]] = row
    assert set(rows) == {"nightly", "adhoc", "hourly"}, out
    nightly, adhoc = rows["nightly"], rows["adhoc"]

    def last_run(row: dict[str, str]) -> str:
        return " ".join(v for k, v in row.items() if k.startswith("last") or k == "status")

    assert "echo nightly-report" in nightly["command"]
    assert "30 4 * * *" in nightly["schedule"] and "Europe/Paris" in nightly["schedule"]
    assert nightly["next"].strip(), f"no next fire time: {nightly}"
    assert "skip" in nightly["policy"] and "latest" in nightly["policy"]
    assert last_run(nightly).strip() == "", f"nightly never ran: {nightly}"
    assert "echo adhoc-job" in adhoc["command"]
    assert adhoc["schedule"].strip() == "" and adhoc["next"].strip() == ""
    assert "queue" in adhoc["policy"] and "skip" in adhoc["policy"], "defaults: queue / skip"
    assert f"run.{run['id']}" in last_run(adhoc) and "succeeded" in last_run(adhoc), adhoc

    items = json.loads(check(cli("scripts", "--app", name, "--json")))
    by_name = {s["name"]: s for s in items}
    n = by_name["nightly"]
    assert (n["cron"], n["timezone"], n["concurrency"], n["catchup"]) == (
        "30 4 * * *",
        "Europe/Paris",
        "skip",
        "latest",
    )
    # 04:30 in Paris is 02:30 or 03:30 UTC, within the next day.
    fire = datetime.datetime.fromtimestamp(n["next_fire"], datetime.UTC)
    assert fire.minute == 30 and fire.hour in (2, 3), fire
    assert 0 < n["next_fire"] - time.time() <= 24 * 3600
    assert n["last_run"] is None
    a = by_name["adhoc"]
    assert a["cron"] is None and a["next_fire"] is None
    h = by_name["hourly"]
    assert h["process"] == "hello" and h["command"] is None and "hello" in rows["hourly"]["command"]
    assert h["next_fire"] % 3600 == 0 and 0 < h["next_fire"] - time.time() <= 3600
    proc = api.finished_run(api.start(h["id"])["id"])
    assert proc["status"] == "succeeded" and proc["process_type"] == "hello"
    assert api.log_text(name, proc["id"]) == "hello\n"
    assert a["last_run"]["id"] == run["id"] and a["last_run"]["status"] == "succeeded"


# -- 2. manual triggers from the CLI -------------------------------------------------------


# Echo the input; exit with its "code" (JSON is YAML, so json.dumps quotes it for hgrun.yaml).
SHOW = (
    'echo "input=$HOSTINGGURU_RUN_INPUT"; '
    'code=$(echo "$HOSTINGGURU_RUN_INPUT" | sed -n \'s/.*"code": *\\([0-9]*\\).*/\\1/p\'); '
    'exit "${code:-0}"'
)


@pytest.fixture(scope="module")
def echo_app(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``show`` echoes its input and exits with the input's ``code`` (default 0)."""
    root = tmp_path_factory.mktemp("echo-app")
    return deploy_script_app(
        cli,
        root,
        unique("echo"),
        f"  show:\n    command: {json.dumps(SHOW)}\n    concurrency: allow\n",
    )


def test_scripts_run_attached_shows_the_input_and_propagates_the_exit_code(
    cli: Cli, echo_app: str
) -> None:
    done = cli("scripts:run", "show", "--app", echo_app, "--input", '{"a":1}', input=b"")
    out = check(done)
    assert 'input={"a":1}\n' in out, out  # byte for byte as sent, not re-serialised

    done = cli("scripts:run", "show", "--app", echo_app, "--input", '{"code": 7}', input=b"")
    assert done.returncode == 7, (done.returncode, text(done.stderr))
    assert 'input={"code": 7}' in text(done.stdout)


def test_scripts_run_detached_wait_returns_the_runs_exit_code(
    cli: Cli, api: Api, echo_app: str
) -> None:
    done = cli(
        "scripts:run", "show", "--app", echo_app, "--detached", "--wait", "--input", '{"code": 3}'
    )
    assert done.returncode == 3, (done.returncode, text(done.stderr))
    label = text(done.stdout).strip()
    assert label.startswith("run."), label
    run = api.run(int(label[4:]))
    assert (run["status"], run["exit_code"], run["detached"]) == ("failed", 3, True)

    done = cli("scripts:run", "show", "--app", echo_app, "--detached", "--json")
    info = json.loads(check(done))
    assert info["detached"] is True and info["status"] in ACTIVE | {"succeeded"}
    assert api.finished_run(info["id"])["status"] == "succeeded"


def test_scripts_run_reads_input_from_a_file(cli: Cli, echo_app: str, tmp_path: Path) -> None:
    payload = tmp_path / "input.json"
    payload.write_text('{\n  "from": "a file",\n  "n": [1, 2]\n}\n')
    out = check(cli("scripts:run", "show", "--app", echo_app, "--input", f"@{payload}", input=b""))
    assert 'input={\n  "from": "a file",\n  "n": [1, 2]\n}\n' in out, out


@pytest.mark.parametrize("bad", ["{not json", "@/nonexistent/input.json"])
def test_scripts_run_with_bad_input_is_a_usage_error(cli: Cli, echo_app: str, bad: str) -> None:
    done = cli("scripts:run", "show", "--app", echo_app, "--input", bad, input=b"")
    assert done.returncode == USAGE, (done.returncode, text(done.stderr))
    err = text(done.stderr)
    assert "Traceback" not in err and err.startswith("error: "), err
    assert "--input" in err
    assert text(done.stdout) == ""


def test_scripts_run_of_an_unknown_script_is_not_found(cli: Cli, echo_app: str) -> None:
    done = cli("scripts:run", "nope", "--app", echo_app, input=b"")
    assert done.returncode == 5, text(done.stderr)
    assert "Traceback" not in text(done.stderr)


# -- 3. API triggers -----------------------------------------------------------------------


def test_api_trigger_with_a_json_body_records_the_token_name(
    cli: Cli, api: Api, echo_app: str
) -> None:
    token_name = unique("ci")
    created = api.http.post("/v1/tokens", json={"name": token_name, "scope": "run"})
    assert created.status_code == 201, created.text
    script_id = api.script_id(echo_app, "show")
    with Api(api.server, created.json()["token"]) as ci:
        response = ci.trigger(script_id, json.dumps({"order": 42, "note": "é"}).encode())
        assert response.status_code == 201, response.text
        started = response.json()
        assert isinstance(started["id"], int) and started["label"] == f"run.{started['id']}"
        run = ci.finished_run(started["id"])
    assert run["status"] == "succeeded", run
    assert run["trigger"] == {"kind": "api", "name": token_name}
    assert run["script"] == "show" and run["parent_run"] is None
    assert "HOSTINGGURU_RUN_INPUT" in run["env_keys"]
    log = api.log_text(echo_app, run["id"])
    assert json.loads(log.split("input=", 1)[1].splitlines()[0]) == {"order": 42, "note": "é"}


def test_api_trigger_checks_the_workspace_header(api: Api, echo_app: str) -> None:
    script_id = api.script_id(echo_app, "show")
    ours = api.http.post(f"/v1/scripts/{script_id}/runs", headers={"X-Workspace-Id": "default"})
    assert ours.status_code == 201, ours.text
    theirs = api.http.post(f"/v1/scripts/{script_id}/runs", headers={"X-Workspace-Id": "other"})
    assert theirs.status_code == 403, theirs.text
    assert (
        api.http.post(f"/v1/scripts/{script_id}/runs", headers={"Authorization": ""}).status_code
        == 401
    )
    api.finished_run(ours.json()["id"])


def test_api_trigger_without_a_body_has_no_input(api: Api, echo_app: str) -> None:
    run = api.finished_run(api.start(api.script_id(echo_app, "show"))["id"])
    assert run["status"] == "succeeded"
    assert "HOSTINGGURU_RUN_INPUT" not in run["env_keys"]
    assert "input=\n" in api.log_text(echo_app, run["id"])


def test_api_trigger_refuses_a_body_over_the_cap(api: Api, echo_app: str) -> None:
    script_id = api.script_id(echo_app, "show")
    before = len(api.script_runs(script_id))
    big = json.dumps({"blob": "x" * (64 * 1024)}).encode()
    response = api.trigger(script_id, big)
    assert response.status_code == 413, (response.status_code, response.text)
    assert {"error", "message", "hint"} <= set(response.json())
    # Just under the cap is accepted, and reaches the container whole.
    fits = json.dumps({"blob": "y" * (60 * 1024)})
    run = api.finished_run(api.start(script_id, fits.encode())["id"])
    assert run["status"] == "succeeded", run
    assert f"input={fits}\n" in api.log_text(echo_app, run["id"])
    before += 1
    # Streamed without a Content-Length, the cap holds too.
    response = api.http.post(
        f"/v1/scripts/{script_id}/runs",
        content=iter([big[:40000], big[40000:]]),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413, (response.status_code, response.text)
    assert len(api.script_runs(script_id)) == before, "a refused trigger made a run"


@pytest.mark.parametrize("body", [b"not json", b'{"a": 1', b"\xff\xfe"])
def test_api_trigger_refuses_a_body_that_is_not_json(api: Api, echo_app: str, body: bytes) -> None:
    response = api.trigger(api.script_id(echo_app, "show"), body)
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.json()["error"] == "invalid_input"


def test_api_trigger_of_an_unknown_script_is_404(api: Api) -> None:
    response = api.trigger(987654321)
    assert response.status_code == 404, response.text


# -- 4. fan-out ----------------------------------------------------------------------------


def test_a_script_triggers_another_from_inside_and_the_lineage_is_recorded(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    name = unique("fan")
    deploy_script_app(
        cli,
        tmp_path,
        name,
        "  parent:\n"
        "    command: >-\n"
        '      wget -q -O- --header "Authorization: Bearer $HGRUN_TOKEN"\n'
        "      --header 'Content-Type: application/json'\n"
        '      --post-data "{\\"from\\": \\"run $HGRUN_RUN_ID\\"}"\n'
        '      "$HGRUN_URL/v1/scripts/$CHILD_ID/runs"\n'
        "  child:\n"
        '    command: echo "child got $HOSTINGGURU_RUN_INPUT"\n',
        top="network: host\n",
    )
    child_id = api.script_id(name, "child")
    # The child's id is known only after the first deploy; config makes a new release with it.
    check(cli("config:set", f"CHILD_ID={child_id}", "--app", name))

    parent = api.finished_run(api.start(api.script_id(name, "parent"))["id"])
    parent_log = api.log_text(name, parent["id"])
    assert parent["status"] == "succeeded", (parent, parent_log)
    answer = json.loads(parent_log.strip().splitlines()[-1])
    child = api.finished_run(answer["id"])
    assert child["status"] == "succeeded", child
    assert child["script"] == "child"
    assert child["trigger"] == {"kind": "run", "name": f"run.{parent['id']}"}
    assert child["parent_run"] == parent["id"]
    assert f'child got {{"from": "run {parent["id"]}"}}' in api.log_text(name, child["id"])
    assert [r["id"] for r in api.script_runs(child_id)] == [child["id"]]


def test_a_runs_own_token_only_triggers_and_dies_with_the_run(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    """The token a run gets for fan-out is a trigger token, revoked when the run ends."""
    # The run lives until the test stops it: a run that ended by itself (it slept 4 s) could
    # end, on a loaded machine, before the checks that need it running.
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("tok"),
        '  leak:\n    command: echo "token=$HGRUN_TOKEN"; sleep 300\n',
    )
    script_id = api.script_id(name, "leak")
    run = api.start(script_id)

    def leaked_token() -> str | None:
        log = api.log_text(name, run["id"])
        return log.split("token=", 1)[1].split()[0] if "token=" in log else None

    token = wait_for(leaked_token, 60, "the run to print its token")
    assert token.startswith("hgr_")
    with Api(api.server, token) as inside:
        assert api.run(run["id"])["status"] == "running"
        for path in (f"/v1/apps/{name}/config", f"/v1/apps/{name}/logs", "/v1/tokens"):
            assert inside.http.get(path).status_code == 403, path
        assert inside.run(run["id"])["status"] == "running", "it may read the runs it may start"
        api.stop(run["id"])
        api.finished_run(run["id"])
        assert inside.trigger(script_id).status_code == 401
    assert not any(t["name"] == f"run.{run['id']}" for t in api.get("/v1/tokens"))


def test_a_script_removed_from_the_manifest_is_gone_after_the_next_deploy(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("gone"),
        "  keep:\n    command: echo k\n  drop:\n    command: echo d\n",
    )
    keep, drop = api.script_id(name, "keep"), api.script_id(name, "drop")
    api.finished_run(api.start(keep)["id"])
    (tmp_path / "hgrun.yaml").write_text(
        f"name: {name}\nbuild:\n  dockerfile: Dockerfile\nscripts:\n"
        "  keep:\n    command: echo kept\n    history: 5\n"
    )
    check(cli("deploy", cwd=tmp_path))
    listed = {s["name"]: s for s in api.scripts(name)}
    assert set(listed) == {"keep"}
    assert listed["keep"]["id"] == keep and listed["keep"]["history"] == 5
    assert listed["keep"]["last_run"] is not None, "a script keeps its history across deploys"
    assert api.trigger(drop).status_code == 404
    done = cli("scripts:run", "drop", "--app", name, input=b"")
    assert done.returncode == 5, text(done.stderr)
    run = api.finished_run(api.start(keep)["id"])
    assert api.log_text(name, run["id"]) == "kept\n", "the new release's command runs"


# -- 5. cron -------------------------------------------------------------------------------


def test_a_every_minute_script_runs_once_per_slot_tagged_cron_and_an_overlap_is_skipped(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    """Two real minute boundaries (up to ~2 min): ``tick`` runs once in each slot, tagged
    ``cron:<slot>``; ``long`` (skip, a 90 s command) is still running at the second slot, which
    is recorded as skipped with its reason."""
    # ``nepal`` fires once a day, at the next minute boundary at least 15 s away read in
    # Asia/Kathmandu (UTC+05:45): one of tick's first two slots, since a script first seen up
    # to the tick grace after a boundary runs that boundary's slot.
    before = time.time()
    target = minute_of(before) + (60 if before % 60 < 45 else 120)
    local = datetime.datetime.fromtimestamp(target, ZoneInfo("Asia/Kathmandu"))
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("cron"),
        '  tick:\n    command: echo tick\n    cron: "* * * * *"\n'
        '  long:\n    command: sleep 90\n    cron: "* * * * *"\n    concurrency: skip\n'
        f'  nepal:\n    command: echo namaste\n    cron: "{local.minute} {local.hour} * * *"\n'
        "    timezone: Asia/Kathmandu\n",
    )
    deployed = time.time()
    tick_id, long_id = api.script_id(name, "tick"), api.script_id(name, "long")
    nepal = [s for s in api.scripts(name) if s["name"] == "nepal"][0]
    assert nepal["next_fire"] == target, (nepal["next_fire"], target)

    def cron_runs(script_id: int, count: int) -> list[dict[str, Any]] | None:
        runs = [r for r in api.script_runs(script_id) if r["trigger"]["kind"] == "cron"]
        return runs if len(runs) >= count else None

    ticks = wait_for(lambda: cron_runs(tick_id, 2), 140, "two cron runs of tick", interval=1)
    longs = wait_for(lambda: cron_runs(long_id, 2), 30, "two cron runs of long", interval=0.5)
    try:
        ticks.sort(key=lambda r: r["id"])
        slots = [parse_slot(r["trigger"]["name"]) for r in ticks]
        assert all(s % 60 == 0 for s in slots), slots
        assert slots[0] > deployed - 60 and slots[1] == slots[0] + 60, slots
        for run, slot in zip(ticks, slots, strict=True):
            # Dispatched within the scheduler's tick, not a minute late.
            assert slot <= run["created"] < slot + 10, (run, slot)
            assert api.finished_run(run["id"])["status"] == "succeeded"
        assert len(cron_runs(tick_id, 0) or []) == 2, "one run per slot, not more"
        assert target in slots
        (nepal_run,) = wait_for(lambda: cron_runs(nepal["id"], 1), 30, "nepal's run")
        assert nepal_run["trigger"]["name"] == slot_name(target)

        longs.sort(key=lambda r: r["id"])
        first, second = longs
        assert [r["trigger"]["name"] for r in longs] == [slot_name(s) for s in slots]
        assert first["status"] == "running", (first["status"], first["error"])
        assert second["status"] == "skipped", second
        assert second["started"] is None and second["exit_code"] is None
        assert "skip" in (second["error"] or "") and "active" in (second["error"] or ""), second
    finally:
        for run in longs:
            if run["status"] in ACTIVE:
                api.stop(run["id"])


# -- 6. concurrency ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_app(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One script per concurrency policy. ``quick`` in the input makes a run end at once."""
    slow = 'case "$HOSTINGGURU_RUN_INPUT" in *quick*) echo quick;; *) sleep {};; esac'
    return deploy_script_app(
        cli,
        tmp_path_factory.mktemp("policy-app"),
        unique("pol"),
        f"  queued:\n    command: sleep 0.3\n    concurrency: queue\n"
        f"  skipper:\n    command: '{slow.format(6)}'\n    concurrency: skip\n"
        f"  replacer:\n    command: '{slow.format(60)}'\n    concurrency: replace\n"
        # 8 s: three containers made and started at once on a loaded machine still overlap
        f"  allowed:\n    command: sleep 8\n    concurrency: allow\n",
    )


def test_a_storm_on_a_queue_script_runs_every_trigger_one_at_a_time_in_order(
    api: Api, policy_app: str
) -> None:
    script_id = api.script_id(policy_app, "queued")
    responses = storm(api, script_id, 50)
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses]
    ids = sorted(r.json()["id"] for r in responses)
    assert len(set(ids)) == 50
    runs = [api.finished_run(i, timeout=240) for i in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 50, [
        (r["id"], r["status"], r["error"]) for r in runs if r["status"] != "succeeded"
    ]
    assert overlaps(runs) == [], "two runs of a queue script ran at once"
    by_start = [r["id"] for r in sorted(runs, key=lambda r: r["started"])]
    assert by_start == ids, "the queue is not first in, first out"
    listed = api.script_runs(script_id)
    assert {r["id"] for r in listed} >= set(ids)


def test_a_storm_on_a_skip_script_runs_one_and_records_the_rest_skipped(
    api: Api, policy_app: str
) -> None:
    script_id = api.script_id(policy_app, "skipper")
    responses = storm(api, script_id, 50)
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses]
    answered = [r.json() for r in responses]
    ran = [r for r in answered if r["status"] != "skipped"]
    skipped = [r for r in answered if r["status"] == "skipped"]
    assert len(ran) == 1 and len(skipped) == 49, [r["status"] for r in answered]
    assert api.finished_run(ran[0]["id"])["status"] == "succeeded"
    for run in skipped:
        stored = api.run(run["id"])
        assert stored["status"] == "skipped" and stored["started"] is None
        assert "concurrency is skip" in stored["error"], stored
    assert len(api.script_runs(script_id)) == 50


def test_hgrun_runs_script_lists_that_scripts_runs_newest_first_across_pages(
    cli: Cli, api: Api, policy_app: str
) -> None:
    """`hgrun runs --script NAME` reads GET /v1/scripts/{id}/runs (one index seek, see
    test_store); with --status it says why not; an unknown script is named."""
    script_id = api.script_id(policy_app, "allowed")
    responses = storm(api, script_id, 3)
    assert [r.status_code for r in responses] == [201] * 3
    listed = json.loads(
        check(cli("runs", "--app", policy_app, "--script", "allowed", "--json", "-n", "2"))
    )
    want = [r["id"] for r in api.script_runs(script_id)][:2]
    assert [r["id"] for r in listed] == want and len(want) == 2
    assert {r["script"] for r in listed} == {"allowed"}
    refused = cli("runs", "--app", policy_app, "--script", "allowed", "--status", "failed")
    assert refused.returncode != 0 and "--script" in text(refused.stderr)
    assert "Traceback" not in text(refused.stderr)
    missing = cli("runs", "--app", policy_app, "--script", "nope")
    assert missing.returncode != 0 and "no script 'nope'" in text(missing.stderr)


def test_a_manual_trigger_of_a_running_skip_script_is_recorded_skipped(
    cli: Cli, api: Api, policy_app: str
) -> None:
    script_id = api.script_id(policy_app, "skipper")
    first = api.start(script_id)
    api.running(first["id"])
    done = cli("scripts:run", "skipper", "--app", policy_app, "--detached")
    assert done.returncode == 6, (done.returncode, text(done.stderr))
    assert "skipped" in text(done.stderr) and "Traceback" not in text(done.stderr)
    second = api.script_runs(script_id, limit=1)[0]
    assert second["id"] > first["id"] and second["status"] == "skipped"
    assert second["trigger"]["kind"] == "user"
    assert "1 run is still active" in second["error"], second
    assert api.run(first["id"])["status"] == "running", "a skipped trigger touched the runner"
    assert api.finished_run(first["id"])["status"] == "succeeded"


def test_replace_cancels_the_running_run_and_starts_the_new_one(api: Api, policy_app: str) -> None:
    script_id = api.script_id(policy_app, "replacer")
    old = api.start(script_id)
    api.running(old["id"])
    new = api.start(script_id, b'{"quick": true}')
    replaced = api.finished_run(old["id"], timeout=30)
    assert replaced["status"] == "canceled", replaced
    assert f"replaced by run.{new['id']}" in (replaced["error"] or ""), replaced
    finished = api.finished_run(new["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["started"] >= replaced["finished"] - 0.5, "the two ran at once"
    assert "quick" in api.log_text(policy_app, new["id"])


def test_a_storm_on_a_replace_script_leaves_only_the_last_running(
    api: Api, policy_app: str
) -> None:
    """Each trigger cancels the run before it: at the end nine are canceled (each within the
    stop grace, not after its 60 s command), the last one runs, and no two ever ran at once."""
    script_id = api.script_id(policy_app, "replacer")
    responses = storm(api, script_id, 10)
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    ids = sorted(r.json()["id"] for r in responses)
    try:
        last = api.running(ids[-1])
        runs = [api.finished_run(i, timeout=25) for i in ids[:-1]]
        assert [r["status"] for r in runs] == ["canceled"] * 9, [
            (r["id"], r["status"], r["error"]) for r in runs
        ]
        assert api.run(last["id"])["status"] == "running"
        assert overlaps([*runs, {**last, "finished": time.time()}]) == []
    finally:
        for number in ids:
            if api.run(number)["status"] in ACTIVE:
                api.stop(number)


def test_allow_lets_runs_overlap(api: Api, policy_app: str) -> None:
    script_id = api.script_id(policy_app, "allowed")
    responses = storm(api, script_id, 3)
    assert [r.status_code for r in responses] == [201] * 3
    runs = [api.finished_run(r.json()["id"]) for r in responses]
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert len(overlaps(runs)) == 2, "allow ran the three one after the other"


def test_a_queue_waits_across_a_server_restart_and_keeps_its_order(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path
) -> None:
    srv = hgrun_server()
    name = deploy_script_app(
        cli, tmp_path, unique("qrest"), "  work:\n    command: sleep 3\n", server=srv
    )
    with Api(srv) as api:
        script_id = api.script_id(name, "work")
        ids = [api.start(script_id)["id"] for _ in range(3)]
        api.running(ids[0])
        assert [api.run(i)["status"] for i in ids[1:]] == ["queued", "queued"]
        srv.restart()
        runs = [api.finished_run(i, timeout=60) for i in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 3, [
        (r["id"], r["status"], r["error"]) for r in runs
    ]
    assert overlaps(runs) == []
    assert [r["id"] for r in sorted(runs, key=lambda r: r["started"])] == ids


def test_an_attached_trigger_of_a_busy_queue_script_waits_then_attaches(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    # The first run (no input) goes on until the test stops it, once the second is queued
    # behind it: a first run that ended by itself (it slept 3 s) could end, on a loaded
    # machine, before the second CLI process had even started.
    work = (
        'case "$HOSTINGGURU_RUN_INPUT" in *n*) ;; *) sleep 300;; esac;'
        ' echo "done $HOSTINGGURU_RUN_INPUT"; exit 5'
    )
    name = deploy_script_app(cli, tmp_path, unique("qatt"), f"  work:\n    command: '{work}'\n")
    script_id = api.script_id(name, "work")
    first = api.start(script_id)
    api.running(first["id"])
    client = cli_popen(cli, "scripts:run", "work", "--app", name, "--input", '{"n": 2}')
    try:
        second = wait_for(
            lambda: [r for r in api.script_runs(script_id) if r["id"] != first["id"]],
            60,
            "the second run",
        )[0]
        assert second["status"] == "queued", second
        api.stop(first["id"])
        out, err = client.communicate(b"", timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 5, (client.returncode, text(err))
    assert 'done {"n": 2}' in text(out)
    assert "queued" in text(err)
    assert api.run(second["id"])["started"] >= api.finished_run(first["id"])["finished"]


# -- 7. catch-up after downtime ------------------------------------------------------------


def set_cursors(server: HgrunServer, script_ids: list[int], cursor: float) -> None:
    """Rewrite the scheduler's cursor in the store, as if the server had been down since."""
    db = sqlite3.connect(server.data_dir / "hgrun.db")
    try:
        with db:
            db.executemany(
                "UPDATE scripts SET cursor = ? WHERE id = ?", [(cursor, i) for i in script_ids]
            )
    finally:
        db.close()


def wait_ticks(server: HgrunServer, n: int) -> None:
    """Wait until ``server``'s cron loop has woken ``n`` times since it started, as `GET
    /v1/health` counts them: an event, where a sleep would guess. The loop wakes once at
    start-up (that wake-up applies the catch-up policy), then at each slot, so n=1 after a
    start is "every schedule has been evaluated"."""

    def ticks() -> int:
        return int(httpx.get(f"{server.url}/v1/health", timeout=10).json()["scheduler"]["ticks"])

    wait_for(lambda: ticks() >= n, 60, f"{n} wake-ups of the scheduler on {server.url}")


def slot_runs(server: HgrunServer, script_id: int) -> list[tuple[int, str | None, str]]:
    """(id, slot, trigger name) of every run of a script, straight from the store."""
    rows = store_rows(
        server, "SELECT id, slot, trigger_name FROM runs WHERE script_id = ? ORDER BY id", script_id
    )
    return [(int(r[0]), r[1], str(r[2])) for r in rows]


@pytest.fixture
def missed_slots_app(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path
) -> Iterator[tuple[HgrunServer, Api, dict[str, int], list[float]]]:
    """A server of its own and an app whose scripts fire at the three minutes before this one
    (so that no slot comes due live during the test, and the next is an hour away); the
    cursors are moved back before those three slots, as if the server had been down across
    them. Yields the server, a client, script ids by name and the three slots."""
    srv = hgrun_server()
    base = minute_of(time.time())
    slots = [base - 180, base - 120, base - 60]
    minutes = ",".join(str(time.gmtime(s).tm_min) for s in slots)
    cron = f'    command: echo caught-up\n    cron: "{minutes} * * * *"\n'
    deploy_script_app(
        cli,
        tmp_path,
        unique("catch"),
        f"  latest:\n{cron}    catchup: latest\n"
        f"  skipper:\n{cron}    catchup: skip\n"
        f"  deadline:\n{cron}    catchup: latest\n    starting_deadline: 30s\n",
        server=srv,
    )
    with Api(srv) as api:
        app = api.get("/v1/apps")[0]["name"]
        ids = {s["name"]: s["id"] for s in api.scripts(app)}
        srv.stop()
        set_cursors(srv, list(ids.values()), slots[0] - 30)
        srv.start()
        yield srv, api, ids, slots


def test_catchup_latest_runs_only_the_most_recent_missed_slot_and_skip_none(
    missed_slots_app: tuple[HgrunServer, Api, dict[str, int], list[float]],
) -> None:
    srv, api, ids, slots = missed_slots_app
    runs = wait_for(lambda: api.script_runs(ids["latest"]), 60, "the catch-up run")
    assert len(runs) == 1, runs
    run = api.finished_run(runs[0]["id"])
    assert run["status"] == "succeeded", run
    assert run["trigger"] == {"kind": "cron", "name": slot_name(slots[-1])}
    wait_ticks(srv, 1)  # the start-up evaluation is done: nothing more runs
    assert len(api.script_runs(ids["latest"])) == 1
    assert api.script_runs(ids["skipper"]) == [], "catchup skip ran a missed slot"
    assert api.script_runs(ids["deadline"]) == [], "a slot past its starting deadline ran"
    assert slot_runs(srv, ids["latest"]) == [
        (run["id"], slot_name(slots[-1]), slot_name(slots[-1]))
    ]


def test_restarts_never_run_one_slot_twice(
    missed_slots_app: tuple[HgrunServer, Api, dict[str, int], list[float]],
) -> None:
    """A crash between the trigger and the cursor's move (simulated by moving the cursor back
    again) retries the slot at each start; the store's unique key makes the retry a no-op."""
    srv, api, ids, slots = missed_slots_app
    first = wait_for(lambda: api.script_runs(ids["latest"]), 60, "the catch-up run")
    api.finished_run(first[0]["id"])
    for _ in range(2):
        srv.stop()
        set_cursors(srv, [ids["latest"]], slots[0] - 30)
        srv.start()
        wait_ticks(srv, 1)
        assert [r["id"] for r in api.script_runs(ids["latest"])] == [first[0]["id"]]
    assert "already has its run" in srv.log


def test_two_servers_on_one_store_run_a_missed_slot_once(
    missed_slots_app: tuple[HgrunServer, Api, dict[str, int], list[float]],
) -> None:
    srv, api, ids, slots = missed_slots_app
    wait_for(lambda: api.script_runs(ids["latest"]), 60, "the catch-up run")
    srv.stop()
    # Forget the run and the cursor: both servers now see the same missed slot as due.
    db = sqlite3.connect(srv.data_dir / "hgrun.db")
    with db:
        db.execute("DELETE FROM output")
        db.execute("DELETE FROM runs WHERE script_id = ?", (ids["latest"],))
    db.close()
    set_cursors(srv, [ids["latest"]], slots[0] - 30)
    twin = HgrunServer(
        port=free_port(), data_dir=srv.data_dir, docker_host=srv.docker_host, token=srv.token
    )
    try:
        starters = [threading.Thread(target=s.start) for s in (srv, twin)]
        for t in starters:
            t.start()
        for t in starters:
            t.join(90)
        for s in (srv, twin):
            assert s.process is not None and s.process.poll() is None, s.log
        for s in (srv, twin):
            wait_ticks(s, 1)
        made = slot_runs(srv, ids["latest"])
        assert len(made) == 1, made
        assert made[0][1] == slot_name(slots[-1])
    finally:
        twin.stop()


# -- 8. timeouts ---------------------------------------------------------------------------


def test_a_script_past_its_timeout_is_killed_and_timed_out(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("slow"),
        "  slow:\n    command: echo begun; sleep 30\n    timeout: 2s\n    concurrency: allow\n",
    )
    started = time.monotonic()
    run = api.finished_run(api.start(api.script_id(name, "slow"))["id"], timeout=30)
    assert (run["status"], run["exit_code"]) == ("timed_out", TIMED_OUT), run
    assert run["timeout"] == 2
    # Killed well before `sleep 30` would end by itself; the margin is for a loaded machine.
    assert 2 <= run["duration"] < 20, run
    assert time.monotonic() - started < 25
    assert "begun" in api.log_text(name, run["id"])

    began = time.monotonic()
    done = cli("scripts:run", "slow", "--app", name, input=b"")
    assert done.returncode == TIMED_OUT, (done.returncode, text(done.stderr))
    assert "begun" in text(done.stdout)
    assert "timed out" in text(done.stderr)
    assert time.monotonic() - began < 15

    done = cli("scripts:run", "slow", "--app", name, "--detached", "--wait")
    assert done.returncode == TIMED_OUT, (done.returncode, text(done.stderr))


def test_the_servers_max_timeout_caps_a_scripts_timeout(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path
) -> None:
    srv = hgrun_server("--max-timeout", "3s")
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("cap"),
        "  long:\n    command: sleep 60\n    timeout: 1h\n",
        server=srv,
    )
    with Api(srv) as api:
        run = api.finished_run(api.start(api.script_id(name, "long"))["id"], timeout=30)
    assert (run["status"], run["exit_code"], run["timeout"]) == ("timed_out", TIMED_OUT, 3)
    assert run["duration"] < 10


def test_the_default_timeout_is_15_minutes(cli: Cli, api: Api, echo_app: str) -> None:
    run = api.finished_run(api.start(api.script_id(echo_app, "show"))["id"])
    assert run["timeout"] == 15 * 60


# -- 9. bounded history --------------------------------------------------------------------


def test_only_the_last_n_runs_of_a_script_are_kept_with_their_output(
    cli: Cli, api: Api, tmp_path: Path
) -> None:
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("hist"),
        '  keep3:\n    command: echo "output of $HOSTINGGURU_RUN_INPUT"\n    history: 3\n',
    )
    script_id = api.script_id(name, "keep3")
    ids = []
    for i in range(5):
        run = api.finished_run(api.start(script_id, json.dumps({"n": i}).encode())["id"])
        assert run["status"] == "succeeded"
        ids.append(run["id"])

    def pruned() -> list[dict[str, Any]] | None:
        runs = api.script_runs(script_id)
        return runs if len(runs) == 3 else None

    kept = wait_for(pruned, 30, "the history to be pruned to 3")
    assert [r["id"] for r in kept] == ids[:1:-1], "not the newest three, newest first"
    for i, number in enumerate(ids[2:], start=2):
        assert f'output of {{"n": {i}}}' in api.log_text(name, number)
    for number in ids[:2]:
        assert api.http.get(f"/v1/runs/{number}").status_code == 404
        gone = api.http.get(f"/v1/apps/{name}/logs", params={"run": number})
        assert gone.status_code == 404 or gone.text == "", (gone.status_code, gone.text)
    out = check(cli("runs", "--app", name, "--json"))
    assert sorted(r["id"] for r in json.loads(out)) == ids[2:]


# -- 10. notifications ---------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback: records every POST; ``fail_first`` paths answer 500 to
    their first request, ``hang`` paths answer only after 30 s."""

    def __init__(self, fail_first: tuple[str, ...] = (), hang: tuple[str, ...] = ()) -> None:
        self.posts: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    seen = sum(1 for _, path, _ in receiver.posts if path == self.path)
                    receiver.posts.append((time.monotonic(), self.path, json.loads(body)))
                if self.path in hang:
                    time.sleep(30)
                status = 500 if self.path in fail_first and seen == 0 else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, p, body in self.posts if p == path]

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [t for t, p, _ in self.posts if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Mailbox:
    """aiosmtpd's handler interface: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver(fail_first=("/flaky",), hang=("/hang",))
    yield hook
    hook.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def test_a_failing_script_reaches_a_real_webhook_and_a_real_smtp_server(
    hgrun_server: ServerFactory,
    cli: Cli,
    tmp_path: Path,
    receiver: Receiver,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, smtp_port = mailbox
    srv = hgrun_server(
        "--smtp-url", f"smtp://127.0.0.1:{smtp_port}",
        "--mail-from", "hgrun@test.example",
        "--notify-webhook", f"{receiver.url}/workspace",
        "--notify-email", "team@example.com",
    )  # fmt: skip
    notify = f"    notify:\n      webhook: {receiver.url}/hook\n      email: [ops@example.com]\n"
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("notify"),
        "  breaks:\n"
        '    command: \'echo on-stdout; for i in $(seq 1 60); do echo "err-line-$i" >&2; done;'
        " exit 3'\n"
        f"{notify}"
        f"  works:\n    command: echo fine\n{notify}",
        server=srv,
    )
    with Api(srv) as api:
        ok = api.finished_run(api.start(api.script_id(name, "works"))["id"])
        assert ok["status"] == "succeeded"
        run = api.finished_run(api.start(api.script_id(name, "breaks"))["id"])
    assert (run["status"], run["exit_code"]) == ("failed", 3)

    posts = wait_for(lambda: receiver.at("/hook"), 20, "the webhook POST")
    assert len(posts) == 1, "only the failure notifies (on: [failure] is the default)"
    body = posts[0]
    assert isinstance(body["text"], str) and "breaks" in body["text"] and "failed" in body["text"]
    assert body["run"]["id"] == run["id"] and body["run"]["exit_code"] == 3
    assert body["run"]["status"] == "failed" and body["run"]["script"] == "breaks"
    tail = body["stderr_tail"]
    assert tail == [f"err-line-{i}" for i in range(11, 61)], "the last 50 lines of stderr"
    assert wait_for(lambda: receiver.at("/workspace"), 20, "the workspace webhook")[0] == body

    def delivered() -> list[tuple[list[str], email.message.EmailMessage]] | None:
        return box.messages or None

    (recipients, mail), *more = wait_for(delivered, 20, "the mail")
    assert more == [], "one mail for both addresses"
    assert sorted(recipients) == ["ops@example.com", "team@example.com"]
    assert mail["From"] == "hgrun@test.example"
    assert "breaks" in mail["Subject"]
    content = mail.get_content()
    assert "err-line-60" in content and "err-line-11" in content, content
    assert "err-line-10\n" not in content and "on-stdout" not in content


def test_notifications_are_retried_and_a_dead_or_hanging_receiver_never_holds_a_run(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path, receiver: Receiver
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    srv = hgrun_server()
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("deaf"),
        f"  flaky:\n    command: exit 1\n    notify:\n      webhook: {receiver.url}/flaky\n"
        f"  dead:\n    command: exit 4\n    notify:\n      webhook: {dead}\n"
        f"  hangs:\n    command: echo done\n"
        f"    notify:\n      webhook: {receiver.url}/hang\n      on: [success]\n"
        f"  late:\n    command: sleep 30\n    timeout: 1s\n"
        f"    notify:\n      webhook: {receiver.url}/late\n      on: [timeout]\n",
        server=srv,
    )
    with Api(srv) as api:
        run = api.finished_run(api.start(api.script_id(name, "flaky"))["id"])
        assert run["status"] == "failed"
        posts = wait_for(lambda: receiver.at("/flaky")[1:], 20, "the retry after a 500")
        assert posts[0]["run"]["id"] == run["id"]
        first, second = receiver.times("/flaky")[:2]
        assert second - first >= 0.9, "retried without backoff"

        late = api.finished_run(api.start(api.script_id(name, "late"))["id"], timeout=30)
        assert late["status"] == "timed_out"
        body = wait_for(lambda: receiver.at("/late"), 20, "the timeout notification")[0]
        assert body["run"]["id"] == late["id"] and body["run"]["status"] == "timed_out"
        assert "timed_out" in body["text"] or "timed out" in body["text"], body["text"]

        # A queue script whose every run notifies a dead or a hanging receiver: each run ends
        # with its own status, at once, and the next one in the queue starts at once.
        for script, status, code in (("dead", "failed", 4), ("hangs", "succeeded", 0)):
            script_id = api.script_id(name, script)
            began = time.monotonic()
            ids = [api.start(script_id)["id"] for _ in range(3)]
            runs = [api.finished_run(i, timeout=30) for i in ids]
            assert [(r["status"], r["exit_code"]) for r in runs] == [(status, code)] * 3
            assert time.monotonic() - began < 15, f"{script}: the receiver held the runs up"
        assert len(receiver.at("/hang")) >= 1
        # The server still answers while deliveries wait on the hanging receiver.
        assert api.http.get("/v1/health", timeout=2).status_code == 200


# -- 11. scoped tokens ---------------------------------------------------------------------


def store_bytes(data_dir: Path, stem: str) -> bytes:
    """Every byte of a SQLite store on disk: the file and its WAL and journal, if any."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob(f"{stem}*")) if p.is_file())


def test_a_trigger_token_starts_its_script_and_reads_its_runs_and_nothing_else(
    cli: Cli, api: Api, server: HgrunServer, tmp_path: Path
) -> None:
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("scope"),
        "  mine:\n    command: echo mine\n  other:\n    command: echo other\n",
    )
    mine, other = api.script_id(name, "mine"), api.script_id(name, "other")
    other_run = api.finished_run(api.start(other)["id"])
    token_name = unique("ci")
    done = cli("tokens:create", token_name, "--scope", "trigger", "--script", "mine", "--app", name)
    secret = check(done).strip()
    assert secret.startswith("hgr_") and "\n" not in secret, secret
    assert secret not in text(done.stderr)

    with Api(server, secret) as ci:
        started = ci.start(mine, b'{"via": "ci"}')
        run = ci.finished_run(started["id"])
        assert run["status"] == "succeeded"
        assert run["trigger"] == {"kind": "api", "name": token_name}
        assert [r["id"] for r in ci.script_runs(mine)][0] == run["id"]

        denied = [
            ("GET", f"/v1/apps/{name}/logs"),
            ("GET", f"/v1/apps/{name}/logs?run={run['id']}"),
            ("GET", f"/v1/apps/{name}/config"),
            ("PATCH", f"/v1/apps/{name}/config"),
            ("POST", f"/v1/scripts/{other}/runs"),
            ("GET", f"/v1/scripts/{other}/runs"),
            ("GET", f"/v1/runs/{other_run['id']}"),
            ("GET", f"/v1/apps/{name}/releases"),
            ("GET", f"/v1/apps/{name}/runs"),
            ("POST", f"/v1/apps/{name}/runs"),
            ("POST", f"/v1/runs/{run['id']}/stop"),
            ("GET", "/v1/apps"),
            ("GET", "/v1/tokens"),
            ("POST", "/v1/tokens"),
            ("DELETE", f"/v1/tokens/{token_name}"),
            ("GET", "/v1/audit"),
        ]
        # It may list the scripts it may trigger (so the CLI can find them by name), only those.
        listed_scripts = ci.http.get(f"/v1/apps/{name}/scripts")
        assert listed_scripts.status_code == 200
        assert [s["name"] for s in listed_scripts.json()] == ["mine"]

        for method, path in denied:
            body = b"{}" if method in ("POST", "PATCH") else None
            response = ci.http.request(method, path, content=body)
            assert response.status_code == 403, (method, path, response.status_code, response.text)
            assert response.json()["error"] == "forbidden"

        listed = json.loads(check(cli("tokens", "--json")))
        mine_token = [t for t in listed if t["name"] == token_name]
        assert mine_token and mine_token[0]["scope"] == "trigger", listed
        assert "token" not in mine_token[0] and "hash" not in mine_token[0]
        table = check(cli("tokens"))
        assert token_name in table and secret not in table
        assert secret not in json.dumps(listed)

        assert secret.encode() not in store_bytes(server.data_dir, "hgrun.db")
        assert secret not in server.log

        check(cli("tokens:revoke", token_name))
        after = ci.trigger(mine)
        assert after.status_code == 401, (after.status_code, after.text)
        assert ci.http.get(f"/v1/runs/{run['id']}").status_code == 401
    assert token_name not in check(cli("tokens"))


def test_ci_with_a_trigger_token_uses_scripts_run_detached_wait(
    cli: Cli, api: Api, echo_app: str
) -> None:
    """What a CI job does with the token made for it: trigger by name and wait for the code."""
    token_name = unique("ci")
    secret = check(
        cli("tokens:create", token_name, "--scope", "trigger", "--script", "show", "-a", echo_app)
    ).strip()
    try:
        done = cli(
            "scripts:run", "show", "--app", echo_app, "--detached", "--wait",
            "--input", '{"code": 9}', env={"HGRUN_TOKEN": secret},
        )  # fmt: skip
        assert done.returncode == 9, (done.returncode, text(done.stdout), text(done.stderr))
    finally:
        check(cli("tokens:revoke", token_name))


def test_tokens_create_refuses_a_script_for_a_wider_scope_and_an_unknown_script(
    cli: Cli, echo_app: str
) -> None:
    done = cli("tokens:create", unique("x"), "--scope", "run", "--script", "show", "-a", echo_app)
    assert done.returncode == USAGE, text(done.stderr)
    done = cli(
        "tokens:create", unique("x"), "--scope", "trigger", "--script", "nope", "-a", echo_app
    )
    assert done.returncode == 5, text(done.stderr)
    for bad in (cli("tokens:create", "run.7", "--scope", "trigger"),):
        assert bad.returncode == USAGE, text(bad.stderr)
        assert "Traceback" not in text(bad.stderr)


# -- 12. the audit log ---------------------------------------------------------------------


def test_the_audit_store_is_encrypted_shown_by_hgrun_audit_and_tampering_is_reported(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path
) -> None:
    srv = hgrun_server()
    mark = unique("m").split("-")[1]
    command_mark, stdin_mark, json_mark = f"cmdmark{mark}", f"stdin{mark}", f"jsonin{mark}"
    name = deploy_script_app(
        cli,
        tmp_path,
        unique("audit"),
        f"  reader:\n    command: 'read line; echo \"$line\" | tr a-z A-Z; : {command_mark}'\n"
        f"  echoer:\n    command: 'echo \"$HOSTINGGURU_RUN_INPUT\" | tr a-z A-Z'\n",
        server=srv,
    )
    done = cli("scripts:run", "reader", "--app", name, input=f"{stdin_mark}\n".encode(), server=srv)
    assert check(done).strip() == stdin_mark.upper()
    done = cli(
        "scripts:run", "echoer", "--app", name, "--detached", "--wait",
        "--input", json.dumps({"k": json_mark}), server=srv,
    )  # fmt: skip
    detached_label = check(done).strip()
    one_off_mark = f"oneoff{mark}"
    done = cli("run", "--app", name, "sh", "-c", f"echo {one_off_mark}x", input=b"", server=srv)
    assert check(done).strip() == f"{one_off_mark}x"
    with Api(srv) as api:
        attached = api.script_runs(api.script_id(name, "reader"))[0]
        detached = api.run(int(detached_label[4:]))
        assert "JSONIN" in api.log_text(name, detached["id"])

    def sealed() -> bytes | None:
        raw = store_bytes(srv.data_dir, "audit.db")
        return raw if raw.count(b"run.finish") >= 3 else None

    raw = wait_for(sealed, 30, "the audit records of both runs")
    plain_texts = (command_mark, stdin_mark, stdin_mark.upper(), json_mark, json_mark.upper())
    for plain in (*plain_texts, one_off_mark):
        assert plain.encode() not in raw, f"{plain!r} is in audit.db in plaintext"
    key = (srv.data_dir / "audit.key").read_bytes().strip()
    assert key not in raw
    assert (srv.data_dir / "audit.key").stat().st_mode & 0o777 == 0o600

    shown = check(cli("audit", "--run", str(attached["id"]), server=srv))
    assert "user:admin" in shown, shown
    assert command_mark in shown and stdin_mark in shown and stdin_mark.upper() in shown, shown
    shown = check(cli("audit", "--run", detached_label, server=srv))
    assert json_mark in shown and json_mark.upper() in shown, shown
    records = json.loads(check(cli("audit", "--json", server=srv)))["records"]
    assert {r["action"] for r in records} >= {"run.start", "run.finish"}
    assert all(r["problem"] is None for r in records), records
    finish = [r for r in records if r["run"] == attached["id"] and r["action"] == "run.finish"]
    assert finish[0]["payload"]["input"] == f"{stdin_mark}\n"
    assert finish[0]["payload"]["stdout"] == f"{stdin_mark.upper()}\n"

    assert len(records) >= 6, records
    ids = [r["id"] for r in records]
    db = sqlite3.connect(srv.data_dir / "audit.db")
    try:
        # Flip one byte of one record's ciphertext (Fernet tokens are base64: keep it base64).
        (blob,) = db.execute("SELECT payload FROM audit WHERE id = ?", (ids[1],)).fetchone()
        blob = bytearray(blob)
        at = len(blob) // 2
        blob[at] = ord("A") if blob[at] != ord("A") else ord("B")
        with db:
            db.execute("UPDATE audit SET payload = ? WHERE id = ?", (bytes(blob), ids[1]))
            # Point another record at a different run, in the clear column only.
            db.execute("UPDATE audit SET run_id = run_id + 1000 WHERE id = ?", (ids[3],))
            # And drop a third one.
            db.execute("DELETE FROM audit WHERE id = ?", (ids[4],))
    finally:
        db.close()
    done = cli("audit", server=srv)
    assert done.returncode == 1, (done.returncode, text(done.stdout), text(done.stderr))
    assert f"#{ids[1]} " in text(done.stdout) and "!!" in text(done.stdout)
    assert "failed verification" in text(done.stderr) and "Traceback" not in text(done.stderr)
    problems = {
        r["id"]: r["problem"]
        for r in json.loads(cli("audit", "--json", server=srv).stdout)["records"]
    }
    assert problems[ids[0]] is None
    assert problems[ids[1]] == "record was altered"
    assert problems[ids[2]] is not None, "the chain did not catch the changed record"
    assert problems[ids[3]] is not None, "a changed run id went unnoticed"
    assert ids[4] not in problems
    assert problems[ids[5]] is not None, "the chain did not catch the deleted record"
    # Also across a restart, with the key read back from its file.
    srv.restart()
    assert cli("audit", server=srv).returncode == 1
