"""The audit log's seals (issue 8, item 7): sealed times, a sealed head that sees the newest
records deleted, verification of the whole log whatever page is shown, and the runs that never
started recorded. The log's own tests run on both backends (issue 9): audit.db, and the tables
of its own in a PostgreSQL store, where several servers append to one chain at once."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
from conftest import ServerFactory
from support.apps import deploy_busybox_app
from support.cli import Cli, check, text
from support.stores import Databases, StoreFactory
from support.waits import wait_for

from hgrun.store.audit import AuditLog
from hgrun.store.database import is_postgres
from hgrun.store.keys import load_key


class Raw:
    """The log's database reached behind hgrun's back, as a tamperer would: SQL with ``?``
    placeholders, ``{head}`` for the head table (``head`` in audit.db, ``audit_head`` in a
    PostgreSQL store)."""

    def __init__(self, target: Path | str) -> None:
        self.target = target
        self.postgres = is_postgres(target)

    def __call__(self, sql: str, *args: Any) -> list[Any]:
        sql = sql.replace("{head}", "audit_head" if self.postgres else "head")
        if self.postgres:
            with psycopg.connect(str(self.target), autocommit=True) as pg:
                cursor = pg.execute(sql.replace("?", "%s"), args)
                return cursor.fetchall() if cursor.description else []
        with contextlib.closing(sqlite3.connect(self.target)) as db, db:
            return db.execute(sql, args).fetchall()


@pytest.fixture
def audit_target(make_store: StoreFactory) -> Path | str:
    """Where a test's audit log is, on each backend in turn: ``<tmp>/audit.db``, or a fresh
    PostgreSQL store (its own tables migrated) that the log shares."""
    return make_store.target("audit")


def _fill(path: Path | str, key: bytes, count: int) -> None:
    log = AuditLog(path, key)
    for n in range(count):
        log.append("default", n + 1, "run.start", {"actor": "user:admin", "command": [str(n)]})
    log.close()


def _flip(raw: Raw | Path, record_id: int) -> bytes:
    """Change one base64 character of a record's ciphertext; the original blob."""
    raw = raw if isinstance(raw, Raw) else Raw(raw)
    ((blob,),) = raw("SELECT payload FROM audit WHERE id = ?", record_id)
    changed = bytearray(blob)
    changed[len(changed) // 2] = ord("A") if changed[len(changed) // 2] != ord("A") else ord("B")
    raw("UPDATE audit SET payload = ? WHERE id = ?", bytes(changed), record_id)
    return bytes(blob)


def test_every_read_verifies_the_whole_log_whatever_the_page(
    audit_target: Path | str, tmp_path: Path
) -> None:
    key = load_key(tmp_path, {})
    raw = Raw(audit_target)
    _fill(audit_target, key, 1000)
    log = AuditLog(audit_target, key)
    page = log.page("default", limit=5)
    assert [r.id for r in page.records] == [996, 997, 998, 999, 1000]
    assert page.problems == [] and page.checked == 1000 and page.next == 996
    assert [r.id for r in log.page("default", limit=3, before=page.next).records] == [993, 994, 995]

    original = _flip(raw, 7)
    problems = {p.id: p.problem for p in log.page("default", limit=5).problems}
    assert set(problems) == {7, 8} and problems[7] == "record was altered"
    assert "before this one" in problems[8]
    raw("UPDATE audit SET payload = ? WHERE id = 7", original)
    # A sealed time: moving a record in time is seen.
    raw("UPDATE audit SET ts = ts - 86400 WHERE id = 3")
    problems = {p.id: p.problem for p in log.page("default", limit=5).problems}
    assert list(problems) == [3] and "time" in problems[3]
    raw("UPDATE audit SET ts = ts + 86400 WHERE id = 3")
    # A clear column changed: the workspace a record is filed under.
    raw("UPDATE audit SET workspace = 'other' WHERE id = 500")
    problems = {p.id: p.problem for p in log.page("default", limit=5).problems}
    assert list(problems) == [500] and "workspace" in problems[500]
    log.close()


def test_deleting_the_newest_records_is_seen_also_after_more_appends(
    audit_target: Path | str, tmp_path: Path
) -> None:
    key = load_key(tmp_path, {})
    raw = Raw(audit_target)
    _fill(audit_target, key, 20)
    raw("DELETE FROM audit WHERE id >= 19")
    log = AuditLog(audit_target, key)
    problems = log.page("default").problems
    assert [(p.id, p.problem) for p in problems] == [
        (20, "the newest record(s) #19 to #20 were deleted")
    ]
    # hgrun writes on: the gap stays visible, in the chain now.
    log.append("default", None, "run.start", {})
    problems = log.page("default").problems
    assert [p.id for p in problems] == [21], problems
    assert "before this one" in problems[0].problem
    raw("DELETE FROM {head}")
    assert any("head is missing" in p.problem for p in log.page("default").problems)
    log.close()


def test_a_record_added_or_the_newest_replaced_behind_hgruns_back_is_seen(
    audit_target: Path | str, tmp_path: Path
) -> None:
    key = load_key(tmp_path, {})
    raw = Raw(audit_target)
    _fill(audit_target, key, 5)
    ((blob,),) = raw("SELECT payload FROM audit WHERE id = 2")
    # A copy of a valid record, under a new id: its seal names #2, and the head #5.
    raw(
        "INSERT INTO audit (id, ts, workspace, run_id, action, payload)"
        " SELECT 6, ts, workspace, run_id, action, payload FROM audit WHERE id = 2"
    )
    log = AuditLog(audit_target, key)
    problems = [(p.id, p.problem) for p in log.page("default").problems]
    assert [id_ for id_, _ in problems] == [6, 6], problems
    assert "altered" in problems[0][1] and "added outside hgrun" in problems[1][1], problems
    raw("DELETE FROM audit WHERE id = 6")
    raw("UPDATE audit SET payload = ? WHERE id = 5", blob)  # #2's valid token as the newest
    problems = [(p.id, p.problem) for p in log.page("default").problems]
    assert problems[-1] == (5, "the newest record was replaced"), problems
    assert {id_ for id_, _ in problems} == {5}, problems
    log.close()


def test_two_servers_appending_at_once_make_one_chain(
    audit_target: Path | str, tmp_path: Path
) -> None:
    """Two logs on one database (two servers on one PostgreSQL store; on SQLite, two
    connections to one audit.db), four threads each, appending at once: the chain never
    forks, every record is in it once, and it verifies as one."""
    key = load_key(tmp_path, {})
    logs = [AuditLog(audit_target, key) for _server in range(2)]
    threads_per_log, each = 4, 40
    start = threading.Barrier(2 * threads_per_log)
    failures: list[BaseException] = []

    def append(log: AuditLog, who: str) -> None:
        try:
            start.wait(timeout=30)
            for n in range(each):
                log.append("default", n, "run.finish", {"actor": who, "n": n})
        except BaseException as e:  # reported below, with the thread's name
            failures.append(e)

    threads = [
        threading.Thread(target=append, args=(log, f"server{s}:thread{t}"))
        for s, log in enumerate(logs)
        for t in range(threads_per_log)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == [] and not any(t.is_alive() for t in threads), failures
    total = 2 * threads_per_log * each
    for log in logs:  # each server reads the one log, verified as one chain
        page = log.page("default", limit=total)
        assert page.problems == [] and page.checked == total, page.problems[:3]
        assert [r.id for r in page.records] == list(range(1, total + 1))
        seen = sorted(
            (r.payload or {})["actor"] + f"#{(r.payload or {})['n']}" for r in page.records
        )
        assert seen == sorted(
            f"server{s}:thread{t}#{n}"
            for s in range(2)
            for t in range(threads_per_log)
            for n in range(each)
        )
    for log in logs:
        log.close()


def test_reads_while_servers_append_see_one_consistent_log(
    audit_target: Path | str, tmp_path: Path
) -> None:
    """A read is one snapshot: records and head as they were at its first statement, so an
    append committed between reading the records and the head is no false alarm."""
    key = load_key(tmp_path, {})
    _fill(audit_target, key, 10)
    writer, reader = AuditLog(audit_target, key), AuditLog(audit_target, key)
    done = threading.Event()
    failures: list[BaseException] = []

    def append() -> None:
        try:
            for n in range(300):
                writer.append("default", n, "run.finish", {"n": n})
        except BaseException as e:  # reported below
            failures.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=append)
    thread.start()
    reads = 0
    while not done.is_set() or reads == 0:
        page = reader.page("default", limit=5)
        assert page.problems == [], (reads, page.problems)
        reads += 1
    thread.join(timeout=60)
    assert failures == [] and reads > 1, (failures, reads)
    assert reader.page("default").checked == 310
    writer.close()
    reader.close()


def test_an_audit_log_newer_than_this_hgrun_is_refused(
    audit_target: Path | str, tmp_path: Path
) -> None:
    from hgrun.errors import StoreError

    key = load_key(tmp_path, {})
    AuditLog(audit_target, key).close()
    raw = Raw(audit_target)
    if raw.postgres:
        raw("UPDATE hgrun_audit_schema SET version = 99")
    else:
        raw("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this hgrun"):
        AuditLog(audit_target, key)


def test_rekey_rewrites_the_chain_under_the_new_key_and_refuses_a_tampered_log(
    audit_target: Path | str, tmp_path: Path
) -> None:
    from cryptography.fernet import Fernet

    from hgrun.errors import StoreError

    old, new = Fernet.generate_key(), Fernet.generate_key()
    _fill(audit_target, old, 1500)  # more than one batch
    rotating = AuditLog(audit_target, new, old_keys=[old])
    assert rotating.rekey() == 1500
    rotating.close()
    page = AuditLog(audit_target, new).page("default", limit=2)
    assert page.problems == [] and page.checked == 1500
    assert AuditLog(audit_target, old).page("default").problems

    _flip(Raw(audit_target), 1000)
    with pytest.raises(StoreError, match="verification at #1000"):
        AuditLog(audit_target, old, old_keys=[new]).rekey()


def test_a_log_from_before_the_head_is_taken_as_it_is(tmp_path: Path) -> None:
    """An audit.db written before sealed heads existed opens clean, and is sealed from then."""
    key = load_key(tmp_path, {})
    db_path = tmp_path / "audit.db"
    _fill(db_path, key, 3)
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TABLE head")
        db.execute("PRAGMA user_version = 0")
    log = AuditLog(db_path, key)
    assert log.page("default").problems == []
    log.close()
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM audit WHERE id = 3")
    assert AuditLog(db_path, key).page("default").problems


def test_hgrun_audit_exits_1_naming_a_record_outside_what_it_prints(
    hgrun_server: ServerFactory, cli: Cli
) -> None:
    srv = hgrun_server()
    db_path = srv.data_dir / "audit.db"
    _fill(db_path, (srv.data_dir / "audit.key").read_bytes().strip(), 1000)
    done = cli("audit", "-n", "5", server=srv)
    assert check(done).count("run.start") == 5

    original = _flip(db_path, 4)  # one of the first 10 of 1,000, far from the 5 shown
    done = cli("audit", "-n", "5", server=srv)
    assert done.returncode == 1, (text(done.stdout), text(done.stderr))
    assert "#4 !! record was altered" in text(done.stdout), text(done.stdout)
    assert "failed verification" in text(done.stderr) and "Traceback" not in text(done.stderr)
    page = json.loads(cli("audit", "-n", "5", "--json", server=srv).stdout)
    assert {p["id"] for p in page["problems"]} == {4, 5} and page["checked"] == 1000

    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE audit SET payload = ? WHERE id = 4", (original,))
    check(cli("audit", "-n", "5", server=srv))
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM audit WHERE id = 1000")
    done = cli("audit", "-n", "5", server=srv)
    assert done.returncode == 1
    assert "#1000 !! the newest record(s) #1000 were deleted" in text(done.stdout), text(
        done.stdout
    )


def test_an_old_audit_db_is_read_by_a_sqlite_hgrun_on_a_copy_of_its_data_dir(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path
) -> None:
    """docs/scale-out.md: a server moved to a PostgreSQL store keeps its audit.db from before,
    not imported; a SQLite hgrun started on a copy of its data dir without the store (same key)
    shows the file's records, verified."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key()
    old = tmp_path / "old"
    old.mkdir()
    _fill(old / "audit.db", key, 3)
    copy = tmp_path / "copy"
    shutil.copytree(old, copy)
    srv = hgrun_server(data_dir=copy, env={"HGRUN_AUDIT_KEY": key.decode()})
    page = json.loads(check(cli("audit", "--json", server=srv)))
    assert page["problems"] == [] and page["checked"] == 3, page
    assert [r["payload"]["command"] for r in page["records"]] == [["0"], ["1"], ["2"]]


def test_a_run_that_never_started_is_audited(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path, docker_host: str, busybox_image: str
) -> None:
    srv = hgrun_server()
    name = deploy_busybox_app(cli, tmp_path / "app", server=srv)
    image = json.loads(check(cli("releases", "--app", name, "--json", server=srv)))[0]["image"]
    client = docker.DockerClient(base_url=docker_host)
    try:
        client.images.remove(image, force=True)
    finally:
        client.close()
    done = cli("run", "--app", name, "--detached", "true", server=srv)
    label = text(done.stdout).strip() or text(done.stderr)

    def recorded() -> list[dict[str, object]] | None:
        page = json.loads(check(cli("audit", "--json", server=srv)))
        found = [r for r in page["records"] if r["action"] == "run.not_started"]
        return found or None

    records = wait_for(recorded, 30, f"a run.not_started record ({label})")
    assert records[0]["payload"]["status"] == "failed", records
    assert records[0]["payload"]["command"] == ["true"]


def test_rotating_the_key_on_postgresql_rekeys_the_stores_log_and_an_old_audit_db(
    store_databases: Databases, tmp_path: Path
) -> None:
    """``hgrun server --rotate-key --store URL``: the store's log, and the per-server audit.db
    left from before PostgreSQL, stay readable under the new key only."""
    from hgrun.server.main import rotate_key
    from hgrun.store.keys import load_keys

    url = store_databases.create()
    try:
        (before,) = load_keys(tmp_path, {})
        _fill(url, before, 3)
        _fill(tmp_path / "audit.db", before, 2)
        _rows, records = rotate_key(tmp_path, {}, url)
        assert records == 5
        after = load_key(tmp_path, {})
        for target, count in ((url, 3), (tmp_path / "audit.db", 2)):
            log = AuditLog(target, after)
            page = log.page("default")
            assert page.problems == [] and page.checked == count, (target, page.problems)
            log.close()
            log = AuditLog(target, before)
            assert log.page("default").problems, target
            log.close()
    finally:
        store_databases.drop(url)


def test_a_lost_run_is_audited_once(make_store: StoreFactory, tmp_path: Path) -> None:
    """The store tells the audit of a run made final once (the first final state wins), so a
    run recovery marks lost gets its ``run.lost`` record."""
    from support.store import app_with_release, new_run

    from hgrun.lifecycle import Outcome
    from hgrun.models import RunStatus
    from hgrun.server.main import audit_unstarted

    store = make_store()
    log = AuditLog(make_store.target("audit"), load_key(tmp_path, {}))
    store.on_run_ended.append(lambda run: audit_unstarted(log, run))
    app, release = app_with_release(store)
    run = new_run(store, app, release)
    store.mark_starting(run.id)
    store.mark_running(run.id, started=1.0)
    store.record_outcome(run.id, Outcome(RunStatus.LOST, 1, "vanished"), finished=2.0)
    # Final already: no-op, and no second record.
    store.record_outcome(run.id, Outcome(RunStatus.FAILED, 1), finished=3.0)
    records = log.read("default")
    assert [(r.run_id, r.action) for r in records] == [(run.id, "run.lost")]
    assert records[0].payload is not None and records[0].payload["error"] == "vanished"
    log.close()
