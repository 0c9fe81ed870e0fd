"""The swarm engine: the pure service spec as tables, then runs on a real three-node Docker Swarm.

The swarm is three dockerds in network namespaces on a bridge, stood up once per pytest
process by ``scripts/swarm`` (root only; skipped elsewhere with the reason) and torn down at the
end, whatever happened. Two hgrun servers run on it: one places runs anywhere, the other only on
the workers (``--placement node.role==worker``), so a test can be sure a run is on a worker and
is attached through that worker's own engine endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
from conftest import SCRIPTS, _script
from cryptography.fernet import Fernet
from support.api import Api
from support.apps import unique, write_busybox_app
from support.calls import counted
from support.cli import Cli, check, cli_popen, run_id, text
from support.server import HgrunServer, free_port, instance_id
from support.stores import Databases
from support.waits import wait_for

from hgrun.engine import CAPABILITIES, ContainerSpec, ContainerStatus
from hgrun.engine.swarmnodes import node_name
from hgrun.engine.swarmspec import (
    LABEL_FRAMED,
    SHIM_PATH,
    frame,
    service_spec,
    task_command,
    task_state,
    unplaceable,
)
from hgrun.engine.tls import EngineTLS, api_client
from hgrun.errors import HgrunError, InputError
from hgrun.models import SIZES
from hgrun.store import Store

# One xdist worker runs this whole module (scripts/test passes --dist loadgroup), so a run of
# the suite stands up one swarm, not one per worker.
pytestmark = pytest.mark.xdist_group("swarm")
LOST_AFTER = 12.0  # the servers' --node-lost-after: longer than a cut link test's cut

# -- the pure part: no Docker --------------------------------------------------------------------


def spec(**overrides: Any) -> ContainerSpec:
    values: dict[str, Any] = {
        "image": "app:1",
        "command": ["sh", "-c", "echo hi"],
        "env": {"A": "1", "B": "x=y"},
        "labels": {"hgrun.run": "7", "hgrun.instance": "abc"},
        "size": SIZES["standard"],
    }
    return ContainerSpec(**{**values, **overrides})


def body(**overrides: Any) -> dict[str, Any]:
    return service_spec(
        spec(**overrides),
        name="hgrun-run7-abcdef",
        argv=["/.hgrun-shim", "-g", "--", "sh"],
        shim=("cfgid", "hgrun-shim-123"),
        constraints=("node.role==worker",),
    )


def test_a_run_is_a_replicated_job_of_one_task_never_restarted() -> None:
    out = body()
    assert out["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert out["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert out["Labels"] == {"hgrun.run": "7", "hgrun.instance": "abc"}
    assert out["TaskTemplate"]["ContainerSpec"]["Labels"] == out["Labels"]
    assert out["TaskTemplate"]["Placement"] == {"Constraints": ["node.role==worker"]}


def test_the_size_is_both_limit_and_reservation() -> None:
    resources = body(size=SIZES["pro"])["TaskTemplate"]["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 2 * 10**9, "MemoryBytes": 4 * 1024**3, "Pids": 1024}
    assert resources["Reservations"] == {"NanoCPUs": 2 * 10**9, "MemoryBytes": 4 * 1024**3}


def test_the_hardening_the_swarm_spec_carries() -> None:
    container = body()["TaskTemplate"]["ContainerSpec"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == list(CAPABILITIES)
    assert container["Init"] is True
    assert {"Name": "core", "Soft": 0, "Hard": 0} in container["Ulimits"]
    assert "Privileges" not in container and "Mounts" not in container
    assert container["Env"] == ["A=1", "B=x=y"]
    (config,) = container["Configs"]
    assert config["File"] == {"Name": SHIM_PATH, "UID": "0", "GID": "0", "Mode": 0o555}
    assert (config["ConfigID"], config["ConfigName"]) == ("cfgid", "hgrun-shim-123")


def test_the_swarm_spec_carries_the_user_and_refuses_read_only() -> None:
    assert "User" not in body()["TaskTemplate"]["ContainerSpec"]
    assert body(user="10001")["TaskTemplate"]["ContainerSpec"]["User"] == "10001"
    with pytest.raises(InputError, match="read_only: true is not supported by hgrun server"):
        body(read_only=True)


def test_the_swarm_spec_bounds_the_tasks_log_as_the_single_host_engine_does() -> None:
    # Docker's log of a run is read at recovery (hgrun.rejoin): as long as the store's cap, bounded.
    assert body()["TaskTemplate"]["LogDriver"] == {
        "Name": "local",
        "Options": {"max-size": str(100 * 1024 * 1024), "max-file": "2", "compress": "false"},
    }
    small = service_spec(spec(), name="n", argv=["sh"], shim=("c", "s"), log_bytes=4 * 1024 * 1024)
    assert small["TaskTemplate"]["LogDriver"]["Options"]["max-size"] == str(4 * 1024 * 1024)


@pytest.mark.parametrize(
    ("tty", "stdin", "open_stdin", "framed"),
    [
        (False, False, False, False),  # detached
        (False, True, True, True),  # piped: EOF travels as a frame
        (True, True, True, False),  # a terminal: EOF is Ctrl-D, in band
    ],
)
def test_stdin_and_tty(tty: bool, stdin: bool, open_stdin: bool, framed: bool) -> None:
    out = body(tty=tty, stdin=stdin)
    container = out["TaskTemplate"]["ContainerSpec"]
    assert (container["TTY"], container["OpenStdin"]) == (tty, open_stdin)
    assert (out["Labels"].get(LABEL_FRAMED) == "framed") is framed


@pytest.mark.parametrize(
    ("network", "networks"),
    [("none", None), ("host", [{"Target": "host"}]), ("shared", [{"Target": "shared"}])],
)
def test_network_none_is_no_network_at_all(network: str, networks: object) -> None:
    assert body(network=network)["TaskTemplate"].get("Networks") == networks


@pytest.mark.parametrize(
    ("command", "entrypoint", "cmd", "framed", "argv"),
    [
        (["ls"], None, ["sh"], False, [SHIM_PATH, "-g", "--", "ls"]),
        ([], None, ["sh"], False, [SHIM_PATH, "-g", "--", "sh"]),
        (["x"], ["/entry", "-v"], ["sh"], True, [SHIM_PATH, "-g", "-f", "--", "/entry", "-v", "x"]),
    ],
)
def test_the_task_command_keeps_the_image_entrypoint(
    command: list[str], entrypoint: list[str] | None, cmd: list[str], framed: bool, argv: list[str]
) -> None:
    assert task_command(command, entrypoint, cmd, framed=framed) == argv


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"State": "pending"}, (ContainerStatus.CREATED, None, "")),
        (
            {"State": "running", "ContainerStatus": {"ExitCode": 0}},
            (ContainerStatus.RUNNING, None, ""),
        ),
        (
            {"State": "complete", "ContainerStatus": {"ExitCode": 0}},
            (ContainerStatus.EXITED, 0, ""),
        ),
        (
            {
                "State": "failed",
                "Err": "task: non-zero exit (3)",
                "ContainerStatus": {"ExitCode": 3},
            },
            (ContainerStatus.EXITED, 3, "task: non-zero exit (3)"),
        ),
        (
            {"State": "rejected", "Err": "No such image"},
            (ContainerStatus.EXITED, None, "No such image"),
        ),
        (
            {"State": "orphaned", "ContainerStatus": {"ExitCode": 0}},
            (ContainerStatus.EXITED, None, ""),
        ),
    ],
)
def test_task_states(status: dict[str, Any], expected: tuple[object, ...]) -> None:
    assert task_state({"Status": status}) == expected


def test_unplaceable_is_a_pending_task_with_no_suitable_node() -> None:
    err = "no suitable node (insufficient resources on 3 nodes)"
    assert unplaceable({"Status": {"State": "pending", "Err": err}}) == err
    assert unplaceable({"Status": {"State": "pending"}}) is None
    assert unplaceable({"Status": {"State": "running", "Err": err}}) is None


def test_frames() -> None:
    assert frame(b"ab") == b"\x00\x00\x00\x02ab"
    assert frame(b"") == b"\x00\x00\x00\x00"


# -- the real swarm ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Swarm:
    dir: Path
    manager: str  # DOCKER_HOST of the manager (node n1)
    endpoints: dict[str, str]  # node name -> its engine endpoint (tcp on the bridge)
    registry: str | None  # HOST:PORT of the registry on the bridge (Debian's docker-registry)
    slot: str  # scripts/swarm's HGRUN_SWARM_SLOT
    tls: Path  # hgrun's client certificate for the nodes' TLS endpoints (--engine-tls)

    def node_api(self, node: str) -> docker.APIClient:
        """A client of node ``node``'s own engine, through its TLS endpoint."""
        return api_client(
            self.endpoints[node], version="1.41", timeout=60, tls=EngineTLS.load(self.tls)
        )

    def link(self, node: int, up: bool) -> None:
        """Cut (or mend) node N's link to the bridge."""
        _script("swarm", "mend" if up else "cut", str(node), str(self.dir),
                env={"HGRUN_SWARM_SLOT": self.slot})  # fmt: skip

    def restart(self, node: int) -> None:
        """kill -9 node N's dockerd and start it again."""
        _script("swarm", "restart", str(node), str(self.dir), env={"HGRUN_SWARM_SLOT": self.slot})


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a swarm in network namespaces needs root"
    if (
        shutil.which("ip") is None
        or subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode
    ):
        return "`ip netns` is not available"
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return "dockerd and the docker CLI are needed (scripts/setup installs docker.io)"
    return None


