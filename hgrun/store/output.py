"""Runs' output: chunks appended in order, read back by run or app, by cursor."""

from __future__ import annotations

from collections.abc import Sequence

from hgrun.models import OutputChunk
from hgrun.store.base import StoreBase

# What append_output takes: (stream, ts, data), stream 1 stdout or 2 stderr.
NewChunk = tuple[int, float, bytes]


class OutputStore(StoreBase):
    def append_output(self, run_id: int, app_id: int, chunks: Sequence[NewChunk]) -> None:
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
    ) -> list[OutputChunk]:
        """Up to ``limit`` chunks with ``after < cursor < before``, by cursor (ascending, or
        descending with ``newest_first``); filtered by run or app."""
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
        return [OutputChunk(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]
