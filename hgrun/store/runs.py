"""Runs, and the named transitions that move them through the state machine of
:mod:`hgrun.lifecycle`.

Every transition reads the run and writes it inside one ``BEGIN IMMEDIATE`` transaction, so the
check and the write are atomic against other threads, tasks and processes on the same file:

- from a final state, a transition changes nothing and returns the stored run (the first final
  state wins; the caller compares ``run.status`` with what it asked for to see whether it won);
- from an active state, a move that ``lifecycle.allowed`` refuses raises ``ConflictError``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from hgrun import lifecycle
from hgrun.errors import ConflictError, NotFoundError
from hgrun.models import Run, RunSpec, RunStatus, Trigger, TriggerKind
from hgrun.store.base import ACTIVE_SQL, StoreBase, run_lease
from hgrun.store.database import Connection


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewRun(RunSpec):
    """A run to insert (see :meth:`RunStore.create_runs`)."""

    status: RunStatus = RunStatus.QUEUED
    error: str | None = None
    holder: tuple[str, float] | None = None  # (owner, ttl) of the run's lease, made with it


_RUN_COLUMNS = (
    "workspace", "app_id", "release_id", "command", "process_type", "tty", "detached", "uploads",
    "size", "timeout", "env", "trigger_kind", "trigger_name", "script", "slot", "parent_run",
    "status", "created", "script_id", "error", "finished",
)  # fmt: skip
# DO NOTHING on the one unique key a new run can hit, (script, slot): no row comes back.
_INSERT_RUN = (
    f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_RUN_COLUMNS))}) ON CONFLICT DO NOTHING RETURNING id"
)


def _inserted(run_id: int, new: NewRun, now: float) -> Run:
    """The run ``new`` became, as :func:`run_from_row` would read it back."""
    fields = {name: getattr(new, name) for name in _SPEC_FIELDS}
    fields.update(
        command=list(new.command),
        env=dict(new.env),
        id=run_id,
        status=new.status,
        exit_code=None,
        oom=False,
        container_id=None,
        error=new.error,
        created=now,
        started=None,
        finished=now if new.status.finished else None,
        node=None,
        output_bytes=0,
        output_dropped=0,
    )
    return _built(fields)


_SPEC_FIELDS = tuple(field.name for field in dataclasses.fields(RunSpec))


def _run_values(new: NewRun, seal: Callable[[str], str], now: float) -> tuple[Any, ...]:
    return (
        new.workspace,
        new.app_id,
        new.release_id,
        json.dumps(list(new.command)),
        new.process_type,
        int(new.tty),
        int(new.detached),
        int(new.uploads),
        new.size,
        new.timeout,
        seal(json.dumps(dict(new.env))),
        new.trigger.kind.value,
        new.trigger.name,
        new.script,
        new.slot,
        new.parent_run,
        new.status.value,
        now,
        new.script_id,
        new.error,
        now if new.status.finished else None,
    )


class RunStore(StoreBase):
    on_run_ended: list[Callable[[Run], None]]
    """Called, after the write, with a run that one call made final (see ``_ended``)."""

    def _sealed_columns(self) -> list[tuple[str, str, str]]:
        # A run's env snapshot holds the app's config values as they were: sealed at rest.
        return [*super()._sealed_columns(), ("runs", "id", "env")]

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
        holder: tuple[str, float] | None = None,
    ) -> Run:
        """Insert a run. A second run for one script and cron slot is a ConflictError.

        ``holder``: (owner, ttl) of the run's lease (``run_lease``), taken in the same
        transaction: a run its server launches at once is never seen unheld by another server's
        recovery (which would start it too, or find it without a container and lose it)."""
        new = NewRun(
            workspace=workspace, app_id=app_id, release_id=release_id, command=command,
            process_type=process_type, tty=tty, detached=detached, uploads=uploads, size=size,
            timeout=timeout, env=env, trigger=trigger, script=script, slot=slot,
            parent_run=parent_run, status=status, script_id=script_id, error=error,
            holder=holder,
        )  # fmt: skip
        made = self.create_runs([new])[0]
        if made is None:
            raise ConflictError(f"script {script_id} already has a run for slot {slot}")
        return made

    def create_runs(
        self, new: Sequence[NewRun], *, cursors: Mapping[int, float] | None = None
    ) -> list[Run | None]:
        """Insert ``new`` in one transaction, in order; the runs made. A run whose script
        already has a run of its cron slot is not made: None in its place (the unique key on
        (script, slot) decides, across processes too). ``cursors`` (script id -> the cron
        cursor, epoch seconds) are written in the same transaction: a slot's runs and the
        scheduler's cursor move together or not at all. Every run of one call has the same
        ``created``; a run with a ``holder`` is made with its lease (see :meth:`create_run`)."""
        for one in new:
            if one.status not in lifecycle.INITIAL:
                raise ValueError(f"a run cannot be created {one.status.value}")
        now = self._clock()
        made: list[Run | None] = []
        with self._tx() as db:
            for one in new:
                row = db.execute(_INSERT_RUN, _run_values(one, self._seal, now)).fetchone()
                # The run as inserted, from the values at hand: reading the row back would
                # decrypt the env snapshot just encrypted.
                if row is None:
                    made.append(None)
                    continue
                made.append(_inserted(int(row["id"]), one, now))
                if one.holder is not None and not one.status.finished:
                    owner, ttl = one.holder
                    # A lease already under this id is a stale one: SQLite gives the id of a
                    # deleted run (the newest runs of a destroyed app) to the next run, and a
                    # server that died holding that run left its lease behind.
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (f"lease:{run_lease(int(row['id']))}", f"{owner} {now + ttl}"),
                    )
            for script_id, cursor in (cursors or {}).items():
                db.execute("UPDATE scripts SET cursor = ? WHERE id = ?", (cursor, script_id))
        return made

    def run(self, run_id: int, workspace: str | None = None) -> Run:
        row = self._one(f"{SELECT_RUNS} WHERE id = ?", (run_id,))
        if row is None or (workspace is not None and row["workspace"] != workspace):
            raise NotFoundError(f"run {run_id} not found", "list runs with `hgrun runs`")
        return run_from_row(row, self._unseal)

    # -- transitions ------------------------------------------------------------------------

    def mark_starting(self, run_id: int) -> Run:
        """queued -> starting: the supervisor is about to create its container."""
        return self._move(run_id, RunStatus.STARTING, {})

    def set_container(self, run_id: int, container_id: str, node: str | None = None) -> Run:
        """Record the run's container (and the node it was placed on, for an engine of several
        hosts); only while it is starting.

        On a final run (stopped while its container was being created) nothing changes and the
        stored run is returned: the caller sees ``run.status.finished`` and removes the container.
        """
        with self._tx() as db:
            run = run_from_row(self._locked_row(db, run_id), self._unseal)
            if run.status.finished:
                return run
            if run.status is not RunStatus.STARTING:
                raise ConflictError(
                    f"{run.label} is {run.status.value}: a container is set only while starting"
                )
            db.execute(
                "UPDATE runs SET container_id = ?, node = COALESCE(?, node) WHERE id = ?",
                (container_id, node, run_id),
            )
            return run_from_row(self._locked_row(db, run_id), self._unseal)

    def set_node(self, run_id: int, node: str) -> Run:
        """Record the node a run was placed on (known once the engine scheduled it); while the
        run is active. On a final run nothing changes and the stored run is returned."""
        with self._tx() as db:
            run = run_from_row(self._locked_row(db, run_id), self._unseal)
            if run.status.finished:
                return run
            db.execute("UPDATE runs SET node = ? WHERE id = ?", (node, run_id))
            return run_from_row(self._locked_row(db, run_id), self._unseal)

    def mark_running(self, run_id: int, started: float) -> Run:
        """starting -> running, at ``started`` (epoch seconds)."""
        return self._move(run_id, RunStatus.RUNNING, {"started": started})

    def record_outcome(
        self,
        run_id: int,
        outcome: lifecycle.Outcome,
        *,
        finished: float,
        started: float | None = None,
    ) -> Run:
        """Any active state -> ``outcome.status`` (a final one), with its exit code, message
        (stored as ``error``) and OOM flag; ``started`` replaces the start time when given.

        The first final state wins: on a run already final nothing changes and the stored run is
        returned, so a caller knows it won when the returned status and ``finished`` are its own.
        """
        if not outcome.status.finished:
            raise ValueError(f"an outcome is a final state, not {outcome.status.value}")
        fields: dict[str, Any] = {
            "exit_code": outcome.exit_code,
            "error": outcome.message,
            "oom": int(outcome.oom),
            "finished": finished,
        }
        if started is not None:
            fields["started"] = started
        return self._move(run_id, outcome.status, fields)

    def _move(self, run_id: int, new: RunStatus, fields: Mapping[str, Any]) -> Run:
        """The one place a run's status changes: check and write in one transaction."""
        with self._tx() as db:
            run = run_from_row(self._locked_row(db, run_id), self._unseal)
            if run.status.finished:
                return run
            if not lifecycle.allowed(run.status, new):
                raise ConflictError(
                    f"{run.label} is {run.status.value}: it cannot become {new.value}"
                )
            sets = ", ".join(f"{column} = ?" for column in ("status", *fields))
            db.execute(
                f"UPDATE runs SET {sets} WHERE id = ?", (new.value, *fields.values(), run_id)
            )
            moved = run_from_row(self._locked_row(db, run_id), self._unseal)
        if new.finished:
            self._ended(moved)
        return moved

    def _ended(self, run: Run) -> None:
        """Tell ``on_run_ended`` that ``run`` just became final (once: the first final state
        wins). The audit log hears of every run this way, those that never started included."""
        for callback in self.on_run_ended:
            callback(run)

    # -- queries ----------------------------------------------------------------------------

    def runs(
        self,
        workspace: str,
        *,
        app_id: int | None = None,
        statuses: Sequence[RunStatus] = (),
        trigger_kind: TriggerKind | None = None,
        script: str | None = None,
        script_id: int | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[Run]:
        """Runs newest first; ``before`` pages by key (runs with a smaller id), as fast deep down
        a million runs as at the top. An app's runs filtered by status, by trigger or by both
        (and a script's by status) each have an index whose rows are in id order (SQLite ends
        every index with the rowid), so a filter that matches one run in a million is found
        without walking the rest (schema migration 8)."""
        where: list[str] = ["workspace = ?"]
        args: list[Any] = [workspace]
        if before is not None:
            where.append("id < ?")
            args.append(before)
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
        if script_id is not None:
            where.append("script_id = ?")
            args.append(script_id)
        rows = self._query(
            f"{SELECT_RUNS} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [run_from_row(r, self._unseal) for r in rows]

    def prune_runs(
        self,
        *,
        keep: int,
        older_than: float,
        limit: int = 1000,
        batch_bytes: int = 64 * 1024 * 1024,
    ) -> int:
        """Delete finished one-off runs (not a script's: those keep ``history``) and their
        output: beyond the newest ``keep`` of each app, and those finished before
        ``older_than`` (epoch seconds). A run in flight is never deleted (checked again in the
        transaction that deletes it). At most ``limit`` runs per call (call again while it
        returns ``limit``); each transaction deletes about ``batch_bytes`` of output at most,
        so other writers wait for one batch only. The number deleted."""
        if keep < 0:
            raise ValueError("keep must be zero or more")
        doomed: dict[int, int] = {}  # run id -> bytes of output
        for (app_id,) in self._query("SELECT id FROM apps ORDER BY id"):
            row = self._one(
                "SELECT id FROM runs WHERE app_id = ? AND script_id IS NULL"
                " ORDER BY id DESC LIMIT 1 OFFSET ?",
                (app_id, keep),
            )
            if row is not None:
                rows = self._query(
                    "SELECT id, output_bytes FROM runs WHERE app_id = ? AND script_id IS NULL"
                    f" AND id <= ? AND status NOT IN ({ACTIVE_SQL}) ORDER BY id LIMIT ?",
                    (app_id, row[0], limit - len(doomed)),
                )
                doomed.update((int(r[0]), int(r[1])) for r in rows)
            if len(doomed) >= limit:
                break
        if len(doomed) < limit:
            rows = self._query(
                "SELECT id, output_bytes FROM runs WHERE script_id IS NULL AND finished < ?"
                f" AND status NOT IN ({ACTIVE_SQL}) ORDER BY finished LIMIT ?",
                (older_than, limit - len(doomed)),
            )
            doomed.update((int(r[0]), int(r[1])) for r in rows)
        deleted = 0
        pending = sorted(doomed)
        while pending:
            with self._tx() as db:
                size = 0
                while pending and (size == 0 or size + doomed[pending[0]] <= batch_bytes):
                    run_id = pending.pop(0)
                    size += doomed[run_id] + 1
                    row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                    if row is None or RunStatus(row[0]).active:
                        continue
                    db.execute("DELETE FROM output WHERE run_id = ?", (run_id,))
                    db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                    deleted += 1
        return deleted

    def _locked_row(self, db: Connection, run_id: int) -> Any:
        """A run's row read inside a write transaction, locked (so no one changes it before we
        write: SQLite's transaction is serial, PostgreSQL's row is read FOR UPDATE)."""
        row = db.execute(f"{SELECT_RUNS} WHERE id = ?{self._db.for_update}", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"run {run_id} not found", "list runs with `hgrun runs`")
        return row

    def active_runs(self, *, backlogs: bool = True, besides: Collection[int] = ()) -> list[Run]:
        """Every run in flight, oldest first; without ``backlogs``, not the runs waiting in a
        queue (queued, no container: a script's, or the server's line beyond ``--max-runs``):
        recovery leaves those to their queue, and a storm's thousand of them were decoded at
        every pass for nothing. Nor the runs ``besides`` (those recovery's server holds): not
        decoded either (an env unsealed for each of a thousand runs, every pass)."""
        waiting = (
            ""
            if backlogs
            else f" AND NOT (status = '{RunStatus.QUEUED.value}' AND container_id IS NULL)"
        )
        rows = self._query(f"{SELECT_RUNS} WHERE status IN ({ACTIVE_SQL}){waiting} ORDER BY id")
        return [run_from_row(r, self._unseal) for r in rows if r[0] not in besides]


# A listing decodes 50 rows a request, mostly with the same few commands, env snapshots and
# triggers: each JSON text is decoded once (and copied per run, so no two runs share a mutable
# value), a Trigger (immutable) is made once per kind and name, and statuses are looked up, not
# built through Enum.__call__.
_STATUSES = {status.value: status for status in RunStatus}
_TRIGGER_KINDS = {kind.value: kind for kind in TriggerKind}

# The columns run_from_row reads, in the order it unpacks them: a row is read by position.
# sqlite3.Row finds a column by name by comparing it with each column name in turn: 29 such
# lookups were about half of what decoding a run cost.
_READ_COLUMNS = (
    "id", "workspace", "app_id", "release_id", "command", "process_type", "tty", "detached",
    "uploads", "size", "timeout", "env", "trigger_kind", "trigger_name", "script", "slot",
    "parent_run", "status", "exit_code", "oom", "container_id", "error", "created", "started",
    "finished", "script_id", "node", "output_bytes", "output_dropped",
)  # fmt: skip
SELECT_RUNS = f"SELECT {', '.join(_READ_COLUMNS)} FROM runs"
"""The start of every query whose rows go to :func:`run_from_row`."""


@functools.lru_cache(maxsize=1024)
def _decoded(text: str) -> Any:
    return json.loads(text)


def _list(text: str) -> list[str]:
    return list(_decoded(text)) if len(text) <= 4096 else json.loads(text)


def _dict(text: str) -> dict[str, str]:
    return dict(_decoded(text)) if len(text) <= 4096 else json.loads(text)


@functools.lru_cache(maxsize=1024)
def _trigger(kind: str, name: str) -> Trigger:
    return Trigger(_TRIGGER_KINDS[kind], name)


def _built(fields: dict[str, Any]) -> Run:
    """``Run(**fields)`` without its ``__init__``: a frozen dataclass's init sets each of its 28
    fields through ``object.__setattr__``, which was half of what decoding a run cost (18 us
    of 34 on the slow machine of stop 20). Equal to ``Run(**fields)`` as long as Run has no
    ``__post_init__``, slots nor default factories, which test_store checks."""
    run = _new(Run)
    run.__dict__.update(fields)
    return run


_new = object.__new__


def run_from_row(row: Any, unseal: Callable[[str], str]) -> Run:
    """The run in a row of a query that begins with :data:`SELECT_RUNS`."""
    (
        run_id, workspace, app_id, release_id, command, process_type, tty, detached, uploads,
        size, timeout, env, trigger_kind, trigger_name, script, slot, parent_run, status,
        exit_code, oom, container_id, error, created, started, finished, script_id, node,
        output_bytes, output_dropped,
    ) = row  # fmt: skip
    return _built(
        {
            "id": run_id,
            "workspace": workspace,
            "app_id": app_id,
            "release_id": release_id,
            "command": _list(command),
            "process_type": process_type,
            "tty": bool(tty),
            "detached": bool(detached),
            "uploads": bool(uploads),
            "size": size,
            "timeout": timeout,
            "env": _dict(unseal(env)),
            "trigger": _trigger(trigger_kind, trigger_name),
            "script": script,
            "slot": slot,
            "parent_run": parent_run,
            "status": _STATUSES[status],
            "exit_code": exit_code,
            "oom": bool(oom),
            "container_id": container_id,
            "error": error,
            "created": created,
            "started": started,
            "finished": finished,
            "script_id": script_id,
            "node": node,
            "output_bytes": output_bytes,
            "output_dropped": output_dropped,
        }
    )
