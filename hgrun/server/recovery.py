"""Recovery: runs and containers no live server holds, taken up after a restart or a takeover.

The container, not a server's memory, is the truth about a run in flight. At start-up and then
every minute, each active run that no session here holds is looked at with what the engine
reports of its container, and :func:`hgrun.lifecycle.recovery` says what to do; the run's lease
is claimed before anything is done, so a run another live server holds is never touched (two
servers on one store never pump or finish a run twice). Containers of ended or unknown runs are
removed (strays a crash left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

from hgrun.engine import (
    LABEL_INSTANCE,
    LABEL_RUN,
    ContainerState,
    ContainerStatus,
    Engine,
)
from hgrun.engine.handoff import MAX_SCRIPT
from hgrun.errors import HgrunError, NodeLostError, NotFoundError
from hgrun.lifecycle import Phase, Recover, Stop, recovery
from hgrun.models import Run, RunStatus
from hgrun.rejoin import Rejoin
from hgrun.server.launcher import network_of
from hgrun.server.leases import LeaseLost, lease_owner, process_gone, this_host
from hgrun.server.output import RejoinedStream, rejoined
from hgrun.server.session import RunSession
from hgrun.server.warm import HandoffStream, is_warm, kept, replayed

if TYPE_CHECKING:
    from hgrun.server.supervisor import Supervisor

# Where main, scripts and tests take them from.
__all__ = ["Recoverer", "lease_owner", "process_gone", "this_host"]

log = logging.getLogger("hgrun.recovery")


class Recoverer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._lock = asyncio.Lock()
        self._first = True

    async def recover(self) -> None:
        """One pass: take up what no live server holds; remove strays."""
        async with self._lock:
            await self._pass()

    async def _pass(self) -> None:
        sup = self.supervisor
        listed = await asyncio.to_thread(sup.engine.list, {LABEL_INSTANCE: sup.instance})
        containers = {c.labels.get(LABEL_RUN, ""): c for c in listed if not is_warm(c.labels)}
        # A warm container names no run: the store knows which run took it (hgrun.server.warm).
        warm = {c.id: c for c in listed if is_warm(c.labels)}
        # A run waiting in its script's queue has no container and is left to the queue
        # (lifecycle.recovery: LEAVE): not read.
        # The first pass (at start-up) takes up the runs that waited in the line of a server
        # that stopped (--max-runs): detached ones wait again here, in order; later passes
        # leave every queue alone (this server's line is in memory).
        first, self._first = self._first, False
        for run in sup.store.active_runs(backlogs=first, besides=set(sup.sessions)):
            container = containers.pop(str(run.id), None)
            handed = None  # a warm container the run took
            if container is None and run.container_id in warm:
                container = handed = warm.pop(run.container_id)
            if run.id in sup.sessions or run.id in sup.pending or sup.slots.waiting(run.id):
                continue
            try:
                # Taking a run up needs its container's exit code and times, which a listing
                # may not tell: inspected here, for the few runs no live server holds.
                if container is not None and container.partial:
                    container = await _inspected(sup.engine, container.id)
                if handed is not None and container is not None:
                    container = _handed_over(run, container)
                await self._take_up(run, container)
            except Exception:
                log.exception("run %s: recovery failed", run.id)
        for key, container in containers.items():
            if key.isdigit() and int(key) in sup.sessions:
                continue
            await self._reap(key, container)
        held = {s.container_id for s in sup.sessions.values()}
        for container in warm.values():
            # A run here just took it, or a live server's pool keeps it; else its server died.
            if container.id in held or kept(sup.warm, container, process_gone):
                continue
            log.info("removing warm container %s, no run's", container.id[:12])
            with contextlib.suppress(HgrunError):
                await asyncio.to_thread(sup.engine.remove, container.id)

    async def renew(self) -> None:
        """Renew the lease of every run held here; a run recorded final elsewhere is stopped;
        a run whose lease another server took is let go (it supervises it now)."""
        sup = self.supervisor
        for run_id, session in list(sup.sessions.items()):
            holder = await sup.leases.taken(run_id, confirm=True)
            if holder is not None:
                await self.let_go(session, holder)
                continue
            stored = sup.store.run(run_id)
            if stored.status.finished and session.stop is None:
                await sup.request_stop(
                    session, Stop(stored.status, stored.error or f"{stored.label} was stopped")
                )
        # An attached run waiting for a slot keeps its lease (no other server's recovery may
        # record it lost while its client waits); a detached one holds none while it waits.
        for run_id in list(sup.slots.attached):
            await sup.leases.taken(run_id, confirm=True)

    async def let_go(self, session: RunSession, holder: str) -> None:
        """Leave a run another server took over to it: no outcome, no removal, no lease
        released; this server's viewers are told to attach again (they reach the holder)."""
        sup = self.supervisor
        run = session.run
        log.warning("run %s: taken over by hgrun server %s; letting it go", run.id, holder)
        session.phase = Phase.FINISHING
        if sup.sessions.get(run.id) is session:
            del sup.sessions[run.id]
            sup.slots.release(run.id)
        sup.leases.forget(run.id)
        for subscriber in session.subscribers:
            subscriber.let_go(f"{run.label} is followed by another hgrun server now")
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
        if session.stream is not None:
            with contextlib.suppress(Exception):
                await session.stream.close()

    async def _take_up(self, run: Run, container: ContainerState | None) -> None:
        sup = self.supervisor
        decision = recovery(run, container, held=False, now=sup.clock())
        if decision.action in (Recover.LEAVE, Recover.REAP):
            return
        if sup.leases.hold(run.id) is not None:
            return  # a live server holds it: its lease is being renewed
        run = sup.store.run(run.id)  # read again, now that it is ours
        decision = recovery(run, container, held=False, now=sup.clock())
        log.info("%s: taken up here (%s)", run.label, decision.action.name.lower())
        if decision.remove and container is not None:
            await asyncio.to_thread(sup.engine.remove, container.id)
        if decision.action is Recover.LOSE and decision.outcome is not None:
            session = RunSession(run=run, phase=Phase.RUNNING)
            session.stop = Stop(decision.outcome.status, decision.outcome.message or "lost")
            await sup.finish(session, decision.outcome.exit_code)
        elif decision.action is Recover.START:
            sup.leases.release(run.id)
            release = sup.store.release(run.release_id)
            try:
                await sup.launch(run, release, network_of(release))
            except HgrunError as e:
                log.warning("run %s: could not start it after the restart: %s", run.id, e.message)
        elif decision.action in (Recover.ADOPT, Recover.FINISH) and container is not None:
            if decision.started is not None:
                # Killed between starting the container and recording it.
                run = sup.store.mark_running(run.id, decision.started)
            await self._retake(run, container, decision.action)
        else:
            sup.leases.release(run.id)

    async def _retake(self, run: Run, container: ContainerState, action: Recover) -> None:
        sup = self.supervisor
        now = sup.clock()
        session = RunSession(
            run=run,
            phase=Phase.RUNNING,
            container_id=container.id,
            uploads_done=True,
            clients_seen=True,
            last_activity=now,
            alone_since=None if run.detached else now,
            warm=is_warm(container.labels),
        )
        # The engine replays what its log still holds of the container's output (Docker's
        # rotates): what the store holds stays, and only what it lacks is added to it.
        stored = await asyncio.to_thread(sup.output.stored, run.id)
        session.total = session.stored = stored.total
        rejoin = Rejoin(stored)

        async def find(probe: bytes) -> int | None:
            return await asyncio.to_thread(sup.output.find, run.id, probe)

        sup.sessions[run.id] = session
        sup.slots.hold(run.id)  # in flight already: it counts against --max-runs
        exit_code = container.exit_code
        try:
            if action is Recover.ADOPT:
                try:
                    # A TTY session's stdin outlived the old server: the new one takes it up.
                    attached = await sup.engine.attach(
                        container.id,
                        tty=run.tty,
                        stdin=run.tty and not run.detached,
                        logs=True,
                        running=True,
                    )
                    if session.warm:
                        attached = HandoffStream(attached, None, 4 * MAX_SCRIPT)
                    session.stream = RejoinedStream(attached, rejoin, find)
                except HgrunError:
                    # It ended (or went) between the listing and the attach: finish it.
                    ended = await asyncio.to_thread(sup.engine.inspect, container.id)
                    exit_code = ended.exit_code
                else:
                    session.task = sup.spawn(self._resume(session))
                    return
            replay = sup.engine.logs(container.id, tty=run.tty)
            if session.warm:
                replay = replayed(replay)
            async for stream, data in rejoined(replay, rejoin, find):
                session.add(stream, data, sup.clock())
        except Exception as e:
            # Never leave a session no task finishes: the run would stay in flight for ever.
            log.exception("run %s: taking it up failed", run.id)
            session.stop = Stop(RunStatus.LOST, f"hgrun could not take {run.label} up again: {e}")
        await sup.finish(session, exit_code)

    async def _resume(self, session: RunSession) -> None:
        sup = self.supervisor
        try:
            await sup.follow(session)
        except asyncio.CancelledError:
            raise
        except LeaseLost as e:
            await self.let_go(session, e.holder)
        except NodeLostError as e:  # its node went away for good: lost, as in supervise
            session.stop = session.stop or Stop(RunStatus.LOST, e.message)
            await sup.finish(session)
        except Exception as e:
            log.exception("run %s: resuming failed", session.run.id)
            if session.stop is None:
                session.stop = Stop(RunStatus.FAILED, f"hgrun failed to resume the run: {e}")
            await sup.finish(session)

    async def _reap(self, key: str, container: ContainerState) -> None:
        """Remove a container whose run ended or is unknown (left by a crash)."""
        sup = self.supervisor
        run = None
        with contextlib.suppress(NotFoundError):
            run = sup.store.run(int(key)) if key.isdigit() else None
        decision = recovery(run, container, held=False, now=sup.clock())
        if decision.action is Recover.REAP and decision.remove:
            log.info("removing stray container %s", container.id[:12])
            with contextlib.suppress(HgrunError):
                await asyncio.to_thread(sup.engine.remove, container.id)


async def _inspected(engine: Engine, container_id: str) -> ContainerState | None:
    """A container's full state; None: it went since it was listed."""
    try:
        return await asyncio.to_thread(engine.inspect, container_id)
    except NotFoundError:
        return None


def _handed_over(run: Run, container: ContainerState) -> ContainerState:
    """A warm container as recovery must see it: a run not yet recorded running was never
    handed over (the supervisor records it before the handoff), so its command never ran,
    whatever became of the shell waiting for it: the container counts as created."""
    if run.status is RunStatus.RUNNING:
        return container
    return dataclasses.replace(container, status=ContainerStatus.CREATED)
