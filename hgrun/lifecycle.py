"""The run lifecycle as data and decisions: values in, values out, no I/O, no clock.

Like :mod:`hgrun.schedule`, everything here takes ``now`` (epoch seconds) as a parameter. The
supervisor (``server/supervisor.py``) is the I/O shell that carries these decisions out; the store
enforces the same state machine on every write (``store.mark_running``, ``store.record_outcome``
...), so "first final state wins" holds whichever process or task writes first.

States (README "Run states"): ``queued -> starting -> running -> succeeded | failed | timed_out |
canceled``, plus ``skipped`` (refused by a script's concurrency policy, created final) and ``lost``
(the container vanished while no server watched it).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping

from hgrun.duration import format_duration
from hgrun.engine import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_RUN,
    LABEL_WORKSPACE,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
)
from hgrun.errors import ExitStatus, HgrunError
from hgrun.models import ACTIVE_STATUSES, FINAL_STATUSES, SIZES, Release, Run, RunStatus

ACTIVE = ACTIVE_STATUSES
FINAL = FINAL_STATUSES

# A run is created queued, starting (a one-off launched at once) or skipped (refused by policy).
INITIAL = frozenset({RunStatus.QUEUED, RunStatus.STARTING, RunStatus.SKIPPED})

# Which status may follow which. Final states have no successor: the first one written wins.
TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset(
        {RunStatus.STARTING, RunStatus.CANCELED, RunStatus.FAILED, RunStatus.LOST}
    ),
    RunStatus.STARTING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.FAILED,
            RunStatus.CANCELED,
            RunStatus.TIMED_OUT,
            RunStatus.LOST,
        }
    ),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.TIMED_OUT,
            RunStatus.CANCELED,
            RunStatus.LOST,
        }
    ),
    **{status: frozenset() for status in FINAL_STATUSES},
}


def allowed(current: RunStatus, new: RunStatus) -> bool:
    """Whether a run in ``current`` may move to ``new``."""
    return new in TRANSITIONS[current]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended: its final status, the exit code ``hgrun run`` returns, and why."""

    status: RunStatus
    exit_code: int
    message: str | None = None
    oom: bool = False


# Exit code of a run canceled before its command gave one (a shell's code for SIGINT, 128 + 2).
CANCELED_EXIT = 130


@dataclasses.dataclass(frozen=True)
class Limits:
    """The server's limits on runs (``hgrun server`` flags), in seconds and bytes."""

    grace: float = 60.0  # an attached run with no client for this long is stopped
    idle_timeout: float = 30 * 60.0  # an attached session with no input or output is closed
    max_timeout: float = 60 * 60.0  # every run is capped at this
    stop_grace: float = 10.0  # SIGTERM, then SIGKILL after this
    max_upload: int = 2 * 1024**3
    upload_grace: float | None = None  # uploads must begin within this; None: ``grace``

    @property
    def upload_deadline(self) -> float:
        return self.grace if self.upload_grace is None else self.upload_grace


@dataclasses.dataclass(frozen=True)
class Stop:
    """Why a run is being ended by hgrun rather than by its own command."""

    status: RunStatus  # canceled, timed_out or failed
    message: str


def kill_grace(stop: Stop, limits: Limits) -> float:
    """Seconds between SIGTERM and SIGKILL: a timed-out run had its time, it gets one second."""
    return 1.0 if stop.status is RunStatus.TIMED_OUT else limits.stop_grace


# --- outcome ----------------------------------------------------------------------------------


