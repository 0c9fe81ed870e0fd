"""Scripts registered from the manifest, their cron cursor, queue and bounded history."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from hgrun.errors import NotFoundError
from hgrun.models import Run, RunStatus, Script, ScriptRecord, script_from_json, script_to_json
from hgrun.store.base import ACTIVE_SQL, StoreBase
from hgrun.store.runs import SELECT_RUNS, run_from_row

# Scripts counted in one query: well within SQLite's cap on a statement's variables (32,766).
COUNTS_CHUNK = 1000


class ScriptStore(StoreBase):
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
                    " cursor = CASE WHEN scripts.cron IS NOT DISTINCT FROM excluded.cron"
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
        where: list[str] = ["active = 1"]
        args: list[Any] = []
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

    def script_run_counts(self, script_ids: Iterable[int]) -> dict[int, dict[RunStatus, int]]:
        """Each script's active runs by status, a query per ``COUNTS_CHUNK`` scripts (a script
        with none: absent)."""
        ids = sorted(set(script_ids))
        counts: dict[int, dict[RunStatus, int]] = {}
        for start in range(0, len(ids), COUNTS_CHUNK):
            chunk = ids[start : start + COUNTS_CHUNK]
            rows = self._query(
                f"SELECT script_id, status, COUNT(*) FROM runs"
                f" WHERE script_id IN ({', '.join('?' * len(chunk))})"
                f" AND status IN ({ACTIVE_SQL}) GROUP BY script_id, status",
                tuple(chunk),
            )
            for r in rows:
                counts.setdefault(int(r[0]), {})[RunStatus(r[1])] = int(r[2])
        return counts

    def queued_script_ids(self) -> list[int]:
        """The scripts with a run waiting in their queue (read from the active runs' index)."""
        rows = self._query(
            f"SELECT DISTINCT script_id FROM runs WHERE status IN ({ACTIVE_SQL})"
            " AND status = ? AND script_id IS NOT NULL ORDER BY script_id",
            (RunStatus.QUEUED.value,),
        )
        return [int(r[0]) for r in rows]

    def oldest_queued(self, script_id: int) -> Run | None:
        row = self._one(
            f"{SELECT_RUNS} WHERE script_id = ? AND status = ? AND container_id IS NULL"
            " ORDER BY id LIMIT 1",
            (script_id, RunStatus.QUEUED.value),
        )
        return run_from_row(row, self._unseal) if row else None

    def script_runs(self, script_id: int, limit: int = 50, before: int | None = None) -> list[Run]:
        rows = self._query(
            f"{SELECT_RUNS} WHERE script_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (script_id, before if before is not None else 2**62, limit),
        )
        return [run_from_row(r, self._unseal) for r in rows]

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
                    f" AND status NOT IN ({ACTIVE_SQL})",
                    (script_id, row[0]),
                )
            ]
            for run_id in doomed:
                db.execute("DELETE FROM output WHERE run_id = ?", (run_id,))
                db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            return len(doomed)


@functools.lru_cache(maxsize=4096)
def _spec(text: str) -> Script:
    """A stored spec, decoded once: every trigger and every scheduler wake-up reads it, and a
    Script is immutable."""
    return script_from_json(json.loads(text))


def _script(row: Any) -> ScriptRecord:
    return ScriptRecord(
        id=row["id"],
        workspace=row["workspace"],
        app_id=row["app_id"],
        spec=_spec(row["spec"]),
        cursor=row["cursor"],
        active=bool(row["active"]),
    )
