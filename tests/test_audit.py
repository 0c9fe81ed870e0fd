"""The audit log's seals (issue 8, item 7): sealed times, a sealed head that sees the newest
records deleted, verification of the whole log whatever page is shown, and the runs that never
started recorded."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import docker
from conftest import ServerFactory
from support.apps import deploy_busybox_app
from support.cli import Cli, check, text
from support.waits import wait_for

from hgrun.store.audit import AuditLog
from hgrun.store.keys import load_key


def _fill(path: Path, key: bytes, count: int) -> None:
    log = AuditLog(path, key)
    for n in range(count):
        log.append("default", n + 1, "run.start", {"actor": "user:admin", "command": [str(n)]})
    log.close()


def _flip(db_path: Path, record_id: int) -> bytes:
    """Change one base64 character of a record's ciphertext; the original blob."""
    with sqlite3.connect(db_path) as db:
        (blob,) = db.execute("SELECT payload FROM audit WHERE id = ?", (record_id,)).fetchone()
        changed = bytearray(blob)
        changed[len(changed) // 2] = (
            ord("A") if changed[len(changed) // 2] != ord("A") else ord("B")
        )
        db.execute("UPDATE audit SET payload = ? WHERE id = ?", (bytes(changed), record_id))
    return bytes(blob)


def test_every_read_verifies_the_whole_log_whatever_the_page(tmp_path: Path) -> None:
    key = load_key(tmp_path, {})
    db_path = tmp_path / "audit.db"
    _fill(db_path, key, 1000)
    log = AuditLog(db_path, key)
    page = log.page("default", limit=5)
    assert [r.id for r in page.records] == [996, 997, 998, 999, 1000]
    assert page.problems == [] and page.checked == 1000 and page.next == 996
    assert [r.id for r in log.page("default", limit=3, before=page.next).records] == [993, 994, 995]

    original = _flip(db_path, 7)
    problems = {p.id: p.problem for p in log.page("default", limit=5).problems}
    assert set(problems) == {7, 8} and problems[7] == "record was altered"
    assert "before this one" in problems[8]
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE audit SET payload = ? WHERE id = 7", (original,))
        # A sealed time: moving a record in time is seen.
        db.execute("UPDATE audit SET ts = ts - 86400 WHERE id = 3")
    problems = {p.id: p.problem for p in log.page("default", limit=5).problems}
    assert list(problems) == [3] and "time" in problems[3]
    log.close()


def test_deleting_the_newest_records_is_seen_also_after_more_appends(tmp_path: Path) -> None:
    key = load_key(tmp_path, {})
    db_path = tmp_path / "audit.db"
    _fill(db_path, key, 20)
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM audit WHERE id >= 19")
    log = AuditLog(db_path, key)
    problems = log.page("default").problems
    assert [(p.id, p.problem) for p in problems] == [
        (20, "the newest record(s) #19 to #20 were deleted")
    ]
    # hgrun writes on: the gap stays visible, in the chain now.
    log.append("default", None, "run.start", {})
    problems = log.page("default").problems
    assert [p.id for p in problems] == [21], problems
    assert "before this one" in problems[0].problem
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM head")
    assert any("head is missing" in p.problem for p in log.page("default").problems)
    log.close()


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


def test_a_lost_run_is_audited_once(tmp_path: Path) -> None:
    """The store tells the audit of a run made final once (the first final state wins), so a
    run recovery marks lost gets its ``run.lost`` record."""
    from support.store import app_with_release, new_run, new_store

    from hgrun.lifecycle import Outcome
    from hgrun.models import RunStatus
    from hgrun.server.main import audit_unstarted

    store = new_store(tmp_path / "hgrun.db")
    log = AuditLog(tmp_path / "audit.db", load_key(tmp_path, {}))
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
    store.close()
