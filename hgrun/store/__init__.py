"""The store: SQLite in the data directory. Only here is SQL written and sqlite3 imported.

One connection, guarded by a lock, in WAL mode: calls are short and the server calls them from
its event loop. Every ``sqlite3`` error is translated to :class:`hgrun.errors.StoreError` here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hgrun.errors import ConflictError, NotFoundError, StoreError
from hgrun.models import (
    App,
    Release,
    Run,
    RunStatus,
    Scope,
    Script,
    ScriptRecord,
    Token,
    Trigger,
    TriggerKind,
    script_from_json,
    script_to_json,
)
from hgrun.store.schema import MIGRATIONS

ACTIVE = (RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so one round of SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._releases: dict[int, Release] = {}
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
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

    # -- workspaces and tokens --------------------------------------------------------------

    def ensure_workspace(self, workspace: str) -> bool:
        """Create the workspace if missing; True when it was created."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO workspaces (id, created) VALUES (?, ?)",
                (workspace, self._clock()),
            )
            return cur.rowcount == 1

    def workspace_exists(self, workspace: str) -> bool:
        return self._one("SELECT 1 FROM workspaces WHERE id = ?", (workspace,)) is not None

    def add_token(
        self, workspace: str, name: str, secret: str, scope: Scope, script: str | None = None
    ) -> Token:
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM tokens WHERE workspace = ? AND name = ?", (workspace, name)
            ).fetchone():
                raise ConflictError(
                    f"a token named {name!r} already exists", "pick another name or revoke it"
                )
            cur = db.execute(
                "INSERT INTO tokens (workspace, name, hash, scope, script, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (workspace, name, hash_token(secret), scope.value, script, self._clock()),
            )
            row = db.execute("SELECT * FROM tokens WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _token(row)

    def token_by_hash(self, digest: str) -> tuple[Token, str] | None:
        """The live token stored under ``digest``, with the stored digest."""
        row = self._one("SELECT * FROM tokens WHERE hash = ? AND revoked IS NULL", (digest,))
        return (_token(row), str(row["hash"])) if row else None

    def tokens(self, workspace: str) -> list[Token]:
        rows = self._query(
            "SELECT * FROM tokens WHERE workspace = ? AND revoked IS NULL ORDER BY id", (workspace,)
        )
        return [_token(r) for r in rows]

    def revoke_token(self, workspace: str, name: str) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked = ?"
                " WHERE workspace = ? AND name = ? AND revoked IS NULL",
                (self._clock(), workspace, name),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no token named {name!r}", "list them with `hgrun tokens`")

    # -- apps, config, releases -------------------------------------------------------------

    def create_app(self, workspace: str, name: str) -> App:
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM apps WHERE workspace = ? AND name = ?", (workspace, name)
            ).fetchone():
                raise ConflictError(f"app {name!r} already exists")
            cur = db.execute(
                "INSERT INTO apps (workspace, name, created) VALUES (?, ?, ?)",
                (workspace, name, self._clock()),
            )
        return App(int(cur.lastrowid or 0), workspace, name, self._clock())

    def app(self, workspace: str, name: str) -> App:
        row = self._one("SELECT * FROM apps WHERE workspace = ? AND name = ?", (workspace, name))
        if row is None:
            raise NotFoundError(
                f"app {name!r} not found", "create it with `hgrun apps:create NAME`"
            )
        return App(row["id"], row["workspace"], row["name"], row["created"])

    def app_by_id(self, app_id: int) -> App:
        row = self._one("SELECT * FROM apps WHERE id = ?", (app_id,))
        if row is None:
            raise NotFoundError(f"app #{app_id} not found")
        return App(row["id"], row["workspace"], row["name"], row["created"])

    def apps(self, workspace: str) -> list[App]:
        rows = self._query("SELECT * FROM apps WHERE workspace = ? ORDER BY name", (workspace,))
        return [App(r["id"], r["workspace"], r["name"], r["created"]) for r in rows]

    def config(self, app_id: int) -> dict[str, str]:
        rows = self._query("SELECT key, value FROM config WHERE app_id = ? ORDER BY key", (app_id,))
        return {r["key"]: r["value"] for r in rows}

    def update_config(self, app_id: int, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Set (value) or unset (None) keys in one transaction; returns the new config."""
        with self._tx() as db:
            for key, value in changes.items():
                if value is None:
                    db.execute("DELETE FROM config WHERE app_id = ? AND key = ?", (app_id, key))
                else:
                    db.execute(
                        "INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)"
                        " ON CONFLICT (app_id, key) DO UPDATE SET value = excluded.value",
                        (app_id, key, value),
                    )
        return self.config(app_id)

    def built_image(self, app_id: int, context_hash: str) -> str | None:
        row = self._one(
            "SELECT image FROM images WHERE app_id = ? AND context_hash = ?",
            (app_id, context_hash),
        )
        return row["image"] if row else None

    def record_image(self, app_id: int, context_hash: str, image: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO images (app_id, context_hash, image, created)"
                " VALUES (?, ?, ?, ?)",
                (app_id, context_hash, image, self._clock()),
            )

    def create_release(
        self,
        app_id: int,
        *,
        image: str,
        context_hash: str,
        procfile: Mapping[str, str],
        manifest: Mapping[str, object],
        env: Mapping[str, str],
        description: str,
    ) -> Release:
        with self._tx() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM releases WHERE app_id = ?", (app_id,)
            ).fetchone()
            cur = db.execute(
                "INSERT INTO releases (app_id, version, image, context_hash, procfile, manifest,"
                " env, description, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    app_id,
                    row[0] + 1,
                    image,
                    context_hash,
                    json.dumps(dict(procfile)),
                    json.dumps(dict(manifest)),
                    json.dumps(dict(env)),
                    description,
                    self._clock(),
                ),
            )
            new = db.execute("SELECT * FROM releases WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _release(new)

    def releases(self, app_id: int, limit: int = 50) -> list[Release]:
        rows = self._query(
            "SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC LIMIT ?",
            (app_id, limit),
        )
        return [_release(r) for r in rows]

    def latest_release(self, app_id: int) -> Release | None:
        row = self._one(
            "SELECT id FROM releases WHERE app_id = ? ORDER BY version DESC LIMIT 1", (app_id,)
        )
        return self.release(row[0]) if row else None

    def release(self, release_id: int) -> Release:
        """One release. Releases never change, so each is decoded once and kept (a manifest
        with a thousand scripts is a large JSON document, and every trigger reads it)."""
        cached = self._releases.get(release_id)
        if cached is not None:
            return cached
        row = self._one("SELECT * FROM releases WHERE id = ?", (release_id,))
        if row is None:
            raise NotFoundError(f"release #{release_id} not found")
        release = _release(row)
        with self._lock:
            if len(self._releases) >= 256:
                self._releases.clear()
            self._releases[release_id] = release
        return release

    # -- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        workspace: str,
        app_id: int,
        release_id: int,
        command: Sequence[str],
        process_type: str | None,
        tty: bool,
        detached: bool,
        uploads: bool,
        size: str,
        timeout: float,
        env: Mapping[str, str],
        trigger: Trigger,
        script: str | None = None,
        slot: str | None = None,
        parent_run: int | None = None,
        status: RunStatus = RunStatus.QUEUED,
        script_id: int | None = None,
        error: str | None = None,
    ) -> Run:
        """Insert a run. A second run for one script and cron slot is a ConflictError."""
        finished = self._clock() if status.finished else None
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (workspace, app_id, release_id, command, process_type, tty,"
                " detached, uploads, size, timeout, env, trigger_kind, trigger_name, script, slot,"
                " parent_run, status, created, script_id, error, finished)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    workspace,
                    app_id,
                    release_id,
                    json.dumps(list(command)),
                    process_type,
                    int(tty),
                    int(detached),
                    int(uploads),
                    size,
                    timeout,
                    json.dumps(dict(env)),
                    trigger.kind.value,
                    trigger.name,
                    script,
                    slot,
                    parent_run,
                    status.value,
                    self._clock(),
                    script_id,
                    error,
                    finished,
                ),
            )
            row = db.execute("SELECT * FROM runs WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _run(row)

    def run(self, run_id: int, workspace: str | None = None) -> Run:
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None or (workspace is not None and row["workspace"] != workspace):
            raise NotFoundError(f"run {run_id} not found", "list runs with `hgrun runs`")
        return _run(row)

    def update_run(self, run_id: int, **fields: Any) -> Run:
        """Set columns of a run. A finished run is never changed again (first final state wins)."""
        allowed = {"status", "exit_code", "oom", "container_id", "error", "started", "finished"}
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"cannot update run columns {sorted(unknown)}")
        values = {k: (v.value if isinstance(v, RunStatus) else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        active = ", ".join(f"'{s.value}'" for s in ACTIVE)
        with self._tx() as db:
            db.execute(
                f"UPDATE runs SET {sets} WHERE id = ? AND status IN ({active})",
                (*values.values(), run_id),
            )
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"run {run_id} not found")
        return _run(row)

    def runs(
        self,
        workspace: str,
        *,
        app_id: int | None = None,
        statuses: Sequence[RunStatus] = (),
        trigger_kind: TriggerKind | None = None,
        script: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        where, args = ["workspace = ?"], [workspace]  # type: list[str], list[Any]
        if app_id is not None:
            where.append("app_id = ?")
            args.append(app_id)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(s.value for s in statuses)
        if trigger_kind is not None:
            where.append("trigger_kind = ?")
            args.append(trigger_kind.value)
        if script is not None:
            where.append("script = ?")
            args.append(script)
        rows = self._query(
            f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [_run(r) for r in rows]

    def active_runs(self) -> list[Run]:
        rows = self._query(
            "SELECT * FROM runs WHERE status IN ('queued', 'starting', 'running') ORDER BY id"
        )
        return [_run(r) for r in rows]

    # -- scripts ----------------------------------------------------------------------------

    def sync_scripts(self, workspace: str, app_id: int, scripts: Sequence[Script]) -> None:
        """Register the manifest's scripts at a release: upsert these, deactivate the rest.

        A script keeps its id (and so its history and cron cursor) across releases.
        """
        now = self._clock()
        with self._tx() as db:
            db.execute("UPDATE scripts SET active = 0, updated = ? WHERE app_id = ?", (now, app_id))
            for script in scripts:
                db.execute(
                    "INSERT INTO scripts (workspace, app_id, name, spec, cron, timezone, active,"
                    " updated) VALUES (?, ?, ?, ?, ?, ?, 1, ?)"
                    " ON CONFLICT (app_id, name) DO UPDATE SET spec = excluded.spec,"
                    " cron = excluded.cron, timezone = excluded.timezone, active = 1,"
                    " updated = excluded.updated,"
                    " cursor = CASE WHEN scripts.cron IS excluded.cron"
                    " AND scripts.timezone = excluded.timezone THEN scripts.cursor END",
                    (
                        workspace,
                        app_id,
                        script.name,
                        json.dumps(script_to_json(script)),
                        script.cron,
                        script.timezone,
                        now,
                    ),
                )

    def scripts(
        self, workspace: str | None = None, app_id: int | None = None, cron_only: bool = False
    ) -> list[ScriptRecord]:
        where, args = ["active = 1"], []  # type: list[str], list[Any]
        if workspace is not None:
            where.append("workspace = ?")
            args.append(workspace)
        if app_id is not None:
            where.append("app_id = ?")
            args.append(app_id)
        if cron_only:
            where.append("cron IS NOT NULL")
        rows = self._query(f"SELECT * FROM scripts WHERE {' AND '.join(where)} ORDER BY id", args)
        return [_script(r) for r in rows]

    def script(self, script_id: int, workspace: str | None = None) -> ScriptRecord:
        row = self._one("SELECT * FROM scripts WHERE id = ? AND active = 1", (script_id,))
        if row is None or (workspace is not None and row["workspace"] != workspace):
            raise NotFoundError(f"script {script_id} not found", "list them with `hgrun scripts`")
        return _script(row)

    def script_by_name(self, app_id: int, name: str) -> ScriptRecord:
        row = self._one(
            "SELECT * FROM scripts WHERE app_id = ? AND name = ? AND active = 1", (app_id, name)
        )
        if row is None:
            raise NotFoundError(
                f"script {name!r} not found",
                "scripts come from hgrun.yaml; deploy to register them",
            )
        return _script(row)

    def set_cursor(self, script_id: int, cursor: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE scripts SET cursor = ? WHERE id = ?", (cursor, script_id))

    def script_run_counts(self, script_id: int) -> dict[RunStatus, int]:
        rows = self._query(
            "SELECT status, COUNT(*) FROM runs WHERE script_id = ?"
            " AND status IN ('queued', 'starting', 'running') GROUP BY status",
            (script_id,),
        )
        return {RunStatus(r[0]): int(r[1]) for r in rows}

    def oldest_queued(self, script_id: int) -> Run | None:
        row = self._one(
            "SELECT * FROM runs WHERE script_id = ? AND status = 'queued' AND container_id IS NULL"
            " ORDER BY id LIMIT 1",
            (script_id,),
        )
        return _run(row) if row else None

    def script_runs(self, script_id: int, limit: int = 50, before: int | None = None) -> list[Run]:
        rows = self._query(
            "SELECT * FROM runs WHERE script_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (script_id, before if before is not None else 2**62, limit),
        )
        return [_run(r) for r in rows]

    def prune_script_history(self, script_id: int, keep: int) -> int:
        """Delete finished runs (and their output) beyond the newest ``keep``; the count."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM runs WHERE script_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                (script_id, keep - 1),
            ).fetchone()
            if row is None:
                return 0
            doomed = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM runs WHERE script_id = ? AND id < ?"
                    " AND status NOT IN ('queued', 'starting', 'running')",
                    (script_id, row[0]),
                )
            ]
            for run_id in doomed:
                db.execute("DELETE FROM output WHERE run_id = ?", (run_id,))
                db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            return len(doomed)

    # -- output -----------------------------------------------------------------------------

    def append_output(self, run_id: int, app_id: int, chunks: Sequence[tuple[int, float, bytes]]):
        """Append (stream, ts, data) chunks of a run's output, in order."""
        if not chunks:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO output (run_id, app_id, stream, ts, data) VALUES (?, ?, ?, ?, ?)",
                [(run_id, app_id, s, ts, d) for s, ts, d in chunks],
            )

    def clear_output(self, run_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM output WHERE run_id = ?", (run_id,))

    def output(
        self,
        *,
        run_id: int | None = None,
        app_id: int | None = None,
        after: int = 0,
        before: int | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[tuple[int, int, int, float, bytes]]:
        """Chunks as (cursor, run_id, stream, ts, data), by cursor; filter by run or app."""
        where, args = ["id > ?"], [after]
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if app_id is not None:
            where.append("app_id = ?")
            args.append(app_id)
        order = "DESC" if newest_first else "ASC"
        rows = self._query(
            f"SELECT id, run_id, stream, ts, data FROM output WHERE {' AND '.join(where)}"
            f" ORDER BY id {order} LIMIT ?",
            (*args, limit),
        )
        return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def _script(row: sqlite3.Row) -> ScriptRecord:
    return ScriptRecord(
        id=row["id"],
        workspace=row["workspace"],
        app_id=row["app_id"],
        spec=script_from_json(json.loads(row["spec"])),
        cursor=row["cursor"],
        active=bool(row["active"]),
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        id=row["id"],
        workspace=row["workspace"],
        name=row["name"],
        scope=Scope(row["scope"]),
        script=row["script"],
        created=row["created"],
        revoked=row["revoked"],
    )


def _release(row: sqlite3.Row) -> Release:
    return Release(
        id=row["id"],
        app_id=row["app_id"],
        version=row["version"],
        image=row["image"],
        context_hash=row["context_hash"],
        procfile=json.loads(row["procfile"]),
        manifest=json.loads(row["manifest"]),
        env=json.loads(row["env"]),
        description=row["description"],
        created=row["created"],
    )


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        workspace=row["workspace"],
        app_id=row["app_id"],
        release_id=row["release_id"],
        command=json.loads(row["command"]),
        process_type=row["process_type"],
        tty=bool(row["tty"]),
        detached=bool(row["detached"]),
        uploads=bool(row["uploads"]),
        size=row["size"],
        timeout=row["timeout"],
        env=json.loads(row["env"]),
        trigger=Trigger(TriggerKind(row["trigger_kind"]), row["trigger_name"]),
        script=row["script"],
        slot=row["slot"],
        parent_run=row["parent_run"],
        status=RunStatus(row["status"]),
        exit_code=row["exit_code"],
        oom=bool(row["oom"]),
        container_id=row["container_id"],
        error=row["error"],
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        script_id=row["script_id"],
    )