@pytest.fixture(scope="session")
def swarm() -> Iterator[Swarm]:
    """A real three-node swarm for this pytest process; everything it made goes at the end."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="hgrun-swarm-", dir="/tmp"))
    # A free slot (its bridge and addresses), machine-wide: other sessions, of other people
    # too, may hold some. 5..9 first, so a swarm made by hand (slot 0) is left alone.
    for slot in ("5", "6", "7", "8", "9", "1", "2", "3", "4"):
        env = {"HGRUN_SWARM_SLOT": slot}
        up = subprocess.run(
            [str(SCRIPTS / "swarm"), "up", str(state)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if up.returncode != 3:  # 3: the slot is another swarm's
            break
    try:
        if up.returncode != 0:
            raise RuntimeError(f"scripts/swarm up exited {up.returncode}:\n{up.stderr}")
        manager = up.stdout.strip()
        _script("images", "--busybox", env={"DOCKER_HOST": manager})
        endpoints = {f"n{n}": f"tcp://10.214.{slot}.1{n}:2376" for n in (1, 2, 3)}
        registry = f"10.214.{slot}.1:5000" if shutil.which("docker-registry") else None
        yield Swarm(state, manager, endpoints, registry, slot, state / "tls" / "client")
    finally:
        try:
            _script("swarm", "down", str(state), env=env)
        finally:
            left = subprocess.run(
                [str(SCRIPTS / "swarm"), "check", str(state)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            shutil.rmtree(state, ignore_errors=True)
            assert left.returncode == 0, f"scripts/swarm down left:\n{left.stdout}"


def _server(swarm: Swarm, tmp: pytest.TempPathFactory, *args: str) -> HgrunServer:
    return HgrunServer(
        port=free_port(),
        data_dir=tmp.mktemp("hgrun-swarm-data"),
        docker_host=swarm.manager,
        args=(
            "--engine",
            "swarm",
            "--placement-timeout",
            "3s",
            "--engine-tls",
            str(swarm.tls),
            "--node-lost-after",
            f"{LOST_AFTER:g}s",
            *args,
        ),  # fmt: skip
    ).start()


@pytest.fixture(scope="session")
def anywhere(swarm: Swarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HgrunServer]:
    """A server whose runs Swarm places on any of the three nodes."""
    server = _server(swarm, tmp_path_factory)
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def workers(swarm: Swarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HgrunServer]:
    """A server whose runs go to the two workers only, their images through the registry."""
    registry = ("--registry", swarm.registry) if swarm.registry else ()
    server = _server(swarm, tmp_path_factory, "--placement", "node.role==worker", *registry)
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def swarm_cli(anywhere: HgrunServer, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(anywhere, tmp_path_factory.mktemp("xdg-swarm"))


def _deploy(cli: Cli, server: HgrunServer, root: Path) -> Path:
    name = unique("sw")
    write_busybox_app(root, name)
    check(cli("apps:create", name, server=server))
    check(cli("deploy", cwd=root, server=server))
    return root


@pytest.fixture(scope="session")
def app_anywhere(
    swarm_cli: Cli, anywhere: HgrunServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _deploy(swarm_cli, anywhere, tmp_path_factory.mktemp("swarm-app"))


@pytest.fixture(scope="session")
def app_workers(
    swarm_cli: Cli, workers: HgrunServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return _deploy(swarm_cli, workers, tmp_path_factory.mktemp("swarm-app-w"))


@pytest.fixture(scope="session")
def manager(swarm: Swarm) -> Iterator[docker.APIClient]:
    client = docker.APIClient(base_url=swarm.manager, version="1.41")
    try:
        yield client
    finally:
        client.close()


def _services(manager: docker.APIClient, number: int) -> list[dict[str, Any]]:
    return list(manager.services(filters={"label": f"hgrun.run={number}"}))


def _node_of(manager: docker.APIClient, number: int) -> str | None:
    """The hgrun.node engine label of the node running run ``number``'s task."""
    for service in _services(manager, number):
        for task in manager.tasks(filters={"service": service["ID"]}):
            if task.get("NodeID") and task["Status"]["State"] == "running":
                node = manager.inspect_node(task["NodeID"])
                return str(node["Description"]["Engine"]["Labels"]["hgrun.node"])
    return None


