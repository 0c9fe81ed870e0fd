"""The warm pool: containers started ahead of the runs that will need them.

Most of ``docker run``'s time is the container's start (the runtime, the mounts, the cgroups),
not the command. An attached run (``hgrun run CMD``: a person or a script waits for it) takes a
container of the same kind that is already running :data:`~hgrun.engine.handoff.SHIM`, and the
command and its env are handed to it on its stdin (:mod:`hgrun.engine.handoff`): the shell
``exec``\\ s the command, which becomes the container's main process, as in a container made for
it. A container is used by one run only and removed with it, as any run's.

Kinds: same image, size, network, TTY, stdin, user, working directory, root filesystem and
labels but the run's: one container a kind. A kind's first run gets its container the usual
way and asks for one; a run that takes one asks for the next at once. A run that finds none
idle waits for the one being made if no other run waits for it (it is most often nearer ready
than a new one: a script's loop of ``hgrun run`` goes at the pace the engine makes them),
else it is made the usual way. Keeping more than one a kind was measured and dropped: on two
cores, containers made side by side are made no faster, and a loop went slower. At most
``size`` in all (the oldest idle one makes room), each removed once unused for ``idle``
seconds. An image the shim cannot run in (no ``sh``) is not asked again.

What differs from a container made for the run: the container's labels name no run
(``hgrun.run=warm``; the store knows its container), its env is the image's (the run's is the
command's), and the engine's start time is the pool's (the run's own is recorded).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from hgrun import execfailure
from hgrun.engine import (
    LABEL_RUN,
    AttachStream,
    ContainerSpec,
    ContainerState,
    Engine,
    handoff,
)
from hgrun.errors import HgrunError

log = logging.getLogger("hgrun.warm")

WARM = "warm"  # the hgrun.run label of a warm container: no run's yet
LABEL_OWNER = "hgrun.warm"  # the server process whose pool made it (a lease holder's id)
DEFAULT_SIZE = 4
DEFAULT_IDLE = 600.0
SWEEP_SECONDS = 30.0


def is_warm(labels: Any) -> bool:
    return bool(labels) and labels.get(LABEL_RUN) == WARM


def kept(pool: WarmPool | None, container: ContainerState, gone: Callable[[str], bool]) -> bool:
    """Whether a warm container is still some pool's: this server's (:meth:`WarmPool.keeps`),
    or, with no pool here, the live server's that made it. ``gone``: whether a server process
    (a lease holder's id) has died."""
    if pool is not None:
        return pool.keeps(container, gone)
    return not gone(container.labels.get(LABEL_OWNER, ""))


class HandoffStream:
    """A warm container's attached stdio: the script goes first (:meth:`hand_off`), the run's
    stdin after it, and its output comes without what preceded the marker."""

    def __init__(self, stream: AttachStream, script: bytes | None, limit: int) -> None:
        self._stream = stream
        self._script = script
        self._filter = handoff.Handoff(limit)
        self._handed = asyncio.Event()
        self._first = True
        if script is None:  # taken up after a restart: handed over already
            self._handed.set()

    async def hand_off(self) -> None:
        if self._script is not None and not self._handed.is_set():
            await self._stream.write(self._script)
            self._handed.set()

    async def read(self) -> tuple[int, bytes] | None:
        while (piece := await self._stream.read()) is not None:
            data = self._filter.feed(*piece)
            if data:
                if self._first:  # a command the image lacks, in hgrun's words
                    self._first = False
                    data = execfailure.explain(data) or data
                return piece[0], data
        return None

    async def write(self, data: bytes) -> None:
        await self._handed.wait()
        await self._stream.write(data)

    async def close_stdin(self) -> None:
        await self._handed.wait()
        await self._stream.close_stdin()

    async def close(self) -> None:
        self._handed.set()  # a write waiting for a handoff that will never come goes on
        await self._stream.close()


async def replayed(pieces: Any, limit: int = 4 * handoff.MAX_SCRIPT) -> Any:
    """A warm container's log as the run's: without the handoff before the marker."""
    drop = handoff.Handoff(limit)
    async for stream, data in pieces:
        if data := drop.feed(stream, data):
            yield stream, data


@dataclasses.dataclass
class _Idle:
    container_id: str
    since: float


@dataclasses.dataclass
class _Kind:
    """The warm container of one kind of run, idle or being made."""

    spec: ContainerSpec  # a run's: what a container of the kind is made from
    idle: collections.deque[_Idle] = dataclasses.field(default_factory=collections.deque)
    making: int = 0
    waiting: int = 0  # runs waiting for a container being made
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def announce(self) -> None:
        """Wake the runs waiting for a container being made (one was, or failed)."""
        self.changed.set()
        self.changed = asyncio.Event()


class WarmPool:
    def __init__(
        self,
        engine: Engine,
        owner: str,
        *,
        size: int = DEFAULT_SIZE,
        idle: float = DEFAULT_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.size = size
        self.idle = idle
        self.clock = clock
        self._kinds: dict[tuple[Any, ...], _Kind] = {}
        self._ids: set[str] = set()  # every container the pool holds, idle or being made
        self._refused: set[str] = set()  # images the shim cannot run in
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # -- what the supervisor and recovery ask --------------------------------------------------

    def keeps(self, container: ContainerState, gone: Callable[[str], bool]) -> bool:
        """Whether a warm container is still some pool's: this one's (held, or being made:
        listed before the pool knows its id), or another live server's. ``gone``: whether a
        server process (a lease holder's id) has died."""
        owner = container.labels.get(LABEL_OWNER, "")
        if owner != self.owner:
            return not gone(owner)
        return container.id in self._ids or any(k.making for k in self._kinds.values())

    async def take(self, spec: ContainerSpec) -> tuple[str, HandoffStream] | None:
        """A running container for ``spec``, attached, its handoff ready; None: make one the
        usual way (a kind's first run, a script the shim cannot take, an image without sh,
        every container of the kind taken and none being made that no other run waits for)."""
        script = handoff.script(spec.command, spec.env)
        if script is None or spec.image in self._refused or not spec.stdin or self.size < 1:
            return None
        key = _kind(spec)
        kind = self._kinds.get(key)
        if kind is None:  # its first run: made the usual way, and one asked for the next
            self._kinds[key] = kind = _Kind(spec)
            self._top_up(kind)
            return None
        if not kind.idle and kind.making > kind.waiting:
            # One being made that no run waits for yet: most often nearer ready than a new one.
            kind.waiting += 1
            try:
                while not kind.idle and kind.making:
                    await kind.changed.wait()
            finally:
                kind.waiting -= 1
        if not kind.idle:
            self._top_up(kind)
            return None
        idle = kind.idle.popleft()
        self._top_up(kind)
        try:
            stream = await self.engine.attach(
                idle.container_id, tty=spec.tty, stdin=True, logs=False, running=True
            )
        except HgrunError as e:
            # It ended: a hand removed it, or the shim could not run (an image without sh:
            # docker-init starts, finds no sh and exits 127). This run is made the usual way;
            # an image whose shim could not run is not asked again.
            log.warning("warm container %s ended: %s", idle.container_id[:12], e.message)
            if await self._could_not_run(idle.container_id):  # asked before its removal
                self._refuse(spec.image)
            self._remove(idle.container_id)
            return None
        # Held here until the run's session holds it (the caller, without awaiting): a
        # recovery pass meanwhile must not take it for a stray.
        self._ids.discard(idle.container_id)
        return idle.container_id, HandoffStream(stream, script, 4 * len(script) + 4096)

    async def _could_not_run(self, container_id: str) -> bool:
        """Whether the shim of an ended warm container could not run (126, 127: its shell)."""
        try:
            state = await asyncio.to_thread(self.engine.inspect, container_id)
        except HgrunError:
            return False
        return state.exit_code in (126, 127)

    async def close(self) -> None:
        """Remove every container the pool holds (the server is stopping)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        making = [t for t in self._tasks if not t.done()]
        for task in making:
            task.cancel()
        for task in making:
            with contextlib.suppress(BaseException):
                await task
        ids, self._kinds, self._ids = set(self._ids), {}, set()
        await asyncio.gather(*(asyncio.to_thread(self._remove_now, cid) for cid in ids))

    # -- keeping it filled ---------------------------------------------------------------------

    def _top_up(self, kind: _Kind) -> None:
        """Start making a container of ``kind`` unless it has one, within the pool's size (the
        oldest idle container of another kind makes room)."""
        if kind.spec.image in self._refused or kind.idle or kind.making:
            return
        if self._held() >= self.size and not self._evict(kind):
            return
        kind.making += 1
        self._spawn(self._make(kind))
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    def _held(self) -> int:
        return sum(len(k.idle) + k.making for k in self._kinds.values())

    def _evict(self, keep: _Kind) -> bool:
        others = [k for k in self._kinds.values() if k is not keep and k.idle]
        if not others:
            return False
        oldest = min(others, key=lambda k: k.idle[0].since)
        self._remove(oldest.idle.popleft().container_id)
        return True

    async def _make(self, kind: _Kind) -> None:
        spec = kind.spec
        labels = {**spec.labels, LABEL_RUN: WARM, LABEL_OWNER: self.owner}
        warm = dataclasses.replace(spec, command=["sh", "-c", handoff.SHIM], env={}, labels=labels)
        container_id = None
        try:
            container_id = await asyncio.to_thread(self.engine.create, warm)
            self._ids.add(container_id)
            await asyncio.to_thread(self.engine.start, container_id)
        except HgrunError as e:
            # The engine's trouble, not the image's: an image without sh starts (docker-init
            # does) and ends at once, which the next take finds (126, 127: refused there).
            log.warning("cannot make a warm container of %s: %s", spec.image, e.message)
            if container_id is not None:
                self._remove(container_id)
            return
        except asyncio.CancelledError:
            if container_id is not None:
                self._remove(container_id)
            raise
        else:
            if spec.image in self._refused:  # found meanwhile to have no shell
                self._remove(container_id)
            else:
                kind.idle.append(_Idle(container_id, self.clock()))
        finally:
            kind.making -= 1
            kind.announce()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep()

    def sweep(self) -> None:
        """Remove the containers unused for ``idle`` seconds (every :data:`SWEEP_SECONDS`)."""
        now = self.clock()
        for key, kind in list(self._kinds.items()):
            while kind.idle and now - kind.idle[0].since >= self.idle:
                self._remove(kind.idle.popleft().container_id)
            if not kind.idle and not kind.making and not kind.waiting:
                del self._kinds[key]

    def _refuse(self, image: str) -> None:
        """Make no more warm containers of ``image``; remove those made meanwhile."""
        self._refused.add(image)
        for kind in self._kinds.values():
            while kind.spec.image == image and kind.idle:
                self._remove(kind.idle.popleft().container_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remove(self, container_id: str) -> None:
        self._ids.discard(container_id)
        self._spawn(asyncio.to_thread(self._remove_now, container_id))

    def _remove_now(self, container_id: str) -> None:
        with contextlib.suppress(HgrunError):
            self.engine.remove(container_id)


def _kind(spec: ContainerSpec) -> tuple[Any, ...]:
    """What two runs must share to use the same warm container: all of the spec but the
    command, the env and the run's label."""
    labels = tuple(sorted((k, v) for k, v in spec.labels.items() if k != LABEL_RUN))
    return (
        spec.image,
        spec.size,
        spec.network,
        spec.tty,
        spec.stdin,
        spec.keep_stdin,
        spec.working_dir,
        tuple(spec.placement),
        spec.user,
        spec.read_only,
        labels,
    )
