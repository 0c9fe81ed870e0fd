"""The supervisor: the I/O shell around :mod:`hgrun.lifecycle`.

It asks the lifecycle for each decision (the container spec, what a stop does now, what a
deadline calls for, how a run ended, what recovery does with a run) and carries it out, one
engine call at a time; the store's named transitions record each step (first final state wins).

One :class:`~hgrun.server.session.RunSession` per run this process holds, registered before its
container exists, so a stop at any moment finds it: a stop during an engine call is flagged and
carried out when the call returns (the container is removed unstarted, or killed the moment it
started). The session's attach stream is opened before the container starts so no early output
is lost; a pump appends every piece to the run's log (flushed to the store from a worker thread)
and offers it to each viewer without waiting for any. Each run held here carries a lease in the
store (renewed by the watchdog): recovery, here or in another server on the same store, takes up
only runs whose holder's lease has expired, and a holder that stalled past its lease lets the run
go at its next store write (:mod:`hgrun.server.leases`), so no run is pumped or finished twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from hgrun.engine import ContainerState, Engine
from hgrun.errors import (
    ConflictError,
    EngineError,
    HgrunError,
    NodeLostError,
    NotFoundError,
    StoreError,
)
from hgrun.lifecycle import (
    Limits,
    Phase,
    Step,
    Stop,
    StopAction,
    after_step,
    container_spec,
    due,
    kill_grace,
    on_stop,
    outcome,
)
from hgrun.models import Release, Run, RunStatus
from hgrun.server import starting
from hgrun.server.clients import AUDIT_CAP, AttachedClients
from hgrun.server.leases import LEASE_TTL, LeaseLost, Leases
from hgrun.server.output import OutputLog
from hgrun.server.pumping import FLUSH_SECONDS, OutputPump
from hgrun.server.recovery import Recoverer
from hgrun.server.session import Finished, Output, RunSession, Subscriber
from hgrun.server.slots import RunSlots, end_waiting, enqueue, stop_unlaunched
from hgrun.server.stopping import Stopper, StopTask
from hgrun.server.warm import WarmPool
from hgrun.server.watchdog import Watchdog
from hgrun.store import Store

__all__ = ["Finished", "LeaseLost", "Limits", "Output", "RunSession", "Subscriber", "Supervisor"]

log = logging.getLogger("hgrun.supervisor")

STORE_RETRY = 2.0  # seconds between tries to record a run's end the store refused (a full disk)

Audit = Callable[[str, Run, dict[str, Any]], None]


class Supervisor(AttachedClients, OutputPump):
    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        instance: str,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 0.5,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.store = store
        self.engine = engine
        self.instance = instance
        self.limits = limits or Limits()
        self.clock = clock
        self.sessions: dict[int, RunSession] = {}
        # Runs recorded `starting` that a caller here is about to launch (a cron slot's batch,
        # see ScriptRunner.record_slots): recovery leaves them, as it leaves those in sessions.
        self.pending: set[int] = set()
        self.leases = Leases(store, clock, lease_ttl)
        # Called with each run once its outcome is stored (scripts start their queue from here).
        self.on_finish: list[Callable[[Run], Awaitable[None]]] = []
        # Called after each recovery pass (scripts resume queues whose server died).
        self.on_recover: list[Callable[[], Awaitable[None]]] = []
        self.audit: Audit | None = None
        # Called synchronously the moment a run's outcome is stored, before anyone can see it.
        self.on_outcome: list[Callable[[Run], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopper = Stopper(engine)
        self._watchdog: asyncio.Task[None] | None = None
        self.output = OutputLog(store, clock)
        self.recoverer = Recoverer(self)
        self.watchdog = Watchdog(self, tick)
        # The cap on runs in flight (--max-runs) and the line beyond it (hgrun.server.slots).
        self.slots = RunSlots(self.spawn)
        # Containers started ahead of the attached runs that take them (hgrun.server.warm).
        self.warm: WarmPool | None = None

    # -- the supervisor's own life -----------------------------------------------------------

    async def start(self) -> None:
        """Take up what no live server holds (runs in flight, strays), then keep watch."""
        await self.recoverer.recover()
        self._watchdog = asyncio.create_task(self.watchdog.run())

    async def shutdown(self) -> None:
        """Leave runs going: their containers are taken up again by the next server to start
        (their leases are let go, so it need not wait for them to expire)."""
        if self._watchdog:
            self._watchdog.cancel()
        self.stopper.cancel()
        if self.warm is not None:
            with contextlib.suppress(Exception):
                await self.warm.close()
        for session in list(self.sessions.values()):
            if session.task:
                session.task.cancel()
        for session in list(self.sessions.values()):
            if session.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await session.task
            with contextlib.suppress(Exception):
                await self.flush(session)
            with contextlib.suppress(Exception):
                self.leases.release(session.run.id)

    def hold(self, run_id: int) -> str | None:
        """Take or renew the run's lease; None when held here, else who holds it."""
        return self.leases.hold(run_id)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task held here until it ends (the event loop keeps only weak references)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- launching ---------------------------------------------------------------------------

    async def launch(
        self,
        run: Run,
        release: Release,
        network: str,
        extra_env: Mapping[str, str] | None = None,
        *,
        waited: RunSession | None = None,
    ) -> RunSession:
        """Create the run's container and attach to it; it starts when its inputs are ready.

        A detached run without uploads starts at once; an attached run when its first client
        attaches; a run with uploads when they are in place. ``extra_env`` reaches the container
        only, never the store. Returns the session (its run final when stopped meanwhile);
        raises the engine's error when the container cannot be made (the run recorded failed).

        With every slot taken (``--max-runs``) the run waits in line instead: the session
        returned is in phase ``queued`` (clients may attach to it), and the launch goes on, with
        that session (``waited``), once a slot frees (:mod:`hgrun.server.slots`); a full line
        records the run failed and raises :class:`~hgrun.errors.BusyError`. Nothing here awaits
        before the slot is taken or the run is in line, so a caller that checked the line just
        before is not overtaken.
        """
        if run.id in self.sessions or (waited is None and self.slots.waiting(run.id)):
            raise ConflictError(f"{run.label} is already in flight")
        holder = self.leases.hold(run.id)
        if holder is not None:
            raise ConflictError(f"{run.label} is held by hgrun server {holder}")
        spec = container_spec(
            run, release, network=network, instance=self.instance, extra_env=extra_env
        )
        now = self.clock()
        run = self.store.run(run.id)  # a stop may have come since the caller read it
        if not run.status.finished and not self.slots.take(run.id):

            async def launch_waited(session: RunSession) -> None:
                await self.launch(run, release, network, extra_env, waited=session)

            return enqueue(self, run, launch_waited)
        if run.status is RunStatus.QUEUED:
            run = self.store.mark_starting(run.id)
        session = waited or RunSession(run=run)
        session.run, session.phase, session.last_activity = run, Phase.CREATING, now
        if run.status.finished:  # stopped while it waited in its queue
            end_waiting(session, run)
            self.slots.release(run.id)
            self.leases.release(run.id)
            return session
        if run.uploads:
            session.waiting_since = now
        if not run.detached and not session.subscribers:
            session.alone_since = now
        self.sessions[run.id] = session
        session.changed.set()  # an upload waiting for the container sees the phase move
        # The run's start is audited (a durable write: ms of fsync) while its container is
        # made; the container starts only once the record is durable (below).
        audited = asyncio.ensure_future(self._audit_start(run, spec.env))
        try:
            session.container_id = await starting.make(self.engine, self.warm, session, spec)
        except HgrunError as e:
            await _settled(audited)  # its record first, then the run's end: the chain's order
            await self.finish(session, error=e)
            raise
        except Exception as e:
            # Never leave a run `starting` with no container: that would block its script.
            error = EngineError(f"cannot create the container: {e.__class__.__name__}: {e}")
            await _settled(audited)
            await self.finish(session, error=error)
            raise error from e
        node = await asyncio.to_thread(self.engine.node, session.container_id)
        session.run = self.store.set_container(run.id, session.container_id, node)
        self._stopped_elsewhere(session)
        if after_step(Phase.CREATING, session.stop) is Step.ABORT:
            await _settled(audited)
            await self.finish(session)
            return session
        session.phase = Phase.ATTACHING
        try:
            session.stream = session.stream or await self.engine.attach(
                session.container_id, tty=run.tty, stdin=not run.detached, logs=False
            )
        except HgrunError as e:
            await _settled(audited)
            await self.finish(session, error=e)
            raise
        try:  # fail closed: no start (no _supervise) without a durable run.start record
            await audited
        except Exception as e:
            refused = e if isinstance(e, HgrunError) else StoreError(f"cannot audit it: {e}")
            # Failed and its container removed by a task: finish waits out a full disk, the
            # caller does not (it answers this error at once, as it did before the overlap).
            self.spawn(self.finish(session, error=refused))
            raise refused from e
        if after_step(Phase.ATTACHING, session.stop) is Step.ABORT:
            await self.finish(session)
            return session
        session.phase = Phase.WAITING
        session.changed.set()
        session.task = self.spawn(self._supervise(session))
        return session

    async def _audit_start(self, run: Run, env: Mapping[str, str]) -> None:
        """The run.start record, written in a thread: durable once this returns."""
        if self.audit is not None:
            mode = "detached" if run.detached else ("tty" if run.tty else "attached")
            payload: dict[str, Any] = {"command": list(run.command), "env_keys": sorted(env)}
            payload |= {"input": run.env.get("HOSTINGGURU_RUN_INPUT"), "mode": mode}
            payload["size"] = run.size
            await asyncio.to_thread(self.audit, "run.start", run, payload)

    def _stopped_elsewhere(self, session: RunSession) -> None:
        """A run recorded final by someone else (a stop answered by another server, say) is
        ended here too: it must not start, or it is killed."""
        run = session.run
        if run.status.finished and session.stop is None:
            session.stop = Stop(run.status, run.error or f"{run.label} was stopped")

    # -- stopping ----------------------------------------------------------------------------

    async def stop(self, run_id: int, status: RunStatus = RunStatus.CANCELED, why: str = "") -> Run:
        """End the run with ``status``, whatever it is doing (see :func:`lifecycle.on_stop`)."""
        session = self.sessions.get(run_id)
        if session is None:
            # Not launched here: waiting for a slot or in a script's queue, or held by another
            # server, which sees the run final at its next lease renewal and kills its container.
            return await stop_unlaunched(self, run_id, status, why)
        stop = Stop(status, why or f"{session.run.label} was stopped")
        if (stopping := await self.request_stop(session, stop)) and (error := await stopping):
            raise error
        return self.store.run(run_id)

    async def request_stop(self, session: RunSession, stop: Stop) -> StopTask | None:
        """Flag the stop (see :func:`lifecycle.on_stop`); a running container is stopped by a
        task of its own (:mod:`hgrun.server.stopping`), so a slow engine stop holds up no
        caller (the watchdog checks every other deadline on time). That task, if any: it gives
        the engine's error (also logged)."""
        if session.stop is None:
            session.stop = stop
        session.changed.set()
        if on_stop(session.phase) is not StopAction.KILL or not session.container_id:
            return None
        grace = kill_grace(session.stop, self.limits)
        return self.stopper.stop(session.run, session.container_id, grace)

    # -- the run itself ----------------------------------------------------------------------

    async def _supervise(self, session: RunSession) -> None:
        run = session.run
        try:
            while not session.ready and session.stop is None:
                session.changed.clear()
                await session.changed.wait()
            if after_step(Phase.WAITING, session.stop) is Step.ABORT:
                await self.finish(session)
                return
            session.phase = Phase.STARTING
            try:
                now = await starting.start(self.engine, self.store, self.clock, session)
            except HgrunError as e:
                await self.finish(session, error=e)
                return
            self._stopped_elsewhere(session)
            session.phase = Phase.RUNNING
            session.last_activity = now
            session.changed.set()
            if after_step(Phase.STARTING, session.stop) is Step.KILL and session.stop:
                grace = kill_grace(session.stop, self.limits)
                await asyncio.to_thread(self.engine.stop, self._container(session), grace)
            await self.follow(session)
        except asyncio.CancelledError:
            raise
        except LeaseLost as e:
            await self.recoverer.let_go(session, e.holder)
        except NodeLostError as e:  # the engine lost the host the run was on: lost, not failed
            session.stop = session.stop or Stop(RunStatus.LOST, e.message)
            await self.finish(session)
        except Exception as e:
            log.exception("run %s: supervision failed", run.id)
            if session.stop is None:
                session.stop = Stop(RunStatus.FAILED, f"hgrun failed to supervise the run: {e}")
            await self.finish(session)

    async def follow(self, session: RunSession) -> None:
        """Pump the output until it ends, wait for the exit code, record the outcome."""
        await self._pump(session)
        container_id = self._container(session)
        # The engine's announcement of the exit when it has one (Docker's die event, ~10 ms
        # before its wait answers); else wait, and the state is inspected while finishing.
        ended = await self.engine.ended(container_id)
        if ended is not None and ended.exit_code is not None:
            await self.finish(session, ended.exit_code, state=ended)
            return
        exit_code = await asyncio.to_thread(self.engine.wait, container_id)
        await self.finish(session, exit_code)

    async def finish(
        self,
        session: RunSession,
        exit_code: int | None = None,
        *,
        error: HgrunError | None = None,
        state: ContainerState | None = None,
    ) -> None:
        """Record the outcome, tell the viewers, remove the container. Runs once per session.
        ``state``: the container's end as the engine announced it, if it did."""
        if session.phase is Phase.FINISHING:
            return
        run = session.run
        # The container's state (its OOM flag, its times) is asked of the engine while the
        # lease is confirmed: one engine round trip fewer before the exit is reported.
        cid = session.container_id if error is None and state is None else None
        inspecting = asyncio.ensure_future(_state_of(self.engine, cid))
        # A server that stalled past its lease must not finish a run another one took over:
        # that one records the outcome and removes the container (never twice, never early).
        while True:
            try:
                holder = await self.leases.taken(run.id, confirm=True)
                break
            except StoreError as e:  # a full disk: the lease is confirmed once space returns
                log.error("run %s: cannot confirm its lease (%s); retrying", run.id, e.message)
                await asyncio.sleep(STORE_RETRY)
        if holder is not None or session.phase is Phase.FINISHING:  # another's, or finished
            await _settled(inspecting)
            if holder is not None:
                await self.recoverer.let_go(session, holder)
            return
        session.phase = Phase.FINISHING
        state = state or await inspecting
        result = outcome(
            run,
            exit_code=exit_code,
            oom=bool(state and state.oom_killed),
            stop=session.stop,
            error=error,
        )
        now = self.clock()
        if result.message and result.status is not RunStatus.SUCCEEDED:
            session.note(result.message, now)
        # A warm container started before its run: the run's start is the one recorded.
        engine_start = state.started_at if state and not session.warm else None
        started = engine_start if engine_start and run.started else None
        finished = state.finished_at if state and state.finished_at else now
        while True:
            try:
                await self.output.flush(session)  # the lease was confirmed above
                # The engine's clock on both ends, so a short run never ends before it began.
                session.run = self.store.record_outcome(
                    run.id, result, finished=finished, started=started
                )
                break
            except StoreError as e:
                # A full disk: the output still held and the outcome are recorded once space
                # returns; the run is not left active for ever, nor recorded without its end.
                log.error("run %s: cannot record its end (%s); retrying", run.id, e.message)
                await asyncio.sleep(STORE_RETRY)
        stored = session.run  # the first final state wins: what is stored is what happened
        self.outcome_stored(stored)
        code = stored.exit_code if stored.exit_code is not None else result.exit_code
        session.outcome = Finished(code, stored.status, stored.error)
        session.finished.set()
        session.changed.set()
        for subscriber in session.subscribers:
            subscriber.wake()
        self.sessions.pop(run.id, None)
        self.slots.release(run.id)  # the head of the line starts
        try:
            if session.stream is not None:
                await session.stream.close()
            if session.container_id is not None:
                await asyncio.to_thread(self.engine.remove, session.container_id)
            self.leases.release(run.id)
            if self.audit is not None:
                self.audit(
                    "run.finish",
                    stored,
                    await asyncio.to_thread(self.output.audit, session, AUDIT_CAP),
                )
        except Exception:
            log.exception("run %s: cleaning up failed", run.id)
        finally:
            # Whatever failed above, the run is over: a script's queue must hear of it.
            await self.announce(stored)

    def outcome_stored(self, run: Run) -> None:
        """Tell the ``on_outcome`` hooks, at once, of a run whose outcome was just stored."""
        for hook in self.on_outcome:
            try:
                hook(run)
            except Exception:
                log.exception("run %s: an outcome hook failed", run.id)

    async def announce(self, run: Run) -> None:
        """Tell the ``on_finish`` callbacks (a script's queue goes on) that ``run`` ended."""
        for callback in self.on_finish:
            try:
                await callback(run)
            except Exception:
                log.exception("run %s: a finish callback failed", run.id)

    # -- what the watchdog checks (hgrun.server.watchdog) --------------------------------------

    async def check(self, session: RunSession, now: float) -> None:
        """Carry out what the run's deadlines call for at ``now``; flush output held too long."""
        if session.unstored and now - session.last_flush >= FLUSH_SECONDS:
            if not session.flush_lock.locked():
                self.spawn(self._flush_held(session))
        decision = due(session.run, session.presence, self.limits, now)
        if decision.stop is not None:
            await self.request_stop(session, decision.stop)

    @staticmethod
    def _container(session: RunSession) -> str:
        if session.container_id is None:  # never: a session waits or runs only once created
            raise EngineError(f"{session.run.label} has no container")
        return session.container_id

    def _session(self, run_id: int) -> RunSession:
        session = self.sessions.get(run_id) or self.slots.session(run_id)
        if session is None:
            raise NotFoundError(f"run {run_id} is not in flight")
        return session


async def _state_of(engine: Engine, container_id: str | None) -> ContainerState | None:
    """The container's state; None without one, or when the engine cannot say."""
    if container_id is None:
        return None
    with contextlib.suppress(HgrunError):
        return await asyncio.to_thread(engine.inspect, container_id)
    return None


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` whatever it ends with (its error is the start's, already moot)."""
    with contextlib.suppress(Exception):
        await future