def test_a_placed_task_is_created_until_start_then_runs_to_its_exit_code(swarm: Swarm) -> None:
    # At the engine: what recovery after a restart reads. A run placed but not started (its
    # uploads or its client still to come) is "created", so it is never taken up as running.
    from hgrun.engine.swarm import SwarmEngine

    engine = SwarmEngine(swarm.manager, tls=EngineTLS.load(swarm.tls))
    spec = ContainerSpec(
        image="hgrun-test/busybox:latest",
        command=["sh", "-c", "exit 6"],
        env={},
        labels={"hgrun.run": "0", "hgrun.test": "created"},
        size=SIZES["starter"],
    )
    service = engine.create(spec)
    try:
        assert engine.inspect(service).status is ContainerStatus.CREATED
        # The listing says what the manager says (the task runs: its shim waits), partial:
        # recovery inspects a run's state before it takes the run up.
        (listed,) = engine.list({"hgrun.test": "created"})
        assert (listed.id, listed.partial) == (service, True)
        engine.start(service)
        assert engine.wait(service) == 6
        state = engine.inspect(service)
        assert (state.status, state.exit_code) == (ContainerStatus.EXITED, 6)
        assert state.started_at is not None and state.finished_at is not None
    finally:
        engine.remove(service)
        asyncio.run(engine.aclose())


