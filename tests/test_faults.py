"""What the README promises when things go wrong, end to end on a real engine and real servers.

Each test closes one hole named in issue 7 ("A suite that proves what the README claims"): exit
125 when hgrun cannot run a command, 130 on Ctrl-C (piped and in a real terminal), the grace
period after a dropped client running out, the idle timeout, runs marked ``lost``, strays
removed at start-up, the ``--max-upload`` cap, and ``hgrun attach`` to a run still going.

Servers with short limits (``--grace 2s``, ``--idle-timeout 2s``, ``--max-upload 1``) are started
per test, so the shared server keeps its defaults. Waits are polls with a deadline on the thing
awaited (a line on a pipe, a run's status, a container gone), never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import ServerFactory
from support.api import Api
from support.apps import (
    BUSYBOX_IMAGE,
    deploy_busybox_app,
    own_server_app,
    unique,
    write_busybox_app,
)
from support.cli import Cli, check, cli_popen, read_line, run_id, text
from support.server import HgrunServer, instance_id, run_containers
from support.waits import wait_for

READY = "echo ready; exec sleep 600"


@pytest.fixture
def app(cli: Cli, busybox_image: str, tmp_path: Path) -> tuple[str, Path]:
    """A deployed busybox app on the shared server: (name, folder)."""
    root = tmp_path / "app"
    return deploy_busybox_app(cli, root, unique("fault")), root


def start_attached(
    cli: Cli,
    root: Path,
    command: list[str],
    started: list[subprocess.Popen[bytes]],
    server: HgrunServer | None = None,
) -> subprocess.Popen[bytes]:
    """`hgrun run COMMAND` (piped) in the background from ``root``, returned once the command
    printed its first line, ``ready``; kept in ``started`` for the cleanup."""
    client = cli_popen(cli, "run", *command, cwd=root, server=server)
    started.append(client)
    assert read_line(client) == b"ready\n"
    return client


def active_run(api: Api, app: str, command: list[str]) -> int:
    """The id of the one run in flight of ``app`` with ``command`` (waited for)."""

    def find() -> int | None:
        response = api.http.get(f"/v1/apps/{app}/runs", params={"active": 1})
        assert response.status_code == 200, response.text
        for run in response.json():
            if run["command"] == command and run["status"] == "running":
                return int(run["id"])
        return None

    return wait_for(find, 60, f"a running run of {command!r}")


def finish(
    process: subprocess.Popen[bytes], timeout: float = 60, input: bytes | None = None
) -> tuple[int, str, str]:
    """Send ``input`` (then EOF) and wait for ``process``; its exit code, stdout and stderr
    (killed if it outlives ``timeout``)."""
    try:
        out, err = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(
            f"the CLI did not exit within {timeout} s\n{text(out)[-2000:]}\n{text(err)[-2000:]}"
        ) from None
    return process.returncode, text(out), text(err)


@pytest.fixture
def popen_cleanup() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started: killed at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- 125: hgrun could not run it -------------------------------------------------------------


def test_a_command_the_engine_cannot_start_exits_125_and_is_recorded(
    cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    # The image names a user its /etc/passwd does not have: the engine creates the container
    # and refuses to start it ("unable to find user ghost"), which is neither 126 nor 127.
    name = unique("c125")
    root = write_busybox_app(tmp_path / "app", name)
    (root / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nUSER ghost\n")
    check(cli("apps:create", name))
    check(cli("deploy", cwd=root))

    done = cli("run", "echo", "never printed", cwd=root, input=b"")
    assert done.returncode == 125, (done.returncode, text(done.stderr))
    assert done.stdout == b""
    assert "Traceback" not in text(done.stderr)
    assert "ghost" in text(done.stderr), text(done.stderr)

    detached = cli("run", "--detached", "echo", "never printed", cwd=root, input=b"")
    number = run_id(check(detached))
    with Api(cli.server) as api:
        info = api.finished_run(number)
        assert (info["status"], info["exit_code"]) == ("failed", 125), info
        assert "ghost" in (info["error"] or ""), info
        assert "never printed" not in "".join(line["line"] for line in api.log_lines(name, number))


# -- 130: Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_on_a_piped_run_exits_130_and_stops_the_run(
    cli: Cli,
    app: tuple[str, Path],
    docker_client: docker.DockerClient,
    popen_cleanup: list[subprocess.Popen[bytes]],
) -> None:
    name, root = app
    command = ["sh", "-c", READY]
    client = start_attached(cli, root, command, popen_cleanup)
    with Api(cli.server) as api:
        number = active_run(api, name, command)
        client.send_signal(signal.SIGINT)
        code, _, err = finish(client)
        assert code == 130, err
        assert "Traceback" not in err
        # Without a TTY, Ctrl-C is the CLI's: it stops the remote command too, as docker run.
        info = api.finished_run(number)
        assert info["status"] == "canceled", info
    wait_for(
        lambda: not run_containers(docker_client, cli.server, number), 30, "the container removed"
    )


def tmux(socket_name: str, *args: str) -> str:
    done = subprocess.run(
        ["tmux", "-L", socket_name, *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(
    subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
    reason="tmux is not installed (scripts/setup installs it)",
)
def test_ctrl_c_in_a_terminal_reaches_the_command_and_exits_130(
    cli: Cli, app: tuple[str, Path], tmp_path: Path
) -> None:
    """In a real terminal (tmux), Ctrl-C is a key: it travels to the remote TTY, interrupts the
    command there, and `hgrun run` exits with the command's 130."""
    name, root = app
    status_file = tmp_path / "status"
    env = cli.env()
    exports = " ".join(
        f"{k}={shlex.quote(env[k])}"
        for k in ("HGRUN_URL", "HGRUN_TOKEN", "XDG_CONFIG_HOME", "NO_COLOR", "PYTHONPATH")
        if k in env
    )
    command = (
        f"cd {shlex.quote(str(root))} && env {exports} {shlex.quote(sys.executable)}"
        " -m hgrun.cli.main run sh -c 'echo ready; exec sleep 600';"
        f" echo $? > {shlex.quote(str(status_file))}; sleep 600"
    )
    socket_name = f"hgrun-test-{uuid.uuid4().hex[:8]}"
    tmux(socket_name, "new-session", "-d", "-x", "100", "-y", "30", command)
    try:
        wait_for(
            lambda: "ready" in tmux(socket_name, "capture-pane", "-p"),
            60,
            "the remote command's first line in the terminal",
        )
        with Api(cli.server) as api:
            number = active_run(api, name, ["sh", "-c", "echo ready; exec sleep 600"])
            assert api.run(number)["tty"] is True
            tmux(socket_name, "send-keys", "C-c")
            wait_for(lambda: status_file.exists() and status_file.read_text(), 60, "the exit")
            assert status_file.read_text().strip() == "130", tmux(socket_name, "capture-pane", "-p")
            info = api.finished_run(number)
            # The interrupt went to the command (the run ended by itself), not to a stop.
            assert (info["status"], info["exit_code"]) == ("failed", 130), info
    finally:
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)


