"""The store's run transitions against both real backends (SQLite, and PostgreSQL in a
private cluster: the ``make_store`` fixture), every test once on each: every move of
lifecycle.TRANSITIONS, allowed and refused, "first final state wins" under racing writers,
bounded output and retention."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading

import pytest
from support.store import app_with_release, assert_index_seek, new_release, new_run, traced_sql
from support.stores import StoreFactory

from hgrun import lifecycle
from hgrun.errors import ConflictError, NotFoundError
from hgrun.lifecycle import Outcome
from hgrun.models import (
    App,
    Build,
    Manifest,
    Notify,
    OutputChunk,
    Release,
    Run,
    RunStatus,
    Script,
    Trigger,
    TriggerKind,
    manifest_from_json,
)
from hgrun.server.retention import DAY, Pruner, Retention
from hgrun.store import Store
from hgrun.store.runs import SELECT_RUNS

ACTIVE = [s for s in RunStatus if s in lifecycle.ACTIVE]
FINAL = [s for s in RunStatus if s in lifecycle.FINAL]


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store(clock=lambda: 1000.0)


def _app(store: Store) -> tuple[App, Release]:
    """The store's first app and its latest release, made on first use."""
    if not store.apps("default"):
        return app_with_release(store)
    app = store.apps("default")[0]
    release = store.latest_release(app.id)
    assert release is not None
    return app, release


def _new_run(store: Store, status: RunStatus = RunStatus.QUEUED) -> Run:
    return new_run(store, *_app(store), status=status)


def _run_in(store: Store, status: RunStatus) -> Run:
    """A run brought to ``status`` through the named transitions only."""
    run = _new_run(store)
    path = {
        RunStatus.QUEUED: [],
        RunStatus.STARTING: [RunStatus.STARTING],
        RunStatus.RUNNING: [RunStatus.STARTING, RunStatus.RUNNING],
    }
    if status in path:
        steps = path[status]
    else:
        steps = [RunStatus.STARTING, RunStatus.RUNNING, status]
    for step in steps:
        run = _move(store, run, step)
    assert run.status is status
    return run


def _move(store: Store, run: Run, new: RunStatus) -> Run:
    """Ask for ``new`` through the transition that names it."""
    if new is RunStatus.STARTING:
        return store.mark_starting(run.id)
    if new is RunStatus.RUNNING:
        return store.mark_running(run.id, started=1001.0)
    code = {RunStatus.SUCCEEDED: 0, RunStatus.TIMED_OUT: 124}.get(new, 1)
    return store.record_outcome(run.id, Outcome(new, code, f"became {new}"), finished=1002.0)


def _reachable_finals() -> list[RunStatus]:
    # skipped is only ever created final; every other final state is reached from running or
    # starting (lost, canceled ...).
    return [s for s in FINAL if s is not RunStatus.SKIPPED]


def _start_states() -> list[RunStatus]:
    return ACTIVE + _reachable_finals()


# Every status a transition names: queued and skipped are only ever creation states.
TARGETS = [s for s in RunStatus if s not in (RunStatus.QUEUED, RunStatus.SKIPPED)]


@pytest.mark.parametrize("new", TARGETS)
@pytest.mark.parametrize("current", _start_states())
def test_every_transition_is_allowed_or_refused_as_lifecycle_says(
    store: Store, current: RunStatus, new: RunStatus
) -> None:
    run = _run_in(store, current)
    if current.finished:
        # A transition from a final state changes nothing and returns the stored run.
        after = _move(store, run, new)
        assert after == run
        assert store.run(run.id) == run
    elif lifecycle.allowed(current, new):
        after = _move(store, run, new)
        assert after.status is new
        assert store.run(run.id) == after
    else:
        with pytest.raises(
            ConflictError, match=f"is {current.value}: it cannot become {new.value}"
        ):
            _move(store, run, new)
        assert store.run(run.id) == run


