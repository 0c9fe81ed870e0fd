"""The Docker Swarm engine: each run is a replicated-job service of one task, on any node.

Calls go to the swarm's one manager (Docker Engine API 1.41, what dockerd 20.10 speaks); the
task's container is reached through its node's own engine (:mod:`hgrun.engine.swarmnodes`:
where each node answers, registered or advertised), as the manager has no attach, logs or
archive API for a task's container. On the node, this module composes
:class:`hgrun.engine.docker.DockerEngine` (its raw attach, streamed logs and uploads), watched
by :mod:`hgrun.engine.swarmwatch` (a node away too long loses its runs; one back in time has
them taken up again). Images reach the nodes through :mod:`hgrun.engine.swarmimages`; a
run's task, its node and its container there are found by :mod:`hgrun.engine.swarmtasks`.

A container id of this engine is the run's service id. Two things Swarm cannot say are made
right by a small static program, ``engine/shim.c``, shipped to the nodes as a swarm config and
run as the task's command under docker-init: a task starts the moment it is placed (the shim
waits for :meth:`SwarmEngine.start`, so the attach and the ``--file`` uploads come first, as on
one host), and a service cannot set ``StdinOnce``, so the container's stdin never closes (the
shim takes stdin as frames, and a frame of length 0 is EOF). See docs/scale-out.md for what the
swarm spec cannot carry of the single-host hardening.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import secrets
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from hgrun.engine import (
    DEFAULT_BUILD_LIMITS,
    DEFAULT_LOG_BYTES,
    LABEL_RUN,
    AttachStream,
    BuildLimits,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    EngineInfo,
)
from hgrun.engine.docker import DockerEngine, _translate
from hgrun.engine.dockerwire import timestamp
from hgrun.engine.shim import FramedAttach, swarm_config
from hgrun.engine.span import SocketSpan
from hgrun.engine.swarmimages import ImageShipper
from hgrun.engine.swarmnodes import Nodes
from hgrun.engine.swarmspec import (
    API_VERSION,
    GO_FILE,
    service_spec,
    task_command,
    task_state,
)
from hgrun.engine.swarmtasks import SwarmTasks, _Task
from hgrun.engine.swarmwatch import NodeWatch, WatchedAttach
from hgrun.engine.tls import EngineTLS, api_client
from hgrun.errors import EngineError, HgrunError, NotFoundError

log = logging.getLogger("hgrun.swarm")
CONCURRENCY = 8
ORPHAN = "orphan:"  # the id of a task container whose service is gone
LOST_AFTER = 30.0  # a node away this long (seconds in a row) has lost its runs


class SwarmEngine(SwarmTasks):
    """hgrun's engine on a Docker Swarm, through its manager; see the module docstring."""

    concurrency = CONCURRENCY

    def __init__(
        self,
        host: str,
        *,
        constraints: Sequence[str] = (),
        placement_timeout: float = 60.0,
        registry: str | None = None,
        tls: EngineTLS | None = None,
        registered: Callable[[], Mapping[str, str]] = dict,
        lost_after: float = LOST_AFTER,
        log_bytes: int = DEFAULT_LOG_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``tls``: the client identity for every ``tcp://`` engine (manager and nodes);
        ``registered``: node name -> engine endpoint registered by an operator (read again
        every few seconds); ``lost_after``: how long a node may be away before its runs are
        lost (see :mod:`hgrun.engine.swarmwatch`); ``log_bytes``: each task's Docker log
        (see ``swarmspec.service_spec``)."""
        self.host = host
        self.registry = registry
        self.tls = tls
        self.manager = DockerEngine(host, tls=tls)
        self.constraints = tuple(constraints)
        self.placement_timeout = placement_timeout
        self.lost_after = lost_after
        self.log_bytes = log_bytes
        self._clock = clock
        self._sleep = sleep
        with _translate(f"cannot reach the swarm manager at {host}"):
            self._api = api_client(host, version=API_VERSION, timeout=120, tls=tls)
            swarm = self._api.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise EngineError(
                f"{host} is not a swarm manager (swarm state:"
                f" {swarm.get('LocalNodeState') or 'none'})",
                "pass the manager's engine as --docker-host, or use --engine docker",
            )
        self.nodes = Nodes(
            self._api,
            manager_host=host,
            manager_node=str(swarm.get("NodeID") or ""),
            tls=tls,
            registered=registered,
        )
        self._tasks: dict[str, _Task] = {}
        self._shim: tuple[str, str] | None = None
        self._shipper = ImageShipper(
            self._api, registry, lambda: [self.nodes.client(n["ID"]) for n in self.nodes.ready()]
        )
        # Every ready node's endpoint must answer (else attach would fail per run), and the
        # shim must build: both are bad configuration, told at start.
        self.nodes.check()
        self._shim_config()

    def node(self, container_id: str) -> str | None:
        """The name of the node a run's task was placed on (None before it is placed)."""
        try:
            return self._task(container_id).node.name
        except HgrunError:
            return None

    # -- images ------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        """The biggest node's CPUs and memory: a size no node can give is refused up front."""
        nodes = self.nodes.ready()
        if not nodes:
            raise EngineError(
                "the swarm has no ready node", "check `docker node ls` on the manager"
            )
        resources = [(n.get("Description") or {}).get("Resources") or {} for n in nodes]
        version = self.manager.info().version
        return EngineInfo(
            cpus=max(int(r.get("NanoCPUs", 0)) // 10**9 for r in resources),
            memory=max(int(r.get("MemoryBytes", 0)) for r in resources),
            version=version,
        )

    def image_id(self, image: str) -> str | None:
        return self.manager.image_id(image)

    def image_user(self, image: str) -> str:
        return self.manager.image_user(image)  # built there (see ``build``)

    def build(
        self,
        context: IO[bytes],
        *,
        tag: str,
        labels: Mapping[str, str],
        network: str,
        dockerfile: str = "Dockerfile",
        limits: BuildLimits = DEFAULT_BUILD_LIMITS,
    ) -> Iterator[str]:
        """Build on the manager; nodes get the image when a run needs it (``ImageShipper``)."""
        return self.manager.build(
            context, tag=tag, labels=labels, network=network, dockerfile=dockerfile, limits=limits
        )

    def _shim_config(self) -> tuple[str, str]:
        """The swarm config holding the shim, made once (see ``shim.swarm_config``)."""
        if self._shim is None:
            self._shim = swarm_config(self._api)
        return self._shim

    # -- a run -------------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> str:
        """Create the run's service and wait until its task's container runs (the shim, waiting
        for :meth:`start`). An unplaceable or failed task raises with Swarm's reason."""
        with _translate(f"cannot inspect image {spec.image}"):
            image = self._api.inspect_image(spec.image)
        config = image.get("Config") or {}
        # By full image id (a node never pulls that), or by registry digest (it pulls that from
        # the registry once): never a name that could send a node to a public registry.
        spec = dataclasses.replace(spec, image=self._shipper.ship(spec.image, str(image["Id"])))
        argv = task_command(
            spec.command,
            config.get("Entrypoint"),
            config.get("Cmd"),
            framed=spec.stdin and not spec.tty,
        )
        run = spec.labels.get(LABEL_RUN, "x")
        body = service_spec(
            spec,
            name=f"hgrun-run{run}-{secrets.token_hex(3)}",
            argv=argv,
            shim=self._shim_config(),
            constraints=(*self.constraints, *spec.placement, *self.nodes.excluded()),
            log_bytes=self.log_bytes,
        )
        with _translate(f"cannot create a swarm service from {spec.image}"):
            created = self._api._result(
                self._api._post_json(self._api._url("/services/create"), data=body), True
            )
        service_id = str(created["ID"])
        try:
            self._placed(service_id)
        except BaseException:
            with contextlib.suppress(HgrunError):
                self.remove(service_id)
            raise
        return service_id

    async def attach(
        self, container_id: str, *, tty: bool, stdin: bool, logs: bool, running: bool = False
    ) -> AttachStream:
        """Attach through the task's node (the manager has no attach API)."""
        task = self._task(container_id)

        async def attach(logs: bool, running: bool) -> AttachStream:
            node, cid = task.node.engine, task.container_id
            raw = await node.attach(cid, tty=tty, stdin=stdin, logs=logs, running=running)
            return FramedAttach(raw) if task.framed else raw

        return WatchedAttach(
            # With its log: to a container started before (a reattach, a run taken up), which
            # may have ended meanwhile.
            await attach(logs, running or logs),
            self._watch(task),
            inspect=lambda: task.node.engine.inspect(task.container_id),
            reattach=lambda: attach(True, True),
            logs=lambda: task.node.engine.logs(task.container_id, tty=tty),
        )

    def _watch(self, task: _Task) -> NodeWatch:
        def answers() -> bool:
            try:
                self.nodes.probe(task.node.name, task.node.endpoint, timeout=3.0).close()
            except HgrunError:
                return False
            return True

        return NodeWatch(
            task.node.name,
            ready=lambda: self.nodes.state(task.node.id) == "ready",
            answers=answers,
            lost_after=self.lost_after,
            clock=self._clock,
        )

    async def put_archive(
        self, container_id: str, path: str, data: AsyncIterator[bytes | memoryview | SocketSpan]
    ) -> None:
        task = self._task(container_id)
        await task.node.engine.put_archive(task.container_id, path, data)

    async def logs(self, container_id: str, *, tty: bool) -> AsyncIterator[tuple[int, bytes]]:
        task = self._task(container_id)
        async for piece in task.node.engine.logs(task.container_id, tty=tty):
            yield piece

    def start(self, container_id: str) -> None:
        """Let the shim start the command: copy the go file into the waiting container."""
        task = self._task(container_id)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(tarfile.TarInfo(GO_FILE))
        with _translate(f"cannot start the run on swarm node {task.node.name}"):
            task.node.api.put_archive(task.container_id, "/", buffer.getvalue())

    def resize(self, container_id: str, width: int, height: int) -> None:
        with contextlib.suppress(HgrunError):
            task = self._task(container_id)
            task.node.engine.resize(task.container_id, width, height)

    async def ended(self, container_id: str) -> ContainerState | None:
        """The end as the task's node announced it (DockerEngine.ended); None: ask wait."""
        with contextlib.suppress(HgrunError):
            task = self._task(container_id)
            return await task.node.engine.ended(task.container_id)
        return None

    def wait(self, container_id: str) -> int:
        """The exit code, from the node (at once) or, when the node cannot say, the task's
        status or the node once it is back. A node away ``lost_after`` seconds in a row
        raises :class:`NodeLostError` (the run is lost)."""
        task = self._task(container_id)
        try:
            return task.node.engine.wait(task.container_id)
        except HgrunError as e:
            log.info("service %s: node %s gave no exit code: %s", container_id, task.node.name, e)
        watch = self._watch(task)
        while True:
            with contextlib.suppress(HgrunError):  # the manager away (restarting): ask again
                raw = self._current_task(container_id)
                if raw is not None:
                    word, code, _err = task_state(raw)
                    if word is ContainerStatus.EXITED and code is not None:
                        log.info("service %s: exit code from its task: %s", container_id, code)
                        return int(code)
            with contextlib.suppress(HgrunError):
                # The node is back (a restarted dockerd, a mended link): its answer counts.
                state = task.node.engine.inspect(task.container_id)
                if state.status is ContainerStatus.EXITED and state.exit_code is not None:
                    log.info("service %s: exit %s from node %s", container_id, state.exit_code,
                             task.node.name)  # fmt: skip
                    return state.exit_code
            watch.check()
            self._sleep(0.5)

    def inspect(self, container_id: str) -> ContainerState:
        raw = self._current_task(container_id)
        if raw is None:
            raise NotFoundError(f"service {container_id[:12]} has no task")
        return self._state(container_id, raw)

    def _state(self, service_id: str, raw: Mapping[str, Any]) -> ContainerState:
        """The task's state, the manager's word completed by its node's (``_told`` alone is
        what a listing gives)."""
        told = _told(service_id, raw)
        word, code = told.status, told.exit_code
        oom = False
        started = finished = None
        with contextlib.suppress(HgrunError):
            task = self._task(service_id, raw)
            container = task.node.engine.inspect(task.container_id)
            oom, started, finished = (
                container.oom_killed,
                container.started_at,
                container.finished_at,
            )
            if container.status is ContainerStatus.EXITED and word is ContainerStatus.RUNNING:
                # The node knows first; the manager hears of the end a moment later.
                word, code = ContainerStatus.EXITED, container.exit_code
            elif word is ContainerStatus.RUNNING and not self._gate_open(task):
                # Only the shim runs, waiting for start(): the run's command never started
                # (what "created" means to recovery after a restart).
                word, started = ContainerStatus.CREATED, None
        if finished is None and word is ContainerStatus.EXITED:
            finished = _ended_at(raw)
        return dataclasses.replace(
            told, status=word, exit_code=code, oom_killed=oom, finished_at=finished,
            started_at=started, partial=False,
        )  # fmt: skip

    def _gate_open(self, task: _Task) -> bool:
        """Whether :meth:`start` copied the go file in (the shim leaves it there)."""
        try:
            with _translate("cannot read the go file"):
                stream, _stat = task.node.api.get_archive(task.container_id, f"/{GO_FILE}")
                for _chunk in stream:
                    pass
        except NotFoundError:
            return False
        return True

    def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, SIGKILL after ``grace``, on the node; the service goes when it is removed.
        A node that cannot be reached: the service is removed (Swarm stops the task)."""
        try:
            task = self._task(container_id)
            task.node.engine.stop(task.container_id, grace)
        except HgrunError:
            self.remove(container_id)

    def remove(self, container_id: str) -> None:
        """Remove the task's container on its node, then the service. Swarm (dockerd 20.10)
        leaves the running task of a removed replicated job running, reservations and all
        (seen on the test swarm: a shim never let go held half a CPU for ever). An orphan
        (see :meth:`list`) is removed on its node."""
        if container_id.startswith(ORPHAN):
            node_id, _, orphan = container_id.removeprefix(ORPHAN).partition("/")
            self.nodes.client(node_id).engine.remove(orphan)
            return
        try:
            task = self._task(container_id)
        except HgrunError:
            task = None
        self._tasks.pop(container_id, None)
        if task is not None:
            try:
                task.node.engine.remove(task.container_id)
            except HgrunError as e:
                log.warning("service %s: its container on %s stays: %s", container_id,
                            task.node.name, e.message)  # fmt: skip
        try:
            with _translate(f"cannot remove swarm service {container_id[:12]}"):
                self._api.remove_service(container_id)
        except NotFoundError:
            pass

    def list(self, labels: Mapping[str, str]) -> list[ContainerState]:
        """The services carrying ``labels``, each as its task's state as the manager tells it
        (partial: ``inspect`` asks the task's node for the rest); then the orphans: task
        containers on the nodes whose service is gone (id ``orphan:NODE/CONTAINER``).

        The manager is asked for the services, then for their tasks TASKS_AT_ONCE services a
        call: a task query and a node inspect per service was a few calls per run in flight
        at every recovery pass."""
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}

        def listed() -> list[dict[str, Any]]:
            with _translate("cannot list swarm services"):
                return list(self._api.services(filters=filters))

        services = listed()
        tasks = self._newest_tasks([str(s["ID"]) for s in services])
        states = []
        for service in services:
            service_id = str(service["ID"])
            if service_id not in tasks:
                continue  # removed since it was listed
            raw = tasks[service_id]
            if raw is None:
                spec_labels = (service.get("Spec") or {}).get("Labels") or {}
                states.append(
                    ContainerState(
                        id=service_id,
                        labels=dict(spec_labels),
                        status=ContainerStatus.CREATED,
                        exit_code=None,
                        oom_killed=False,
                        error="",
                    )
                )
                continue
            states.append(_told(service_id, raw))
        runs = {s.labels.get(LABEL_RUN) for s in states}
        for node, state in self.nodes.orphans(labels, lambda: {str(s["ID"]) for s in listed()}):
            if state.labels.get(LABEL_RUN) not in runs:
                states.append(dataclasses.replace(state, id=f"{ORPHAN}{node.id}/{state.id}"))
        return states

    async def aclose(self) -> None:
        await self.nodes.aclose()
        await self.manager.aclose()
        self._api.close()


def _told(service_id: str, raw: Mapping[str, Any]) -> ContainerState:
    """A service's task as the manager tells it: partial (its node knows the rest)."""
    word, code, err = task_state(raw)
    labels = (raw.get("Spec") or {}).get("ContainerSpec", {}).get("Labels") or {}
    return ContainerState(
        id=service_id,
        labels=dict(labels),
        status=word,
        exit_code=code,
        oom_killed=False,
        error=err,
        finished_at=_ended_at(raw) if word is ContainerStatus.EXITED else None,
        partial=True,
    )


def _ended_at(raw: Mapping[str, Any]) -> float | None:
    return timestamp(str((raw.get("Status") or {}).get("Timestamp") or ""))
