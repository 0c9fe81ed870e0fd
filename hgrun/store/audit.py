"""The audit log: its own SQLite file, where every payload is encrypted.

Each record holds an id, a time, the workspace, the run id and the action in clear (to filter
on), and a Fernet token (AES-128-CBC + HMAC-SHA256, from ``cryptography``) of the JSON payload:
actor, command, env keys, input and output. The payload also carries the SHA-256 of the previous
record's ciphertext, so a changed record fails its HMAC and a deleted or reordered one breaks
the chain; both are reported when the log is read. The key never enters this file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from hgrun.errors import InputError, StoreError

KEY_ENV = "HGRUN_AUDIT_KEY"


def load_key(data_dir: Path, environ: Mapping[str, str]) -> bytes:
    """The audit key: ``HGRUN_AUDIT_KEY``, else ``<data_dir>/audit.key`` (made 0600 if absent)."""
    if environ.get(KEY_ENV):
        key = environ[KEY_ENV].encode()
    else:
        path = data_dir / "audit.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as e:
        raise InputError(
            f"the audit key is not a valid Fernet key ({e})",
            f"set {KEY_ENV} to 32 url-safe base64-encoded bytes, or remove audit.key",
        ) from e
    return key


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: float
    workspace: str
    run_id: int | None
    action: str
    payload: dict[str, Any] | None  # None when the record cannot be trusted
    problem: str | None = None


class AuditLog:
    def __init__(
        self, path: Path | str, key: bytes, clock: Callable[[], float] = time.time
    ) -> None:
        self._fernet = Fernet(key)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, ts REAL NOT NULL,"
                " workspace TEXT NOT NULL, run_id INTEGER, action TEXT NOT NULL,"
                " payload BLOB NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS audit_by_run ON audit (run_id, id)")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the audit log {path}: {e}") from e

    def append(
        self, workspace: str, run_id: int | None, action: str, payload: Mapping[str, Any]
    ) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT payload FROM audit ORDER BY id DESC LIMIT 1"
                ).fetchone()
                prev = hashlib.sha256(row[0]).hexdigest() if row else ""
                # The clear columns are repeated inside, so changing them is detected too.
                sealed = {"workspace": workspace, "run_id": run_id, "action": action}
                body = json.dumps({**payload, "prev": prev, "sealed": sealed}, default=str)
                token = self._fernet.encrypt(body.encode())
                self._db.execute(
                    "INSERT INTO audit (ts, workspace, run_id, action, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (self._clock(), workspace, run_id, action, token),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK")
                raise StoreError(f"cannot write the audit log: {e}") from e

    def read(
        self, workspace: str, run_id: int | None = None, limit: int = 200
    ) -> list[AuditRecord]:
        """Records oldest first, decrypted and checked against the chain."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, workspace, run_id, action, payload FROM audit ORDER BY id"
            ).fetchall()
        out: list[AuditRecord] = []
        prev_cipher: bytes | None = None
        for id_, ts, ws, rid, action, cipher in rows:
            expected = hashlib.sha256(prev_cipher).hexdigest() if prev_cipher is not None else ""
            prev_cipher = bytes(cipher)
            if ws != workspace or (run_id is not None and rid != run_id):
                continue
            try:
                payload = json.loads(self._fernet.decrypt(bytes(cipher)))
            except (InvalidToken, ValueError):
                out.append(AuditRecord(id_, ts, ws, rid, action, None, "record was altered"))
                continue
            problem = None
            sealed = payload.pop("sealed", None)
            if sealed != {"workspace": ws, "run_id": rid, "action": action}:
                problem = "the record's workspace, run or action was altered"
            elif payload.pop("prev", None) != expected:
                problem = "the record before this one was changed, deleted or reordered"
            out.append(AuditRecord(id_, ts, ws, rid, action, payload, problem))
        return out[-limit:]

    def close(self) -> None:
        with self._lock:
            self._db.close()
