"""What several servers on one store rely on, on both backends (``make_store``: SQLite, and
PostgreSQL in a private cluster): leases that one owner holds at a time, a run made with its
lease held, one run per cron slot whoever triggers it, output cursors that a follower never
skips, and a store refused at open when its schema is newer or its key is not this server's."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest
from cryptography.fernet import Fernet
from support.store import app_with_release, new_run
from support.stores import StoreFactory

from hgrun.errors import ConflictError, StoreError
from hgrun.models import Scope, Script
from hgrun.store import Store, hash_token
from hgrun.store.keys import Sealer
from hgrun.store.schema import MIGRATIONS


def _race(count: int, work: object) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released together; their results (or errors)."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)  # type: ignore[operator]
        except Exception as e:  # noqa: BLE001 - the race's loser is the point
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_lease_has_one_holder_whoever_races_for_it(make_store: StoreFactory) -> None:
    """Four connections (four servers) claim a lease nobody holds yet, at once, twenty times:
    exactly one gets it, the others are told that one holds it (on PostgreSQL the row does not
    exist to be locked: the store locks the lease's name)."""
    stores = [make_store(workspace=None) for _ in range(4)]
    for round_ in range(20):
        name = f"race-{round_}"
        owners = [f"host:{i}:{round_}" for i in range(4)]
        results = _race(4, lambda i, o=owners, n=name: stores[i].claim_lease(n, o[i], 60.0))
        winners = [owners[i] for i, r in enumerate(results) if r is None]
        assert len(winners) == 1, results
        assert sorted(r for r in results if r is not None) == [winners[0]] * 3, results


def test_a_run_can_be_made_with_its_lease_held(make_store: StoreFactory) -> None:
    store = make_store()
    app, release = app_with_release(store)
    run = new_run(store, app, release, holder=("host:1:a", 15.0))
    assert store.claim_lease(f"run:{run.id}", "host:2:b", 15.0) == "host:1:a"
    other = new_run(store, app, release)
    assert store.claim_lease(f"run:{other.id}", "host:2:b", 15.0) is None


def test_a_run_made_with_its_lease_replaces_a_stale_lease_of_its_id(
    make_store: StoreFactory,
) -> None:
    """A lease left under the id the next run gets (SQLite hands the id of a deleted run on; a
    server died holding it) does not stop that run from being made with its own lease."""
    store = make_store()
    app, release = app_with_release(store)
    first = new_run(store, app, release)
    assert store.claim_lease(f"run:{first.id + 1}", "host:9:gone", 60.0) is None
    run = new_run(store, app, release, holder=("host:1:a", 15.0))
    assert run.id == first.id + 1
    assert store.claim_lease(f"run:{run.id}", "host:2:b", 15.0) == "host:1:a"


def test_one_run_per_cron_slot_across_connections(make_store: StoreFactory) -> None:
    store = make_store()
    app, release = app_with_release(store)
    store.sync_scripts("default", app.id, [Script(name="s", command="true", cron="* * * * *")])
    script_id = store.script_by_name(app.id, "s").id
    stores = [store, make_store(workspace=None)]
    for minute in range(10):
        slot = f"2026-12-01T04:{minute:02d}:00Z"
        results = _race(
            2,
            lambda i, slot=slot: new_run(
                stores[i], app, release, script="s", script_id=script_id, slot=slot
            ),
        )
        assert sorted(type(r).__name__ for r in results) == ["ConflictError", "Run"], results
    assert len(store.script_runs(script_id)) == 10


def test_queued_script_ids_are_the_scripts_with_a_run_waiting(make_store: StoreFactory) -> None:
    store = make_store()
    app, release = app_with_release(store)
    store.sync_scripts("default", app.id, [Script(name=n, command="true") for n in "abc"])
    ids = {n: store.script_by_name(app.id, n).id for n in "abc"}
    new_run(store, app, release, script="a", script_id=ids["a"])
    started = new_run(store, app, release, script="b", script_id=ids["b"])
    store.mark_starting(started.id)
    new_run(store, app, release)  # a one-off
    assert store.queued_script_ids() == [ids["a"]]


def test_a_follower_by_cursor_never_skips_a_chunk_of_concurrent_writers(
    make_store: StoreFactory,
) -> None:
    """Two servers append to two runs of one app while a third follows the app's log by cursor
    (``after=`` the last id read): every chunk is read once. On PostgreSQL, ids come from a
    sequence before commit; without the store's output lock a chunk with a smaller id could
    commit after the follower had passed it."""
    store = make_store()
    app, release = app_with_release(store)
    runs = [new_run(store, app, release) for _ in range(2)]
    writers = [make_store(workspace=None) for _ in range(2)]
    follower = make_store(workspace=None)
    per_writer = 150
    done = threading.Event()
    seen: list[bytes] = []

    def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            chunks = follower.output(app_id=app.id, after=cursor, limit=1000)
            seen.extend(c.data for c in chunks)
            cursor = chunks[-1].cursor if chunks else cursor
            if finished and not chunks:
                return

    reader = threading.Thread(target=follow)
    reader.start()
    _race(
        2,
        lambda i: [
            writers[i].append_output(runs[i].id, app.id, [(1, 1.0, f"{i}-{n}\n".encode())])
            for n in range(per_writer)
        ],
    )
    done.set()
    reader.join()
    want = {f"{i}-{n}\n".encode() for i in range(2) for n in range(per_writer)}
    assert len(seen) == len(want) and set(seen) == want


def test_a_store_newer_than_this_hgrun_is_refused_at_open(make_store: StoreFactory) -> None:
    make_store().close()
    target = make_store.target()
    newer = len(MIGRATIONS) + 1
    if make_store.backend == "sqlite":
        import sqlite3

        with sqlite3.connect(target) as db:
            db.execute(f"PRAGMA user_version = {newer}")
    else:
        with psycopg.connect(str(target), autocommit=True) as db:
            db.execute("UPDATE hgrun_schema SET version = %s", (newer,))
    with pytest.raises(StoreError) as refused:
        Store(target)
    assert f"schema version {newer}, newer than this hgrun knows" in refused.value.message
    assert "\n" not in refused.value.message


def test_a_store_whose_secrets_are_under_another_key_is_refused_at_open(
    make_store: StoreFactory,
) -> None:
    key = Fernet.generate_key()
    make_store(sealer=Sealer([key])).close()
    make_store(sealer=Sealer([key])).close()  # its own key opens it
    with pytest.raises(StoreError, match="does not decrypt with the audit key"):
        make_store(sealer=Sealer([Fernet.generate_key()]))


def test_a_postgresql_url_that_fails_is_one_line() -> None:
    with pytest.raises(StoreError) as refused:
        Store("postgresql://hgrun:secret@127.0.0.1:1/nothing")
    message = refused.value.message
    assert message.startswith("cannot connect to the store postgresql://hgrun:***@127.0.0.1:1/")
    assert "secret" not in message and "\n" not in message


def test_a_runs_token_is_replaced_by_whoever_launches_it_again(make_store: StoreFactory) -> None:
    """A server that died launching a run may have made the run's own token: the server that
    takes the run up makes it again, and only the new secret works."""
    store = make_store()
    store.add_token("default", "run.7", "old-secret", Scope.TRIGGER)
    with pytest.raises(ConflictError):
        store.add_token("default", "run.7", "new-secret", Scope.TRIGGER)
    store.revoke_token("default", "run.7")
    store.add_token("default", "run.7", "new-secret", Scope.TRIGGER, replace=True)
    assert store.token_by_hash(hash_token("old-secret")) is None
    found = store.token_by_hash(hash_token("new-secret"))
    assert found is not None and found[0].name == "run.7" and found[0].revoked is None


class _Leases:
    def __init__(self, owner: str) -> None:
        self.owner = owner


class _Supervisor:
    """The attributes ScriptRunner takes from its supervisor (our own seam)."""

    def __init__(self, owner: str) -> None:
        self.leases = _Leases(owner)
        self.on_finish: list[object] = []
        self.on_outcome: list[object] = []


class _Launcher:
    def __init__(self, owner: str) -> None:
        self.supervisor = _Supervisor(owner)


def test_a_scripts_decision_is_one_server_at_a_time_on_a_shared_store(
    make_store: StoreFactory,
) -> None:
    """Two servers' script runners on one store: while one decides a trigger of a script, the
    other waits (on PostgreSQL, the store's ``script:ID`` lease; on SQLite, one server's lock
    only: the other enters at once)."""
    from hgrun.server.scripts import ScriptRunner

    stores = [make_store(), make_store(workspace=None)]
    runners = [
        ScriptRunner(store, _Launcher(f"elsewhere:{i}:n"))  # type: ignore[arg-type]
        for i, store in enumerate(stores)
    ]
    entered: list[str] = []

    async def scenario() -> None:
        first_in, let_go = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with runners[0]._exclusive(7):
                entered.append("first")
                first_in.set()
                await let_go.wait()
                entered.append("first out")

        async def second() -> None:
            await first_in.wait()
            async with runners[1]._exclusive(7):
                entered.append("second")

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        # A runner that raises must fail the test, not leave it waiting for ever.
        entering = asyncio.create_task(first_in.wait())
        await asyncio.wait([entering, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                task.result()
        assert first_in.is_set(), "the first runner did not enter within 30 s"
        if make_store.backend == "postgresql":
            # The second keeps claiming the lease the first holds: it is refused each time.
            for _ in range(5):
                await asyncio.sleep(0.05)
                assert stores[1].claim_lease("script:7", "elsewhere:1:n", 1.0) == "elsewhere:0:n"
            assert entered == ["first"]
        let_go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(scenario())
    if make_store.backend == "postgresql":
        assert entered == ["first", "first out", "second"]
    else:
        assert entered == ["first", "second", "first out"]
