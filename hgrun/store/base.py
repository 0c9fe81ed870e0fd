"""The store's plumbing: the database (see ``hgrun.store.database``), meta and leases.

The concept modules (``tokens``, ``apps``, ``runs``, ``scripts``, ``output``) build on this
class; :class:`hgrun.store.Store` composes them. They write SQL once for both dialects, through
``_tx`` (one write transaction) and ``_query`` (one read); every driver error comes out of
them as :class:`hgrun.errors.StoreError` (an integrity error as ``ConflictError``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hgrun import lifecycle
from hgrun.errors import StoreError
from hgrun.models import Release, RunStatus
from hgrun.store.database import Connection, open_database
from hgrun.store.keys import SEALED, Sealer
from hgrun.store.schema import MIGRATIONS

# The active statuses as an SQL list, written once from hgrun.lifecycle. In the order of the
# enum (queued, starting, running), which is the text of the partial index ``runs_active``:
# SQLite uses a partial index only when the query's WHERE term matches it.
KEY_CHECK = "sealed-check"  # a meta row sealed with the store's key (see StoreBase)
ALL_SEALED = "all-sealed"  # a meta row: no secret in clear is left (see StoreBase.__init__)

ACTIVE_SQL = ", ".join(f"'{status.value}'" for status in RunStatus if status in lifecycle.ACTIVE)


def run_lease(run_id: int) -> str:
    """The name of the lease held by the server that supervises run ``run_id``."""
    return f"run:{run_id}"


class StoreBase:
    """The database and its helpers; no table of its own but ``meta``."""

    def __init__(
        self,
        target: Path | str,
        clock: Callable[[], float] = time.time,
        *,
        max_output: int | None = 100 * 1024 * 1024,
        sealer: Sealer | None = None,
    ) -> None:
        """Open (and migrate) the store at ``target``: a SQLite file's path, or a
        ``postgresql://`` URL. ``max_output``: the bytes of output kept per run, newest first
        (None: no cap; see ``store.output``). ``sealer``: encrypts config values and env
        snapshots at rest (the server always passes one; without it, for unit tests, they are
        written in clear); rows written in clear before are sealed on open. A store that cannot
        be opened, or whose schema is newer than this hgrun, is a StoreError."""
        if max_output is not None and max_output <= 0:
            raise ValueError("max_output must be positive")
        self.max_output = max_output
        self._sealer = sealer
        self._clock = clock
        self._lock = threading.RLock()
        # Releases never change: each is decoded once and kept (see AppStore.release).
        self._releases: dict[int, Release] = {}
        self.on_run_ended: list[Callable[[Any], None]] = []  # see RunStore
        self._db = open_database(target)
        try:
            self._db.migrate(MIGRATIONS)
            if sealer is not None:
                # Secrets in clear come only from before the store encrypted, or from an open
                # without a key (unit tests), which drops the mark: the scan, which reads every
                # run, is made once, not at every start.
                if not self._has_meta(ALL_SEALED):
                    self.reseal(rotate=False)
                    self.meta(ALL_SEALED, lambda: "1")
                # A store shared by several servers (PostgreSQL) is opened with each one's key:
                # a wrong key fails here, at start, not at the first secret a request reads.
                self._unseal(self.meta(KEY_CHECK, lambda: self._seal(KEY_CHECK)))
            else:
                with self._tx() as db:
                    db.execute("DELETE FROM meta WHERE key = ?", (ALL_SEALED,))
        except BaseException:
            self._db.close()
            raise

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    @property
    def location(self) -> str:
        """Where the store is: the SQLite file, or the PostgreSQL URL without its password."""
        return self._db.where

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction: a read-check-write inside it is atomic against other
        connections and processes where its rows are read ``FOR UPDATE`` (``self._db.
        for_update``, empty on SQLite, whose write transactions are serial) or a name is
        locked (``self._db.lock``)."""
        with self._db.tx() as db:
            yield db

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._db.query(sql, args)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    def _seal(self, text: str) -> str:
        return self._sealer.seal(text) if self._sealer is not None else text

    def _unseal(self, value: str) -> str:
        if self._sealer is None:
            if value.startswith(SEALED):
                raise StoreError("the store holds encrypted secrets: open it with its key")
            return value
        return self._sealer.open(value)

    def _sealed_columns(self) -> list[tuple[str, str, str]]:
        """(table, key columns, column) of every secret at rest; each concept module adds its
        own."""
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
            for table, keys, column in self._sealed_columns():
                where = "" if rotate else f" WHERE {column} NOT LIKE '{SEALED}%'"
                match = " AND ".join(f"{key} = ?" for key in keys.split(", "))
                rows = db.execute(f"SELECT {keys}, {column} FROM {table}{where}").fetchall()
                for *key, value in rows:
                    db.execute(
                        f"UPDATE {table} SET {column} = ? WHERE {match}",
                        (self._seal(self._unseal(value)), *key),
                    )
                    changed += 1
            if rotate:
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = ?", (self._seal(KEY_CHECK), KEY_CHECK)
                )
        if changed:
            self._db.after_reseal()
        return changed

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    def _has_meta(self, key: str) -> bool:
        with self._tx() as db:
            return db.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is not None

    def meta(self, key: str, default: Callable[[], str]) -> str:
        """The value stored under ``key``; on first use, ``default()`` is stored and returned."""
        with self._tx() as db:
            self._db.lock(db, f"meta:{key}")
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
            # The row may not exist yet: a lock on its name makes the check and the write one
            # step against other servers on one PostgreSQL.
            self._db.lock(db, f"lease:{name}")
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