# -- the grace period after a dropped client -------------------------------------------------


def test_a_dropped_client_past_the_grace_period_ends_the_run_canceled(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    popen_cleanup: list[subprocess.Popen[bytes]],
) -> None:
    srv, root, name = own_server_app(hgrun_server, cli, tmp_path, "grace", "--grace", "2s")
    command = ["sh", "-c", READY]
    client = start_attached(cli, root, command, popen_cleanup, srv)
    with Api(srv) as api:
        number = active_run(api, name, command)
        dropped = time.time()
        client.kill()  # the connection drops without a goodbye
        client.wait(30)
        info = api.finished_run(number, timeout=60)
    assert info["status"] == "canceled", info
    assert "no client attached for 2s" in (info["error"] or ""), info
    # Not before the grace ran out (the run's finish is the engine's clock, this host's).
    assert info["finished"] >= dropped + 2 - 0.2, (info["finished"] - dropped, info)
    wait_for(lambda: not run_containers(docker_client, srv, number), 30, "the container removed")


def test_a_client_that_comes_back_within_the_grace_period_keeps_the_run(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    tmp_path: Path,
    popen_cleanup: list[subprocess.Popen[bytes]],
) -> None:
    """The other side of the grace: a dropped client that re-attaches in time keeps its run,
    and the run's own exit code comes back (the grace is counted from the last client gone)."""
    # A grace a loaded machine cannot miss: a new CLI process must start, import and attach
    # within it (4 s is tight for that on two busy cores); only a failing test waits it out.
    srv, root, name = own_server_app(hgrun_server, cli, tmp_path, "regrace", "--grace", "60s")
    # Ends by itself once it reads a line: the re-attached client sends it.
    command = ["sh", "-c", "echo ready; read line; echo got $line; exit 9"]
    client = start_attached(cli, root, command, popen_cleanup, srv)
    with Api(srv) as api:
        number = active_run(api, name, command)
        client.kill()
        client.wait(30)
        again = cli_popen(cli, "attach", str(number), cwd=root, server=srv)
        popen_cleanup.append(again)
        code, out, err = finish(again, input=b"hello\n")
        assert code == 9, err
        assert out.endswith("got hello\n"), out
        info = api.finished_run(number)
        assert (info["status"], info["exit_code"]) == ("failed", 9), info