def outcome(
    run: Run,
    *,
    exit_code: int | None,
    oom: bool = False,
    stop: Stop | None = None,
    error: HgrunError | None = None,
) -> Outcome:
    """How ``run`` ended, from what the engine reported and what hgrun asked for.

    - ``error``: the engine could not run it (create, attach or start failed): ``failed`` with the
      error's exit status, 125 (could not run), 126 (not executable) or 127 (not found), as
      ``docker run`` gives.
    - ``stop``: hgrun ended it (``hgrun stop``, a deadline, an upload that failed); the stop's
      status wins over the exit code, because the exit is the effect of the stop. A timed-out run
      exits 124; a stopped run keeps the code its command gave (143 after SIGTERM), or 130 when it
      never gave one; a run failed by hgrun with no exit code exits 125.
    - otherwise the exit code: 0 ``succeeded``, anything else ``failed``; ``None`` (the engine
      lost it) is ``failed`` with 125.

    ``oom``: the engine killed a process at the memory limit; a run that failed says so, naming
    its size. README "Runs" and "Exit codes".
    """
    if error is not None:
        return Outcome(RunStatus.FAILED, int(error.exit_status), error.message, oom)
    if stop is not None:
        status, message = stop.status, stop.message
        if status is RunStatus.TIMED_OUT:
            code = int(ExitStatus.TIMED_OUT)
        elif exit_code is not None:
            code = exit_code
        elif status is RunStatus.CANCELED:
            code = CANCELED_EXIT
        else:
            code = int(ExitStatus.CANNOT_RUN)
        return Outcome(status, code, message, oom)
    if exit_code is None:
        return Outcome(
            RunStatus.FAILED,
            int(ExitStatus.CANNOT_RUN),
            f"{run.label} ended without an exit code from the engine",
            oom,
        )
    if exit_code == 0:
        return Outcome(RunStatus.SUCCEEDED, 0, None, oom)
    oom_message = None
    if oom:
        size = SIZES.get(run.size)
        limit = f" ({run.size}, {size.memory_mb} MB)" if size else ""
        oom_message = (
            f"out of memory: a process of {run.label} was killed at the limit of its size"
            f"{limit}; try a bigger --size"
        )
    return Outcome(RunStatus.FAILED, exit_code, oom_message, oom)


def lost(run: Run, *, started: bool) -> Outcome:
    """The outcome of a run whose container vanished (``started``) or never started."""
    if started:
        message = f"the container of {run.label} vanished while no server watched it"
    else:
        message = f"the server stopped before {run.label} started; start it again"
    return Outcome(RunStatus.LOST, int(ExitStatus.CANNOT_RUN), message)


# --- stop at any moment -----------------------------------------------------------------------


class Phase(enum.StrEnum):
    """Where a run is in its launch, as the supervisor sees it."""

    QUEUED = "queued"  # no container yet, and no launch under way (a script's backlog)
    CREATING = "creating"  # the engine is creating the container
    ATTACHING = "attaching"  # the container exists; its stdio is being attached
    WAITING = "waiting"  # attached, waiting for uploads or a first client
    STARTING = "starting"  # the engine is starting the container
    RUNNING = "running"  # the command runs; output flows
    FINISHING = "finishing"  # the exit is known; the outcome is being recorded


class StopAction(enum.StrEnum):
    RECORD = "record"  # nothing runs: record the outcome now
    FLAG = "flag"  # a launch step is in flight: it sees the stop when it returns
    KILL = "kill"  # SIGTERM the container now, SIGKILL after the grace
    NOTHING = "nothing"  # the run is already ending


def on_stop(phase: Phase) -> StopAction:
    """What ``hgrun stop`` (or a deadline) does to a run in ``phase``.

    An engine call in flight (create, attach, start) cannot be interrupted, so the stop is
    flagged and the launch checks it after each call (:func:`after_step`): a container created or
    attached after the stop is removed without starting; one started while the stop came is
    killed the moment start returns. Either way the run ends ``canceled`` with no container left.
    """
    if phase is Phase.QUEUED:
        return StopAction.RECORD
    if phase in (Phase.CREATING, Phase.ATTACHING, Phase.STARTING):
        return StopAction.FLAG
    if phase is Phase.WAITING:
        # Nothing blocks in the engine: the waiting launch wakes and aborts (remove, record).
        return StopAction.FLAG
    if phase is Phase.RUNNING:
        return StopAction.KILL
    return StopAction.NOTHING