def test_the_listing_asks_the_manager_twice_whatever_the_number_of_runs(
    swarm: Swarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What every recovery pass reads: the services and their tasks in two calls to the
    manager (a task query and a node inspect per run before), each state as the manager
    tells it (partial); inspect asks the node for the rest."""
    from hgrun.engine import swarmtasks
    from hgrun.engine.docker import DockerEngine
    from hgrun.engine.swarm import SwarmEngine

    engine = SwarmEngine(swarm.manager, tls=EngineTLS.load(swarm.tls))
    mark = {"hgrun.test-list": uuid.uuid4().hex}
    scripts = {"running": "sleep 60", "exited": "exit 5", "exited-too": "exit 7"}

    def made(name: str) -> str:
        labels = {**mark, "hgrun.run": "0", "hgrun.test-name": name}
        spec = ContainerSpec(image="hgrun-test/busybox:latest", command=["sh", "-c", scripts[name]],
                             env={}, labels=labels, size=SIZES["starter"])  # fmt: skip
        service = engine.create(spec)
        engine.start(service)
        return service

    ids = {name: made(name) for name in scripts}
    try:
        assert (engine.wait(ids["exited"]), engine.wait(ids["exited-too"])) == (5, 7)
        # The node knows of an end first, the manager (what the listing reads) a moment later.
        for service in (ids["exited"], ids["exited-too"]):
            wait_for(lambda s=service: _manager_saw_the_end(engine, s), 30, "the manager's word")
        # Two services a task query: the batches of a thousand runs, on three.
        monkeypatch.setattr(swarmtasks, "TASKS_AT_ONCE", 2)
        calls: list[str] = []
        for method in ("services", "tasks", "inspect_node"):
            monkeypatch.setattr(engine._api, method, counted(getattr(engine._api, method), calls))
        monkeypatch.setattr(DockerEngine, "inspect", counted(DockerEngine.inspect, calls))  # nodes
        nodes = engine.nodes
        monkeypatch.setattr(nodes, "orphans", lambda *_args: [])  # one listing per node: apart
        listed = {s.labels["hgrun.test-name"]: s for s in engine.list(mark)}
        assert sorted(calls) == ["services", "tasks", "tasks"], calls
        assert {name: (s.id, s.status, s.exit_code) for name, s in listed.items()} == {
            "running": (ids["running"], ContainerStatus.RUNNING, None),
            "exited": (ids["exited"], ContainerStatus.EXITED, 5),
            "exited-too": (ids["exited-too"], ContainerStatus.EXITED, 7),
        }
        assert all(s.partial for s in listed.values())
        assert listed["exited"].finished_at is not None
        full = engine.inspect(ids["exited"])
        assert (full.status, full.exit_code, full.partial) == (ContainerStatus.EXITED, 5, False)
        assert full.started_at is not None
        # A service gone between the two calls: the rest are still listed.
        engine._api.remove_service(ids["exited-too"])
        assert set(engine._newest_tasks(list(ids.values()))) == {ids["running"], ids["exited"]}
        assert ids["exited-too"] not in {s.id for s in engine.list(mark)}
    finally:
        for service in ids.values():
            with contextlib.suppress(HgrunError):
                engine.remove(service)
        asyncio.run(engine.aclose())


def _manager_saw_the_end(engine: Any, service: str) -> bool:
    raw = engine._current_task(service)
    return raw is not None and task_state(raw)[0] is ContainerStatus.EXITED


def test_a_service_removed_before_its_start_leaves_no_container_on_its_node(swarm: Swarm) -> None:
    # Removing a replicated job's service does not stop its running task (dockerd 20.10): a
    # run stopped before it started would hold its node's reservation for ever.
    from hgrun.engine.swarm import SwarmEngine

    engine = SwarmEngine(swarm.manager, tls=EngineTLS.load(swarm.tls))
    spec = ContainerSpec(
        image="hgrun-test/busybox:latest",
        command=["true"],
        env={},
        labels={"hgrun.run": "0", "hgrun.test": "removed"},
        size=SIZES["starter"],
    )
    try:
        service = engine.create(spec)
        node = engine.node(service)
        assert node is not None
        client = swarm.node_api(node)
        try:
            assert client.containers(filters={"label": "hgrun.test=removed"})
            engine.remove(service)
            assert not client.containers(all=True, filters={"label": "hgrun.test=removed"})
        finally:
            client.close()
    finally:
        asyncio.run(engine.aclose())


def test_a_task_whose_service_went_is_listed_as_an_orphan_and_removed(swarm: Swarm) -> None:
    # A run given up while its node was away has its service removed; Swarm leaves the task
    # going when the node is back. Recovery lists it (an orphan) and the reaper removes it.
    from hgrun.engine.swarm import SwarmEngine

    engine = SwarmEngine(swarm.manager, tls=EngineTLS.load(swarm.tls))
    labels = {"hgrun.run": "999998", "hgrun.test": "orphan"}
    spec = ContainerSpec(image="hgrun-test/busybox:latest", command=["sleep", "60"], env={},
                         labels=labels, size=SIZES["starter"])  # fmt: skip
    try:
        service = engine.create(spec)
        engine.start(service)
        engine._api.remove_service(service)  # as when its node could not be reached
        (orphan,) = engine.list({"hgrun.test": "orphan"})
        assert orphan.id.startswith("orphan:") and orphan.labels["hgrun.run"] == "999998"
        assert orphan.status is ContainerStatus.RUNNING
        engine.remove(orphan.id)
        assert engine.list({"hgrun.test": "orphan"}) == []
    finally:
        asyncio.run(engine.aclose())


def test_runs_land_on_all_three_nodes_and_a_run_with_no_room_fails_with_swarms_reason(
    swarm_cli: Cli, anywhere: HgrunServer, app_anywhere: Path, manager: docker.APIClient
) -> None:
    # "pro" reserves 2 CPUs: each node has 2, so three such runs fill one node each, for 20 s
    # (long enough for the check below on a crowded machine).
    numbers = []
    for code in (0, 3, 0):
        script = f"echo out-$HGRUN_RUN_ID; echo err >&2; sleep 20; exit {code}"
        done = swarm_cli("run", "--detached", "--size", "pro", "sh", "-c", script,
                         cwd=app_anywhere, server=anywhere)  # fmt: skip
        numbers.append(run_id(check(done)))
    try:
        nodes = {n: wait_for(lambda n=n: _node_of(manager, n), 20, f"run {n}") for n in numbers}
    except AssertionError:
        with Api(anywhere) as api:
            raise AssertionError([api.run(n) for n in numbers], anywhere.log) from None
    assert sorted(nodes.values()) == ["n1", "n2", "n3"]

    # No node has room left: the run waits --placement-timeout (3 s), then fails with
    # Swarm's own reason, in the command's error and in the run's record.
    reason = "no suitable node (insufficient resources on 3 nodes)"
    late = swarm_cli("run", "--detached", "true", cwd=app_anywhere, server=anywhere)
    assert late.returncode == 125 and reason in text(late.stderr), text(late.stderr)
    newest = json.loads(check(swarm_cli("runs", "--json", cwd=app_anywhere, server=anywhere)))[0]
    assert newest["command"] == ["true"]
    with Api(anywhere) as api:
        info = api.run(newest["id"])
        assert (info["status"], info["exit_code"]) == ("failed", 125), info
        assert reason in (info["error"] or ""), info
        for number, code in zip(numbers, (0, 3, 0), strict=True):
            run = api.finished_run(number, timeout=30)
            assert (run["status"], run["exit_code"]) == (
                "succeeded" if code == 0 else "failed",
                code,
            ), run
    # The run's node is recorded: `hgrun runs --json` shows it after the run.
    runs = json.loads(check(swarm_cli("runs", "--json", cwd=app_anywhere, server=anywhere)))
    assert {r["id"]: r["node"] for r in runs if r["id"] in nodes} == nodes
    for number in numbers:
        out = check(swarm_cli("logs", "--run", f"run.{number}", cwd=app_anywhere, server=anywhere))
        assert f"out-{number}" in out and "err" in out
        assert wait_for(lambda n=number: not _services(manager, n), 10, "the service removed")


def test_the_manifests_placement_pins_a_run_or_fails_it_with_swarms_reason(
    swarm_cli: Cli, anywhere: HgrunServer, tmp_path: Path
) -> None:
    name = unique("pl")
    write_busybox_app(tmp_path, name, manifest_extra="placement: [engine.labels.hgrun.node==n3]\n")
    check(swarm_cli("apps:create", name, server=anywhere))
    check(swarm_cli("deploy", cwd=tmp_path, server=anywhere))
    for _ in range(2):
        check(swarm_cli("run", "true", input=b"", cwd=tmp_path, server=anywhere))
    runs = json.loads(check(swarm_cli("runs", "--json", cwd=tmp_path, server=anywhere)))
    assert [r["node"] for r in runs] == ["n3", "n3"]

    (tmp_path / "hgrun.yaml").write_text(
        f"name: {name}\nbuild:\n  dockerfile: Dockerfile\nplacement: node.labels.zone==nowhere\n"
    )
    check(swarm_cli("deploy", cwd=tmp_path, server=anywhere))
    done = swarm_cli("run", "true", input=b"", cwd=tmp_path, server=anywhere)
    assert done.returncode == 125
    assert "scheduling constraints not satisfied on 3 nodes" in text(done.stderr)


def test_an_attached_run_on_a_worker_gets_stdin_and_eof_and_its_exit_codes(
    swarm_cli: Cli, workers: HgrunServer, app_workers: Path, manager: docker.APIClient
) -> None:
    done = swarm_cli("run", "sh", "-c", "sort -r; echo node-$HGRUN_RUN_ID >&2; exit 3",
                     input=b"a\nb\nc\n", cwd=app_workers, server=workers)  # fmt: skip
    assert text(done.stdout) == "c\nb\na\n"
    assert done.returncode == 3, text(done.stderr)
    assert check(swarm_cli("run", "sh", "-c", "wc -c", input=b"", cwd=app_workers,
                           server=workers)).strip() == "0"  # fmt: skip
    missing = swarm_cli("run", "no-such-command", input=b"", cwd=app_workers, server=workers)
    assert missing.returncode == 127, text(missing.stderr)
    assert "no-such-command" in text(missing.stderr)
    check(swarm_cli("run", "true", input=b"", cwd=app_workers, server=workers))
    # The hardening, as the single-host tests check it (CapEff: the eight capabilities).
    status = check(swarm_cli("run", "cat", "/proc/self/status", input=b"", cwd=app_workers,
                             server=workers))  # fmt: skip
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE: bits 0 1 3-7 10.
    assert int(fields["CapEff"], 16) == 0x4FB


def test_an_attach_through_the_server_not_holding_a_workers_run_reaches_it(
    swarm: Swarm, store_databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two servers on one PostgreSQL store, both on the swarm: a piped run made through A (its
    holder), placed on a worker, attached only through B: B writes to the task's container
    through the worker's endpoint (each line answered before the next is sent), its EOF is the
    shim's, and the exit code is the run's (docs/scale-out.md, "Attach through any server")."""
    url = store_databases.create()
    env = {"HGRUN_AUDIT_KEY": Fernet.generate_key().decode()}
    servers: list[HgrunServer] = []
    try:
        for _ in range(2):
            server = HgrunServer(
                port=free_port(),
                data_dir=tmp_path_factory.mktemp("hgrun-swarm-pair"),
                docker_host=swarm.manager,
                args=(
                    "--engine",
                    "swarm",
                    "--engine-tls",
                    str(swarm.tls),
                    "--store",
                    url,
                    "--placement",
                    "node.role==worker",
                ),  # fmt: skip
                env=env,
            )
            if servers:
                server.token = servers[0].token  # one store, one admin token
            servers.append(server.start())
        a, b = servers
        cli = Cli(a, tmp_path_factory.mktemp("xdg-swarm-pair"))
        name = unique("swx")
        root = write_busybox_app(tmp_path_factory.mktemp("swarm-app-pair"), name)
        check(cli("apps:create", name, server=a))
        check(cli("deploy", cwd=root, server=a))
        with Api(a) as api:
            made = api.http.post(
                f"/v1/apps/{name}/runs",
                json={"command": ["sh", "-c", 'while read l; do echo "got-$l"; done; exit 4']},
            )
            assert made.status_code == 201, made.text
            number = int(made.json()["id"])
        client = cli_popen(cli, "attach", str(number), server=b)
        assert client.stdin is not None and client.stdout is not None
        try:
            with Api(b) as api:
                run = api.running(number, timeout=60)
            assert run["node"] in ("n2", "n3"), run
            db = psycopg.connect(url, autocommit=True)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = %s", (f"lease:run:{number}",))
                holder = str((row.fetchone() or ("",))[0])
            finally:
                db.close()
            assert a.process is not None and f":{a.process.pid}:" in holder, holder
            for word in ("one", "two"):
                client.stdin.write(f"{word}\n".encode())
                client.stdin.flush()
                assert client.stdout.readline() == f"got-{word}\n".encode()
            client.stdin.close()
            assert client.wait(timeout=60) == 4, client.stderr.read() if client.stderr else ""
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        store_databases.drop(url)


def test_with_a_registry_the_workers_pull_the_release_from_it(
    swarm: Swarm, swarm_cli: Cli, workers: HgrunServer, app_workers: Path
) -> None:
    if swarm.registry is None:
        pytest.skip("Debian's docker-registry is not installed (scripts/setup installs it)")
    runs = [
        json.loads(
            check(swarm_cli("runs:info", f"run.{n}", "--json", cwd=app_workers, server=workers))
        )  # fmt: skip
        for n in (
            run_id(check(swarm_cli("run", "--detached", "true", cwd=app_workers, server=workers)))
            for _ in range(2)
        )
    ]
    with Api(workers) as api:
        for run in runs:
            done = api.finished_run(run["id"], timeout=30)
            assert done["status"] == "succeeded", done
    pulled = set()
    for node in swarm.endpoints:
        client = swarm.node_api(node)
        try:
            tags = {
                t
                for image in client.images()
                for t in (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ()))
            }
        finally:
            client.close()
        if any(t.startswith(f"{swarm.registry}/hgrun/release") for t in tags):
            pulled.add(node)
    assert pulled and pulled <= {"n1", "n2", "n3"}
    # The manager pushed it (n1 has the tag it pushed); at least one worker pulled it.
    assert pulled & {"n2", "n3"}, pulled


