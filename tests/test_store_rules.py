"""Store rules that mutation testing found unguarded (docs/testing.md, "Mutation testing"):
a run created final (skipped) is finished at once, one created active is not. Real SQLite and
PostgreSQL (``make_store``)."""

from __future__ import annotations

import pytest
from support.store import app_with_release, new_run
from support.stores import StoreFactory

from hgrun.lifecycle import Outcome
from hgrun.models import RunStatus


@pytest.mark.parametrize(
    ("status", "finished"),
    [(RunStatus.QUEUED, None), (RunStatus.STARTING, None), (RunStatus.SKIPPED, 1000.0)],
    ids=str,
)
def test_a_run_created_final_is_finished_at_once(
    make_store: StoreFactory, status: RunStatus, finished: float | None
) -> None:
    store = make_store(clock=lambda: 1000.0)
    app, release = app_with_release(store)
    run = new_run(store, app, release, status=status)
    assert (run.status, run.finished, run.created) == (status, finished, 1000.0)
    assert store.run(run.id).finished == finished


def test_on_run_ended_hears_each_run_once_when_it_becomes_final(
    make_store: StoreFactory,
) -> None:
    store = make_store(clock=lambda: 1000.0)
    app, release = app_with_release(store)
    heard: list[tuple[int, RunStatus]] = []
    store.on_run_ended.append(lambda run: heard.append((run.id, run.status)))
    run = new_run(store, app, release)
    store.mark_starting(run.id)
    store.mark_running(run.id, started=1001.0)
    assert heard == []  # active moves are not an end
    store.record_outcome(run.id, Outcome(RunStatus.FAILED, 3), finished=1002.0)
    store.record_outcome(run.id, Outcome(RunStatus.CANCELED, 130), finished=1003.0)
    assert heard == [(run.id, RunStatus.FAILED)]  # the first final state, once
