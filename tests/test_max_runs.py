"""``hgrun server --max-runs N --max-queue M`` end to end: a real dockerd, real servers, the CLI.

Beyond the cap runs are recorded ``queued`` and start first in, first out as slots free; an
attached ``hgrun run`` that waits shows the wait on its terminal and then gets its exit code; a
queued run stopped is canceled without ever having a container; a full line is a 503 with
Retry-After, one line from the CLI; queued runs survive a restart of the server.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from support.api import Api
from support.apps import deploy_busybox_app, unique
from support.cli import Cli, check, cli_on_pty, cli_popen, read_until, run_id, text
from support.server import HgrunServer, instance_id
from support.waits import wait_for

pytestmark = pytest.mark.docker

BLOCK = "sleep 30"  # a run that holds its slot until the test stops it


@pytest.fixture(scope="module")
def capped(hgrun_server: Any) -> HgrunServer:
    """A server of its own: 2 runs at once, 3 more may wait."""
    return hgrun_server("--max-runs", "2", "--max-queue", "3")


@pytest.fixture(scope="module")
def capped_app(
    cli: Cli, capped: HgrunServer, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("capped-app")
    return deploy_busybox_app(cli, root, unique("cap"), server=capped), root


def _detached(cli: Cli, server: HgrunServer, app: str, command: str) -> int:
    return run_id(check(cli("run", "--detached", "--app", app, command, server=server)))


def _created(server: HgrunServer, app: str, command: str) -> int:
    """A detached run made through the API (faster than the CLI: the timing is the test's)."""
    response = httpx.post(
        f"{server.url}/v1/apps/{app}/runs",
        headers={"Authorization": f"Bearer {server.token}"},
        json={"command": ["sh", "-c", command], "detached": True},
    )
    assert response.status_code == 201, response.text
    number: int = response.json()["id"]
    return number


def _end_all(api: Api, numbers: list[int]) -> None:
    """Leave the server with nothing in flight for the next test."""
    for number in numbers:
        if api.run(number)["status"] in ("queued", "starting", "running"):
            api.stop(number)
    for number in numbers:
        api.finished_run(number, timeout=60)


def _containers_made(client: docker.DockerClient, server: HgrunServer, number: int, since: float):
    """The engine's create events of run ``number`` of ``server`` since ``since`` (epoch s)."""
    events = client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        decode=True,
        filters={
            "type": "container",
            "event": "create",
            "label": [f"hgrun.run={number}", f"hgrun.instance={instance_id(server)}"],
        },
    )
    return list(events)


def test_beyond_the_cap_runs_wait_queued_then_all_succeed_in_order(
    cli: Cli, capped: HgrunServer, capped_app: tuple[str, Path]
) -> None:
    app, _root = capped_app
    # The first slot frees at ~5 s, the second at ~10 s: the third run must take the first,
    # the fourth the second (first in, first out, even though the fourth is shorter).
    numbers = [_created(capped, app, f"sleep {s}") for s in (5, 10, 8, 1)]
    with Api(capped) as api:
        runs = {r["id"]: r for r in api.get(f"/v1/apps/{app}/runs", limit=10)}
        assert [runs[n]["status"] for n in numbers[2:]] == ["queued", "queued"]
        assert [runs[n]["queue"] for n in numbers[2:]] == [
            {"position": 0, "max_runs": 2},
            {"position": 1, "max_runs": 2},
        ]
        assert all(runs[n]["status"] in ("starting", "running") for n in numbers[:2])
        shown = check(cli("runs", "--app", app, "-n", "4", server=capped))
        assert "queued (0 ahead)" in shown and "queued (1 ahead)" in shown
        info = check(cli("runs:info", str(numbers[3]), server=capped))
        assert re.search(r"Status:\s+queued \(1 ahead\)", info), info
        most = 0

        def all_done() -> bool:
            nonlocal most
            # One listing: one read of the store, so the count is of one instant.
            listed = {r["id"]: r["status"] for r in api.get(f"/v1/apps/{app}/runs", limit=10)}
            statuses = [listed[n] for n in numbers]
            most = max(most, sum(s in ("starting", "running") for s in statuses))
            return all(s == "succeeded" for s in statuses)

        wait_for(all_done, timeout=120, what="the four runs to succeed", interval=0.1)
        assert most <= 2
        ended = [api.run(n) for n in numbers]
    first, second, third, fourth = ended
    assert third["started"] >= first["finished"] - 0.5  # in the slot the first freed
    assert fourth["started"] >= second["finished"] - 0.5  # in the next one, not before
    assert third["started"] < fourth["started"]
    assert all(r["queue"] is None for r in ended)


@pytest.mark.skipif(sys.platform != "linux", reason="a pty")
def test_an_attached_run_shows_its_wait_then_gets_its_exit_code(
    cli: Cli, capped: HgrunServer, capped_app: tuple[str, Path]
) -> None:
    app, root = capped_app
    blockers = [_detached(cli, capped, app, BLOCK) for _ in range(2)]
    command = ("run", "sh", "-c", "echo in-the-run; exit 7")
    with cli_on_pty(cli, *command, cwd=root, server=capped) as (pid, fd):
        shown = read_until(fd, rb"waiting for a free run slot \(next in line, --max-runs 2\)", 60)
        assert b"in-the-run" not in shown
        with Api(capped) as api:
            api.stop(blockers[0])  # a slot frees: the attached run goes on
            shown += read_until(fd, rb"in-the-run", 60)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 7
            _end_all(api, blockers)


