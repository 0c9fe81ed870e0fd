"""The supervisor: creates, starts, watches and reaps run containers.

One :class:`RunSession` per run in flight. The session holds the container's attach stream,
opened before the container starts so no early output is lost; a pump copies every byte into
the store (the run's log, and so the app's log) and to each attached client. Clients come and
go: an attached run outlives a dropped connection for a grace period. The container, not this
process's memory, is the truth about a run in flight: :meth:`Supervisor.recover` takes runs up
again after a restart, even a SIGKILL, because containers are removed only after their exit
code and full output are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from hgrun.duration import format_duration
from hgrun.engine import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_RUN,
    LABEL_WORKSPACE,
    STDERR,
    AttachStream,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    Engine,
)
from hgrun.errors import (
    EngineError,
    ExitStatus,
    HgrunError,
    NodeLostError,
    NotFoundError,
    PayloadTooLargeError,
)
from hgrun.lifecycle import Limits
from hgrun.models import SIZES, Release, Run, RunStatus
from hgrun.store import Store

log = logging.getLogger("hgrun.supervisor")

FLUSH_BYTES = 1024 * 1024
FLUSH_SECONDS = 0.2
UPLOAD_DIR_PARENT = "/tmp"  # uploads arrive as tar entries under "uploads/"
LEASE_TTL = 15.0  # renewed every 5 s; a SIGKILLed holder frees it within this
AUDIT_CAP = 1024 * 1024  # input and output kept in an audit record, each (the tail past it)

Audit = Callable[[str, Run, dict[str, Any]], None]


@dataclass(frozen=True)
class Output:
    stream: int
    data: bytes


@dataclass(frozen=True)
class Finished:
    exit_code: int
    status: RunStatus
    message: str | None


class Subscriber:
    """One attached client's view of a run: output and the final status, in order."""

    def __init__(self) -> None:
        # Bounded: a slow client slows the pump (and so the container), it never loses bytes.
        self.queue: asyncio.Queue[Output | Finished] = asyncio.Queue(maxsize=64)


@dataclass
class RunSession:
    run: Run
    container_id: str
    stream: AttachStream | None = None
    subscribers: list[Subscriber] = field(default_factory=list)
    uploads_done: asyncio.Event = field(default_factory=asyncio.Event)
    client_joined: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Finished | None = None
    stop_reason: tuple[RunStatus, str] | None = None
    size: tuple[int, int] | None = None
    last_activity: float = 0.0
    alone_since: float | None = None
    task: asyncio.Task[None] | None = None
    pending: list[tuple[int, float, bytes]] = field(default_factory=list)
    stdin_log: bytearray = field(default_factory=bytearray)
    pending_bytes: int = 0
    last_flush: float = 0.0