def test_record_outcome_stores_the_outcome(store: Store) -> None:
    run = _run_in(store, RunStatus.RUNNING)
    outcome = Outcome(RunStatus.FAILED, 137, "out of memory", oom=True)
    done = store.record_outcome(run.id, outcome, finished=1010.0, started=1000.5)
    assert (done.status, done.exit_code, done.error, done.oom) == (
        RunStatus.FAILED,
        137,
        "out of memory",
        True,
    )
    assert (done.started, done.finished) == (1000.5, 1010.0)


def test_record_outcome_keeps_the_start_time_unless_given(store: Store) -> None:
    run = _run_in(store, RunStatus.RUNNING)
    done = store.record_outcome(run.id, Outcome(RunStatus.SUCCEEDED, 0), finished=1010.0)
    assert done.started == 1001.0


def test_record_outcome_from_queued_and_starting(store: Store) -> None:
    queued = _run_in(store, RunStatus.QUEUED)
    canceled = store.record_outcome(
        queued.id, Outcome(RunStatus.CANCELED, 130, "stopped"), finished=1003.0
    )
    assert canceled.status is RunStatus.CANCELED and canceled.started is None
    starting = _run_in(store, RunStatus.STARTING)
    failed = store.record_outcome(
        starting.id, Outcome(RunStatus.FAILED, 125, "no such image"), finished=1003.0
    )
    assert failed.status is RunStatus.FAILED and failed.exit_code == 125


def test_record_outcome_refuses_an_active_status(store: Store) -> None:
    run = _run_in(store, RunStatus.STARTING)
    with pytest.raises(ValueError, match="final state"):
        store.record_outcome(run.id, Outcome(RunStatus.RUNNING, 0), finished=1.0)


def test_first_final_state_wins(store: Store) -> None:
    run = _run_in(store, RunStatus.RUNNING)
    first = store.record_outcome(
        run.id, Outcome(RunStatus.TIMED_OUT, 124, "timed out"), finished=1005.0
    )
    second = store.record_outcome(run.id, Outcome(RunStatus.SUCCEEDED, 0), finished=1006.0)
    assert second == first
    assert (second.status, second.exit_code, second.finished) == (RunStatus.TIMED_OUT, 124, 1005.0)


def test_set_container_only_while_starting(store: Store) -> None:
    run = _run_in(store, RunStatus.STARTING)
    assert store.set_container(run.id, "c1").container_id == "c1"
    for status in (RunStatus.QUEUED, RunStatus.RUNNING):
        other = _run_in(store, status)
        with pytest.raises(ConflictError, match="only while starting"):
            store.set_container(other.id, "c2")
        assert store.run(other.id).container_id is None


def test_set_container_on_a_run_stopped_while_creating_changes_nothing(store: Store) -> None:
    run = _run_in(store, RunStatus.STARTING)
    store.record_outcome(run.id, Outcome(RunStatus.CANCELED, 130, "stopped"), finished=1002.0)
    after = store.set_container(run.id, "c1")
    assert after.status is RunStatus.CANCELED and after.container_id is None


