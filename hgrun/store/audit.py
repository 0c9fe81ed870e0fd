"""The audit log: its own SQLite file, where every payload is encrypted and chained.

Each record holds an id, a time, the workspace, the run id and the action in clear (to filter
on), and a Fernet token (AES-128-CBC + HMAC-SHA256, from ``cryptography``) of the JSON payload:
actor, command, env keys, input and output. Inside the token, ``sealed`` repeats the id, the
time, the workspace, the run and the action (so changing a clear column is detected), and
``prev`` is the SHA-256 of the previous record's ciphertext (so a deleted or reordered record
breaks the chain). The chain alone cannot see its newest records deleted: a sealed *head*
(the last id and the SHA-256 of its ciphertext, itself a Fernet token) is kept outside the chain,
in the ``head`` table, rewritten with every record. Every read verifies the whole chain and the
head, whatever page it returns. The key never enters this file (see ``hgrun.store.keys``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from hgrun.errors import StoreError
from hgrun.store.database import store_error
from hgrun.store.keys import KEY_ENV, load_key

__all__ = ["KEY_ENV", "AuditLog", "AuditPage", "AuditProblem", "AuditRecord", "load_key"]

BATCH = 1000  # rows fetched at a time while verifying: memory stays flat whatever the log's size
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
        path: Path | str,
        key: bytes,
        clock: Callable[[], float] = time.time,
        *,
        old_keys: Sequence[bytes] = (),
    ) -> None:
        """Open the log at ``path``: ``key`` encrypts, ``old_keys`` still decrypt (a rotation)."""
        self._path = str(path)
        self._fernet = MultiFernet([Fernet(k) for k in (key, *old_keys)])
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, ts REAL NOT NULL,"
                " workspace TEXT NOT NULL, run_id INTEGER, action TEXT NOT NULL,"
                " payload BLOB NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS audit_by_run ON audit (run_id, id)")
            if self._db.execute("PRAGMA user_version").fetchone()[0] < 1:
                # Version 1 seals a head. A log from before has none: its current tail is taken
                # as the head, once (what was deleted before the upgrade cannot be told now).
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS head (one INTEGER PRIMARY KEY CHECK (one = 1),"
                    " token BLOB NOT NULL)"
                )
                tail = self._db.execute(
                    "SELECT id, payload FROM audit ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if tail:
                    self._write_head(tail[0], _digest(bytes(tail[1])))
                self._db.execute("PRAGMA user_version = 1")
                self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the audit log {path}: {e}") from e

    # -- writing ------------------------------------------------------------------------------

    def _write_head(self, seq: int, digest: str) -> None:
        token = self._fernet.encrypt(json.dumps({"seq": seq, "digest": digest}).encode())
        self._db.execute(
            "INSERT INTO head (one, token) VALUES (1, ?)"
            " ON CONFLICT (one) DO UPDATE SET token = excluded.token",
            (token,),
        )

    def _head(self, db: sqlite3.Connection) -> tuple[int, str] | None:
        """The sealed head (last id, digest); None when there is none; StoreError if altered."""
        row = db.execute("SELECT token FROM head WHERE one = 1").fetchone()
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
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                tail = self._db.execute(
                    "SELECT id, payload FROM audit ORDER BY id DESC LIMIT 1"
                ).fetchone()
                tail_id, prev = (tail[0], _digest(bytes(tail[1]))) if tail else (0, "")
                try:
                    head = self._head(self._db)
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
                self._db.execute(
                    "INSERT INTO audit (id, ts, workspace, run_id, action, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (new_id, ts, workspace, run_id, action, token),
                )
                self._write_head(new_id, _digest(token))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL)
                    self._db.execute("ROLLBACK")
                raise store_error(e, "cannot write the audit log") from e

    # -- reading and verifying --------------------------------------------------------------

    def _rows(self, db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
        cursor = db.execute(
            "SELECT id, ts, workspace, run_id, action, payload FROM audit ORDER BY id"
        )
        while batch := cursor.fetchmany(BATCH):
            yield from batch

    def _verify(self, db: sqlite3.Connection) -> Iterator[tuple[AuditRecord, bytes]]:
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
                yield AuditRecord(id_, ts, ws, rid, action, None, ALTERED), cipher
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
            yield AuditRecord(id_, ts, ws, rid, action, payload, problem), cipher
        try:
            head = self._head(db)
        except StoreError as e:
            yield AuditRecord(last_id, 0.0, "", None, "head", None, str(e)), b""
            return
        if head is None:
            if last_id:
                problem = "the log's sealed head is missing: its newest records may be deleted"
                yield AuditRecord(last_id, 0.0, "", None, "head", None, problem), b""
            return
        seq, digest = head
        if seq > last_id:
            gone = f"#{seq}" if seq == last_id + 1 else f"#{last_id + 1} to #{seq}"
            problem = f"the newest record(s) {gone} were deleted"
            yield AuditRecord(seq, 0.0, "", None, "head", None, problem), b""
        elif seq < last_id:
            problem = f"records after #{seq} were added outside hgrun"
            yield AuditRecord(last_id, 0.0, "", None, "head", None, problem), b""
        elif prev_cipher is not None and _digest(prev_cipher) != digest:
            problem = "the newest record was replaced"
            yield AuditRecord(seq, 0.0, "", None, "head", None, problem), b""

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
        one for the whole server."""
        kept: collections.deque[AuditRecord] = collections.deque(maxlen=limit + 1)
        problems: list[AuditProblem] = []
        checked = 0
        try:
            # A connection of its own, in one read transaction: a consistent snapshot (WAL),
            # and appends are not held up while a long log is verified.
            db = sqlite3.connect(self._path, isolation_level=None)
            try:
                db.execute("BEGIN")
                for record, _cipher in self._verify(db):
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
                db.execute("COMMIT")
            finally:
                db.close()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the audit log: {e}") from e
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
        """Re-encrypt every record, and re-chain it, under the first key; the log must verify
        first (a rotation must not launder a tampered log). Returns the records rewritten."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    records = list(self._verify(self._db))
                    bad = [r for r, _ in records if r.problem]
                    if bad:
                        raise StoreError(
                            f"the audit log fails verification at #{bad[0].id} ({bad[0].problem}):"
                            " the key is not rotated",
                            "see `hgrun audit`",
                        )
                    prev = ""
                    last = 0
                    for record, cipher in records:
                        body = json.loads(self._fernet.decrypt(cipher))
                        body["prev"] = prev
                        token = self._fernet.encrypt(json.dumps(body, default=str).encode())
                        self._db.execute(
                            "UPDATE audit SET payload = ? WHERE id = ?", (token, record.id)
                        )
                        prev, last = _digest(token), record.id
                    if last:
                        self._write_head(last, prev)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreError(f"cannot rotate the audit log's key: {e}") from e
            return len(records)

    def close(self) -> None:
        with self._lock:
            self._db.close()
