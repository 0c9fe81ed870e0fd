"""Edges of hgrun.lifecycle that mutation testing found unguarded (docs/testing.md, "Mutation
testing"): the documented defaults, value types that must not change under a caller, exit codes
that are neither 0 nor positive, and recovery of script runs that never started.

Values in, values out, like tests/test_lifecycle.py; no clock, no engine, no store.
"""

from __future__ import annotations

import dataclasses

import pytest
import test_lifecycle as lifecycle_tables

from hgrun.lifecycle import (
    Due,
    Limits,
    Outcome,
    Presence,
    Recover,
    Recovery,
    Stop,
    lost,
    outcome,
    recovery,
)
from hgrun.models import Run, RunStatus, Trigger, TriggerKind

T0 = lifecycle_tables.T0


def a_run(**changes: object) -> Run:
    """test_lifecycle's run 7 as a cron-triggered script run: detached, queued, script 3."""
    slot = "2026-12-01T04:00:00Z"
    script_run: dict[str, object] = {
        "detached": True,
        "status": RunStatus.QUEUED,
        "trigger": Trigger(TriggerKind.CRON, slot),
        "script": "nightly",
        "slot": slot,
        "script_id": 3,
    }
    return lifecycle_tables.a_run(**{**script_run, **changes})


def test_the_default_limits_are_the_documented_ones() -> None:
    """README: `--grace` 60 s, `--idle-timeout` 30 min, `--max-timeout` 1 h, `hgrun stop`
    SIGKILLs after 10 s, `--max-upload` 2048 MB; uploads share the grace unless told."""
    limits = Limits()
    assert limits.grace == 60
    assert limits.idle_timeout == 30 * 60
    assert limits.max_timeout == 3600
    assert limits.stop_grace == 10
    assert limits.max_upload == 2048 * 1024 * 1024
    assert limits.upload_deadline == 60
    assert Limits(grace=5, upload_grace=None).upload_deadline == 5
    assert Limits(grace=5, upload_grace=0).upload_deadline == 0


@pytest.mark.parametrize(
    "value",
    [
        Limits(),
        Outcome(RunStatus.FAILED, 1),
        Stop(RunStatus.CANCELED, "stopped"),
        Presence(),
        Due(None, None),
        Recovery(Recover.LEAVE),
    ],
    ids=lambda v: type(v).__name__,
)
def test_decisions_are_immutable_values(value: object) -> None:
    """A decision handed to the I/O shell cannot be changed under it (frozen dataclasses)."""
    field = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)


def test_presence_by_default_knows_nothing() -> None:
    assert Presence() == Presence(
        waiting_since=None, alone_since=None, last_activity=0.0, stopping=False
    )


@pytest.mark.parametrize("code", [-1, 1, 2, 137, 255])
def test_every_exit_code_but_zero_fails(code: int) -> None:
    """The engine reports -1 when it lost the exit status (Docker's wait on a vanished
    process); anything but 0 is a failure, with the code kept."""
    assert outcome(a_run(), exit_code=code) == Outcome(RunStatus.FAILED, code)


@pytest.mark.parametrize(
    ("run", "state", "expected"),
    [
        # A script run whose launch had begun (starting) with no container: a detached run
        # nobody waits on a terminal for is started again, not left to a queue it has left.
        (a_run(status=RunStatus.STARTING), None, Recovery(Recover.START)),
        (
            a_run(status=RunStatus.STARTING, uploads=True),
            None,
            Recovery(Recover.LOSE, outcome=lost(a_run(), started=False)),
        ),
        # Queued, yet a container was created (the server died between the two writes):
        # never started, so started again, the half-made container removed.
        (a_run(status=RunStatus.QUEUED), "created", Recovery(Recover.START, remove=True)),
        (
            a_run(status=RunStatus.QUEUED, detached=False),
            "created",
            Recovery(Recover.LOSE, remove=True, outcome=lost(a_run(), started=False)),
        ),
    ],
    ids=["starting-no-container", "starting-uploads", "queued-created", "queued-attached"],
)
def test_recovery_of_script_runs_that_never_started(
    run: Run, state: str | None, expected: Recovery
) -> None:
    container = (
        None
        if state is None
        else lifecycle_tables.container(state, exit_code=None, started_at=None)
    )
    assert recovery(run, container, held=False, now=T0 + 50) == expected


@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.STARTING])
def test_a_run_not_yet_recorded_running_is_adopted_from_the_containers_start(
    status: RunStatus,
) -> None:
    """The server died between starting the container and writing it down, whatever the run
    was recorded as before: the engine's start time is the run's."""
    container = lifecycle_tables.container("running", exit_code=None, started_at=T0 + 2)
    found = recovery(a_run(status=status), container, held=False, now=T0 + 50)
    assert found == Recovery(Recover.ADOPT, started=T0 + 2)