def test_transitions_of_an_unknown_run(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.mark_starting(4242)
    with pytest.raises(NotFoundError):
        store.set_container(4242, "c")
    with pytest.raises(NotFoundError):
        store.record_outcome(4242, Outcome(RunStatus.FAILED, 1), finished=1.0)


def test_a_run_is_created_only_in_an_initial_state(store: Store) -> None:
    for status in lifecycle.INITIAL:
        assert _new_run(store, status).status is status
    with pytest.raises(ValueError):
        _new_run(store, RunStatus.RUNNING)


def test_active_runs_are_the_lifecycle_active_ones(store: Store) -> None:
    made = {status: _run_in(store, status).id for status in _start_states()}
    active = {run.id for run in store.active_runs()}
    assert active == {made[s] for s in ACTIVE}
    held = {made[s] for s in ACTIVE if s is not RunStatus.QUEUED}
    others = {run.id for run in store.active_runs(besides=held)}
    assert others == {made[s] for s in ACTIVE} - held and others


@pytest.mark.parametrize("separate_connections", [False, True])
def test_racing_outcomes_exactly_one_wins(
    make_store: StoreFactory, store: Store, separate_connections: bool
) -> None:
    """Two writers record different outcomes at once (on one connection, or two connections
    as two processes would): exactly one status is stored, and each writer sees it."""
    contenders = [RunStatus.SUCCEEDED, RunStatus.CANCELED]
    second = make_store(workspace=None) if separate_connections else store
    stores = [store, second]
    for _ in range(20):
        run = _run_in(store, RunStatus.RUNNING)
        barrier = threading.Barrier(2)
        seen: list[Run] = []

        def record(
            index: int,
            run_id: int = run.id,
            barrier: threading.Barrier = barrier,
            seen: list[Run] = seen,
        ) -> None:
            barrier.wait()
            status = contenders[index]
            seen.append(
                stores[index].record_outcome(
                    run_id, Outcome(status, index, str(status)), finished=2000.0 + index
                )
            )

        threads = [threading.Thread(target=record, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = store.run(run.id)
        assert stored.status in contenders
        # Both writers were answered with the one stored outcome, whole (never a mix).
        assert seen == [stored, stored]
        index = contenders.index(stored.status)
        assert (stored.exit_code, stored.error, stored.finished) == (
            index,
            str(stored.status),
            2000.0 + index,
        )


def test_output_comes_back_typed(store: Store) -> None:
    run = _run_in(store, RunStatus.RUNNING)
    store.append_output(run.id, run.app_id, [(1, 1.0, b"out\n"), (2, 2.0, b"err\n")])
    chunks = store.output(run_id=run.id)
    assert [(c.run_id, c.stream, c.ts, c.data) for c in chunks] == [
        (run.id, 1, 1.0, b"out\n"),
        (run.id, 2, 2.0, b"err\n"),
    ]
    assert all(isinstance(c, OutputChunk) for c in chunks)
    assert chunks[0].cursor < chunks[1].cursor
    newest = store.output(run_id=run.id, newest_first=True, limit=1)
    assert newest == chunks[1:]


def test_a_release_manifest_comes_back_typed(store: Store) -> None:
    app = store.create_app("default", "typed")
    manifest = Manifest(
        name="typed",
        build=Build(stack="python", base="python:3.12"),
        env={"A": "1"},
        size="standard",
        network="host",
        scripts=(
            Script(name="nightly", command="true", cron="0 4 * * *", notify=Notify(email=("a@b",))),
        ),
    )
    release = new_release(store, app, manifest=manifest)
    assert release.manifest == manifest
    store._releases.clear()  # read back from SQLite, not from the cache
    assert store.release(release.id).manifest == manifest


def test_a_manifest_stored_before_a_field_existed_takes_its_default() -> None:
    old = manifest_from_json({"name": "old", "build": {"dockerfile": "Dockerfile", "gone": 1}})
    assert old == Manifest(name="old", build=Build(dockerfile="Dockerfile"))
    assert (old.size, old.network, old.scripts) == ("starter", "none", ())


# -- bounded output ---------------------------------------------------------------------------


def _capped(make_store: StoreFactory, cap: int) -> Store:
    return make_store("capped", clock=lambda: 1000.0, max_output=cap)


def _stored(store: Store, run_id: int) -> list[OutputChunk]:
    return store.output(run_id=run_id, limit=10**6)


def test_output_under_the_cap_is_kept_whole(make_store: StoreFactory) -> None:
    store = _capped(make_store, 100)
    run = _run_in(store, RunStatus.RUNNING)
    store.append_output(run.id, run.app_id, [(1, 1.0, b"a" * 60), (2, 1.0, b"b" * 40)])
    assert b"".join(c.data for c in _stored(store, run.id)) == b"a" * 60 + b"b" * 40
    after = store.run(run.id)
    assert (after.output_bytes, after.output_dropped) == (100, 0)


def test_the_newest_output_is_kept_with_a_marker_at_the_front(make_store: StoreFactory) -> None:
    store = _capped(make_store, 1000)
    run = _run_in(store, RunStatus.RUNNING)
    other = _run_in(store, RunStatus.RUNNING)
    written = b""
    for i in range(50):
        piece = f"line {i:04d} ".encode() * 10 + b"\n"  # 101 bytes
        written += piece
        store.append_output(run.id, run.app_id, [(1, float(i), piece)])
        store.append_output(other.id, other.app_id, [(1, float(i), b"x\n")])
    chunks = _stored(store, run.id)
    marker, kept = chunks[0], chunks[1:]
    data = b"".join(c.data for c in kept)
    assert written.endswith(data) and len(data) <= 1000 and len(data) > 1000 - 101
    dropped = len(written) - len(data)
    assert marker.stream == 2
    assert (
        marker.data
        == f"hgrun: {dropped} bytes of earlier output were dropped (cap 1000 bytes)\n".encode()
    )
    assert all(c.stream == 1 for c in kept)  # one marker only
    after = store.run(run.id)
    assert (after.output_bytes, after.output_dropped) == (len(data), dropped)
    # Another run's output is untouched.
    assert b"".join(c.data for c in _stored(store, other.id)) == b"x\n" * 50


def test_one_batch_over_the_cap_keeps_its_newest_bytes(make_store: StoreFactory) -> None:
    store = _capped(make_store, 10)
    run = _run_in(store, RunStatus.RUNNING)
    store.append_output(run.id, run.app_id, [(1, 1.0, b"old"), (1, 1.0, b"0123456789abcdef")])
    chunks = _stored(store, run.id)
    assert chunks[0].data.startswith(b"hgrun: 9 bytes of earlier output were dropped")
    assert b"".join(c.data for c in chunks[1:]) == b"6789abcdef"
    store.append_output(run.id, run.app_id, [(2, 2.0, b"XYZ")])
    chunks = _stored(store, run.id)
    # Whole chunks go: the 10-byte chunk makes room for 3 new bytes.
    assert chunks[0].data.startswith(b"hgrun: 19 bytes of earlier output were dropped")
    assert [c.data for c in chunks[1:]] == [b"XYZ"]


def test_the_cap_in_megabytes_reads_as_such(make_store: StoreFactory) -> None:
    store = _capped(make_store, 1024 * 1024)
    run = _run_in(store, RunStatus.RUNNING)
    for _ in range(3):
        store.append_output(run.id, run.app_id, [(1, 1.0, b"x" * 400_000)])
    (marker, *_rest) = _stored(store, run.id)
    assert marker.data == b"hgrun: 400000 bytes of earlier output were dropped (cap 1 MB)\n"


def test_clearing_output_resets_its_counts(make_store: StoreFactory) -> None:
    store = _capped(make_store, 10)
    run = _run_in(store, RunStatus.RUNNING)
    store.append_output(run.id, run.app_id, [(1, 1.0, b"x" * 30)])
    store.clear_output(run.id)
    assert _stored(store, run.id) == []
    assert (store.run(run.id).output_bytes, store.run(run.id).output_dropped) == (0, 0)


def test_stderr_is_read_on_its_own(store: Store) -> None:
    run = _run_in(store, RunStatus.RUNNING)
    store.append_output(run.id, run.app_id, [(1, 1.0, b"o1"), (2, 1.0, b"e1"), (1, 1.0, b"o2")])
    assert [c.data for c in store.output(run_id=run.id, stream=2)] == [b"e1"]


# -- retention of one-off runs ---------------------------------------------------------------


def test_prune_keeps_the_newest_per_app_and_drops_the_old(make_store: StoreFactory) -> None:
    store = make_store("r", clock=lambda: 1000.0)
    finished = []
    for _ in range(6):
        run = _run_in(store, RunStatus.SUCCEEDED)
        store.append_output(run.id, run.app_id, [(1, 1.0, b"out")])
        finished.append(run.id)
    deleted = store.prune_runs(keep=4, older_than=0.0)
    assert deleted == 2
    remaining = [r.id for r in store.runs("default", limit=100)]
    assert remaining == finished[:1:-1]
    assert store.output(run_id=finished[0]) == []
    assert store.output(run_id=finished[-1])[0].data == b"out"
    # By age: _move records finished at 1002.0.
    assert store.prune_runs(keep=100, older_than=1002.0) == 0
    assert store.prune_runs(keep=100, older_than=1002.5) == 4
    assert store.runs("default", limit=100) == []


def test_prune_never_deletes_a_run_in_flight(store: Store) -> None:
    active = [_run_in(store, status) for status in ACTIVE for _ in range(3)]
    done = [_run_in(store, RunStatus.FAILED) for _ in range(3)]
    # Everything is over the count and the age: only the finished ones go.
    assert store.prune_runs(keep=0, older_than=10**12) == len(done)
    assert sorted(r.id for r in store.runs("default", limit=100)) == sorted(r.id for r in active)


def test_prune_leaves_script_runs_to_their_history(store: Store) -> None:
    app, release = _app(store)
    store.sync_scripts("default", app.id, [Script(name="s", command="true")])
    (script,) = store.scripts()
    run = new_run(
        store,
        app,
        release,
        trigger=Trigger(TriggerKind.CRON, "s"),
        status=RunStatus.SKIPPED,
        script_id=script.id,
    )
    assert store.prune_runs(keep=0, older_than=10**12) == 0
    assert store.run(run.id).status is RunStatus.SKIPPED


def test_the_pruner_applies_the_servers_retention(make_store: StoreFactory) -> None:
    now = [1000.0]
    store = make_store("p", clock=lambda: now[0])
    runs = [_run_in(store, RunStatus.SUCCEEDED) for _ in range(3)]
    running = _run_in(store, RunStatus.RUNNING)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pruner = Pruner(store, Retention(keep_runs=3, keep_days=1), pool=pool, clock=lambda: now[0])
        assert pruner.prune() == 1  # four one-offs, three kept: the oldest goes
        now[0] = 1002.0 + DAY + 1  # a day after they finished: the rest, by age
        assert pruner.prune() == 2
    assert [r.id for r in store.runs("default")] == [running.id]
    assert runs  # made through the named transitions above


def test_the_node_is_recorded_with_the_container_or_later(store: Store) -> None:
    run = _run_in(store, RunStatus.STARTING)
    assert store.set_container(run.id, "c1", node="node-2").node == "node-2"
    assert store.set_container(run.id, "c2").node == "node-2"  # kept when not given
    other = _run_in(store, RunStatus.RUNNING)
    assert store.set_node(other.id, "node-3").node == "node-3"
    done = store.record_outcome(other.id, Outcome(RunStatus.LOST, 1, "node gone"), finished=1.0)
    assert store.set_node(other.id, "node-4") == done  # final: nothing changes


def test_offsets_count_from_the_runs_first_byte_across_drops(make_store: StoreFactory) -> None:
    """A reader resuming at a byte offset stays exact when the cap drops the oldest output."""
    store = _capped(make_store, 100)
    run = _run_in(store, RunStatus.RUNNING)
    written = b""
    for i in range(40):
        piece = bytes([65 + i % 26]) * (7 + i % 5)
        store.append_output(run.id, run.app_id, [(1 + i % 2, float(i), piece)])
        written += piece
        chunks = _stored(store, run.id)
        for chunk in chunks:
            if chunk.offset is None:
                assert chunk is chunks[0] and chunk.stream == 2  # the marker, first
            else:
                assert written[chunk.offset : chunk.offset + len(chunk.data)] == chunk.data
        kept = [c for c in chunks if c.offset is not None]
        assert kept[-1].offset is not None
        assert kept[-1].offset + len(kept[-1].data) == len(written)
        assert kept[0].offset == store.run(run.id).output_dropped
    # One batch trimmed at its front: the kept tail's offset is still exact.
    store.append_output(run.id, run.app_id, [(1, 50.0, b"0123456789" * 15)])
    written += b"0123456789" * 15
    chunks = _stored(store, run.id)
    first = chunks[1]
    assert chunks[0].offset is None and first.offset is not None
    assert written[first.offset :] == b"".join(c.data for c in chunks[1:])


def test_prune_works_in_bounded_passes_and_transactions(make_store: StoreFactory) -> None:
    store = make_store("passes", clock=lambda: 1000.0)
    made = []
    for _ in range(7):
        run = _run_in(store, RunStatus.SUCCEEDED)
        store.append_output(run.id, run.app_id, [(1, 1.0, b"x" * 100)])
        made.append(run.id)
    # At most 3 per call, about 150 bytes of output per transaction: every run still goes.
    counts = []
    while count := store.prune_runs(keep=0, older_than=0.0, limit=3, batch_bytes=150):
        counts.append(count)
    assert counts == [3, 3, 1]
    assert store.runs("default") == []
    assert all(store.output(run_id=run_id) == [] for run_id in made)


def _run_with(store: Store, kind: TriggerKind, script_id: int | None, status: RunStatus) -> Run:
    run = new_run(
        store,
        *_app(store),
        trigger=Trigger(kind, "t"),
        script="s" if script_id else None,
        script_id=script_id,
    )
    if status is not RunStatus.QUEUED:
        run = _move(store, _move(store, run, RunStatus.STARTING), RunStatus.RUNNING)
        run = _move(store, run, status)
    return run


def test_a_scripts_runs_are_one_index_seek_in_id_order(store: Store) -> None:
    """Store.script_runs, the listing of GET /v1/scripts/{id}/runs and `hgrun runs --script`:
    newest first, paged by ``before``, and read by a search of ``runs_by_script`` (script, id)
    that yields the rows in id order: no walk of other scripts' runs, no sort step, however
    many runs the store holds (issue 11: 10,000,000)."""
    app_id = _app(store)[0].id
    store.sync_scripts(
        "default", app_id, [Script(name="a", command="true"), Script(name="b", command="true")]
    )
    a, b = (store.script_by_name(app_id, name).id for name in ("a", "b"))
    made = [_run_with(store, TriggerKind.API, [a, b][i % 2], RunStatus.SUCCEEDED) for i in range(9)]
    with traced_sql(store) as plans:
        newest = store.script_runs(a, limit=3)
        older = store.script_runs(a, limit=3, before=newest[-1].id)
    mine = [r.id for r in reversed(made) if r.script_id == a]
    assert [r.id for r in newest + older] == mine[:6]
    if plans is None:
        return
    selects = [sql for sql in plans if sql.startswith(f"{SELECT_RUNS} WHERE script_id")]
    assert len(selects) == 2
    for sql in selects:
        assert_index_seek(store, sql, "runs_by_script")


def test_every_column_of_a_run_reads_back_into_its_field(make_store: StoreFactory) -> None:
    """A run is read by position (store.runs.SELECT_RUNS): each field comes from its own
    column, checked with a value no other field has, by id, in an app's runs and in a
    script's."""
    store = make_store(clock=lambda: 1000.0, max_output=4)
    app, release = _app(store)
    store.sync_scripts("default", app.id, [Script(name="nightly", command="true")])
    script_id = store.script_by_name(app.id, "nightly").id
    parent = _new_run(store)
    skipped = new_run(store, app, release, status=RunStatus.SKIPPED, error="already running")
    assert skipped == store.run(skipped.id) and skipped.finished == 1000.0
    made = new_run(
        store, app, release, command=["sh", "-c", "exit 3"], process_type="worker", tty=True,
        detached=False, uploads=True, size="standard", timeout=42.5, env={"A": "1", "B": "2"},
        trigger=Trigger(TriggerKind.CRON, "nightly"), script="nightly", slot="2026-12-01T04:00",
        parent_run=parent.id, script_id=script_id,
    )  # fmt: skip
    assert made == store.run(made.id)  # the run create_runs returns is the one it recorded
    store.mark_starting(made.id)
    store.set_container(made.id, "c0ffee", node="node-2")
    store.mark_running(made.id, started=1001.25)
    store.append_output(made.id, app.id, [(1, 1001.5, b"abcdef")])
    store.record_outcome(
        made.id, Outcome(RunStatus.FAILED, 3, "exit status 3", oom=True), finished=1003.75
    )
    want = {
        "id": made.id, "workspace": "default", "app_id": app.id, "release_id": release.id,
        "command": ["sh", "-c", "exit 3"], "process_type": "worker", "tty": True,
        "detached": False, "uploads": True, "size": "standard", "timeout": 42.5,
        "env": {"A": "1", "B": "2"}, "trigger": Trigger(TriggerKind.CRON, "nightly"),
        "script": "nightly", "slot": "2026-12-01T04:00", "parent_run": parent.id,
        "status": RunStatus.FAILED, "exit_code": 3, "oom": True, "container_id": "c0ffee",
        "error": "exit status 3", "created": 1000.0, "started": 1001.25, "finished": 1003.75,
        "script_id": script_id, "node": "node-2", "output_bytes": 4, "output_dropped": 2,
    }  # fmt: skip
    assert set(want) == {field.name for field in dataclasses.fields(Run)}
    for run in (
        store.run(made.id),
        store.runs("default", app_id=app.id, limit=1)[0],
        store.script_runs(script_id, limit=1)[0],
    ):
        assert {name: getattr(run, name) for name in want} == want
        assert run == Run(**want) and repr(run) == repr(Run(**want))


def test_a_run_may_be_built_without_its_init() -> None:
    """store.runs fills a decoded Run's __dict__ instead of calling its __init__ (a third of
    the time), which is only the same run while Run's init does nothing but set its fields."""
    assert not hasattr(Run, "__post_init__") and "__slots__" not in vars(Run)
    for field in dataclasses.fields(Run):
        assert field.default_factory is dataclasses.MISSING, field.name


def test_filtered_runs_page_by_key_and_each_filter_reads_an_index(store: Store) -> None:
    """Store.runs with any mix of status, trigger and script finds every match, page by page,
    newest first; and SQLite answers each mix from an index led by the app and the filtered
    columns (``SEARCH ... USING INDEX``, never a walk of all the app's runs filtered after),
    which is what keeps the dashboard's runs page fast among a million runs."""
    app_id = _app(store)[0].id
    store.sync_scripts("default", app_id, [Script(name="s", command="true")])
    script_id = store.script_by_name(app_id, "s").id
    made = []
    for i in range(40):
        kind = [TriggerKind.USER, TriggerKind.CRON, TriggerKind.API][i % 3]
        status = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.QUEUED][
            i % 4
        ]
        made.append(_run_with(store, kind, script_id if i % 5 else None, status))
    cases: list[dict] = [
        {"statuses": [RunStatus.TIMED_OUT]},
        {"trigger_kind": TriggerKind.USER},
        {"statuses": [RunStatus.FAILED], "trigger_kind": TriggerKind.CRON},
        {"statuses": [RunStatus.SUCCEEDED], "script_id": script_id},
        {"trigger_kind": TriggerKind.API, "script_id": script_id},
    ]
    with traced_sql(store) as plans:
        for filters in cases:
            want = [
                r.id
                for r in reversed(made)
                if r.status in filters.get("statuses", [r.status])
                and r.trigger.kind is filters.get("trigger_kind", r.trigger.kind)
                and r.script_id == filters.get("script_id", r.script_id)
            ]
            assert want, filters
            got: list[int] = []
            before = None
            while True:
                page = store.runs("default", app_id=app_id, limit=2, before=before, **filters)
                got += [r.id for r in page]
                if len(page) < 2:
                    break
                before = page[-1].id
            assert got == want, filters
    if plans is None:
        return
    selects = {sql for sql in plans if sql.startswith(f"{SELECT_RUNS} WHERE")}
    assert len(selects) >= len(cases)
    for sql in selects:
        plan = assert_index_seek(store, sql)
        if "status IN" in sql or "trigger_kind =" in sql:
            assert "status=?" in plan or "trigger_kind=?" in plan, (sql, plan)