@pytest.mark.skipif(sys.platform != "linux", reason="a pty")
def test_ctrl_c_while_an_attached_run_waits_stops_it(
    cli: Cli, capped: HgrunServer, capped_app: tuple[str, Path]
) -> None:
    app, root = capped_app
    blockers = [_detached(cli, capped, app, BLOCK) for _ in range(2)]
    with cli_on_pty(cli, "run", "sh", cwd=root, server=capped) as (pid, fd):
        read_until(fd, rb"waiting for a free run slot", 60)
        os.write(fd, b"\x03")  # the terminal is not raw yet: Ctrl-C is SIGINT to hgrun
        shown = read_until(fd, rb"which waited for a slot", 30)
        found = re.findall(rb"stopped run\.(\d+), which waited", shown)
        assert found, shown
        number = int(found[-1])
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 130
    with Api(capped) as api:
        run = api.run(number)
        assert (run["status"], run["started"]) == ("canceled", None)
        _end_all(api, blockers)


def test_a_piped_attached_run_waits_quietly_and_keeps_its_stdin(
    cli: Cli, capped: HgrunServer, capped_app: tuple[str, Path]
) -> None:
    app, _root = capped_app
    blockers = [_detached(cli, capped, app, BLOCK) for _ in range(2)]
    waiting = cli_popen(cli, "run", "--app", app, "cat", server=capped)
    with Api(capped) as api:

        def queued() -> bool:
            return any(r["status"] == "queued" for r in api.get(f"/v1/apps/{app}/runs", limit=3))

        wait_for(queued, timeout=60, what="the attached run to be queued")
        api.stop(blockers[1])
        out, err = waiting.communicate(b"through the line\n", timeout=120)
        assert waiting.returncode == 0, text(err)
        assert out == b"through the line\n"
        assert b"waiting" not in err  # not a terminal: nothing extra on stderr
        _end_all(api, blockers)


def test_a_stopped_queued_run_is_canceled_without_a_container(
    cli: Cli,
    capped: HgrunServer,
    capped_app: tuple[str, Path],
    docker_client: docker.DockerClient,
) -> None:
    app, _root = capped_app
    since = time.time()
    blockers = [_detached(cli, capped, app, BLOCK) for _ in range(2)]
    number = _detached(cli, capped, app, "echo never")
    with Api(capped) as api:
        assert api.run(number)["status"] == "queued"
        stopped = cli("stop", str(number), server=capped)
        check(stopped)
        assert f"Stopped run.{number} (canceled)" in text(stopped.stderr)
        run = api.run(number)
        assert run["status"] == "canceled" and run["started"] is None
        _end_all(api, blockers)
        # A slot freed after the stop: the canceled run still never started.
        assert api.run(number)["status"] == "canceled"
    assert _containers_made(docker_client, capped, number, since) == []
    assert len(_containers_made(docker_client, capped, blockers[0], since)) == 1


def test_a_full_line_is_a_503_and_one_line_from_the_cli(
    cli: Cli, capped: HgrunServer, capped_app: tuple[str, Path]
) -> None:
    app, _root = capped_app
    numbers = [_detached(cli, capped, app, BLOCK) for _ in range(5)]  # 2 run, 3 wait
    with Api(capped) as api:
        before = len(api.get(f"/v1/apps/{app}/runs", limit=100))
        response = httpx.post(
            f"{capped.url}/v1/apps/{app}/runs",
            headers={"Authorization": f"Bearer {capped.token}"},
            json={"command": ["true"], "detached": True},
        )
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"] == "busy"
        done = cli("run", "--detached", "--app", app, "true", server=capped)
        assert done.returncode == 125, text(done.stderr)
        lines = text(done.stderr).splitlines()
        assert lines == [
            "error: the server is running its most runs at once (--max-runs 2) and 3 more"
            " wait (--max-queue 3): try again later"
        ]
        assert done.stdout == b""
        assert len(api.get(f"/v1/apps/{app}/runs", limit=100)) == before  # nothing recorded
        _end_all(api, numbers)


def test_queued_runs_survive_a_restart_and_run_in_order(
    hgrun_server: Any, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    server = hgrun_server("--max-runs", "1")
    app = deploy_busybox_app(cli, tmp_path / "app", unique("requeue"), server=server)
    first = _created(server, app, "sleep 8")
    queued = [_created(server, app, f"echo queued-{i}") for i in range(3)]
    with Api(server) as api:
        assert [api.run(n)["status"] for n in queued] == ["queued"] * 3
    server.restart(signal.SIGKILL)
    with Api(server) as api:
        ended = [api.finished_run(n, timeout=120) for n in (first, *queued)]
        assert [r["status"] for r in ended] == ["succeeded"] * 4
        assert [api.log_text(app, n).strip() for n in queued] == [
            "queued-0",
            "queued-1",
            "queued-2",
        ]
    starts = [r["started"] for r in ended]
    assert starts == sorted(starts)  # in order, one at a time (--max-runs 1)
    for before, after in zip(ended, ended[1:], strict=False):
        assert after["started"] >= before["finished"] - 0.5