class Step(enum.StrEnum):
    GO = "go"  # go on to the next phase
    ABORT = "abort"  # remove the container (if any) and record the outcome; never start
    KILL = "kill"  # the container started: stop it, then follow it to its exit as usual


def after_step(done: Phase, stop: Stop | None) -> Step:
    """What the launch does once the engine call of phase ``done`` returned."""
    if stop is None:
        return Step.GO
    if done in (Phase.STARTING, Phase.RUNNING):
        return Step.KILL
    return Step.ABORT


# --- deadlines --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Presence:
    """What the supervisor knows of a run in flight besides its record, as instants (epoch s).

    ``waiting_since``: when the run began waiting for its uploads (None: it takes none, or they
    are in or on their way). ``alone_since``: since when an attached run has had no client
    (None: a client is attached, or the run is detached). ``last_activity``: the last input or
    output of an attached session. ``stopping``: a stop was already asked for.
    """

    waiting_since: float | None = None
    alone_since: float | None = None
    last_activity: float = 0.0
    stopping: bool = False


@dataclasses.dataclass(frozen=True)
class Due:
    """The stop a deadline calls for (None: none yet) and when to look again (None: never)."""

    stop: Stop | None
    next: float | None


def due(run: Run, presence: Presence, limits: Limits, now: float) -> Due:
    """Check a run's deadlines at ``now``; a deadline is reached at its instant exactly.

    In order: the run's own timeout since it started (``timed_out``); uploads that did not begin
    within ``limits.upload_deadline`` of the run being created (``failed``); an attached run left
    with no client for ``limits.grace``, before it started or after its last client left
    (``canceled``); an attached session with no input or output for ``limits.idle_timeout``
    (``canceled``). A run already stopping or ended has no deadline left.
    """
    if presence.stopping or run.status.finished:
        return Due(None, None)
    # (deadline, its stop): the stop's words are made only for a deadline reached (the
    # watchdog asks every run in flight each beat, a thousand of them at a time).
    checks: list[tuple[float, Callable[[], Stop]]] = []
    if run.started is not None:
        timeout = run.timeout
        checks.append(
            (
                run.started + timeout,
                lambda: Stop(
                    RunStatus.TIMED_OUT, f"{run.label} timed out after {format_duration(timeout)}"
                ),
            )
        )
    if presence.waiting_since is not None:
        window = limits.upload_deadline
        checks.append(
            (
                presence.waiting_since + window,
                lambda: Stop(
                    RunStatus.FAILED,
                    f"the files for {run.label} did not arrive within"
                    f" {format_duration(window)}; run it again",
                ),
            )
        )
    if not run.detached and presence.alone_since is not None:
        grace, since = limits.grace, "within" if run.started is None else "for"
        checks.append(
            (
                presence.alone_since + grace,
                lambda: Stop(
                    RunStatus.CANCELED,
                    f"{run.label} was stopped: no client attached {since} {format_duration(grace)}",
                ),
            )
        )
    if not run.detached and run.started is not None:
        idle = limits.idle_timeout
        checks.append(
            (
                max(presence.last_activity, run.started) + idle,
                lambda: Stop(
                    RunStatus.CANCELED,
                    f"{run.label} was idle for {format_duration(idle)} and was"
                    " closed; for long tasks use `hgrun run --detached`",
                ),
            )
        )
    for deadline, stop in checks:
        if now >= deadline:
            return Due(stop(), None)
    return Due(None, min((deadline for deadline, _ in checks), default=None))


# --- recovery after a restart -----------------------------------------------------------------


