"""The warm pool on a real engine (hgrun.server.warm): an attached run takes a container started
ahead of it, and gives what a container made for it gives: output, exit code, env, stdin, a
terminal of the client's size, recovery after a SIGKILL of the server. Which kind of container a
run had is read from inside it: a warm container's PID 1 (docker-init) carries the shim."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import termios
from pathlib import Path

import docker
import pytest
from conftest import ServerFactory
from support.api import Api
from support.apps import (
    create_and_deploy,
    deploy_busybox_app,
    own_server_app,
    unique,
    write_busybox_app,
)
from support.cli import Cli, check, cli_on_pty, cli_popen, read_line, read_until, text
from support.server import HgrunServer, instance_id
from support.waits import wait_for

PID1 = "tr '\\0' ' ' < /proc/1/cmdline; echo"
SHIM_MARK = "__hgrun_l"  # a word of the shim's, on PID 1's command line in a warm container


@pytest.fixture
def app(cli: Cli, busybox_image: str, tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "app"
    return deploy_busybox_app(cli, root, unique("warm")), root


def warm(client: docker.DockerClient, instance: str) -> list[str]:
    """The idle warm containers of a server (by its instance label), running."""
    found = client.containers.list(
        filters={"label": ["hgrun.run=warm", f"hgrun.instance={instance}"], "status": "running"},
        sparse=True,  # no inspect of each: one may be taken and removed meanwhile
    )
    return [c.id for c in found]


def warmed(
    cli: Cli,
    root: Path,
    client: docker.DockerClient,
    server: HgrunServer | None = None,
    *,
    mode: str = "--no-tty",
) -> None:
    """A run of the app in ``root``, then a warm container of its kind, idle."""
    check(cli("run", mode, "true", cwd=root, server=server, input=b""))
    instance = instance_id(server or cli.server)
    wait_for(lambda: warm(client, instance), 30, "a warm container")


def containers(client: docker.DockerClient, *labels: str) -> set[str]:
    """The ids of every container with all of ``labels``, in any state."""
    return {
        c.id for c in client.containers.list(all=True, filters={"label": list(labels)}, sparse=True)
    }


def was_warm(output: bytes) -> bool:
    return SHIM_MARK in text(output).splitlines()[0]


def test_the_next_run_takes_a_warm_container_and_gives_what_a_fresh_one_gives(
    cli: Cli, app: tuple[str, Path], server: HgrunServer, docker_client: docker.DockerClient
) -> None:
    _, root = app
    script = f"{PID1}; echo out; echo err >&2; exit 7"
    first = cli("run", "--no-tty", "sh", "-c", script, cwd=root, input=b"")
    assert first.returncode == 7, text(first.stderr)
    assert not was_warm(first.stdout), "a kind's first run has no warm container to take"
    instance = instance_id(server)
    wait_for(lambda: warm(docker_client, instance), 30, "a warm container after the first run")
    second = cli("run", "--no-tty", "sh", "-c", script, cwd=root, input=b"")
    assert second.returncode == 7, text(second.stderr)
    assert was_warm(second.stdout), text(second.stdout)
    assert second.stdout.splitlines()[1:] == [b"out"]
    assert second.stderr == b"err\n"


def test_argv_env_and_stdin_arrive_exactly(
    cli: Cli, app: tuple[str, Path], server: HgrunServer, docker_client: docker.DockerClient
) -> None:
    _, root = app
    args = ["it's", "", "new\nline", "ünï €", "$HOME `id` %s", "x" * 5000]
    values = {"QUOTE": "a'b\"c", "LINES": "one\ntwo\n", "UTF": "日本", "EMPTY": ""}
    env_flags = [f"--env={k}={v}" for k, v in values.items()]
    show = (
        "for a in \"$@\"; do printf '%s' \"$a\" | od -An -v -tx1 | tr -d ' \\n'; echo; done;"
        f" echo ===; env; echo ===; {PID1}; echo ---; cat"
    )
    data = os.urandom(256 * 1024)
    runs = []
    for _ in range(2):  # cold, then warm
        done = cli(
            "run", "--no-tty", *env_flags, "sh", "-c", show, "sh", *args, cwd=root, input=data
        )
        assert done.returncode == 0, text(done.stderr)
        head, _, piped = done.stdout.partition(b"---\n")
        hexes, env_text, pid1 = head.decode().split("===\n")
        assert [bytes.fromhex(h).decode() for h in hexes.splitlines()] == args
        for key, value in values.items():
            assert f"{key}={value}\n" in env_text, key
        assert "__hgrun" not in env_text, "the shim's own names leak into the run's env"
        assert piped == data, "stdin through to the command, and its end"
        runs.append(SHIM_MARK in pid1)
        wait_for(lambda: warm(docker_client, instance_id(server)), 30, "a warm container")
    assert runs == [False, True]


def test_exit_codes_of_a_missing_and_a_non_executable_command(
    cli: Cli, app: tuple[str, Path], server: HgrunServer, docker_client: docker.DockerClient
) -> None:
    _, root = app
    warmed(cli, root, docker_client)
    missing = cli("run", "--no-tty", "no-such-command-here", cwd=root, input=b"")
    assert missing.returncode == 127, text(missing.stderr)
    assert "no-such-command-here" in text(missing.stderr)
    wait_for(lambda: warm(docker_client, instance_id(server)), 30, "a warm container")
    not_executable = cli("run", "--no-tty", "/etc/passwd", cwd=root, input=b"")
    assert not_executable.returncode == 126, text(not_executable.stderr)


def winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_a_terminal_shows_no_echo_of_the_handoff_and_has_the_client_s_size(
    cli: Cli, app: tuple[str, Path], server: HgrunServer, docker_client: docker.DockerClient
) -> None:
    _, root = app
    shown = []
    for _ in range(2):  # cold, then warm
        with cli_on_pty(cli, "run", "sh", "-c", f"{PID1}; stty size; exit 3", cwd=root) as (
            pid,
            fd,
        ):
            winsize(fd, 33, 111)
            seen = read_until(fd, rb"33 111", 60)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 3
        assert b"__hgrun_v" not in seen and b"printf" not in seen, seen
        shown.append(seen)
        wait_for(lambda: warm(docker_client, instance_id(server)), 30, "a warm container")
    assert SHIM_MARK not in text(shown[0]) and SHIM_MARK in text(shown[1])


@pytest.mark.parametrize("tty", [False, True])
def test_a_warm_run_is_taken_up_again_after_a_sigkill_of_its_server(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    tty: bool,
) -> None:
    # The server dies before the run printed anything: the next one finds nothing stored and
    # takes every byte from Docker's log, which begins with the handoff (on a TTY, its echo).
    srv, root, name = own_server_app(hgrun_server, cli, tmp_path, "warmkill")
    instance = instance_id(srv)
    warmed(cli, root, docker_client, srv, mode="--tty" if tty else "--no-tty")
    script = f"sleep 2; {PID1}; echo after; exit 5"
    with contextlib.ExitStack() as stack:
        if tty:
            stack.enter_context(cli_on_pty(cli, "run", "sh", "-c", script, cwd=root, server=srv))
        else:
            client = cli_popen(cli, "run", "--no-tty", "sh", "-c", script, cwd=root, server=srv)
            stack.callback(client.wait)
            stack.callback(client.kill)
        with Api(srv) as api:
            number = wait_for(lambda: in_flight(cli, root, srv), 30, "the run in flight")
            api.running(number)
        srv.restart(signal.SIGKILL)
    with Api(srv) as api:
        info = api.finished_run(number, timeout=60)
        assert (info["status"], info["exit_code"]) == ("failed", 5), info
        lines = [line["line"] for line in api.log_lines(name, number)]
    assert len(lines) == 2 and lines[1] == "after", lines
    assert SHIM_MARK in lines[0] and "__hgrun_v" not in lines[0], "a warm run, its output only"
    assert not any("\x1b" in line for line in lines), lines

    def only_warm_left() -> bool:
        every = containers(docker_client, f"hgrun.instance={instance}")
        return every <= containers(docker_client, f"hgrun.instance={instance}", "hgrun.run=warm")

    wait_for(only_warm_left, 30, "the run's container removed")


def in_flight(cli: Cli, root: Path, server: HgrunServer) -> int | None:
    """The id of the one run in flight, once there is one."""
    listed = json.loads(check(cli("ps", "--json", cwd=root, server=server)))
    return int(listed[0]["id"]) if listed else None


def test_warm_containers_of_a_killed_server_are_removed_when_it_starts_again(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv, root, _ = own_server_app(hgrun_server, cli, tmp_path, "warmstray")
    instance = instance_id(srv)
    warmed(cli, root, docker_client, srv)
    left = set(warm(docker_client, instance))
    srv.restart(signal.SIGKILL)

    def removed() -> bool:
        return not left & containers(docker_client, f"hgrun.instance={instance}")

    wait_for(removed, 30, "the killed server's warm containers removed")
    srv.stop()

    def none_left() -> bool:
        return not containers(docker_client, f"hgrun.instance={instance}")

    warmed(cli, root, docker_client, srv.start())
    srv.stop()  # SIGTERM: a server that stops removes its own
    wait_for(none_left, 30, "a stopped server's warm containers removed")


def test_an_image_without_a_shell_runs_the_usual_way_and_is_not_tried_again(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv = hgrun_server()
    root = tmp_path / "app"
    name = unique("nosh")
    dockerfile = (
        f"FROM {busybox_image} AS tools\nFROM scratch\nCOPY --from=tools /bin/busybox /busybox\n"
    )
    write_busybox_app(root, name, dockerfile=dockerfile)
    create_and_deploy(cli, root, name, srv)
    instance = instance_id(srv)
    for i in range(4):
        done = cli("run", "--no-tty", "/busybox", "echo", f"run {i}", cwd=root, server=srv)
        assert check(done) == f"run {i}\n"
    made = containers(docker_client, "hgrun.run=warm", f"hgrun.instance={instance}")
    assert len(made) <= 1, "the pool gives up on an image whose shell is missing"
    # One warm container was made, found ended at the next run's take, and the image refused.
    assert srv.log.count("hgrun.warm warm container") == 1, srv.log


def test_no_warm_container_with_warm_0(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv, root, _ = own_server_app(hgrun_server, cli, tmp_path, "cold", "--warm", "0")
    for _ in range(2):
        done = cli("run", "--no-tty", "sh", "-c", PID1, cwd=root, server=srv, input=b"")
        assert SHIM_MARK not in check(done)
    assert not containers(docker_client, "hgrun.run=warm", f"hgrun.instance={instance_id(srv)}")


def test_a_stop_reaches_the_command_of_a_warm_run(
    cli: Cli, app: tuple[str, Path], server: HgrunServer, docker_client: docker.DockerClient
) -> None:
    _, root = app
    warmed(cli, root, docker_client)
    script = f"{PID1}; trap 'echo got TERM; exit 9' TERM; echo ready; while :; do sleep 0.1; done"
    client = cli_popen(cli, "run", "--no-tty", "sh", "-c", script, cwd=root)
    assert SHIM_MARK in text(read_line(client))
    assert read_line(client) == b"ready\n"
    (number,) = [r["id"] for r in json.loads(check(cli("ps", "--json", cwd=root)))]
    check(cli("stop", f"run.{number}", cwd=root, timeout=60))
    out, _ = client.communicate(timeout=60)
    assert out == b"got TERM\n"  # the command's trap ran: docker-init passed the SIGTERM on
    with Api(server) as api:
        assert api.finished_run(number)["status"] == "canceled"
