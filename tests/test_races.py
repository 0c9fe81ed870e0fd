"""The races of issue 7, end to end on a real engine and real servers.

A stop at any moment leaves no container and a canceled run; uploads that never come fail the run
after the grace; an image without /tmp takes uploads; two servers on one store never supervise a
run twice; an attached TTY session outlives a SIGKILL of its server. Waits are polls with a
deadline on the thing awaited, never fixed sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path

import docker
import pytest
from conftest import ServerFactory
from support.api import Api
from support.apps import BUSYBOX_IMAGE, deploy_busybox_app, unique, write_busybox_app
from support.cli import Cli, check, cli_on_pty, read_until
from support.server import HgrunServer, free_port, run_containers
from support.waits import wait_for


def test_a_stop_at_any_moment_leaves_no_container_and_a_canceled_run(
    cli: Cli, busybox_image: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    name = deploy_busybox_app(cli, tmp_path / "app", unique("stop"))
    stopped: list[int] = []
    with Api(cli.server) as api:
        for _ in range(8):
            # The stop goes out the moment the run is listed, while its container is being made.
            made = threading.Thread(
                target=api.http.post,
                args=(f"/v1/apps/{name}/runs",),
                kwargs={"json": {"command": ["sleep", "300"], "detached": True}},
            )
            made.start()

            def listed() -> int | None:
                runs = api.http.get(f"/v1/apps/{name}/runs", params={"active": 1}).json()
                fresh = [r["id"] for r in runs if r["id"] not in stopped]
                return fresh[0] if fresh else None

            number = wait_for(listed, 30, "the run to be listed", interval=0.01)
            response = api.http.post(f"/v1/runs/{number}/stop")
            assert response.status_code in (200, 409), response.text
            stopped.append(number)
            made.join(60)
        for number in stopped:
            run = api.finished_run(number, timeout=60)
            assert run["status"] == "canceled", run
    for number in stopped:
        wait_for(
            lambda n=number: not run_containers(docker_client, cli.server, n),
            30,
            "no container left",
        )


def test_uploads_that_never_come_fail_the_run_after_the_grace(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    server = hgrun_server("--grace", "2s")
    name = deploy_busybox_app(cli, tmp_path / "app", unique("nofiles"), server=server)
    with Api(server) as api:
        response = api.http.post(
            f"/v1/apps/{name}/runs",
            json={"command": ["cat", "/tmp/uploads/x"], "detached": True, "uploads": True},
        )
        assert response.status_code == 201, response.text
        number = response.json()["id"]
        run = api.finished_run(number, timeout=30)
    assert (run["status"], run["exit_code"]) == ("failed", 125)
    assert run["error"] == f"the files for run.{number} did not arrive within 2s; run it again"
    wait_for(lambda: not run_containers(docker_client, server, number), 30, "the container removed")


def test_an_upload_into_an_image_without_tmp(cli: Cli, busybox_image: str, tmp_path: Path) -> None:
    root = tmp_path / "app"
    name = unique("notmp")
    write_busybox_app(root, name)
    (root / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nRUN rm -rf /tmp\n")
    check(cli("apps:create", name))
    check(cli("deploy", cwd=root))
    (tmp_path / "x.txt").write_text("landed\n")
    done = cli("run", "--file", str(tmp_path / "x.txt"), "sh", "-c",
               "cat /tmp/uploads/x.txt; stat -c %a /tmp", cwd=root, input=b"")  # fmt: skip
    assert check(done) == "landed\n1777\n"


def test_two_servers_on_one_store_never_supervise_a_run_twice(
    hgrun_server: ServerFactory, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    first = hgrun_server()
    name = deploy_busybox_app(cli, tmp_path / "app", unique("twin"), server=first)
    script = "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo line$i; sleep 0.25; done"
    with Api(first) as api:
        response = api.http.post(
            f"/v1/apps/{name}/runs", json={"command": ["sh", "-c", script], "detached": True}
        )
        assert response.status_code == 201, response.text
        number = response.json()["id"]

        def printed(n: int) -> bool:
            return any(line["line"] == f"line{n}" for line in api.log_lines(name, number))

        wait_for(lambda: printed(2), 30, "the run to print")
        # A second server on the same store: the run is the first one's.
        second = HgrunServer(
            port=free_port(),
            data_dir=first.data_dir,
            docker_host=first.docker_host,
            token=first.token,
        ).start()
        try:
            first.stop(signal.SIGKILL)  # ... until the first one dies: the second takes it up
            with Api(second) as api2:
                run = api2.finished_run(number, timeout=90)
                lines = [line["line"] for line in api2.log_lines(name, number)]
        finally:
            second.stop(signal.SIGKILL)
    assert run["status"] == "succeeded", run
    assert lines == [f"line{i}" for i in range(1, 41)]  # every line once, none twice


@pytest.mark.skipif(sys.platform != "linux", reason="a pty and dockerd")
def test_a_tty_session_outlives_a_sigkill_of_its_server(
    hgrun_server: ServerFactory, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    server = hgrun_server()
    root = tmp_path / "app"
    deploy_busybox_app(cli, root, unique("tty"), server=server)
    with cli_on_pty(cli, "run", "sh", cwd=root, server=server) as (pid, fd):
        read_until(fd, rb"/app # ", 60)
        os.write(fd, b"echo pid=$$\r")
        before = re.findall(rb"pid=(\d+)", read_until(fd, rb"pid=\d+", 30))[-1]
        server.restart(signal.SIGKILL)
        shown = read_until(fd, rb"reconnecting to run \d+\.\.\.", 30)
        assert shown.count(b"reconnecting") == 1
        os.write(fd, b"echo pid=$$ again\r")
        after = re.findall(rb"pid=(\d+) again", read_until(fd, rb"pid=\d+ again\r\n", 60))
        assert after == [before]  # the same shell, taken up again
        os.write(fd, b"exit 3\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