# -- the idle timeout ------------------------------------------------------------------------


def test_an_idle_attached_session_is_closed_with_a_message(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    tmp_path: Path,
    popen_cleanup: list[subprocess.Popen[bytes]],
) -> None:
    srv, root, name = own_server_app(hgrun_server, cli, tmp_path, "idle", "--idle-timeout", "2s")
    command = ["sh", "-c", READY]
    client = start_attached(cli, root, command, popen_cleanup, srv)
    quiet_since = time.time()
    with Api(srv) as api:
        number = active_run(api, name, command)
        code, _, err = finish(client, timeout=90)
        info = api.finished_run(number)
    assert code != 0, err
    assert "idle" in err and "--detached" in err, err
    assert info["status"] == "canceled", info
    assert "idle for 2s" in (info["error"] or ""), info
    assert info["finished"] >= quiet_since + 2 - 0.2, (info["finished"] - quiet_since, info)


def test_output_keeps_an_attached_session_from_going_idle(
    hgrun_server: ServerFactory, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    # A line every 0.25 s for 6 s, against an idle timeout of 3 s: activity, never idle.
    srv, root, _ = own_server_app(hgrun_server, cli, tmp_path, "busy", "--idle-timeout", "3s")
    script = "i=0; while [ $i -lt 24 ]; do i=$((i+1)); echo tick$i; sleep 0.25; done"
    done = cli("run", "sh", "-c", script, cwd=root, server=srv, input=None, timeout=120)
    assert done.returncode == 0, text(done.stderr)
    assert text(done.stdout).splitlines()[-1] == "tick24"


# -- runs marked lost, strays removed --------------------------------------------------------


def test_a_run_whose_container_vanished_while_the_server_was_down_is_lost(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv, root, name = own_server_app(hgrun_server, cli, tmp_path, "lost")
    gone = run_id(check(cli("run", "--detached", "sleep", "600", cwd=root, server=srv)))
    kept = run_id(check(cli("run", "--detached", "sleep", "601", cwd=root, server=srv)))
    with Api(srv) as api:
        for number in (gone, kept):
            wait_for(lambda n=number: api.run(n)["status"] == "running", 60, f"run {number}")
    srv.stop(signal.SIGKILL)
    (container,) = run_containers(docker_client, srv, gone)
    container.remove(force=True)  # behind the server's back
    srv.start()
    with Api(srv) as api:
        info = api.finished_run(gone, timeout=60)
        assert info["status"] == "lost", info
        assert info["finished"] is not None and info["error"], info
        # The run whose container survived is taken up again, not lost.
        assert api.run(kept)["status"] == "running"
        check(cli("stop", str(kept), cwd=root, server=srv))
    shown = check(cli("runs:info", str(gone), cwd=root, server=srv))
    assert "lost" in shown
    listed = json.loads(check(cli("runs", "--status", "lost", "--json", cwd=root, server=srv)))
    assert [run["id"] for run in listed] == [gone], listed
    assert name in {run["app"] for run in listed}


def test_strays_are_removed_at_start_and_other_servers_containers_are_not(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv, root, _ = own_server_app(hgrun_server, cli, tmp_path, "stray")
    finished = run_id(check(cli("run", "--detached", "true", cwd=root, server=srv)))
    with Api(srv) as api:
        assert api.finished_run(finished)["status"] == "succeeded"
    instance = instance_id(srv)

    def container(labels: dict[str, str]) -> Any:
        return docker_client.containers.create(
            BUSYBOX_IMAGE, ["sleep", "600"], labels={"hgrun.test": "1", **labels}
        )

    strays = [
        container({"hgrun.instance": instance, "hgrun.run": "987654321"}),  # no such run
        container({"hgrun.instance": instance, "hgrun.run": str(finished)}),  # a finished run
        container({"hgrun.instance": instance}),  # no run label at all
    ]
    strays[0].start()  # a running stray too, not only created ones
    other = container({"hgrun.instance": "another-server", "hgrun.run": "987654321"})
    try:
        srv.restart()

        def strays_gone() -> bool:
            ids = {c.id for c in docker_client.containers.list(all=True)}
            return not ids & {s.id for s in strays}

        wait_for(strays_gone, 30, "the strays to be removed")
        other.reload()  # still there: it is not this server's
    finally:
        other.remove(force=True)
        for stray in strays:
            with contextlib.suppress(docker.errors.NotFound):
                stray.remove(force=True)


# -- the upload cap --------------------------------------------------------------------------


def test_an_upload_over_max_upload_is_413_and_the_run_never_starts(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv, root, name = own_server_app(hgrun_server, cli, tmp_path, "cap", "--max-upload", "1")  # MB
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(200_000))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))

    # Under the cap: the file arrives.
    done = cli("run", "--file", str(small), "wc", "-c", "/tmp/uploads/small.bin",
               cwd=root, server=srv, input=b"")  # fmt: skip
    assert check(done).split()[0] == "200000"

    # Over it, through the CLI: a one-line error, and the command never ran.
    marker = "the command ran"
    done = cli("run", "--file", str(big), "echo", marker, cwd=root, server=srv, input=b"")
    assert done.returncode != 0 and done.returncode not in (125,), text(done.stderr)
    err = text(done.stderr)
    assert err.startswith("error: ") and "cap" in err and "Traceback" not in err, err
    assert marker not in text(done.stdout)

    # Over it, through the API: 413, the run ends failed, nothing started, no container left.
    with Api(srv) as api:
        made = api.http.post(
            f"/v1/apps/{name}/runs",
            json={"command": ["echo", marker], "detached": True, "uploads": True},
        )
        assert made.status_code == 201, made.text
        number = made.json()["id"]
        response = api.http.put(
            f"/v1/runs/{number}/files",
            content=big.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert response.status_code == 413, response.text
        assert response.json()["error"] and "--max-upload" in (response.json()["hint"] or "")
        info = api.finished_run(number)
        assert info["status"] == "failed" and info["started"] is None, info
        assert marker not in "".join(line["line"] for line in api.log_lines(name, number))
    wait_for(lambda: not run_containers(docker_client, srv, number), 30, "the container removed")


# -- re-attach while the run is still going --------------------------------------------------


def test_reattach_while_running_shows_the_lines_printed_while_away_then_live_ones(
    cli: Cli,
    app: tuple[str, Path],
    popen_cleanup: list[subprocess.Popen[bytes]],
) -> None:
    name, root = app
    # Prints `away1..away20` while no client is attached, then waits for a line that only the
    # re-attached client can send, so what follows is live output by construction.
    script = (
        "echo ready; i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo away$i; done;"
        " read line; echo got $line; for j in 1 2 3; do echo live$j; done; exit 4"
    )
    command = ["sh", "-c", script]
    first = start_attached(cli, root, command, popen_cleanup)
    with Api(cli.server) as api:
        number = active_run(api, name, command)
        first.kill()
        first.wait(30)

        def away_logged() -> bool:
            return any(line["line"] == "away20" for line in api.log_lines(name, number))

        wait_for(away_logged, 30, "the lines printed while away to be stored")
        assert api.run(number)["status"] == "running"
        again = cli_popen(cli, "attach", str(number), cwd=root)
        popen_cleanup.append(again)
        code, out, err = finish(again, input=b"back\n")
    assert code == 4, err
    lines = out.splitlines()
    assert [f"away{i}" for i in range(1, 21)] == [x for x in lines if x.startswith("away")], out
    assert lines[-4:] == ["got back", "live1", "live2", "live3"], out


# -- output of a short TTY run ---------------------------------------------------------------


def test_a_short_tty_run_never_loses_its_output(cli: Cli, app: tuple[str, Path]) -> None:
    """`hgrun run --tty sh -c 'echo hello-tty' < /dev/null` prints it, every time: up to 20
    tries, stopping at the first that loses it (a race: one try would prove little)."""
    name, root = app
    with Api(cli.server) as api:
        for attempt in range(20):
            done = cli("run", "--tty", "sh", "-c", "echo hello-tty", cwd=root, input=b"")
            assert done.returncode == 0, text(done.stderr)
            runs = api.http.get(f"/v1/apps/{name}/runs", params={"limit": 1}).json()
            stored = "".join(line["line"] for line in api.log_lines(name, runs[0]["id"]))
            assert (done.stdout, stored) == (b"hello-tty\r\n", "hello-tty"), attempt
