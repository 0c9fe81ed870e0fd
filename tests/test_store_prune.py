"""Pruning a script's history never touches a run in flight, whatever its age.

DESIGN "Scheduler": history is bounded per script (keep the most recent N runs); a run still
queued, starting or running is not history. Real SQLite and PostgreSQL (``make_store``), no
Docker.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
from support.store import app_with_release, new_run
from support.stores import StoreFactory

from hgrun.lifecycle import Outcome
from hgrun.models import App, OutputChunk, Release, Run, RunStatus, Script
from hgrun.store import Store
from hgrun.store.database import Connection


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store(clock=lambda: 1000.0)


def _script_run(store: Store, app: App, release: Release, script_id: int) -> Run:
    run = new_run(store, app, release, script="s", script_id=script_id)
    store.append_output(run.id, app.id, [(1, 1.0, f"out{run.id}\n".encode())])
    return run


def _bring(store: Store, run: Run, status: RunStatus) -> None:
    if status is RunStatus.QUEUED:
        return
    store.mark_starting(run.id)
    if status is RunStatus.STARTING:
        return
    store.mark_running(run.id, started=1001.0)
    if status is RunStatus.RUNNING:
        return
    store.record_outcome(
        run.id, Outcome(status, 0 if status is RunStatus.SUCCEEDED else 1), finished=1002.0
    )


@pytest.mark.parametrize(
    "old_status", [RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING], ids=str
)
def test_prune_keeps_runs_in_flight_and_the_newest(store: Store, old_status: RunStatus) -> None:
    app, release = app_with_release(store)
    store.sync_scripts("default", app.id, [Script(name="s", command="true")])
    (script,) = store.scripts()
    # Oldest first: one run in flight, then finished ones of every final kind, then the newest.
    statuses = [
        old_status, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED,
        RunStatus.TIMED_OUT, RunStatus.SUCCEEDED, RunStatus.SUCCEEDED,
    ]  # fmt: skip
    runs = []
    for status in statuses:
        run = _script_run(store, app, release, script.id)
        _bring(store, run, status)
        runs.append(run.id)

    assert store.prune_script_history(script.id, keep=2) == 4
    kept = sorted(r.id for r in store.script_runs(script.id))
    assert kept == [runs[0], runs[-2], runs[-1]]
    assert store.run(runs[0]).status is old_status
    assert [c.data for c in store.output(run_id=runs[0])] == [f"out{runs[0]}\n".encode()]
    for gone in runs[1:-2]:
        assert store.output(run_id=gone) == []
    assert isinstance(store.output(run_id=runs[-1])[0], OutputChunk)
    # Nothing more to prune; a bigger keep prunes nothing.
    assert store.prune_script_history(script.id, keep=2) == 0
    assert store.prune_script_history(script.id, keep=100) == 0


@pytest.mark.parametrize("keep", [1, 3, 5])
def test_prune_keeps_exactly_the_newest_keep(store: Store, keep: int) -> None:
    app, release = app_with_release(store)
    store.sync_scripts("default", app.id, [Script(name="s", command="true")])
    (script,) = store.scripts()
    runs = [_script_run(store, app, release, script.id) for _ in range(6)]
    for run in runs:
        _bring(store, run, RunStatus.SUCCEEDED)
    assert store.prune_script_history(script.id, keep=keep) == 6 - keep
    assert [r.id for r in store.script_runs(script.id)] == [r.id for r in reversed(runs)][:keep]


def test_prune_of_a_script_never_touches_another_scripts_runs(store: Store) -> None:
    app, release = app_with_release(store)
    store.sync_scripts(
        "default", app.id, [Script(name="s", command="true"), Script(name="t", command="true")]
    )
    first, second = sorted(store.scripts(), key=lambda s: s.id)
    mine = [_script_run(store, app, release, first.id) for _ in range(3)]
    theirs = [_script_run(store, app, release, second.id) for _ in range(3)]
    for run in mine + theirs:
        _bring(store, run, RunStatus.SUCCEEDED)
    assert store.prune_script_history(first.id, keep=1) == 2
    assert [r.id for r in store.script_runs(second.id)] == [r.id for r in reversed(theirs)]
    assert [r.id for r in store.script_runs(first.id)] == [mine[-1].id]


# -- one-off runs: retention in bounded passes and transactions ------------------------------


class CountingStore(Store):
    """A store that counts its write transactions (our own seam, for the batching)."""

    transactions = 0

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        self.transactions += 1
        with super()._tx() as db:
            yield db


def _finished_one_offs(store: Store, app: App, release: Release, n: int, first: float) -> list[int]:
    """``n`` one-off runs that succeeded at ``first``, ``first + 1``...; 100 bytes of output
    each."""
    ids = []
    for i in range(n):
        run = new_run(store, app, release)
        store.append_output(run.id, app.id, [(1, 1.0, b"x" * 100)])
        store.mark_starting(run.id)
        store.mark_running(run.id, started=first + i - 0.5)
        store.record_outcome(run.id, Outcome(RunStatus.SUCCEEDED, 0), finished=first + i)
        ids.append(run.id)
    return ids


@pytest.mark.parametrize(
    ("batch_bytes", "per_transaction"),
    # A run weighs its output plus one (its row): 101 here. A transaction takes runs while the
    # total stays within batch_bytes, and always at least one (even a run bigger than that).
    [(50, 1), (100, 1), (200, 1), (201, 2), (301, 2), (302, 3), (10**9, 7)],
)
def test_prune_runs_packs_deletions_into_transactions_of_batch_bytes(
    make_store: StoreFactory, batch_bytes: int, per_transaction: int
) -> None:
    store = make_store(cls=CountingStore, clock=lambda: 1000.0)
    assert isinstance(store, CountingStore)
    app, release = app_with_release(store)
    _finished_one_offs(store, app, release, 7, first=100.0)
    store.transactions = 0
    assert store.prune_runs(keep=0, older_than=0.0, batch_bytes=batch_bytes) == 7
    assert store.transactions == math.ceil(7 / per_transaction)
    assert store.runs("default") == []


def test_prune_runs_stops_at_its_limit_across_apps_and_ages(store: Store) -> None:
    first, release_a = app_with_release(store, "first")
    second, release_b = app_with_release(store, "second")
    a = _finished_one_offs(store, first, release_a, 3, first=100.0)
    b = _finished_one_offs(store, second, release_b, 3, first=200.0)
    # By count (keep 0): the first app's three fill most of the limit of 4, the second's one.
    assert store.prune_runs(keep=0, older_than=0.0, limit=4) == 4
    assert sorted(r.id for r in store.runs("default")) == b[1:]
    assert store.prune_runs(keep=0, older_than=0.0, limit=4) == 2
    # By age, once the count has taken its share of the limit: keep 1 of each app, then the
    # oldest finished (by their finish) up to the limit.
    c = _finished_one_offs(store, first, release_a, 3, first=300.0)
    d = _finished_one_offs(store, second, release_b, 1, first=50.0)
    assert store.prune_runs(keep=1, older_than=10**9, limit=3) == 3
    left = sorted(r.id for r in store.runs("default"))
    assert left == [c[2]], (a, b, c, d, left)


def test_prune_runs_refuses_a_negative_keep(store: Store) -> None:
    with pytest.raises(ValueError, match="keep"):
        store.prune_runs(keep=-1, older_than=0.0)


def test_prune_runs_age_pass_takes_only_what_the_limit_has_left(store: Store) -> None:
    """The count pass takes one run (the first app's, over its keep of 1); five apps' single
    runs, each kept by count, are old: the age pass takes the oldest 4 - 1 = 3 (not 4 ^ 1 = 5)."""
    first, release = app_with_release(store, "first")
    over = _finished_one_offs(store, first, release, 2, first=300.0)
    old = []
    for i in range(5):
        app, app_release = app_with_release(store, f"old{i}")
        old += _finished_one_offs(store, app, app_release, 1, first=100.0 + i)
    assert store.prune_runs(keep=1, older_than=10**9, limit=4) == 4
    assert sorted(r.id for r in store.runs("default")) == sorted([over[1], *old[3:]])
