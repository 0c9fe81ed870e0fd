"""Unit tests of the pure pieces and of the stores (real SQLite), without Docker."""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import tarfile
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from support.store import app_with_release, new_run, new_store

from hgrun.cli import client, uploads
from hgrun.engine import CAPABILITIES, ContainerSpec
from hgrun.engine.dockerspec import create_args
from hgrun.engine.dockerwire import timestamp
from hgrun.engine.multiplex import STDERR, STDOUT, Demuxer, frame
from hgrun.errors import ConflictError, EngineError, InputError, NotFoundError
from hgrun.lifecycle import Outcome
from hgrun.models import SIZES, RunStatus, Scope, Script
from hgrun.server.auth import authenticate, new_token
from hgrun.store import Store, hash_token
from hgrun.store.audit import AuditLog, load_key

# -- Docker's multiplexed stream -----------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7, 8, 9, 64, 10_000])
def test_demuxer_any_chunking(chunk: int) -> None:
    raw = frame(STDOUT, b"hello\n") + frame(STDERR, b"oops\n") + frame(STDOUT, b"x" * 3000)
    demuxer = Demuxer(tty=False)
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(raw), chunk):
        out += demuxer.feed(raw[i : i + chunk])
    joined: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
    for stream, data in out:
        joined[stream] += data
    assert joined == {STDOUT: b"hello\n" + b"x" * 3000, STDERR: b"oops\n"}
    assert demuxer.pending == 0


def test_demuxer_joins_consecutive_frames_of_one_stream_in_order() -> None:
    """4 KB frames come out as one piece per stream run (one relay message, not one each)."""
    raw = b"".join(frame(STDOUT, bytes([i]) * 4096) for i in range(8))
    raw += frame(STDERR, b"e1") + frame(STDERR, b"e2") + frame(STDOUT, b"") + frame(STDOUT, b"z")
    demuxer = Demuxer(tty=False)
    out = demuxer.feed(raw[:-3]) + demuxer.feed(raw[-3:])
    assert out == [
        (STDOUT, b"".join(bytes([i]) * 4096 for i in range(8))),
        (STDERR, b"e1e2"),
        (STDOUT, b"z"),
    ]
    assert demuxer.pending == 0


def test_demuxer_tty_is_raw_stdout() -> None:
    assert Demuxer(tty=True).feed(b"\x01\x00abc") == [(STDOUT, b"\x01\x00abc")]


def test_demuxer_rejects_garbage() -> None:
    with pytest.raises(EngineError, match="stream byte 9"):
        Demuxer(tty=False).feed(b"\x09\x00\x00\x00\x00\x00\x00\x01a")


def test_demuxer_holds_a_truncated_frame() -> None:
    demuxer = Demuxer(tty=False)
    assert demuxer.feed(frame(STDOUT, b"abcdef")[:-2]) == []
    assert demuxer.pending == 12


# -- container arguments -------------------------------------------------------------------


def test_create_args_harden_the_container() -> None:
    spec = ContainerSpec(
        image="img",
        command=["sh", "-c", "true"],
        env={"A": "1"},
        labels={"hgrun.run": "7"},
        size=SIZES["standard"],
        stdin=True,
    )
    create, host = create_args(spec)
    assert host["cap_drop"] == ["ALL"]
    assert set(host["cap_add"]) == set(CAPABILITIES)
    assert "SYS_ADMIN" not in host["cap_add"] and "NET_RAW" not in host["cap_add"]
    assert host["security_opt"] == ["no-new-privileges:true"]
    assert host["init"] is True and host["privileged"] is False
    assert host["mem_limit"] == host["memswap_limit"] == 2048 * 1024 * 1024
    assert host["nano_cpus"] == 1_000_000_000
    assert host["pids_limit"] == SIZES["standard"].pids
    assert host["network_mode"] == "none"
    assert "binds" not in host and "devices" not in host
    assert host["log_config"] == {
        "type": "local",
        "config": {"max-size": str(100 * 1024 * 1024), "max-file": "2", "compress": "false"},
    }
    assert create_args(spec, 4096)[1]["log_config"]["config"]["max-size"] == "4096"
    assert create["stdin_open"] is True and create["detach"] is False
    assert create["labels"] == {"hgrun.run": "7"}
    assert "user" not in create  # the image's own
    assert "read_only" not in host and "mounts" not in host


def test_create_args_user_and_read_only() -> None:
    spec = ContainerSpec(
        image="img",
        command=["true"],
        env={},
        labels={},
        size=SIZES["starter"],
        user="10001:10001",
        read_only=True,
    )
    create, host = create_args(spec)
    assert create["user"] == "10001:10001"
    assert host["read_only"] is True
    # /tmp an anonymous volume (a tmpfs would hide an upload put before the start), no bind.
    (mount,) = host["mounts"]
    assert (mount["Target"], mount["Type"], mount["Source"]) == ("/tmp", "volume", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T18:08:20.123456789Z", 1795457300.123456),
        ("2026-11-23T18:08:20Z", 1795457300.0),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
    ],
)
def test_engine_timestamps(text: str | None, expected: float | None) -> None:
    assert timestamp(text) == expected