def test_a_burst_of_detached_runs_all_start_and_succeed(
    swarm_cli: Cli, workers: HgrunServer, app_workers: Path
) -> None:
    # Each start copies the shim's go file in while the shim polls for it: a shim that removed
    # the file under dockerd failed about one start in seven ("lchown /.hgrun-go").
    procs = [
        cli_popen(
            swarm_cli,
            "run",
            "--detached",
            "sh",
            "-c",
            f"echo burst-{i}",
            cwd=app_workers,
            server=workers,
        )  # fmt: skip
        for i in range(8)
    ]
    labels = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, text(err)
        labels.append(text(out).strip())
    with Api(workers) as api:
        for label in labels:
            info = api.finished_run(run_id(label), timeout=60)
            assert (info["status"], info["exit_code"]) == ("succeeded", 0), info


def test_file_uploads_reach_a_worker_before_the_command_starts(
    swarm_cli: Cli, workers: HgrunServer, app_workers: Path, tmp_path: Path
) -> None:
    upload = tmp_path / "data.bin"
    upload.write_bytes(os.urandom(1024 * 1024))
    done = swarm_cli("run", "--file", str(upload), "cat", "/tmp/uploads/data.bin",
                     input=b"", cwd=app_workers, server=workers)  # fmt: skip
    assert done.returncode == 0, text(done.stderr)
    assert done.stdout == upload.read_bytes()
    detached = swarm_cli("run", "--detached", "--file", str(upload), "md5sum",
                         "/tmp/uploads/data.bin", cwd=app_workers, server=workers)  # fmt: skip
    label = check(detached).strip()
    with Api(workers) as api:
        info = api.finished_run(run_id(label), timeout=30)
    assert (info["status"], info["exit_code"]) == ("succeeded", 0), info
    out = check(swarm_cli("logs", "--run", label, cwd=app_workers, server=workers))
    assert hashlib.md5(upload.read_bytes()).hexdigest() in out  # noqa: S324 - a checksum


