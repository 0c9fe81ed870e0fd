"""Table tests for hgrun.lifecycle: every instant is explicit, no clock, no engine, no store."""

from __future__ import annotations

import dataclasses

import pytest

from hgrun.engine import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_RUN,
    LABEL_WORKSPACE,
    ContainerState,
    ContainerStatus,
)
from hgrun.errors import CommandNotFoundError, EngineError, NotExecutableError
from hgrun.lifecycle import (
    ACTIVE,
    FINAL,
    INITIAL,
    TRANSITIONS,
    Due,
    Limits,
    Outcome,
    Phase,
    Presence,
    Recover,
    Recovery,
    Step,
    Stop,
    StopAction,
    after_step,
    allowed,
    container_spec,
    due,
    kill_grace,
    lost,
    on_stop,
    outcome,
    recovery,
)
from hgrun.models import SIZES, Manifest, Release, Run, RunStatus, Trigger, TriggerKind

S = RunStatus
T0 = 1_000_000.0  # the instant the run was created
LIMITS = Limits(grace=60, idle_timeout=1800, max_timeout=3600, stop_grace=10)


def a_run(**changes: object) -> Run:
    """Run 7, attached, starter size, 10 minutes timeout, created at T0, not started."""
    run = Run(
        id=7,
        workspace="default",
        app_id=3,
        release_id=5,
        command=("sh", "-c", "echo hi"),
        process_type=None,
        tty=False,
        detached=False,
        uploads=False,
        size="starter",
        timeout=600.0,
        env={"A": "1"},
        trigger=Trigger(TriggerKind.USER, "admin"),
        script=None,
        slot=None,
        parent_run=None,
        status=S.STARTING,
        exit_code=None,
        oom=False,
        container_id=None,
        error=None,
        created=T0,
        started=None,
        finished=None,
    )
    return dataclasses.replace(run, **changes)  # type: ignore[arg-type]


RUNNING = a_run(status=S.RUNNING, started=T0 + 1)
DETACHED = a_run(detached=True)
CANCEL = Stop(S.CANCELED, "run.7 was stopped by admin")
TIMEOUT = Stop(S.TIMED_OUT, "run.7 timed out after 10m")
UPLOAD_FAILED = Stop(S.FAILED, "the upload failed: connection reset")


# --- the state machine ------------------------------------------------------------------------


def test_active_and_final_partition_the_statuses() -> None:
    assert ACTIVE | FINAL == set(RunStatus)
    assert not ACTIVE & FINAL
    assert set(TRANSITIONS) == set(RunStatus)
    assert all(s.active for s in ACTIVE) and all(s.finished for s in FINAL)


@pytest.mark.parametrize(
    ("current", "new", "ok"),
    [
        (S.QUEUED, S.STARTING, True),
        (S.QUEUED, S.CANCELED, True),  # stopped in a script's backlog
        (S.QUEUED, S.RUNNING, False),  # never skips starting
        (S.STARTING, S.RUNNING, True),
        (S.STARTING, S.CANCELED, True),  # stopped while creating or waiting
        (S.STARTING, S.FAILED, True),  # could not run; uploads never came
        (S.STARTING, S.SUCCEEDED, False),  # nothing succeeds without running
        (S.STARTING, S.QUEUED, False),
        (S.RUNNING, S.SUCCEEDED, True),
        (S.RUNNING, S.TIMED_OUT, True),
        (S.RUNNING, S.LOST, True),
        (S.RUNNING, S.STARTING, False),
        # First final state wins: a stop racing the exit, a second stop, a recovery after both.
        (S.CANCELED, S.SUCCEEDED, False),
        (S.SUCCEEDED, S.CANCELED, False),
        (S.CANCELED, S.CANCELED, False),
        (S.TIMED_OUT, S.FAILED, False),
        (S.LOST, S.RUNNING, False),
        (S.SKIPPED, S.STARTING, False),
    ],
)
def test_transitions(current: RunStatus, new: RunStatus, ok: bool) -> None:
    assert allowed(current, new) is ok


def test_initial_states() -> None:
    assert INITIAL == {S.QUEUED, S.STARTING, S.SKIPPED}