class Recover(enum.StrEnum):
    ADOPT = "adopt"  # the container runs: attach with its logs replayed, follow it to its exit
    FINISH = "finish"  # the container exited: replay its logs, record its exit
    START = "start"  # never started and nobody waits on a terminal: launch it again
    LOSE = "lose"  # record the run lost
    REAP = "reap"  # a container no run in flight owns: remove it
    LEAVE = "leave"  # not ours to touch (another live server holds it, or a script's queue)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What to do with one run (and its container) at start-up.

    ``remove``: remove the container first (START, LOSE and REAP when there is one).
    ``started``: for ADOPT and FINISH of a run not yet recorded running, the instant to record
    (the server died between starting the container and writing it down). ``outcome``: for LOSE.
    """

    action: Recover
    remove: bool = False
    started: float | None = None
    outcome: Outcome | None = None


def recovery(
    run: Run | None, container: ContainerState | None, *, held: bool, now: float
) -> Recovery:
    """Decide what start-up does with ``run`` given what the engine reports of its container.

    ``run`` None: the container carries no run id this store knows. ``held``: a live supervisor
    (another server on this store, whose lease has not expired) holds the run: it is left to it,
    whatever its container looks like, so no run is pumped or finished twice. ``container``
    None: the engine has no container for the run.
    """
    if held:
        return Recovery(Recover.LEAVE)
    if run is None or run.status.finished:
        return Recovery(Recover.REAP, remove=container is not None)
    if container is None:
        if run.status is RunStatus.QUEUED and run.script_id is not None:
            return Recovery(Recover.LEAVE)  # waits in its script's backlog, resumed from there
        if run.status is RunStatus.RUNNING:
            return Recovery(Recover.LOSE, outcome=lost(run, started=True))
        if run.detached and not run.uploads:
            return Recovery(Recover.START)
        return Recovery(Recover.LOSE, outcome=lost(run, started=False))
    if container.status is ContainerStatus.CREATED:
        if run.status is RunStatus.RUNNING:
            # Recorded running yet never started: nothing of it can be trusted.
            return Recovery(Recover.LOSE, remove=True, outcome=lost(run, started=True))
        if run.detached and not run.uploads:
            return Recovery(Recover.START, remove=True)
        return Recovery(Recover.LOSE, remove=True, outcome=lost(run, started=False))
    started = None
    if run.status is not RunStatus.RUNNING:
        started = container.started_at if container.started_at is not None else now
    if container.status is ContainerStatus.RUNNING:
        return Recovery(Recover.ADOPT, started=started)
    return Recovery(Recover.FINISH, started=started)


# --- the container of a run -------------------------------------------------------------------


def container_spec(
    run: Run,
    release: Release,
    *,
    network: str,
    instance: str,
    extra_env: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The engine's spec for ``run`` from its release: image, command, env, size, labels.

    ``extra_env`` reaches the container only, never the store (a run's own token, say);
    ``HGRUN_RUN_ID`` is always set. The labels let any server find the container again
    (README "Restarts"). A detached run has no stdin. An attached one with a TTY keeps its
    stdin open across connections, so the session outlives its server (an end of input in a TTY
    is Ctrl-D, a byte the terminal reads, never the stream's end); without a TTY, closing the
    attached stdin is how EOF reaches a piped command, so it is not kept (Docker has no other
    way to close a container's stdin), and a restart of the server closes it.
    """
    env = {**run.env, **(extra_env or {}), "HGRUN_RUN_ID": str(run.id)}
    return ContainerSpec(
        image=release.image,
        command=list(run.command),
        env=env,
        labels={
            LABEL_RUN: str(run.id),
            LABEL_APP: str(run.app_id),
            LABEL_WORKSPACE: run.workspace,
            LABEL_INSTANCE: instance,
        },
        size=SIZES[run.size],
        network=network,
        placement=tuple(release.manifest.placement),
        user=release.manifest.user,
        read_only=release.manifest.read_only,
        tty=run.tty,
        stdin=not run.detached,
        keep_stdin=run.tty and not run.detached,
    )
