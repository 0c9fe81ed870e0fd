"""The store's plumbing: one SQLite connection, transactions, migrations, meta and leases.

One connection, guarded by a lock, in WAL mode: calls are short. Every ``sqlite3`` error is
translated to :class:`hgrun.errors.StoreError` here (an integrity error to ``ConflictError``).
The concept modules (``tokens``, ``apps``, ``runs``, ``scripts``, ``output``) build on this
class; :class:`hgrun.store.Store` composes them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hgrun import lifecycle
from hgrun.errors import ConflictError, StoreError
from hgrun.models import Release, RunStatus
from hgrun.store.keys import SEALED, Sealer
from hgrun.store.schema import MIGRATIONS

# The active statuses as an SQL list, written once from hgrun.lifecycle. In the order of the
# enum (queued, starting, running), which is the text of the partial index ``runs_active``:
# SQLite uses a partial index only when the query's WHERE term matches it.
ACTIVE_SQL = ", ".join(f"'{status.value}'" for status in RunStatus if status in lifecycle.ACTIVE)


class StoreBase:
    """The connection and its helpers; no table of its own but ``meta``."""

    def __init__(
        self,
        path: Path | str,
        clock: Callable[[], float] = time.time,
        *,
        max_output: int | None = 100 * 1024 * 1024,
        sealer: Sealer | None = None,
    ) -> None:
        """Open (and migrate) the store at ``path``. ``max_output``: the bytes of output kept per
        run, newest first (None: no cap; see ``store.output``). ``sealer``: encrypts config values
        and env snapshots at rest (the server always passes one; without it, for unit tests, they
        are written in clear); rows written in clear before are sealed on open."""
        if max_output is not None and max_output <= 0:
            raise ValueError("max_output must be positive")
        self.max_output = max_output
        self._sealer = sealer
        self._clock = clock
        self._lock = threading.RLock()
        # Releases never change: each is decoded once and kept (see AppStore.release).
        self._releases: dict[int, Release] = {}
        self.on_run_ended: list[Callable[[Any], None]] = []  # see RunStore
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            # A secret replaced in place (sealed by the migration, re-sealed by a rotation) must
            # not linger in a freed slot of a page: SQLite then zeroes what it frees.
            self._db.execute("PRAGMA secure_delete=ON")
            self._migrate()
            if sealer is not None:
                self.reseal(rotate=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``BEGIN IMMEDIATE`` takes SQLite's write lock at once, so a
        read-check-write inside it is atomic against other connections and processes too."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                raise ConflictError(f"conflicting change: {e}") from e
            except sqlite3.Error as e:
                raise StoreError(f"store error: {e}") from e

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"store error: {e}") from e

    def _one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _seal(self, text: str) -> str:
        return self._sealer.seal(text) if self._sealer is not None else text

    def _unseal(self, value: str) -> str:
        if self._sealer is None:
            if value.startswith(SEALED):
                raise StoreError("the store holds encrypted secrets: open it with its key")
            return value
        return self._sealer.open(value)

    def _sealed_columns(self) -> list[tuple[str, str]]:
        """(table, column) of every secret at rest; each concept module adds its own."""
        return []

    def reseal(self, *, rotate: bool) -> int:
        """Seal every secret still in clear (the start-up migration: rows written before the
        store encrypted anything); with ``rotate``, re-encrypt every one under the sealer's first
        key. Then the WAL is checkpointed and truncated, so no clear copy stays in it. Returns
        the rows rewritten."""
        if self._sealer is None:
            raise StoreError("the store has no key to seal with")
        changed = 0
        with self._tx() as db:
            for table, column in self._sealed_columns():
                where = "" if rotate else f" WHERE {column} NOT LIKE '{SEALED}%'"
                for rowid, value in db.execute(f"SELECT rowid, {column} FROM {table}{where}"):
                    db.execute(
                        f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                        (self._seal(self._unseal(value)), rowid),
                    )
                    changed += 1
        if changed:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return changed

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    def meta(self, key: str, default: Callable[[], str]) -> str:
        """The value stored under ``key``; on first use, ``default()`` is stored and returned."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row:
                return str(row[0])
            value = default()
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    def claim_lease(
        self,
        name: str,
        owner: str,
        ttl: float,
        holder_gone: Callable[[str], bool] = lambda _holder: False,
    ) -> str | None:
        """Take or renew the lease ``name`` for ``owner``; None if taken, else who holds it.

        Returns the holder's id when another owner holds an unexpired lease that
        ``holder_gone(holder)`` does not declare dead; otherwise the caller now holds the lease
        for ``ttl`` seconds and None is returned.
        """
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (f"lease:{name}",)).fetchone()
            if row:
                holder, _, expires = str(row[0]).rpartition(" ")
                if holder != owner and float(expires) > now and not holder_gone(holder):
                    return holder
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"lease:{name}", f"{owner} {now + ttl}"),
            )
        return None

    def release_lease(self, name: str, owner: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM meta WHERE key = ? AND value LIKE ?",
                (f"lease:{name}", f"{owner} %"),
            )