# --- outcome ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "kwargs", "expected"),
    [
        (RUNNING, {"exit_code": 0}, Outcome(S.SUCCEEDED, 0)),
        (RUNNING, {"exit_code": 3}, Outcome(S.FAILED, 3)),
        (RUNNING, {"exit_code": 126}, Outcome(S.FAILED, 126)),  # the command's own 126
        (
            RUNNING,
            {"exit_code": None},
            Outcome(S.FAILED, 125, "run.7 ended without an exit code from the engine"),
        ),
        (
            RUNNING,
            {"exit_code": 137, "oom": True},
            Outcome(
                S.FAILED,
                137,
                "out of memory: a process of run.7 was killed at the limit of its size"
                " (starter, 512 MB); try a bigger --size",
                oom=True,
            ),
        ),
        # A child killed at the limit while the command itself succeeded: recorded, not failed.
        (RUNNING, {"exit_code": 0, "oom": True}, Outcome(S.SUCCEEDED, 0, None, oom=True)),
        # A timeout always exits 124, whatever SIGTERM/SIGKILL made the command return.
        (RUNNING, {"exit_code": 137, "stop": TIMEOUT}, Outcome(S.TIMED_OUT, 124, TIMEOUT.message)),
        (RUNNING, {"exit_code": None, "stop": TIMEOUT}, Outcome(S.TIMED_OUT, 124, TIMEOUT.message)),
        # Stopped while running: the command's code after SIGTERM is kept.
        (RUNNING, {"exit_code": 143, "stop": CANCEL}, Outcome(S.CANCELED, 143, CANCEL.message)),
        # The stop wins over an exit that raced it (first final state wins, and the stop came
        # first from the user's side).
        (RUNNING, {"exit_code": 0, "stop": CANCEL}, Outcome(S.CANCELED, 0, CANCEL.message)),
        # Race: stop while creating / attaching / waiting: never started, so no exit code: 130.
        (a_run(), {"exit_code": None, "stop": CANCEL}, Outcome(S.CANCELED, 130, CANCEL.message)),
        # Uploads that failed or never came: failed, could not run.
        (
            a_run(uploads=True),
            {"exit_code": None, "stop": UPLOAD_FAILED},
            Outcome(S.FAILED, 125, UPLOAD_FAILED.message),
        ),
        # The engine could not run it: docker run's codes.
        (
            a_run(),
            {"exit_code": None, "error": EngineError("cannot create the container: boom")},
            Outcome(S.FAILED, 125, "cannot create the container: boom"),
        ),
        (
            a_run(),
            {"exit_code": None, "error": CommandNotFoundError("command not found: nope")},
            Outcome(S.FAILED, 127, "command not found: nope"),
        ),
        (
            a_run(),
            {"exit_code": None, "error": NotExecutableError("command not executable: x")},
            Outcome(S.FAILED, 126, "command not executable: x"),
        ),
        # An engine error wins over a stop that came meanwhile: the run never ran.
        (
            a_run(),
            {"exit_code": None, "stop": CANCEL, "error": EngineError("boom")},
            Outcome(S.FAILED, 125, "boom"),
        ),
        (
            a_run(size="pro"),
            {"exit_code": 1, "oom": True},
            Outcome(
                S.FAILED,
                1,
                "out of memory: a process of run.7 was killed at the limit of its size"
                " (pro, 4096 MB); try a bigger --size",
                oom=True,
            ),
        ),
    ],
)
def test_outcome(run: Run, kwargs: dict[str, object], expected: Outcome) -> None:
    assert outcome(run, **kwargs) == expected  # type: ignore[arg-type]


def test_every_outcome_is_final_and_reachable_from_running() -> None:
    for stop in (None, CANCEL, TIMEOUT, UPLOAD_FAILED):
        for code in (None, 0, 1, 143):
            result = outcome(RUNNING, exit_code=code, stop=stop)
            assert result.status.finished
            assert allowed(S.RUNNING, result.status)


@pytest.mark.parametrize(
    ("started", "status", "message"),
    [
        (True, S.LOST, "the container of run.7 vanished while no server watched it"),
        (False, S.LOST, "the server stopped before run.7 started; start it again"),
    ],
)
def test_lost(started: bool, status: RunStatus, message: str) -> None:
    assert lost(a_run(), started=started) == Outcome(status, 125, message)


