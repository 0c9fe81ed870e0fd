"""The audit log, where every payload is encrypted and chained: its own SQLite file
(``audit.db`` in the server's data dir) with the SQLite store, or tables of its own in the
PostgreSQL store, one log for every server on it.

Each record holds an id, a time, the workspace, the run id and the action in clear (to filter
on), and a Fernet token (AES-128-CBC + HMAC-SHA256, from ``cryptography``) of the JSON payload:
actor, command, env keys, input and output. Inside the token, ``sealed`` repeats the id, the
time, the workspace, the run and the action (so changing a clear column is detected), and
``prev`` is the SHA-256 of the previous record's ciphertext (so a deleted or reordered record
breaks the chain). The chain alone cannot see its newest records deleted: a sealed *head*
(the last id and the SHA-256 of its ciphertext, itself a Fernet token) is kept outside the chain,
in the head table, rewritten with every record. Every read verifies the whole chain and the
head, whatever page it returns. The key never enters the database (see ``hgrun.store.keys``).

The SQL is one text for both databases, run through the store's dialect seam
(:mod:`hgrun.store.database`): an append takes the chain's lock (SQLite's write lock; on
PostgreSQL a transaction-scoped advisory lock), so servers appending at once never fork the
chain; a read is one snapshot, read in batches by id.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from hgrun.errors import StoreError
from hgrun.store.database import (
    Connection,
    Database,
    SqliteDatabase,
    is_postgres,
    open_database,
)
from hgrun.store.keys import KEY_ENV, load_key

__all__ = ["KEY_ENV", "AuditLog", "AuditPage", "AuditProblem", "AuditRecord", "load_key"]

BATCH = 1000  # rows fetched at a time while verifying: memory stays flat whatever the log's size
CHAIN_LOCK = "hgrun:audit"  # PostgreSQL: the advisory lock every append and rekey takes
VERSIONS = "hgrun_audit_schema"  # PostgreSQL: the version of the audit log's own migrations
POOL_SIZE = 4  # PostgreSQL connections of one server's audit log


def migrations(head: str) -> list[str]:
    """The audit log's own versioned schema (never edit a shipped one; add the next), in the
    store's dialect-neutral DDL. ``head``: the head table's name (``head`` in audit.db, which
    has it since version 1; ``audit_head`` in the PostgreSQL store, beside its tables)."""
    return [
        # 1: the records and the sealed head. audit.db had ``audit`` before it had a version.
        f"""
        CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            workspace TEXT NOT NULL,
            run_id INTEGER,
            action TEXT NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE INDEX IF NOT EXISTS audit_by_run ON audit (run_id, id);
        CREATE TABLE IF NOT EXISTS {head} (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            token BLOB NOT NULL
        )
        """,
    ]


ALTERED = "record was altered"


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: float
    workspace: str
    run_id: int | None
    action: str
    payload: dict[str, Any] | None  # None when the record cannot be trusted
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class AuditProblem:
    """A record (or the head) that failed verification; ``id`` names the record."""

    id: int
    problem: str


@dataclasses.dataclass(frozen=True)
class AuditPage:
    """One page of records (oldest first) and every problem of the whole log.

    ``next`` is the ``before`` cursor of the page of older records, None when there is none;
    ``checked`` is how many records the verification read (all of them)."""

    records: list[AuditRecord]
    problems: list[AuditProblem]
    next: int | None
    checked: int


def _digest(cipher: bytes) -> str:
    return hashlib.sha256(cipher).hexdigest()


class AuditLog:
    def __init__(
        self,
        target: Path | str,
        key: bytes,
        clock: Callable[[], float] = time.time,
        *,
        old_keys: Sequence[bytes] = (),
    ) -> None:
        """Open the log at ``target``: an audit.db file's path, or the ``postgresql://`` URL of
        the store (the log's tables are made there at the first open). ``key`` encrypts,
        ``old_keys`` still decrypt (a rotation)."""
        self._fernet = MultiFernet([Fernet(k) for k in (key, *old_keys)])
        self._clock = clock
        if is_postgres(target):
            self._db: Database = open_database(target, pool_size=POOL_SIZE)
            self._head_table = "audit_head"
        else:
            self._db = SqliteDatabase(target, synchronous="FULL")
            self._head_table = "head"
        try:
            # An audit.db without a version is new, or from before sealed heads (never so on
            # PostgreSQL, where the log came later).
            unversioned = self._db.kind == "sqlite" and self._db.schema_version == 0
            self._db.migrate(migrations(self._head_table), versions=VERSIONS)
            if unversioned:
                self._seal_legacy_tail()
        except BaseException:
            self._db.close()
            raise

    @property
    def shared(self) -> bool:
        """True when the log is in the PostgreSQL store: one log for every server on it."""
        return self._db.kind != "sqlite"

    def _seal_legacy_tail(self) -> None:
        """An audit.db from before sealed heads has records and no head: its current tail is
        taken as the head, once (what was deleted before the upgrade cannot be told now)."""
        with self._db.tx("cannot open the audit log") as db:
            if db.execute(f"SELECT 1 FROM {self._head_table}").fetchone() is None:
                tail = db.execute(
                    "SELECT id, payload FROM audit ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if tail:
                    self._write_head(db, tail[0], _digest(bytes(tail[1])))

    # -- writing ------------------------------------------------------------------------------

    def _write_head(self, db: Connection, seq: int, digest: str) -> None:
        token = self._fernet.encrypt(json.dumps({"seq": seq, "digest": digest}).encode())
        db.execute(
            f"INSERT INTO {self._head_table} (one, token) VALUES (1, ?)"
            " ON CONFLICT (one) DO UPDATE SET token = excluded.token",
            (token,),
        )

    def _head(self, db: Connection) -> tuple[int, str] | None:
        """The sealed head (last id, digest); None when there is none; StoreError if altered."""
        row = db.execute(f"SELECT token FROM {self._head_table} WHERE one = 1").fetchone()
        if row is None:
            return None
        try:
            head = json.loads(self._fernet.decrypt(bytes(row[0])))
            return int(head["seq"]), str(head["digest"])
        except (InvalidToken, ValueError, KeyError, TypeError) as e:
            raise StoreError("the audit log's head was altered") from e

    def append(
        self, workspace: str, run_id: int | None, action: str, payload: Mapping[str, Any]
    ) -> None:
        """Add one record at the end of the chain. Safe from any thread, and from several
        servers on one PostgreSQL store: the chain's lock makes appends one after another."""
        with self._db.tx("cannot write the audit log") as db:
            self._db.lock(db, CHAIN_LOCK)
            tail = db.execute("SELECT id, payload FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            tail_id, prev = (int(tail[0]), _digest(bytes(tail[1]))) if tail else (0, "")
            try:
                head = self._head(db)
            except StoreError:
                head = None
            if head is not None:
                # Chain on the sealed head, not on what the table holds now: newest records
                # deleted behind hgrun's back then stay a visible break in the chain.
                prev = head[1]
            new_id = max(tail_id, head[0] if head else 0) + 1
            ts = self._clock()
            # The clear columns are repeated inside, so changing them is detected too.
            sealed = {
                "id": new_id,
                "ts": ts,
                "workspace": workspace,
                "run_id": run_id,
                "action": action,
            }
            body = json.dumps({**payload, "prev": prev, "sealed": sealed}, default=str)
            token = self._fernet.encrypt(body.encode())
            db.execute(
                "INSERT INTO audit (id, ts, workspace, run_id, action, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (new_id, ts, workspace, run_id, action, token),
            )
            self._write_head(db, new_id, _digest(token))

    # -- reading and verifying --------------------------------------------------------------

    def _rows(self, db: Connection) -> Iterator[tuple[Any, ...]]:
        """Every record, oldest first, ``BATCH`` at a time (by id: a PostgreSQL cursor would
        hold the whole result)."""
        columns = "SELECT id, ts, workspace, run_id, action, payload FROM audit"
        batch = db.execute(f"{columns} ORDER BY id LIMIT ?", (BATCH,)).fetchall()
        while batch:
            yield from batch
            after = batch[-1][0]
            batch = db.execute(
                f"{columns} WHERE id > ? ORDER BY id LIMIT ?", (after, BATCH)
            ).fetchall()

    def _verify(self, db: Connection) -> Iterator[AuditRecord]:
        """Every record, oldest first, decrypted and checked against the chain; then one
        pseudo-record (action ``head``) if the head does not match the newest record."""
        prev_cipher: bytes | None = None
        last_id = 0
        for id_, ts, ws, rid, action, raw in self._rows(db):
            cipher = bytes(raw)
            expected = _digest(prev_cipher) if prev_cipher is not None else ""
            prev_cipher, last_id = cipher, id_
            try:
                payload = json.loads(self._fernet.decrypt(cipher))
            except (InvalidToken, ValueError):
                yield AuditRecord(id_, ts, ws, rid, action, None, ALTERED)
                continue
            problem = None
            sealed = payload.pop("sealed", None) or {}
            clear = {"workspace": ws, "run_id": rid, "action": action}
            if "ts" in sealed:  # records from before sealed times carry none
                clear.update(id=id_, ts=ts)
            if sealed != clear:
                problem = "the record's id, time, workspace, run or action was altered"
            elif payload.pop("prev", None) != expected:
                problem = "the record before this one was changed, deleted or reordered"
            yield AuditRecord(id_, ts, ws, rid, action, payload, problem)
        try:
            head = self._head(db)
        except StoreError as e:
            yield AuditRecord(last_id, 0.0, "", None, "head", None, str(e))
            return
        if head is None:
            if last_id:
                problem = "the log's sealed head is missing: its newest records may be deleted"
                yield AuditRecord(last_id, 0.0, "", None, "head", None, problem)
            return
        seq, digest = head
        if seq > last_id:
            gone = f"#{seq}" if seq == last_id + 1 else f"#{last_id + 1} to #{seq}"
            problem = f"the newest record(s) {gone} were deleted"
            yield AuditRecord(seq, 0.0, "", None, "head", None, problem)
        elif seq < last_id:
            problem = f"records after #{seq} were added outside hgrun"
            yield AuditRecord(last_id, 0.0, "", None, "head", None, problem)
        elif prev_cipher is not None and _digest(prev_cipher) != digest:
            problem = "the newest record was replaced"
            yield AuditRecord(seq, 0.0, "", None, "head", None, problem)

    def page(
        self,
        workspace: str,
        run_id: int | None = None,
        limit: int = 200,
        before: int | None = None,
    ) -> AuditPage:
        """The newest ``limit`` records of ``workspace`` (of one run if given) older than
        ``before``, oldest first, and every problem of the whole log: verification reads every
        record, whatever the page (memory: one batch and one page). Blocking: call it from a
        worker thread. Problems name record ids only, whatever their workspace: the chain is
        one for the whole log (for every server on a PostgreSQL store)."""
        kept: collections.deque[AuditRecord] = collections.deque(maxlen=limit + 1)
        problems: list[AuditProblem] = []
        checked = 0
        # One snapshot: the log as it was at the first read, while appends go on.
        with self._db.snapshot("cannot read the audit log") as db:
            for record in self._verify(db):
                if record.problem:
                    problems.append(AuditProblem(record.id, record.problem))
                if record.action == "head":
                    continue
                checked += 1
                if record.workspace != workspace:
                    continue
                if run_id is not None and record.run_id != run_id:
                    continue
                if before is not None and record.id >= before:
                    continue
                kept.append(record)
        records = list(kept)
        more = len(records) > limit
        records = records[-limit:] if limit else []
        return AuditPage(records, problems, records[0].id if more and records else None, checked)

    def read(
        self, workspace: str, run_id: int | None = None, limit: int = 200
    ) -> list[AuditRecord]:
        """The newest ``limit`` records, oldest first, decrypted and checked against the chain
        (see :meth:`page` for the problems of records outside them)."""
        return self.page(workspace, run_id, limit).records

    # -- rotation ----------------------------------------------------------------------------

    def rekey(self) -> int:
        """Re-encrypt every record, and re-chain it, under the first key, in one transaction
        holding the chain's lock; the log must verify first (a rotation must not launder a
        tampered log). Both passes read in batches. Returns the records rewritten."""
        with self._db.tx("cannot rotate the audit log's key") as db:
            self._db.lock(db, CHAIN_LOCK)
            count = 0
            for record in self._verify(db):
                if record.problem:
                    raise StoreError(
                        f"the audit log fails verification at #{record.id} ({record.problem}):"
                        " the key is not rotated",
                        "see `hgrun audit`",
                    )
                count += 1
            prev = ""
            last = 0
            for id_, *_clear, raw in self._rows(db):
                body = json.loads(self._fernet.decrypt(bytes(raw)))
                body["prev"] = prev
                token = self._fernet.encrypt(json.dumps(body, default=str).encode())
                db.execute("UPDATE audit SET payload = ? WHERE id = ?", (token, id_))
                prev, last = _digest(token), id_
            if last:
                self._write_head(db, last, prev)
        # The tokens under the old key are freed pages now (zeroed: secure_delete); SQLite's
        # WAL still holds them until a checkpoint.
        self._db.after_reseal()
        return count

    def close(self) -> None:
        self._db.close()
