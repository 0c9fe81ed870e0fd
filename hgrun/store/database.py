"""The store's one dialect seam: SQLite (the embedded default) or PostgreSQL (several servers).

The concept modules write one SQL text for both: ``?`` placeholders, ``ON CONFLICT`` upserts,
``RETURNING id``, partial indexes, ``length()`` of a blob, and the migrations of
:mod:`hgrun.store.schema` written with the types INTEGER, REAL, TEXT and BLOB only. What really
differs is here, behind :class:`Database`:

- connections: one SQLite connection behind a lock, or a pool of PostgreSQL connections;
- transactions: SQLite's ``BEGIN IMMEDIATE`` takes the one write lock, so a read-check-write is
  atomic by itself; PostgreSQL (READ COMMITTED) needs the row read ``FOR UPDATE``
  (:attr:`Database.for_update`) or a transaction-scoped lock on a name (:meth:`Database.lock`)
  where the row may not exist yet;
- the schema version (``PRAGMA user_version``, or a one-row table) and the DDL's types;
- each driver's exceptions, translated here to :class:`~hgrun.errors.StoreError` (an integrity
  error to :class:`~hgrun.errors.ConflictError`).

A store whose schema is newer than this hgrun is refused at open, with one line.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from hgrun.errors import ConflictError, StoreError, StoreFullError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# SQLite's WAL is copied back into the database by a thread of the store's own (see
# SqliteDatabase), after this many commits or this many seconds with one, whichever first.
CHECKPOINT_COMMITS = 200
CHECKPOINT_SECONDS = 1.0

log = logging.getLogger("hgrun.store")


class Connection(Protocol):
    """What a transaction gives the concept modules: sqlite3's ``execute`` and
    ``executemany`` (placeholders ``?``); the cursor has ``fetchone``, ``fetchall``,
    ``rowcount`` and iterates rows. A row is read by index or by column name."""

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


def is_postgres(target: Path | str) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def store_error(e: sqlite3.Error, what: str) -> StoreError:
    """An SQLite error as the store's: a full disk (SQLITE_FULL) says so, with what to do."""
    if getattr(e, "sqlite_errorname", "") == "SQLITE_FULL":
        return StoreFullError(
            f"{what}: the disk of the data directory is full",
            "free space on the disk of the server's --data-dir; nothing is recorded until then",
        )
    return StoreError(f"{what}: {e}")


def newer_schema(found: int, known: int, where: str) -> StoreError:
    return StoreError(
        f"the store {where} has schema version {found}, newer than this hgrun knows ({known})",
        "upgrade hgrun on this server to the version that wrote it",
    )


class Database:
    """One store's connection(s). ``tx()`` is one write transaction; ``query()`` one read."""

    kind: str
    for_update: str = ""  # appended to a SELECT whose rows the transaction will rewrite
    where: str  # the store's address for messages (never a password)

    def tx(self, what: str = "store error") -> contextlib.AbstractContextManager[Connection]:
        """One write transaction; a driver error comes out as a StoreError saying ``what``."""
        raise NotImplementedError

    def snapshot(self, what: str = "store error") -> contextlib.AbstractContextManager[Connection]:
        """One read-only transaction over a consistent snapshot, on a connection of its own:
        a long read (the audit log's verification) neither sees writes made meanwhile nor
        holds them up. Read big tables in batches (``WHERE id > ? ORDER BY id LIMIT ?``): a
        PostgreSQL cursor holds its whole result in memory."""
        raise NotImplementedError

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def lock(self, db: Connection, name: str) -> None:
        """Serialize the rest of transaction ``db`` with every other transaction locking
        ``name`` (until commit). A no-op on SQLite, whose write transactions are serial."""

    def migrate(self, migrations: Sequence[str], *, versions: str = "hgrun_schema") -> None:
        """Run the migrations this database has not had. ``versions``: on PostgreSQL, the
        one-row table that holds the version of this list of migrations (the store's, or the
        audit log's of its own); SQLite keeps it in the file (``PRAGMA user_version``), and the
        audit log is a file of its own there."""
        raise NotImplementedError

    @property
    def schema_version(self) -> int:
        raise NotImplementedError

    def after_reseal(self) -> None:
        """Secrets were rewritten in place: leave no clear copy in a log (SQLite's WAL)."""

    def close(self) -> None:
        raise NotImplementedError


