"""An in-memory engine at our own seam (the :class:`hgrun.engine.Engine` protocol), for unit
tests of the supervisor. Acceptance tests use a real dockerd.

A container here is a record the test drives: it writes output with :meth:`FakeEngine.emit` and
ends with :meth:`FakeEngine.exit`; ``stop`` ends it with 143 (SIGTERM). Any blocking call can be
held at its entry with :meth:`FakeEngine.hold`, so a test can act while a call is in flight
(a stop while the engine creates, attaches or starts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import IO

from hgrun.engine import (
    DEFAULT_BUILD_LIMITS,
    BuildLimits,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    EngineInfo,
)
from hgrun.engine.span import SocketSpan
from hgrun.errors import EngineError, NotFoundError

WAIT = 10.0  # the longest a held call or a wait blocks, so a broken test fails, never hangs


@dataclasses.dataclass
class Hold:
    """A call held at its entry until released."""

    entered: threading.Event = dataclasses.field(default_factory=threading.Event)
    go: threading.Event = dataclasses.field(default_factory=threading.Event)

    async def reached(self) -> None:
        """Wait (without blocking the loop) until the call is in flight."""
        if not await asyncio.to_thread(self.entered.wait, WAIT):
            raise TimeoutError("the held call was never made")

    def release(self) -> None:
        self.go.set()


@dataclasses.dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    status: ContainerStatus = ContainerStatus.CREATED
    exit_code: int | None = None
    oom: bool = False
    output: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    exited: threading.Event = dataclasses.field(default_factory=threading.Event)
    streams: list[FakeStream] = dataclasses.field(default_factory=list)
    stdin: bytearray = dataclasses.field(default_factory=bytearray)
    stdin_closed: bool = False
    archives: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None


class FakeStream:
    def __init__(self, container: FakeContainer, loop: asyncio.AbstractEventLoop) -> None:
        self.container = container
        self.loop = loop
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.closed = False

    def push(self, piece: tuple[int, bytes] | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)

    async def read(self) -> tuple[int, bytes] | None:
        if self.closed:
            return None
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        self.container.stdin += data

    async def close_stdin(self) -> None:
        self.container.stdin_closed = True

    async def close(self) -> None:
        self.closed = True


class FakeEngine:
    concurrency = 4

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self._holds: dict[str, Hold] = {}
        self.errors: dict[str, Exception] = {}  # method -> what its next call raises
        self._next = 0
        self._lock = threading.Lock()
        self.clock = 1000.0
        # Whether ``ended`` announces an exited container's state (as Docker's die event
        # does), or answers None so the supervisor asks ``wait``.
        self.announces = False

    # -- what tests drive ------------------------------------------------------------------

    def hold(self, method: str) -> Hold:
        """Hold the next call of ``method`` at its entry."""
        hold = Hold()
        self._holds[method] = hold
        return hold

    def emit(self, cid: str, stream: int, data: bytes) -> None:
        container = self.containers[cid]
        container.output.append((stream, data))
        for s in container.streams:
            s.push((stream, data))

    def exit(self, cid: str, code: int, *, oom: bool = False) -> None:
        container = self.containers[cid]
        if container.status is ContainerStatus.EXITED:
            return
        container.status = ContainerStatus.EXITED
        container.exit_code = code
        container.oom = oom
        container.finished_at = self.clock
        for s in container.streams:
            s.push(None)
        container.exited.set()

    def only(self) -> FakeContainer:
        (container,) = self.containers.values()
        return container

    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.status is ContainerStatus.RUNNING]

    def _enter(self, method: str, cid: str = "") -> None:
        self.calls.append((method, cid))
        hold = self._holds.pop(method, None)
        if hold is not None:
            hold.entered.set()
            if not hold.go.wait(WAIT):
                raise TimeoutError(f"{method} held for ever")
        error = self.errors.pop(method, None)
        if error is not None:
            raise error

    def _get(self, cid: str) -> FakeContainer:
        container = self.containers.get(cid)
        if container is None:
            raise NotFoundError(f"no such container {cid}")
        return container

    # -- the Engine protocol -----------------------------------------------------------------

    def info(self) -> EngineInfo:
        return EngineInfo(cpus=8, memory=64 * 1024**3, version="fake")

    def image_id(self, image: str) -> str | None:
        return "sha256:fake"

    def image_user(self, image: str) -> str:
        return ""

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
        yield "built"

    def create(self, spec: ContainerSpec) -> str:
        self._enter("create")
        with self._lock:
            self._next += 1
            cid = f"c{self._next}"
        self.containers[cid] = FakeContainer(cid, spec)
        return cid

    async def attach(
        self, container_id: str, *, tty: bool, stdin: bool, logs: bool, running: bool = False
    ) -> FakeStream:
        await asyncio.to_thread(self._enter, "attach", container_id)
        container = self._get(container_id)
        if running and container.status is not ContainerStatus.RUNNING:
            raise EngineError(f"container {container_id[:12]} is no longer running")
        stream = FakeStream(container, asyncio.get_running_loop())
        if logs:
            for piece in container.output:
                stream.push(piece)
        # As Docker does: an attach to a container that has ended already is never ended (its
        # streams were closed before this one was registered); it is left open.
        if container.status is not ContainerStatus.EXITED:
            container.streams.append(stream)
        return stream

    async def put_archive(
        self, container_id: str, path: str, data: AsyncIterator[bytes | memoryview | SocketSpan]
    ) -> None:
        container = self._get(container_id)
        body = b""
        async for chunk in data:  # a piece may be a reused view, or a span of a socket
            if isinstance(chunk, SocketSpan):
                async for piece in chunk.chunks():
                    body += bytes(piece)
            else:
                body += bytes(chunk)
        container.archives.append((path, body))

    async def logs(self, container_id: str, *, tty: bool) -> AsyncIterator[tuple[int, bytes]]:
        for piece in list(self._get(container_id).output):
            yield piece

    def node(self, container_id: str) -> str | None:
        return None

    def start(self, container_id: str) -> None:
        self._enter("start", container_id)
        container = self._get(container_id)
        container.status = ContainerStatus.RUNNING
        container.started_at = self.clock

    def resize(self, container_id: str, width: int, height: int) -> None:
        self._get(container_id).sizes.append((width, height))

    async def ended(self, container_id: str) -> ContainerState | None:
        """With ``announces``, the state of an exited container (else None: ask wait)."""
        self.calls.append(("ended", container_id))
        container = self.containers.get(container_id)
        if not self.announces or container is None:
            return None
        if container.status is not ContainerStatus.EXITED:
            return None
        return self._state(container)

    def wait(self, container_id: str) -> int:
        self.calls.append(("wait", container_id))
        container = self._get(container_id)
        if not container.exited.wait(WAIT):
            raise TimeoutError(f"container {container_id} never exited")
        return container.exit_code if container.exit_code is not None else -1

    def inspect(self, container_id: str) -> ContainerState:
        self._enter("inspect", container_id)
        return self._state(self._get(container_id))

    def stop(self, container_id: str, grace: float) -> None:
        self._enter("stop", container_id)
        container = self.containers.get(container_id)
        if container is not None and container.status is ContainerStatus.RUNNING:
            self.exit(container_id, 143)

    def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        container = self.containers.pop(container_id, None)
        if container is not None:
            self.removed.append(container_id)
            for s in container.streams:
                s.push(None)
            container.exited.set()

    def list(self, labels: Mapping[str, str]) -> list[ContainerState]:
        return [
            self._state(c)
            for c in list(self.containers.values())
            if all(c.spec.labels.get(k) == v for k, v in labels.items())
        ]

    def _state(self, c: FakeContainer) -> ContainerState:
        return ContainerState(
            id=c.id,
            labels=dict(c.spec.labels),
            status=c.status,
            exit_code=c.exit_code,
            oom_killed=c.oom,
            error="",
            finished_at=c.finished_at,
            started_at=c.started_at,
        )