def test_stop_removes_the_service(
    swarm_cli: Cli, workers: HgrunServer, app_workers: Path, manager: docker.APIClient
) -> None:
    label = check(swarm_cli("run", "--detached", "sh", "-c", "echo up; sleep 600",
                            cwd=app_workers, server=workers)).strip()  # fmt: skip
    number = run_id(label)
    assert wait_for(lambda: _node_of(manager, number), 20, "the run running") in {"n2", "n3"}
    started = time.monotonic()
    stopped = swarm_cli("stop", label, cwd=app_workers, server=workers, timeout=60)
    with Api(workers) as api:
        assert stopped.returncode == 0, (text(stopped.stderr), api.run(number), workers.log)
    with Api(workers) as api:
        info = api.finished_run(number, timeout=20)
    assert info["status"] == "canceled", info
    assert time.monotonic() - started < 20
    assert wait_for(lambda: not _services(manager, number), 10, "the service removed")


def test_a_stray_service_is_removed_at_recovery(
    swarm: Swarm, workers: HgrunServer, manager: docker.APIClient
) -> None:
    labels = {"hgrun.run": "999999", "hgrun.instance": instance_id(workers)}
    stray = manager.create_service(
        docker.types.TaskTemplate(
            docker.types.ContainerSpec(
                "hgrun-test/busybox:latest", ["sleep", "600"], labels=labels
            ),
            restart_policy=docker.types.RestartPolicy("none"),
        ),
        name=unique("stray"),
        labels=labels,
    )["ID"]
    workers.restart(signal.SIGKILL)
    assert wait_for(
        lambda: not manager.services(filters={"id": stray}), 20, "the stray service removed"
    )