# -- uploads -------------------------------------------------------------------------------


def test_upload_tar_stream_is_a_valid_tar(tmp_path: Path) -> None:
    (tmp_path / "dump.bin").write_bytes(bytes(range(256)) * 1000 + b"tail")
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f.txt").write_text("hello")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    entries = uploads.plan([str(tmp_path / "dump.bin"), str(folder)])
    sent: list[int] = []
    data = b"".join(uploads.tar_stream(entries, sent.append))
    assert sum(sent) == uploads.total_bytes(entries)
    assert len(data) == uploads.tar_size(entries)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert names[0] == "uploads"
        assert "uploads/dump.bin" in names and "uploads/dir/sub/f.txt" in names
        dump = tar.extractfile("uploads/dump.bin")
        assert dump is not None and dump.read() == (tmp_path / "dump.bin").read_bytes()
        assert tar.getmember("uploads/dir/run.sh").mode == 0o755


def _sent_over_a_socket(pieces: Any, progress: Any = None) -> bytes:
    """What :func:`hgrun.cli.client._send_pieces` writes to a real socket (read by a thread)."""
    here, there = socket.socketpair()
    got: list[bytes] = []

    def drain() -> None:
        while chunk := there.recv(1 << 20):
            got.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        client._send_pieces(types.SimpleNamespace(sock=here), pieces, progress)  # type: ignore[arg-type]
    finally:
        here.close()
        reader.join(30)
        there.close()
    return b"".join(got)


def test_upload_pieces_send_the_same_bytes_as_the_stream(tmp_path: Path) -> None:
    """File contents go with sendfile, headers and padding as bytes: the same tar either way."""
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "empty").write_bytes(b"")
    entries = uploads.plan([str(tmp_path / "big.bin"), str(tmp_path / "dir")])
    sent: list[int] = []
    data = _sent_over_a_socket(uploads.tar_pieces(entries), sent.append)
    assert data == b"".join(uploads.tar_stream(entries))
    assert len(data) == uploads.tar_size(entries)
    assert sum(sent) == uploads.total_bytes(entries)


def test_a_file_that_shrinks_while_sent_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    span = uploads.FileSpan(tmp_path / "f", 5000)  # planned at 5000 bytes, now 1000
    with pytest.raises(InputError, match="the file shrank while it was being sent"):
        _sent_over_a_socket([b"head", span])


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["nope.tar"], "--file nope.tar: no such file or directory"),
        (["a/x", "b/x"], "another --file is also named 'x'"),
    ],
)
def test_upload_plan_refuses(tmp_path: Path, paths: list[str], message: str) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x").write_text("1")
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        uploads.plan([str(tmp_path / p) if "/" in p else p for p in paths])


# -- the store -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return new_store(tmp_path / "hgrun.db", clock=lambda: 1000.0)


def test_store_migrates_to_the_latest_version(tmp_path: Path) -> None:
    from hgrun.store.schema import MIGRATIONS

    assert Store(tmp_path / "a.db").schema_version == len(MIGRATIONS)
    assert Store(tmp_path / "a.db").schema_version == len(MIGRATIONS)  # idempotent


def test_store_keeps_only_token_hashes(store: Store, tmp_path: Path) -> None:
    secret = new_token()
    store.add_token("default", "ci", secret, Scope.RUN)
    raw = (tmp_path / "hgrun.db").read_bytes()
    assert secret.encode() not in raw
    found = store.token_by_hash(hash_token(secret))
    assert found is not None and found[0].name == "ci"
    with pytest.raises(ConflictError):
        store.add_token("default", "ci", new_token(), Scope.RUN)


def test_authenticate(store: Store) -> None:
    secret = new_token()
    store.add_token("default", "ci", secret, Scope.TRIGGER)
    principal = authenticate(store, {"authorization": f"Bearer {secret}"})
    assert principal.name == "ci" and principal.may_trigger(3)
    assert not principal.may_read_run(None)
    from hgrun.errors import AuthError, ForbiddenError

    with pytest.raises(ForbiddenError):
        principal.require("read")
    with pytest.raises(AuthError):
        authenticate(store, {})
    with pytest.raises(AuthError):
        authenticate(store, {"authorization": "Bearer nope"})
    with pytest.raises(ForbiddenError):
        authenticate(store, {"authorization": f"Bearer {secret}", "x-workspace-id": "other"})
    store.revoke_token("default", "ci")
    with pytest.raises(AuthError):
        authenticate(store, {"authorization": f"Bearer {secret}"})


def test_one_run_per_script_slot(store: Store) -> None:
    app, release = app_with_release(store)
    store.sync_scripts("default", app.id, [Script(name="s", command="true", cron="* * * * *")])
    (script,) = store.scripts()
    new_run(store, app, release, script_id=script.id, slot="2026-01-01T00:00:00Z")
    with pytest.raises(ConflictError):
        new_run(store, app, release, script_id=script.id, slot="2026-01-01T00:00:00Z")
    # Another slot, or no slot, is fine.
    new_run(store, app, release, script_id=script.id, slot="2026-01-01T00:01:00Z")
    new_run(store, app, release, script_id=script.id, slot=None)


