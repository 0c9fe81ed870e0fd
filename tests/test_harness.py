"""The test harness itself: the engine, the two local images and PostgreSQL are real and usable."""

from __future__ import annotations

import shutil
import subprocess

import docker
import pytest
from support.server import free_port


def test_busybox_image_runs_echo_without_network(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    out = docker_client.containers.run(
        busybox_image,
        ["echo", "hi"],
        network_mode="none",
        remove=True,
        labels={"hgrun.test": "harness"},
    )
    assert out == b"hi\n"


def test_busybox_image_has_the_applets_tests_use(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    script = (
        "for a in sh echo cat sleep sort sha256sum true false ls env id head tail wc dd yes "
        "printf tr stty kill ps mkdir rm cp grep sed awk seq tee test date od md5sum stat find; "
        'do command -v $a >/dev/null || echo "missing $a"; done; '
        "stat -c %a /tmp; id -un; id -u nobody"
    )
    out = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", script],
        network_mode="none",
        remove=True,
        labels={"hgrun.test": "harness"},
    )
    assert out.decode().split() == ["1777", "root", "65534"]


def test_python_image_has_psycopg2(docker_client: docker.DockerClient, python_image: str) -> None:
    out = docker_client.containers.run(
        python_image,
        ["python3", "-c", "import psycopg2, sys; print(sys.version_info[:2] >= (3, 11))"],
        network_mode="none",
        remove=True,
        labels={"hgrun.test": "harness"},
    )
    assert out == b"True\n"


def test_postgres_accepts_psql_on_loopback(postgres: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql not found: scripts/setup installs postgresql")
    done = subprocess.run(
        [psql, postgres, "-qtAX", "-c", "select current_user || ' ' || current_database()"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hgrun pyapp"


def test_python_image_reaches_postgres_over_host_network(
    docker_client: docker.DockerClient, python_image: str, postgres: str
) -> None:
    code = (
        "import psycopg2, sys; c = psycopg2.connect(sys.argv[1]); "
        "cur = c.cursor(); cur.execute('select 40 + 2'); print(cur.fetchone()[0])"
    )
    out = docker_client.containers.run(
        python_image,
        ["python3", "-c", code, postgres],
        network_mode="host",
        remove=True,
        labels={"hgrun.test": "harness"},
    )
    assert out == b"42\n"


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