def test_a_worker_endpoint_is_not_a_manager(swarm: Swarm, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hgrun.cli.main", "server", "--port", str(free_port()),
         "--data-dir", str(tmp_path), "--engine", "swarm", "--docker-host", swarm.endpoints["n2"],
         "--engine-tls", str(swarm.tls)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    err = text(done.stderr)
    assert done.returncode != 0
    assert "is not a swarm manager" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 2, err  # the error, and its hint


def test_runs_on_the_workers_carry_on_through_a_manager_restart(
    swarm: Swarm, swarm_cli: Cli, workers: HgrunServer, app_workers: Path, manager: docker.APIClient
) -> None:
    labels = [
        check(
            swarm_cli(
                "run",
                "--detached",
                "sh",
                "-c",
                f"echo start; sleep 6; echo end; exit {code}",
                cwd=app_workers,
                server=workers,
            )
        ).strip()  # fmt: skip
        for code in (0, 4)
    ]
    numbers = [run_id(label) for label in labels]
    with Api(workers) as api:
        for number in numbers:
            wait_for(lambda n=number: api.run(n)["status"] == "running", 20, f"run {number}")
        swarm.restart(1)  # the one manager: kill -9, then up again
        for number, code in zip(numbers, (0, 4), strict=True):
            info = api.finished_run(number, timeout=60)
            assert (info["exit_code"], info["node"] in {"n2", "n3"}) == (code, True), info
    for label in labels:
        out = check(swarm_cli("logs", "--run", label, cwd=app_workers, server=workers))
        assert "start" in out and "end" in out, out
    # And the swarm takes new runs again.
    after = swarm_cli("run", "sh", "-c", "echo again", input=b"", cwd=app_workers, server=workers)
    assert check(after) == "again\n"
    wait_for(lambda: not manager.services(filters={"label": "hgrun.run"}), 90, "no service left")


def _nodes(cli: Cli, server: HgrunServer) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in json.loads(check(cli("nodes", "--json", server=server)))}


def test_hgrun_nodes_shows_each_node_its_runs_and_registered_endpoints(
    swarm: Swarm, swarm_cli: Cli, anywhere: HgrunServer, app_anywhere: Path
) -> None:
    label = check(swarm_cli("run", "--detached", "sh", "-c", "sleep 30", cwd=app_anywhere,
                            server=anywhere)).strip()  # fmt: skip
    number = run_id(label)
    with Api(anywhere) as api:
        node = api.running(number)["node"]

    def all_ready() -> dict[str, Any] | None:
        # Swarm says "unknown" for a while after its manager restarted (an earlier test does
        # that): its heartbeats, not what hgrun shows of them.
        found = _nodes(swarm_cli, anywhere)
        return found if all(i["state"] == "ready" for i in found.values()) else None

    nodes = wait_for(all_ready, 60, "every node ready")
    assert sorted(nodes) == ["n1", "n2", "n3"]
    for name, info in nodes.items():
        assert (info["state"], info["attach"], info["problem"]) == ("ready", True, None), info
        assert (info["endpoint"], info["source"]) == (swarm.endpoints[name], "label"), info
        assert info["role"] == ("manager" if name == "n1" else "worker")
    assert number in nodes[node]["runs"]
    table = check(swarm_cli("nodes", server=anywhere))
    assert "attach" in table.lower() and f"run.{number}" in table

    # Registering: the endpoint must answer, and be that node's own engine.
    wrong = swarm_cli("nodes:add", "n3", swarm.endpoints["n2"], server=anywhere)
    assert wrong.returncode != 0 and "is not node n3's engine" in text(wrong.stderr)
    dead = swarm_cli("nodes:add", "n3", f"tcp://10.214.{swarm.slot}.1:9", server=anywhere)
    assert dead.returncode != 0 and "cannot reach swarm node n3" in text(dead.stderr)
    unknown = swarm_cli("nodes:add", "n9", swarm.endpoints["n3"], server=anywhere)
    assert "no swarm node is named 'n9'" in text(unknown.stderr)
    # The same node under another address of its own: the bridge side of its namespace.
    check(swarm_cli("nodes:add", "n3", swarm.endpoints["n3"], server=anywhere))
    assert _nodes(swarm_cli, anywhere)["n3"]["source"] == "registered"
    check(swarm_cli("nodes:remove", "n3", server=anywhere))
    assert _nodes(swarm_cli, anywhere)["n3"]["source"] == "label"
    gone = swarm_cli("nodes:remove", "n3", server=anywhere)
    assert gone.returncode != 0 and "no endpoint registered" in text(gone.stderr)
    # Server wide, so admin only.
    with Api(anywhere) as api:
        made = api.http.post("/v1/tokens", json={"name": unique("dep"), "scope": "deploy"})
    with Api(anywhere, made.json()["token"]) as deployer:
        assert deployer.http.get("/v1/nodes").status_code == 403
    check(swarm_cli("stop", label, server=anywhere, cwd=app_anywhere))


