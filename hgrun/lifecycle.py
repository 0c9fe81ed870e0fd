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
from collections.abc import Mapping

from hgrun.models import ACTIVE_STATUSES, FINAL_STATUSES, RunStatus

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