def test_sync_scripts_keeps_ids_and_resets_a_changed_schedule(store: Store) -> None:
    app_id = app_with_release(store)[0].id
    store.sync_scripts("default", app_id, [Script(name="s", command="a", cron="* * * * *")])
    (first,) = store.scripts()
    store.set_cursor(first.id, 500.0)
    store.sync_scripts("default", app_id, [Script(name="s", command="b", cron="* * * * *")])
    (same,) = store.scripts()
    assert same.id == first.id and same.cursor == 500.0 and same.spec.command == "b"
    store.sync_scripts("default", app_id, [Script(name="s", command="b", cron="0 * * * *")])
    assert store.scripts()[0].cursor is None
    store.sync_scripts("default", app_id, [])
    assert store.scripts() == []
    with pytest.raises(NotFoundError):
        store.script(first.id)


def test_prune_script_history_keeps_the_newest(store: Store) -> None:
    app, release = app_with_release(store)
    app_id = app.id
    store.sync_scripts("default", app_id, [Script(name="s", command="true")])
    (script,) = store.scripts()
    ids = []
    for _ in range(6):
        run = new_run(store, app, release, script_id=script.id)
        store.append_output(run.id, app_id, [(1, 1.0, b"out\n")])
        store.mark_starting(run.id)
        store.mark_running(run.id, started=1.0)
        store.record_outcome(run.id, Outcome(RunStatus.SUCCEEDED, 0), finished=2.0)
        ids.append(run.id)
    assert store.prune_script_history(script.id, keep=3) == 3
    assert [r.id for r in store.script_runs(script.id)] == ids[:2:-1]
    assert store.output(run_id=ids[0]) == []
    assert store.output(run_id=ids[-1])[0].data == b"out\n"


# -- the audit log -------------------------------------------------------------------------


def test_audit_log_is_encrypted_and_detects_tampering(tmp_path: Path) -> None:
    key = load_key(tmp_path, {})
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
    log = AuditLog(tmp_path / "audit.db", key)
    log.append("default", 1, "run.start", {"command": ["psql", "-c", "select secret"]})
    log.append("default", 1, "run.finish", {"stdout": "the-output-text"})
    log.append("default", 2, "run.start", {"command": ["true"]})
    log.close()
    raw = (tmp_path / "audit.db").read_bytes()
    assert b"select secret" not in raw and b"the-output-text" not in raw
    log = AuditLog(tmp_path / "audit.db", key)
    records = log.read("default")
    assert [r.problem for r in records] == [None, None, None]
    assert records[0].payload == {"command": ["psql", "-c", "select secret"]}
    assert [r.action for r in log.read("default", run_id=1)] == ["run.start", "run.finish"]
    assert log.read("other") == []
    log.close()

    db = sqlite3.connect(tmp_path / "audit.db")
    blob = bytearray(db.execute("SELECT payload FROM audit WHERE id = 2").fetchone()[0])
    blob[40] ^= 1
    db.execute("UPDATE audit SET payload = ? WHERE id = 2", (bytes(blob),))
    db.execute("UPDATE audit SET action = 'run.other' WHERE id = 1")
    db.commit()
    db.close()
    problems = [r.problem for r in AuditLog(tmp_path / "audit.db", key).read("default")]
    assert problems[0] is not None and "altered" in problems[0]
    assert problems[1] == "record was altered"
    assert problems[2] is not None and "before this one" in problems[2]


def test_audit_key_from_env_is_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a valid Fernet key"):
        load_key(tmp_path, {"HGRUN_AUDIT_KEY": "short"})


def test_supervisor_lease(store: Store) -> None:
    assert store.claim_lease("supervisor", "a", 15) is None
    assert store.claim_lease("supervisor", "a", 15) is None  # renewal
    assert store.claim_lease("supervisor", "b", 15) == "a"
    assert store.claim_lease("supervisor", "b", 15, holder_gone=lambda h: h == "a") is None
    assert store.claim_lease("supervisor", "a", 15) == "b"
    store.release_lease("supervisor", "b")
    assert store.claim_lease("supervisor", "a", 15) is None


def test_runs_info_says_when_output_was_dropped() -> None:
    from hgrun.cli import views

    run = {
        "label": "run.7",
        "app": "app",
        "command": ["sh", "-c", "yes"],
        "process_type": None,
        "trigger": {"kind": "user", "name": "admin"},
        "status": "succeeded",
        "exit_code": 0,
        "oom": False,
        "size": "starter",
        "detached": True,
        "env_keys": [],
        "created": 0.0,
        "duration": 1.0,
        "error": None,
        "output": {"bytes": 100 * 1024**2, "dropped": 3 * 1024**3},
    }
    fields = dict(views.run_fields(run))
    assert fields["Output"] == "last 100.0 MB kept, 3072.0 MB before it dropped (server cap)"
    run["output"] = {"bytes": 10, "dropped": 0}
    assert "Output" not in dict(views.run_fields(run))