def make_client_cert(folder: Path) -> None:
    """A CA of its own and a client certificate it signed, as --engine-tls wants them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, public: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("another CA"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        return builder.sign(ca_key, hashes.SHA256())

    folder.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(cert("another CA", ca_key.public_key(), True).public_bytes(pem))
    (folder / "cert.pem").write_bytes(cert("hgrun", key.public_key(), False).public_bytes(pem))
    (folder / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _server_fails(swarm: Swarm, tmp_path: Path, *args: str) -> str:
    """Start a swarm server that must refuse to start: its one-line error (and hint)."""
    done = subprocess.run(
        [sys.executable, "-m", "hgrun.cli.main", "server", "--port", str(free_port()),
         "--data-dir", str(tmp_path), "--engine", "swarm", "--docker-host", swarm.manager, *args],
        capture_output=True, timeout=90, check=False,
    )  # fmt: skip
    err = text(done.stderr)
    assert done.returncode != 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    return err


def test_bad_node_configuration_is_one_line_at_start(swarm: Swarm, tmp_path: Path) -> None:
    # The nodes speak TLS only: without hgrun's client certificate none can be reached.
    err = _server_fails(swarm, tmp_path / "a")
    assert re.search(r"cannot reach swarm node n[123] at tcp://", err) and "--engine-tls" in err
    # A certificate of another CA is refused by the nodes.
    other = tmp_path / "other"
    make_client_cert(other)
    err = _server_fails(swarm, tmp_path / "b", "--engine-tls", str(other))
    assert "cannot reach swarm node" in err, err
    err = _server_fails(swarm, tmp_path / "c", "--engine-tls", str(tmp_path))
    assert "ca.pem, cert.pem, key.pem missing" in err, err
    # A registered endpoint that does not answer.
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    store = Store(data / "hgrun.db")
    store.set_node_endpoint("n2", f"tcp://10.214.{swarm.slot}.1:9", "admin")
    store.close()
    err = _server_fails(swarm, data, "--engine-tls", str(swarm.tls))
    assert f"cannot reach swarm node n2 at tcp://10.214.{swarm.slot}.1:9" in err, err


def test_a_cut_link_shorter_than_the_lost_deadline_loses_nothing(
    swarm: Swarm, swarm_cli: Cli, workers: HgrunServer, app_workers: Path, manager: docker.APIClient
) -> None:
    script = "echo before; sleep 9; echo after; exit 5"
    label = check(swarm_cli("run", "--detached", "sh", "-c", script, cwd=app_workers,
                            server=workers)).strip()  # fmt: skip
    number = run_id(label)
    with Api(workers) as api:
        run = api.running(number)
        node, app = run["node"], run["app"]
        wait_for(lambda: "before" in api.log_text(app, number) or None, 20, "before")
    names = {node_name(n): n["ID"] for n in manager.nodes()}
    index = int(node.removeprefix("n"))
    swarm.link(index, up=False)
    try:
        wait_for(lambda: manager.inspect_node(names[node])["Status"]["State"] != "ready", 20,
                 f"{node} seen down")  # fmt: skip
    finally:
        swarm.link(index, up=True)
    with Api(workers) as api:
        info = api.finished_run(number, timeout=60)
        assert (info["status"], info["exit_code"]) == ("failed", 5), info
        assert api.log_text(app, number) == "before\nafter\n"


def test_a_worker_restarted_within_the_deadline_has_its_run_taken_up(
    swarm: Swarm, swarm_cli: Cli, workers: HgrunServer, app_workers: Path
) -> None:
    # Its dockerd killed -9 and started again: the container dies with that dockerd (no
    # live-restore in swarm mode), and the run ends with what the node then says, not lost.
    label = check(swarm_cli("run", "--detached", "sh", "-c", "echo before; sleep 300",
                            cwd=app_workers, server=workers)).strip()  # fmt: skip
    number = run_id(label)
    with Api(workers) as api:
        run = api.running(number)
        node, app = run["node"], run["app"]
        wait_for(lambda: "before" in api.log_text(app, number) or None, 20, "before")
        swarm.restart(int(node.removeprefix("n")))
        info = api.finished_run(number, timeout=60)
        assert info["status"] == "failed" and info["exit_code"] in (137, 143), info
        assert api.log_text(app, number).startswith("before\n")


def test_a_worker_killed_during_runs_marks_its_runs_lost_naming_it(
    swarm: Swarm,
    swarm_cli: Cli,
    workers: HgrunServer,
    app_workers: Path,
    manager: docker.APIClient,
) -> None:
    # Last in this file: the killed node stays down for the rest of the session.
    numbers = [
        run_id(
            check(
                swarm_cli(
                    "run",
                    "--detached",
                    "sh",
                    "-c",
                    "echo up; sleep 300",
                    cwd=app_workers,
                    server=workers,
                )
            )
        )  # fmt: skip
        for _ in range(3)
    ]
    nodes = {n: wait_for(lambda n=n: _node_of(manager, n), 20, f"run {n}") for n in numbers}
    with Api(workers) as api:
        for number in numbers:  # started (not only placed): their command runs
            wait_for(lambda n=number: api.run(n)["status"] == "running", 20, f"run {number}")
    victim = nodes[numbers[0]]
    pid = int((swarm.dir / victim / "pid").read_text())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with Api(workers) as api:
        for number, node in nodes.items():
            if node != victim:
                continue
            info = api.finished_run(number, timeout=40)
            assert info["status"] == "lost", (
                victim,
                nodes,
                {n: api.run(n) for n in numbers},
                check(swarm_cli("logs", cwd=app_workers, server=workers)),
                [line for line in workers.output if "swarm" in line],
            )
            assert f"swarm node {victim} went down" in (info["error"] or ""), info
        lost_after = time.monotonic() - killed
        assert lost_after < 40
        for number, node in nodes.items():
            if node == victim:
                continue
            assert api.run(number)["status"] == "running"
            check(swarm_cli("stop", f"run.{number}", cwd=app_workers, server=workers))
    print(f"runs on {victim} lost {lost_after:.1f} s after its dockerd was killed")
