"""A run's container, made for it or taken warm, and its start.

An attached run without uploads takes a warm container when the pool has one
(:mod:`hgrun.server.warm`); any other run has one made for it. A container made for the run is
started by the engine once the run's inputs are ready, then the run is recorded running. A warm
container is running already, its shell waiting on stdin: the run is recorded running first
(recovery takes a warm container of a run still ``starting`` for one never handed over), then
its command is handed over. Either way a terminal is sized before the run's command can ask
for its size, or at once after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from hgrun.engine import ContainerSpec, Engine
from hgrun.errors import HgrunError
from hgrun.server.session import RunSession
from hgrun.server.warm import HandoffStream, WarmPool
from hgrun.store import Store


async def make(
    engine: Engine, pool: WarmPool | None, session: RunSession, spec: ContainerSpec
) -> str:
    """The session's container: a warm one comes attached (``session.stream``). Raises the
    engine's error when it cannot make one."""
    run = session.run
    if pool is not None and not run.detached and not run.uploads:
        if (taken := await pool.take(spec)) is not None:
            session.stream, session.warm = taken[1], True
            return taken[0]
    return await asyncio.to_thread(engine.create, spec)


async def start(
    engine: Engine, store: Store, clock: Callable[[], float], session: RunSession
) -> float:
    """Start the session's container and record its run running (``session.run`` updated):
    the instant recorded. Raises the engine's error when it cannot start."""
    run, container = session.run, session.container_id
    assert container is not None, "a run starts once its container is made"
    warm = session.stream if isinstance(session.stream, HandoffStream) else None
    if warm is None:
        await asyncio.to_thread(engine.start, container)
    now = clock()
    session.run = store.mark_running(run.id, now)
    if session.size and run.tty:
        with contextlib.suppress(HgrunError):  # a terminal left unsized fails no run
            await asyncio.to_thread(engine.resize, container, *session.size)
    if warm is not None:
        await warm.hand_off()
    return now