class Supervisor:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        instance: str,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.engine = engine
        self.instance = instance
        self.limits = limits or Limits()
        self.clock = clock
        self.sessions: dict[int, RunSession] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.leader = False
        self.warned = False
        # Called with each run once its outcome is stored (scripts start their queue from here).
        self.on_finish: list[Callable[[Run], Awaitable[None]]] = []
        self.audit: Audit | None = None
        # Called synchronously the moment a run's outcome is stored, before anyone can see it.
        self.on_outcome: list[Callable[[Run], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle of the supervisor ---------------------------------------------------------

    async def start(self) -> None:
        """Take up runs left in flight, unless another live server supervises this store.

        Two servers may share a store (cron slots stay unique through the store's key), but only
        the one holding the supervisor lease takes up and reaps containers: the other must not
        adopt runs that a live process is still watching.
        """
        await self._claim()
        self._watchdog = asyncio.create_task(self._watch())

    async def _claim(self) -> None:
        """Hold the supervisor lease; on becoming its holder, take up what was left behind."""
        holder = self.store.claim_lease("supervisor", self.owner, LEASE_TTL, _process_gone)
        was_leader, self.leader = self.leader, holder is None
        if self.leader and not was_leader:
            await self.recover()
        elif holder is not None and not self.warned:
            self.warned = True
            log.warning("hgrun server %s supervises this store: its runs are left to it", holder)

    async def shutdown(self) -> None:
        """Leave runs going: their containers are taken up again at the next start."""
        if self._watchdog:
            self._watchdog.cancel()
        if self.leader:
            self.store.release_lease("supervisor", self.owner)
        for session in list(self.sessions.values()):
            self._flush(session)
            if session.task:
                session.task.cancel()
        for session in list(self.sessions.values()):
            if session.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await session.task

    # -- launching ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task held here until it ends: the event loop keeps only weak references, and a
        session's task outlives its place in ``sessions`` (it announces the end after)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def launch(
        self,
        run: Run,
        release: Release,
        network: str,
        extra_env: Mapping[str, str] | None = None,
    ) -> RunSession:
        """Create the run's container and attach to it; it starts when its inputs are ready.

        A detached run without uploads starts at once; an attached run starts when its first
        client attaches; a run with uploads starts when they are in place. ``extra_env`` goes to
        the container only, never to the store (a run's own token, say).
        """
        size = SIZES[run.size]
        env = {**run.env, **(extra_env or {}), "HGRUN_RUN_ID": str(run.id)}
        spec = ContainerSpec(
            image=release.image,
            command=list(run.command),
            env=env,
            labels={
                LABEL_RUN: str(run.id),
                LABEL_APP: str(run.app_id),
                LABEL_WORKSPACE: run.workspace,
                LABEL_INSTANCE: self.instance,
            },
            size=size,
            network=network,
            placement=tuple(release.manifest.placement),
            tty=run.tty,
            stdin=not run.detached,
        )
        run = self.store.update_run(run.id, status=RunStatus.STARTING)
        try:
            container_id = await asyncio.to_thread(self.engine.create, spec)
        except HgrunError as e:
            self._could_not_run(run, e)
            raise
        except Exception as e:
            # Never leave a run `starting` with no container: that would block its script.
            error = EngineError(f"cannot create the container: {e.__class__.__name__}: {e}")
            self._could_not_run(run, error)
            raise error from e
        node = await asyncio.to_thread(self.engine.node, container_id)
        run = self.store.update_run(run.id, container_id=container_id, node=node)
        session = RunSession(run=run, container_id=container_id, last_activity=self.clock())
        if not run.uploads:
            session.uploads_done.set()
        if run.detached:
            session.client_joined.set()
        try:
            session.stream = await self.engine.attach(
                container_id, tty=run.tty, stdin=not run.detached, logs=False
            )
        except HgrunError as e:
            await asyncio.to_thread(self.engine.remove, container_id)
            self._could_not_run(run, e)
            raise
        self.sessions[run.id] = session
        session.task = self._spawn(self._supervise(session))
        if self.audit is not None:
            self.audit(
                "run.start",
                run,
                {
                    "command": list(run.command),
                    "env_keys": sorted(env),
                    "input": run.env.get("HOSTINGGURU_RUN_INPUT"),
                    "mode": "detached" if run.detached else ("tty" if run.tty else "attached"),
                    "size": run.size,
                },
            )
        return session

    def _could_not_run(self, run: Run, error: HgrunError) -> None:
        self.store.update_run(
            run.id,
            status=RunStatus.FAILED,
            exit_code=int(ExitStatus.CANNOT_RUN),
            error=error.message,
            finished=self.clock(),
        )

    async def upload(self, run_id: int, body: AsyncIterator[bytes]) -> int:
        """Stream a tar of ``uploads/...`` entries into the run's container before it starts."""
        session = self._session(run_id)
        if not session.run.uploads or session.uploads_done.is_set():
            raise NotFoundError(
                f"run {run_id} takes no upload", "pass --file when the run is created"
            )
        received = 0
        cap = self.limits.max_upload

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in body:
                received += len(chunk)
                if received > cap:
                    raise PayloadTooLargeError(
                        f"the upload is over the server's cap of {cap // 1024**2} MB",
                        "upload fewer or smaller files, or raise the server's --max-upload",
                    )
                yield chunk

        try:
            await self.engine.put_archive(session.container_id, UPLOAD_DIR_PARENT, counted())
        except HgrunError as e:
            session.stop_reason = (RunStatus.FAILED, f"the upload failed: {e.message}")
            session.uploads_done.set()
            raise
        except Exception as e:
            session.stop_reason = (RunStatus.FAILED, f"the upload failed: {e}")
            session.uploads_done.set()
            raise
        session.uploads_done.set()
        return received

    # -- attached clients --------------------------------------------------------------------

    def subscribe(self, run_id: int) -> tuple[RunSession, Subscriber]:
        session = self._session(run_id)
        subscriber = Subscriber()
        session.subscribers.append(subscriber)
        session.alone_since = None
        session.last_activity = self.clock()
        session.client_joined.set()
        if session.outcome is not None:
            subscriber.queue.put_nowait(session.outcome)
        return session, subscriber

    def unsubscribe(self, session: RunSession, subscriber: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            session.subscribers.remove(subscriber)
        if not session.subscribers and not session.run.detached:
            session.alone_since = self.clock()

    async def stdin(self, session: RunSession, data: bytes) -> None:
        session.last_activity = self.clock()
        if self.audit is not None:
            session.stdin_log += data
            if len(session.stdin_log) > 2 * AUDIT_CAP:
                del session.stdin_log[:-AUDIT_CAP]
        await session.started.wait()
        if session.stream is not None and not session.finished.is_set():
            with contextlib.suppress(EngineError):
                await session.stream.write(data)

    async def close_stdin(self, session: RunSession) -> None:
        await session.started.wait()
        if session.stream is not None:
            await session.stream.close_stdin()

    async def resize(self, session: RunSession, width: int, height: int) -> None:
        session.size = (width, height)
        if session.started.is_set() and session.run.tty:
            await asyncio.to_thread(self.engine.resize, session.container_id, width, height)

    # -- stopping ----------------------------------------------------------------------------

    async def stop(self, run_id: int, status: RunStatus = RunStatus.CANCELED, why: str = "") -> Run:
        """SIGTERM the run, SIGKILL after the grace; it ends with ``status``."""
        session = self.sessions.get(run_id)
        if session is None:
            run = self.store.run(run_id)
            if run.status.finished:
                return run
            return self.store.update_run(
                run_id, status=status, error=why or "stopped", finished=self.clock()
            )
        if session.stop_reason is None:
            session.stop_reason = (status, why or f"{session.run.label} was stopped")
        session.client_joined.set()
        session.uploads_done.set()
        if session.started.is_set():
            await asyncio.to_thread(self.engine.stop, session.container_id, self._grace(session))
        return self.store.run(run_id)

    def _grace(self, session: RunSession) -> float:
        timed_out = (
            session.stop_reason is not None and session.stop_reason[0] is RunStatus.TIMED_OUT
        )
        return 1.0 if timed_out else self.limits.stop_grace

    # -- the run itself ----------------------------------------------------------------------

    async def _supervise(self, session: RunSession) -> None:
        run = session.run
        try:
            if not await self._wait_for_inputs(session):
                await self._finish(session, None)
                return
            try:
                await asyncio.to_thread(self.engine.start, session.container_id)
            except HgrunError as e:
                session.stop_reason = (RunStatus.FAILED, e.message)
                await self._finish(session, int(e.exit_status))
                return
            now = self.clock()
            session.run = self.store.update_run(run.id, status=RunStatus.RUNNING, started=now)
            session.last_activity = now
            session.started.set()
            if session.stop_reason is not None:
                # Stopped while the engine was starting it: stop() could not reach it then.
                await asyncio.to_thread(
                    self.engine.stop, session.container_id, self._grace(session)
                )
            if session.size and run.tty:
                await asyncio.to_thread(self.engine.resize, session.container_id, *session.size)
            await self._pump(session)
            exit_code = await asyncio.to_thread(self.engine.wait, session.container_id)
            await self._finish(session, exit_code)
        except asyncio.CancelledError:
            raise
        except NodeLostError as e:
            # The engine lost the node the run was on (a swarm node went down).
            session.stop_reason = (RunStatus.LOST, e.message)
            await self._finish(session, int(ExitStatus.CANNOT_RUN))
        except Exception as e:
            log.exception("run %s: supervision failed", run.id)
            session.stop_reason = (RunStatus.FAILED, f"hgrun failed to supervise the run: {e}")
            await self._finish(session, int(ExitStatus.CANNOT_RUN))

    async def _wait_for_inputs(self, session: RunSession) -> bool:
        """Wait for uploads and a first client; False when the run must not start."""
        await session.uploads_done.wait()
        if session.stop_reason is None and not session.client_joined.is_set():
            try:
                await asyncio.wait_for(session.client_joined.wait(), self.limits.grace)
            except TimeoutError:
                session.stop_reason = (
                    RunStatus.CANCELED,
                    f"no client attached within {format_duration(self.limits.grace)}",
                )
        return session.stop_reason is None

    async def _pump(self, session: RunSession) -> None:
        stream = session.stream
        if stream is None:
            return
        while True:
            piece = await stream.read()
            if piece is None:
                break
            channel, payload = piece
            now = self.clock()
            session.last_activity = now
            session.pending.append((channel, now, payload))
            session.pending_bytes += len(payload)
            for subscriber in list(session.subscribers):
                await subscriber.queue.put(Output(channel, payload))
            if session.pending_bytes >= FLUSH_BYTES or now - session.last_flush >= FLUSH_SECONDS:
                await self._flush_async(session)
        self._flush(session)

    async def _flush_async(self, session: RunSession) -> None:
        """Store pending output from a worker thread, so the event loop keeps relaying."""
        chunks, session.pending, session.pending_bytes = session.pending, [], 0
        session.last_flush = self.clock()
        if chunks:
            await asyncio.to_thread(
                self.store.append_output, session.run.id, session.run.app_id, chunks
            )

    def _flush(self, session: RunSession) -> None:
        if session.pending:
            self.store.append_output(session.run.id, session.run.app_id, session.pending)
            session.pending = []
            session.pending_bytes = 0
        session.last_flush = self.clock()

    async def _finish(self, session: RunSession, exit_code: int | None) -> None:
        """Record the outcome, remove the container, tell the clients. Runs exactly once."""
        if session.outcome is not None:
            return  # already recorded; a failure after that must not announce the end twice
        run = session.run
        state: ContainerState | None = None
        with contextlib.suppress(HgrunError):
            state = await asyncio.to_thread(self.engine.inspect, session.container_id)
        oom = bool(state and state.oom_killed)
        message: str | None = None
        if session.stop_reason is not None:
            status, message = session.stop_reason
        elif exit_code == 0:
            status = RunStatus.SUCCEEDED
        else:
            status = RunStatus.FAILED
        if oom:
            message = (
                f"out of memory: a process of {run.label} was killed at the limit of its size"
                f" ({run.size}, {SIZES[run.size].memory_mb} MB); try a bigger --size"
            )
        if status is RunStatus.TIMED_OUT:
            exit_code = int(ExitStatus.TIMED_OUT)
        if exit_code is None:
            exit_code = int(ExitStatus.CANNOT_RUN) if status is RunStatus.FAILED else 130
        self._flush(session)
        if message and status is not RunStatus.SUCCEEDED:
            line = f"hgrun: {message}\n".encode()
            self.store.append_output(run.id, run.app_id, [(STDERR, self.clock(), line)])
        finished = state.finished_at if state and state.finished_at else self.clock()
        times = {"finished": finished}
        if state and state.started_at and run.started is not None:
            # The engine's own clock on both ends, so a short run never ends before it began.
            times["started"] = state.started_at
        session.run = self.store.update_run(
            run.id,
            status=status,
            exit_code=exit_code,
            oom=int(oom),
            error=message,
            **times,
        )
        for hook in self.on_outcome:
            try:
                hook(session.run)
            except Exception:
                log.exception("run %s: an outcome hook failed", run.id)
        # The outcome is stored: clients hear it now, and the container goes after (a crash in
        # between leaves a stray that recovery removes).
        session.outcome = Finished(exit_code, status, message)
        session.finished.set()
        session.started.set()
        for subscriber in list(session.subscribers):
            if message and status is not RunStatus.SUCCEEDED:
                await subscriber.queue.put(Output(STDERR, f"hgrun: {message}\n".encode()))
            await subscriber.queue.put(session.outcome)
        self.sessions.pop(run.id, None)
        try:
            if session.stream is not None:
                await session.stream.close()
            await asyncio.to_thread(self.engine.remove, session.container_id)
            if self.audit is not None:
                self.audit("run.finish", session.run, self._audit_finish(session))
        finally:
            # Whatever failed above, the run is over: a script's queue must hear of it.
            await self._announce(session.run)

    def _audit_finish(self, session: RunSession) -> dict[str, Any]:
        run = session.run
        output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        before = None
        # Newest chunks first, until the cap: the tail of a long output is what matters.
        while sum(map(len, output.values())) < 2 * AUDIT_CAP:
            chunks = self.store.output(run_id=run.id, before=before, limit=256, newest_first=True)
            if not chunks:
                break
            for chunk in chunks:
                buffer = output["stderr" if chunk.stream == STDERR else "stdout"]
                buffer[:0] = chunk.data
            before = chunks[-1].cursor
        return {
            "status": run.status.value,
            "exit_code": run.exit_code,
            "oom": run.oom,
            "error": run.error,
            "duration": run.duration,
            "input": session.stdin_log.decode("utf-8", "replace") if session.stdin_log else None,
            "stdout": bytes(output["stdout"][-AUDIT_CAP:]).decode("utf-8", "replace"),
            "stderr": bytes(output["stderr"][-AUDIT_CAP:]).decode("utf-8", "replace"),
        }

    async def _announce(self, run: Run) -> None:
        for callback in self.on_finish:
            try:
                await callback(run)
            except Exception:
                log.exception("run %s: a finish callback failed", run.id)

    # -- watchdog: timeouts, grace after disconnect, idle sessions, strays -------------------

    async def _watch(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(0.5)
            ticks += 1
            now = self.clock()
            for session in list(self.sessions.values()):
                try:
                    await self._check(session, now)
                except Exception:
                    log.exception("run %s: watchdog check failed", session.run.id)
            if ticks % 10 == 0:
                with contextlib.suppress(Exception):
                    await self._claim()
            if ticks % 120 == 0 and self.leader:
                with contextlib.suppress(Exception):
                    await self.reap()

    async def _check(self, session: RunSession, now: float) -> None:
        run = session.run
        if session.finished.is_set() or session.stop_reason is not None:
            return
        if session.pending and now - session.last_flush >= FLUSH_SECONDS:
            self._flush(session)
        if run.started is not None and now - run.started > run.timeout:
            await self.stop(
                run.id,
                RunStatus.TIMED_OUT,
                f"{run.label} timed out after {format_duration(run.timeout)}",
            )
        elif session.alone_since is not None and now - session.alone_since > self.limits.grace:
            await self.stop(
                run.id,
                RunStatus.CANCELED,
                f"{run.label} was stopped: no client attached for"
                f" {format_duration(self.limits.grace)}",
            )
        elif (
            not run.detached
            and session.started.is_set()
            and now - session.last_activity > self.limits.idle_timeout
        ):
            await self.stop(
                run.id,
                RunStatus.CANCELED,
                f"{run.label} was idle for {format_duration(self.limits.idle_timeout)} and was"
                " closed; for long tasks use `hgrun run --detached`",
            )

    # -- recovery after a restart ------------------------------------------------------------

    async def recover(self) -> None:
        """Take up runs in flight after a restart; mark the vanished ones lost; reap strays."""
        containers = {
            c.labels.get(LABEL_RUN, ""): c
            for c in await asyncio.to_thread(self.engine.list, {LABEL_INSTANCE: self.instance})
        }
        for run in self.store.active_runs():
            container = containers.pop(str(run.id), None)
            if container is None and run.status is RunStatus.QUEUED and run.script_id:
                continue  # waits in its script's queue, which the script runner resumes
            started = container is not None and container.status is not ContainerStatus.CREATED
            if container is not None and (started or run.status is RunStatus.RUNNING):
                if run.status is not RunStatus.RUNNING:
                    # Killed between starting the container and recording it.
                    run = self.store.update_run(
                        run.id,
                        status=RunStatus.RUNNING,
                        started=container.started_at or self.clock(),
                    )
                await self._retake(run, container)
                continue
            if container is not None:
                await asyncio.to_thread(self.engine.remove, container.id)
            if run.status is RunStatus.RUNNING:
                self.store.update_run(
                    run.id,
                    status=RunStatus.LOST,
                    error="the container vanished while the server was down",
                    finished=self.clock(),
                )
            elif run.detached and not run.uploads:
                # Never started, and nobody waits on a terminal for it: start it now.
                await self._relaunch(run)
            else:
                self.store.update_run(
                    run.id,
                    status=RunStatus.LOST,
                    error="the server stopped before the run started; start it again",
                    finished=self.clock(),
                )
        for stray in containers.values():
            log.info("removing stray container %s", stray.id[:12])
            await asyncio.to_thread(self.engine.remove, stray.id)

    async def _relaunch(self, run: Run) -> None:
        release = self.store.release(run.release_id)
        try:
            await self.launch(run, release, release.manifest.network)
        except HgrunError as e:
            log.warning("run %s: could not start it after the restart: %s", run.id, e.message)

    async def _retake(self, run: Run, container: ContainerState) -> None:
        session = RunSession(run=run, container_id=container.id, last_activity=self.clock())
        session.uploads_done.set()
        session.client_joined.set()
        if not run.detached:
            session.alone_since = self.clock()
        self.store.clear_output(run.id)
        if container.running:
            # Attach with logs=1 replays everything the container wrote, then follows it.
            session.stream = await self.engine.attach(
                container.id, tty=run.tty, stdin=False, logs=True
            )
            session.started.set()
            self.sessions[run.id] = session
            session.task = self._spawn(self._resume(session))
        else:
            self.sessions[run.id] = session
            session.started.set()
            async for channel, payload in self.engine.logs(container.id, tty=run.tty):
                session.pending.append((channel, self.clock(), payload))
            await self._finish(session, container.exit_code)

    async def _resume(self, session: RunSession) -> None:
        try:
            await self._pump(session)
            exit_code = await asyncio.to_thread(self.engine.wait, session.container_id)
            await self._finish(session, exit_code)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("run %s: resuming failed", session.run.id)
            session.stop_reason = (RunStatus.FAILED, f"hgrun failed to resume the run: {e}")
            await self._finish(session, int(ExitStatus.CANNOT_RUN))

    async def reap(self) -> None:
        """Remove containers of ours that no run in flight owns (left by a crash)."""
        for container in await asyncio.to_thread(self.engine.list, {LABEL_INSTANCE: self.instance}):
            run_id = container.labels.get(LABEL_RUN, "")
            if not run_id.isdigit() or int(run_id) not in self.sessions:
                with contextlib.suppress(NotFoundError):
                    run = self.store.run(int(run_id)) if run_id.isdigit() else None
                    if run is not None and not run.status.finished:
                        continue
                log.info("reaping stray container %s", container.id[:12])
                await asyncio.to_thread(self.engine.remove, container.id)

    def _session(self, run_id: int) -> RunSession:
        session = self.sessions.get(run_id)
        if session is None:
            raise NotFoundError(f"run {run_id} is not in flight")
        return session


def _process_gone(holder: str) -> bool:
    """Whether a lease holder (``host:pid:nonce``) is a process of this host that has died."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