@pytest.mark.parametrize(("stop", "grace"), [(TIMEOUT, 1.0), (CANCEL, 10.0), (UPLOAD_FAILED, 10.0)])
def test_kill_grace(stop: Stop, grace: float) -> None:
    assert kill_grace(stop, LIMITS) == grace


# --- stop at any moment -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "action"),
    [
        (Phase.QUEUED, StopAction.RECORD),  # in a script's backlog: nothing runs
        (Phase.CREATING, StopAction.FLAG),  # race: stop while the engine creates
        (Phase.ATTACHING, StopAction.FLAG),  # race: stop while attaching
        (Phase.WAITING, StopAction.FLAG),  # waiting for uploads or a client
        (Phase.STARTING, StopAction.FLAG),  # race: stop while the engine starts it
        (Phase.RUNNING, StopAction.KILL),
        (Phase.FINISHING, StopAction.NOTHING),  # a second stop: the first one is ending it
    ],
)
def test_on_stop(phase: Phase, action: StopAction) -> None:
    assert on_stop(phase) is action


@pytest.mark.parametrize(
    ("done", "stop", "step"),
    [
        (Phase.CREATING, None, Step.GO),
        (Phase.CREATING, CANCEL, Step.ABORT),  # created after the stop: removed, never started
        (Phase.ATTACHING, CANCEL, Step.ABORT),
        (Phase.WAITING, CANCEL, Step.ABORT),
        (Phase.WAITING, UPLOAD_FAILED, Step.ABORT),  # uploads failed or never came
        (Phase.WAITING, None, Step.GO),
        (Phase.STARTING, CANCEL, Step.KILL),  # started while the stop came: killed at once
        (Phase.STARTING, TIMEOUT, Step.KILL),
        (Phase.STARTING, None, Step.GO),
        (Phase.RUNNING, CANCEL, Step.KILL),
    ],
)
def test_after_step(done: Phase, stop: Stop | None, step: Step) -> None:
    assert after_step(done, stop) is step


# --- deadlines --------------------------------------------------------------------------------

ATTACHED_RUNNING = a_run(status=S.RUNNING, started=T0 + 10)
ALONE = "run.7 was stopped: no client attached for 1m"
NEVER_JOINED = "run.7 was stopped: no client attached within 1m"
IDLE = "run.7 was idle for 30m and was closed; for long tasks use `hgrun run --detached`"
NO_FILES = "the files for run.7 did not arrive within 1m; run it again"
TIMED = "run.7 timed out after 10m"


