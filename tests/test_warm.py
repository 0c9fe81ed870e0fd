"""The warm pool on a real engine: attached runs take a container started ahead of them
(hgrun.server.warm), and what a user sees is what a container made for the run gives."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
from support.apps import deploy_busybox_app, unique
from support.cli import Cli, check, text
from support.server import HgrunServer
from support.waits import wait_for


@pytest.fixture
def app(cli: Cli, busybox_image: str, tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "app"
    return deploy_busybox_app(cli, root, unique("warm")), root


def warm_ids(docker_host: str, app: str) -> set[str]:
    client = docker.DockerClient(base_url=docker_host)
    try:
        found = client.containers.list(all=True, filters={"label": "hgrun.run=warm"}, sparse=True)
        return {c.id for c in found}
    finally:
        client.close()


def test_the_second_run_takes_a_warm_container(
    cli: Cli, app: tuple[str, Path], server: HgrunServer, docker_host: str
) -> None:
    _, root = app
    first = cli("run", "--no-tty", "sh", "-c", "echo one; exit 3", cwd=root, input=b"")
    assert first.returncode == 3, text(first.stderr)
    assert first.stdout == b"one\n"
    second = cli("run", "--no-tty", "sh", "-c", "echo two; exit 4", cwd=root, input=b"")
    assert second.returncode == 4, text(second.stderr)
    assert second.stdout == b"two\n"