class _Checkpointer:
    """One thread of the process that checkpoints the WAL of every SQLite store opened here
    (see :class:`SqliteDatabase`), each on a short-lived connection of its own."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: dict[SqliteDatabase, float] = {}  # database -> when to checkpoint it
        self._thread: threading.Thread | None = None

    def committed(self, database: SqliteDatabase, commits: int) -> None:
        """``database`` committed; ``commits`` since its last checkpoint."""
        now = time.monotonic()
        with self._wake:
            at = self._due.setdefault(database, now + CHECKPOINT_SECONDS)
            if commits >= CHECKPOINT_COMMITS and at > now:
                self._due[database] = now
            elif commits > 1:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hgrun-store-checkpoint", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def forget(self, database: SqliteDatabase) -> None:
        with self._wake:
            self._due.pop(database, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due:
                    self._wake.wait()
                database, at = min(self._due.items(), key=lambda item: item[1])
                wait = at - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                del self._due[database]
            database.checkpoint()


class SqliteDatabase(Database):
    """One connection, guarded by a lock, in WAL mode: calls are short.

    The WAL is copied back into the database (a checkpoint, with its fsync) by a thread, never
    by a commit: SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 pages,
    which is on the server's event loop (every ~90 triggers of a storm, one commit took
    milliseconds more). The thread checkpoints PASSIVE (it neither waits for nor blocks the
    writer) ``CHECKPOINT_SECONDS`` after a commit, or at once after ``CHECKPOINT_COMMITS``, so
    the WAL stays small; closing the last connection checkpoints what is left.

    ``synchronous``: SQLite's, NORMAL for the store; the audit log keeps FULL, as its file
    always had.
    """

    kind = "sqlite"

    def __init__(self, path: Path | str, *, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.where = str(path)
        self._lock = threading.RLock()
        self._commits = 0  # since the last checkpoint
        self._wal = False
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            # A secret replaced in place (sealed by the migration, re-sealed by a rotation) must
            # not linger in a freed slot of a page: SQLite then zeroes what it frees.
            self._db.execute("PRAGMA secure_delete=ON")
            # An in-memory database has no WAL: it keeps its own journal and nothing to copy.
            self._wal = str(self._db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
            if self._wal:
                self._db.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {path}: {e}") from e

    def checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database, PASSIVE, on a connection of its
        own (called from the checkpoint thread: the store's connection stays free)."""
        self._commits = 0
        try:
            db = sqlite3.connect(
                f"file:{urllib.parse.quote(self.where)}?mode=rw", uri=True, timeout=5
            )
        except sqlite3.Error as e:  # the file went (a test's temp dir): nothing to copy
            log.debug("store %s: no checkpoint: %s", self.where, e)
            return
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            log.warning("store %s: checkpoint failed: %s", self.where, e)
        finally:
            db.close()

    @contextlib.contextmanager
    def tx(self, what: str = "store error") -> Iterator[Connection]:
        """``BEGIN IMMEDIATE`` takes SQLite's write lock at once, so a read-check-write inside
        it is atomic against other connections and processes too."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                    if self._wal:
                        self._commits += 1
                        _CHECKPOINTS.committed(self, self._commits)
                except BaseException:
                    # A failed COMMIT (a full disk) leaves the transaction open, or SQLite has
                    # already rolled it back: either way the next BEGIN must find none.
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as e:
                raise ConflictError(f"conflicting change: {e}") from e
            except sqlite3.Error as e:
                raise store_error(e, what) from e

    @contextlib.contextmanager
    def snapshot(self, what: str = "store error") -> Iterator[Connection]:
        """A connection of its own in one read transaction: WAL gives it a consistent
        snapshot from its first read, and writers are not held up meanwhile."""
        try:
            db = sqlite3.connect(self.where, isolation_level=None)
            try:
                db.execute("BEGIN")
                yield db
                db.execute("COMMIT")
            finally:
                db.close()
        except sqlite3.Error as e:
            raise store_error(e, what) from e

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise store_error(e, "store error") from e

    def migrate(self, migrations: Sequence[str], *, versions: str = "hgrun_schema") -> None:
        try:
            with self._lock:
                version = self.schema_version
                if version > len(migrations):
                    raise newer_schema(version, len(migrations), self.where)
                for number, script in enumerate(migrations[version:], start=version + 1):
                    with self.tx() as db:
                        for statement in script.split(";"):
                            if statement.strip():
                                db.execute(statement)
                        db.execute(f"PRAGMA user_version = {number}")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.where}: {e}") from e

    @property
    def schema_version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    def after_reseal(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        _CHECKPOINTS.forget(self)
        with self._lock:
            self._db.close()


_CHECKPOINTS = _Checkpointer()


def open_database(target: Path | str, *, pool_size: int = 8) -> Database:
    """The database at ``target``: a ``postgresql://`` URL, else a SQLite file's path."""
    if is_postgres(target):
        from hgrun.store.postgres import PostgresDatabase

        return PostgresDatabase(str(target), pool_size=pool_size)
    return SqliteDatabase(target)