@pytest.mark.parametrize(
    ("run", "presence", "now", "expected"),
    [
        # Timeout: counted from the start, reached at its instant exactly.
        (
            ATTACHED_RUNNING,
            Presence(last_activity=T0 + 600),
            T0 + 609.999,
            Due(None, T0 + 610),
        ),
        (
            ATTACHED_RUNNING,
            Presence(last_activity=T0 + 600),
            T0 + 610,
            Due(Stop(S.TIMED_OUT, TIMED), None),
        ),
        (
            dataclasses.replace(ATTACHED_RUNNING, detached=True),
            Presence(),
            T0 + 10_000,
            Due(Stop(S.TIMED_OUT, TIMED), None),
        ),
        # A detached run has only its timeout: no grace, no idle.
        (
            dataclasses.replace(ATTACHED_RUNNING, detached=True),
            Presence(last_activity=T0, alone_since=T0),
            T0 + 300,
            Due(None, T0 + 610),
        ),
        # A run not started yet has no timeout running.
        (DETACHED, Presence(), T0 + 10_000, Due(None, None)),
        # Grace after the last client left.
        (
            ATTACHED_RUNNING,
            Presence(alone_since=T0 + 100, last_activity=T0 + 100),
            T0 + 159.5,
            Due(None, T0 + 160),
        ),
        (
            ATTACHED_RUNNING,
            Presence(alone_since=T0 + 100, last_activity=T0 + 100),
            T0 + 160,
            Due(Stop(S.CANCELED, ALONE), None),
        ),
        # A client came back: no grace deadline.
        (
            ATTACHED_RUNNING,
            Presence(alone_since=None, last_activity=T0 + 100),
            T0 + 300,
            Due(None, T0 + 610),
        ),
        # An attached run whose first client never came.
        (a_run(), Presence(alone_since=T0, last_activity=T0), T0 + 59, Due(None, T0 + 60)),
        (
            a_run(),
            Presence(alone_since=T0, last_activity=T0),
            T0 + 60,
            Due(Stop(S.CANCELED, NEVER_JOINED), None),
        ),
        # Idle: no input or output for the idle timeout, though a client is attached.
        (
            dataclasses.replace(ATTACHED_RUNNING, timeout=3600.0),
            Presence(last_activity=T0 + 20),
            T0 + 1819,
            Due(None, T0 + 1820),
        ),
        (
            dataclasses.replace(ATTACHED_RUNNING, timeout=3600.0),
            Presence(last_activity=T0 + 20),
            T0 + 1820,
            Due(Stop(S.CANCELED, IDLE), None),
        ),
        # Idle counts from the start at the earliest (activity before it does not count).
        (
            dataclasses.replace(ATTACHED_RUNNING, timeout=3600.0),
            Presence(last_activity=0.0),
            T0 + 1000,
            Due(None, T0 + 1810),
        ),
        # Race: uploads never sent (the client died after creating the run).
        (
            a_run(uploads=True, detached=True),
            Presence(waiting_since=T0),
            T0 + 30,
            Due(None, T0 + 60),
        ),
        (
            a_run(uploads=True, detached=True),
            Presence(waiting_since=T0),
            T0 + 60,
            Due(Stop(S.FAILED, NO_FILES), None),
        ),
        # Attached with uploads: the upload deadline comes before the client's grace.
        (
            a_run(uploads=True),
            Presence(waiting_since=T0, alone_since=T0, last_activity=T0),
            T0 + 60,
            Due(Stop(S.FAILED, NO_FILES), None),
        ),
        # The upload is streaming (or done): no upload deadline.
        (
            a_run(uploads=True, detached=True),
            Presence(waiting_since=None),
            T0 + 10_000,
            Due(None, None),
        ),
        # The timeout wins when several deadlines passed at once.
        (
            ATTACHED_RUNNING,
            Presence(alone_since=T0, last_activity=T0),
            T0 + 5000,
            Due(Stop(S.TIMED_OUT, TIMED), None),
        ),
        # A run already stopping, or ended, has no deadline: a stop is never asked twice.
        (
            ATTACHED_RUNNING,
            Presence(alone_since=T0, stopping=True),
            T0 + 5000,
            Due(None, None),
        ),
        (
            dataclasses.replace(ATTACHED_RUNNING, status=S.CANCELED),
            Presence(alone_since=T0),
            T0 + 5000,
            Due(None, None),
        ),
    ],
)
def test_due(run: Run, presence: Presence, now: float, expected: Due) -> None:
    assert due(run, presence, LIMITS, now) == expected


def test_upload_deadline_has_its_own_window() -> None:
    limits = dataclasses.replace(LIMITS, upload_grace=5.0)
    run = a_run(uploads=True, detached=True)
    assert due(run, Presence(waiting_since=T0), limits, T0 + 4.9).stop is None
    result = due(run, Presence(waiting_since=T0), limits, T0 + 5)
    assert result.stop == Stop(
        S.FAILED, "the files for run.7 did not arrive within 5s; run it again"
    )


# --- recovery ---------------------------------------------------------------------------------


def container(
    status: str, *, exit_code: int | None = 0, started_at: float | None = T0 + 2
) -> ContainerState:
    return ContainerState(
        id="c0ffee",
        labels={LABEL_RUN: "7"},
        status=ContainerStatus(status),
        exit_code=exit_code,
        oom_killed=False,
        error="",
        started_at=started_at,
    )


NOW = T0 + 100
VANISHED = lost(a_run(), started=True)
NEVER_STARTED = lost(a_run(), started=False)


