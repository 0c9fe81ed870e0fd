"""Image builds get the run hardening's bounds (issue 8, item 5): memory without swap and CPUs
for each step, and a wall-time limit past which the build is stopped with one line. A real
server and engine; the build is sent as the CLI sends it (``POST /v1/apps/{app}/builds``)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time

import docker
import httpx
import pytest
from conftest import ServerFactory
from support.apps import BUSYBOX_IMAGE, unique
from support.cli import Cli, check

pytestmark = pytest.mark.docker


def _context(dockerfile: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    body = buffer.getvalue()
    return body, hashlib.sha256(body).hexdigest()


def _build(url: str, token: str, app: str, dockerfile: str) -> tuple[list[dict], float]:
    """The build's NDJSON events, and how long it took."""
    body, digest = _context(dockerfile)
    start = time.monotonic()
    answer = httpx.post(
        f"{url}/v1/apps/{app}/builds",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "X-Context-Hash": digest,
            "Content-Type": "application/x-tar",
        },
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    events = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    return events, time.monotonic() - start


def test_a_build_gets_the_memory_and_cpus_and_is_stopped_past_its_time(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
) -> None:
    srv = hgrun_server("--build-memory", "96", "--build-cpus", "0.5", "--build-timeout", "4s")
    name = unique("bld")
    check(cli("apps:create", name, server=srv))
    # cgroup v2 (or v1) files of the step's own container, printed by the step.
    events, _ = _build(
        srv.url,
        srv.token,
        name,
        f"FROM {BUSYBOX_IMAGE}\nRUN cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max"
        " /sys/fs/cgroup/cpu.max 2>/dev/null ||"
        " cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us\n",
    )
    lines = [e["stream"] for e in events if "stream" in e]
    assert "image" in events[-1], events
    assert str(96 * 1024 * 1024) in lines, lines
    assert "50000 100000" in lines or "50000" in lines, lines
    # A step that outlives the limit: stopped, one clear error, its container gone.
    events, took = _build(srv.url, srv.token, name, f"FROM {BUSYBOX_IMAGE}\nRUN sleep 60\n")
    error = events[-1].get("error")
    assert error is not None, events
    assert error["message"] == "the build took longer than 4s: stopped", error
    assert "--build-timeout" in error["hint"]
    assert took < 30, took

    def sleeping() -> list[str]:
        return [
            c.id
            for c in docker_client.containers.list(all=True)
            if "sleep 60" in " ".join(c.attrs["Config"].get("Cmd") or [])
        ]

    deadline = time.monotonic() + 30
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sleeping() == [], "the stopped build left its step's container"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--build-timeout", "0s"], "--build-timeout '0s': a duration must be greater than zero"),
        (["--build-timeout", "0.5s"], "--build-timeout '0.5s': must be from 1s to 7d"),
        (["--build-timeout", "8d"], "--build-timeout '8d': must be from 1s to 7d"),
        (["--build-timeout", "soon"], "--build-timeout 'soon'"),
        (["--build-memory", "0"], "--build-memory"),
        (["--build-cpus", "0"], "--build-cpus"),
        (["--build-cpus", "nan"], "--build-cpus nan: expected a number of CPUs"),
    ],
)
def test_bad_build_limits_stop_the_server_with_one_line(
    tmp_path, flags: list[str], words: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hgrun.cli.main", "server", "--data-dir", str(tmp_path), *flags],
        capture_output=True,
        timeout=60,
    )
    error = done.stderr.decode()
    assert done.returncode == 2 or done.returncode == 1, (done.returncode, error)
    assert words in error and "Traceback" not in error, error
