"""Network "none" without libnetwork: a run's container is made with Docker's NetworkDisabled
(no sandbox, no prestart hook re-executing dockerd), and looks from inside as a container of
``docker run --network none`` does: its own namespace with the loopback up, ``localhost`` in
/etc/hosts, its hostname in /etc/hostname."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from hgrun.engine import ContainerSpec
from hgrun.engine.docker import DockerEngine
from hgrun.engine.dockerspec import HOSTS, create_args, name_files
from hgrun.errors import EngineError
from hgrun.models import SIZES

# What a run sees of its network: the hosts file, its names, its interfaces, and whether
# `localhost` resolves (busybox nc says "(127.0.0.1): Connection refused" to a name it resolved,
# "bad address" to one it could not).
LOOK = (
    "cat /etc/hosts; echo ---; hostname; cat /etc/hostname; echo ---; ls /sys/class/net;"
    " ip -o link show lo | grep -o '<[A-Z_,]*>'; echo ---;"
    " nc -w 2 localhost 1 2>&1 | grep -o '(127.0.0.1): Connection refused\\|bad address'"
)


def _spec(image: str, mark: dict[str, str], **kw: object) -> ContainerSpec:
    return ContainerSpec(
        image=image,
        command=["sh", "-c", LOOK],
        env={},
        labels=mark,
        size=SIZES["starter"],
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def engine(docker_host: str) -> Iterator[DockerEngine]:
    engine = DockerEngine(docker_host)
    yield engine
    asyncio.run(engine.aclose())


def _ran(client: docker.APIClient, container_id: str) -> list[str]:
    client.start(container_id)
    assert client.wait(container_id, timeout=60)["StatusCode"] == 0
    return client.logs(container_id).decode().split("---\n")


def test_a_run_on_network_none_skips_libnetwork_and_looks_as_dockers_none_from_inside(
    engine: DockerEngine, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    mark = {"hgrun.test-network": uuid.uuid4().hex}
    api = docker_client.api
    ours = engine.create(_spec(busybox_image, mark))
    # The same command in a container of Docker's own "none" network (through libnetwork).
    theirs = api.create_container(
        busybox_image,
        ["sh", "-c", LOOK],
        labels=mark,
        host_config=api.create_host_config(network_mode="none"),
    )["Id"]
    try:
        assert api.inspect_container(ours)["Config"].get("NetworkDisabled") is True
        assert api.inspect_container(theirs)["Config"].get("NetworkDisabled") in (None, False)
        hosts, names, links, resolved = _ran(api, ours)
        their_hosts, their_names, their_links, their_resolved = _ran(api, theirs)
        assert hosts == their_hosts == HOSTS.decode()
        assert names == f"{ours[:12]}\n{ours[:12]}\n"
        assert their_names == f"{theirs[:12]}\n{theirs[:12]}\n"
        assert links == their_links == "lo\n<LOOPBACK,UP,LOWER_UP>\n"
        assert resolved == their_resolved == "(127.0.0.1): Connection refused\n"
    finally:
        for container in (ours, theirs):
            engine.remove(container)
    assert engine.list(mark) == []


def test_a_read_only_run_and_a_run_on_a_network_go_through_libnetwork(
    engine: DockerEngine, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    """A read-only root refuses the put of /etc/hosts: Docker's own "none" mounts it."""
    mark = {"hgrun.test-network": uuid.uuid4().hex}
    api = docker_client.api
    read_only = engine.create(_spec(busybox_image, mark, read_only=True))
    bridged = engine.create(_spec(busybox_image, mark, network="bridge"))
    try:
        for container in (read_only, bridged):
            assert api.inspect_container(container)["Config"].get("NetworkDisabled") in (
                None,
                False,
            )
        hosts, _names, links, resolved = _ran(api, read_only)
        assert (
            hosts == HOSTS.decode()
            and links == "lo\n<LOOPBACK,UP,LOWER_UP>\n"
            and resolved == "(127.0.0.1): Connection refused\n"
        )
    finally:
        for container in (read_only, bridged):
            engine.remove(container)


def test_a_refused_put_of_the_name_files_leaves_no_container(
    engine: DockerEngine, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = {"hgrun.test-network": uuid.uuid4().hex}

    def refuse(*_args: object, **_kw: object) -> None:
        raise docker.errors.APIError("no room", explanation="no space left on device")

    monkeypatch.setattr(engine._api, "put_archive", refuse)
    with pytest.raises(EngineError, match="cannot write /etc/hosts into the container: no space"):
        engine.create(_spec(busybox_image, mark))
    assert engine.list(mark) == []


def test_create_args_disable_the_network_only_for_none_with_a_writable_root() -> None:
    def args(**kw: object) -> dict[str, object]:
        return create_args(_spec("img", {}, **kw))[0]

    assert args()["network_disabled"] is True
    assert "network_disabled" not in args(read_only=True)
    for network in ("bridge", "host", "backend"):
        assert "network_disabled" not in args(network=network)


def test_the_name_files_are_two_plain_files_and_no_folder() -> None:
    with tarfile.open(fileobj=io.BytesIO(name_files("0123456789abcdef"))) as tar:
        members = tar.getmembers()
        assert [(m.name, m.isfile(), m.mode, m.uid, m.gid) for m in members] == [
            ("etc/hosts", True, 0o644, 0, 0),
            ("etc/hostname", True, 0o644, 0, 0),
        ]
        files = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert files == {"etc/hosts": HOSTS, "etc/hostname": b"0123456789ab\n"}