@pytest.mark.parametrize(
    ("run", "state", "held", "expected"),
    [
        # Ours and alive: adopt (replay and follow); recorded running already, or not yet.
        (RUNNING, container("running"), False, Recovery(Recover.ADOPT)),
        (a_run(), container("running"), False, Recovery(Recover.ADOPT, started=T0 + 2)),
        (
            a_run(),
            container("running", started_at=None),
            False,
            Recovery(Recover.ADOPT, started=NOW),
        ),
        # Ended while no server watched: replay its logs and record its exit.
        (RUNNING, container("exited", exit_code=3), False, Recovery(Recover.FINISH)),
        (a_run(), container("exited"), False, Recovery(Recover.FINISH, started=T0 + 2)),
        # Race: another live supervisor holds the run: never taken up, whatever the container.
        (RUNNING, container("running"), True, Recovery(Recover.LEAVE)),
        (RUNNING, container("exited"), True, Recovery(Recover.LEAVE)),
        (RUNNING, None, True, Recovery(Recover.LEAVE)),
        (DETACHED, None, True, Recovery(Recover.LEAVE)),
        # Lost runs: the container vanished.
        (RUNNING, None, False, Recovery(Recover.LOSE, outcome=VANISHED)),
        (
            RUNNING,
            container("created"),
            False,
            Recovery(Recover.LOSE, remove=True, outcome=VANISHED),
        ),
        # Never started: a detached run without uploads starts again; one a person or an
        # upload waited for is lost (nobody is there to attach or upload again).
        (DETACHED, None, False, Recovery(Recover.START)),
        (DETACHED, container("created"), False, Recovery(Recover.START, remove=True)),
        (a_run(status=S.QUEUED, detached=True), None, False, Recovery(Recover.START)),
        (a_run(), None, False, Recovery(Recover.LOSE, outcome=NEVER_STARTED)),
        (
            a_run(),
            container("created"),
            False,
            Recovery(Recover.LOSE, remove=True, outcome=NEVER_STARTED),
        ),
        (
            a_run(uploads=True, detached=True),
            container("created"),
            False,
            Recovery(Recover.LOSE, remove=True, outcome=NEVER_STARTED),
        ),
        # A script's run waiting in its backlog: the script runner resumes it.
        (a_run(status=S.QUEUED, script_id=4), None, False, Recovery(Recover.LEAVE)),
        # Strays: a container whose run ended (a crash between recording and removing) or
        # whose run this store does not know.
        (
            a_run(status=S.SUCCEEDED),
            container("exited"),
            False,
            Recovery(Recover.REAP, remove=True),
        ),
        (None, container("running"), False, Recovery(Recover.REAP, remove=True)),
        (a_run(status=S.CANCELED), None, False, Recovery(Recover.REAP)),
    ],
)
def test_recovery(
    run: Run | None, state: ContainerState | None, held: bool, expected: Recovery
) -> None:
    assert recovery(run, state, held=held, now=NOW) == expected


def test_recovery_outcomes_are_allowed_transitions() -> None:
    for status in ACTIVE:
        for state in (None, container("created")):
            decision = recovery(a_run(status=status), state, held=False, now=NOW)
            if decision.outcome is not None:
                assert allowed(status, decision.outcome.status)


# --- container spec ---------------------------------------------------------------------------

RELEASE = Release(
    id=5,
    app_id=3,
    version=2,
    image="hgrun/app-3:abc",
    context_hash="abc",
    procfile={},
    manifest=Manifest(name="app", placement=("node.role==worker",)),
    env={},
    description="Deploy",
    created=T0,
)


@pytest.mark.parametrize(
    ("run", "stdin", "tty"),
    [
        (a_run(), True, False),
        (a_run(tty=True), True, True),
        (a_run(detached=True), False, False),
    ],
)
def test_container_spec(run: Run, stdin: bool, tty: bool) -> None:
    spec = container_spec(
        dataclasses.replace(run, size="pro"),
        RELEASE,
        network="host",
        instance="i1",
        extra_env={"HGRUN_TOKEN": "t", "A": "2"},
    )
    assert spec.image == "hgrun/app-3:abc"
    assert list(spec.command) == ["sh", "-c", "echo hi"]
    # The request's env, then what only the container gets, then the run's own id.
    assert spec.env == {"A": "2", "HGRUN_TOKEN": "t", "HGRUN_RUN_ID": "7"}
    assert spec.labels == {
        LABEL_RUN: "7",
        LABEL_APP: "3",
        LABEL_WORKSPACE: "default",
        LABEL_INSTANCE: "i1",
    }
    assert spec.size == SIZES["pro"]
    assert spec.network == "host"
    assert tuple(spec.placement) == ("node.role==worker",)
    assert (spec.stdin, spec.tty) == (stdin, tty)
    assert spec.keep_stdin is (stdin and tty)  # a TTY session outlives its server
