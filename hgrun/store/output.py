"""Runs' output: chunks appended in order, read back by run or app, by cursor; capped per run.

Each run keeps at most ``max_output`` bytes (the store's setting): past it, the oldest chunks are
dropped and one marker chunk on stderr at the front says how much went. What is stored and what
was dropped is counted on the run's row (``output_bytes``, ``output_dropped``), so an append costs
one row read and one row write more than the insert; dropping walks only the chunks it deletes.
"""

from __future__ import annotations

from collections.abc import Sequence

from hgrun.models import OutputChunk
from hgrun.store.base import StoreBase
from hgrun.store.database import Connection

# What append_output takes: (stream, ts, data), stream 1 stdout or 2 stderr.
NewChunk = tuple[int, float, bytes]

STDERR = 2
DEFAULT_MAX_OUTPUT = 100 * 1024 * 1024


def dropped_marker(dropped: int, cap: int) -> bytes:
    """The stderr line at the front of a run's output once its oldest part went."""
    shown = f"{cap // 1024**2} MB" if cap % 1024**2 == 0 else f"{cap} bytes"
    return f"hgrun: {dropped} bytes of earlier output were dropped (cap {shown})\n".encode()


class OutputStore(StoreBase):
    def append_output(self, run_id: int, app_id: int, chunks: Sequence[NewChunk]) -> None:
        """Append (stream, ts, data) chunks of a run's output, in order, keeping the newest
        ``max_output`` bytes of the run (see the module's docstring)."""
        if not chunks:
            return
        cap = self.max_output
        with self._tx() as db:
            # Readers page by chunk id (``after=``): ids must become visible in their order.
            # SQLite's writers are serial; on PostgreSQL appends take one lock, so no chunk
            # commits after a reader has passed its id.
            self._db.lock(db, "output")
            row = db.execute(
                "SELECT output_bytes, output_dropped FROM runs WHERE id = ?" + self._db.for_update,
                (run_id,),
            ).fetchone()
            stored, dropped = (int(row[0]), int(row[1])) if row else (0, 0)
            batch, trimmed = _newest(chunks, cap)
            incoming = sum(len(data) for _, _, data in batch)
            freed, marker_at = 0, None
            if cap is not None and stored + incoming > cap:
                freed, marker_at = _drop_oldest(db, run_id, stored + incoming - cap, dropped > 0)
            if trimmed or freed or (marker_at is not None and dropped):
                dropped += trimmed + freed
                ts = batch[0][1] if batch else chunks[-1][1]
                if marker_at is None and row is not None and int(row[1]):
                    # The old marker is still at the front: it gives way to the new count.
                    db.execute(
                        "DELETE FROM output WHERE id ="
                        " (SELECT MIN(id) FROM output WHERE run_id = ?)",
                        (run_id,),
                    )
                # At the id of the newest chunk dropped, so it sorts before all that remain;
                # else (nothing of the run left in the table) before the batch, by insert order.
                marker = (run_id, app_id, STDERR, ts, dropped_marker(dropped, cap or 0))
                if marker_at is None:
                    db.execute(
                        "INSERT INTO output (run_id, app_id, stream, ts, data)"
                        " VALUES (?, ?, ?, ?, ?)",
                        marker,
                    )
                else:
                    db.execute(
                        "INSERT INTO output (id, run_id, app_id, stream, ts, data)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (marker_at, *marker),
                    )
            # Offsets count every byte the run wrote, kept or dropped, the batch's trimmed front
            # included: stored + dropped before this batch is where it starts.
            offset = stored + (int(row[1]) if row else 0) + trimmed
            rows = []
            for stream, ts, data in batch:
                rows.append((run_id, app_id, stream, ts, data, offset))
                offset += len(data)
            db.executemany(
                "INSERT INTO output (run_id, app_id, stream, ts, data, byte_offset)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute(
                "UPDATE runs SET output_bytes = ?, output_dropped = ? WHERE id = ?",
                (stored + incoming - freed, dropped, run_id),
            )

    def clear_output(self, run_id: int) -> None:
        """Delete a run's output and its counts (recovery stores it again from the engine)."""
        with self._tx() as db:
            db.execute("DELETE FROM output WHERE run_id = ?", (run_id,))
            db.execute(
                "UPDATE runs SET output_bytes = 0, output_dropped = 0 WHERE id = ?", (run_id,)
            )

    def output(
        self,
        *,
        run_id: int | None = None,
        app_id: int | None = None,
        stream: int | None = None,
        after: int = 0,
        before: int | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[OutputChunk]:
        """Up to ``limit`` chunks with ``after < cursor < before``, by cursor (ascending, or
        descending with ``newest_first``); filtered by run, app or stream."""
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
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        order = "DESC" if newest_first else "ASC"
        rows = self._query(
            "SELECT id, run_id, stream, ts, data, byte_offset FROM output"
            f" WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
            (*args, limit),
        )
        return [OutputChunk(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]


def _newest(chunks: Sequence[NewChunk], cap: int | None) -> tuple[list[NewChunk], int]:
    """The newest ``cap`` bytes of one batch (a chunk cut at the front if need be), and how many
    bytes were left out."""
    total = sum(len(data) for _, _, data in chunks)
    if cap is None or total <= cap:
        return list(chunks), 0
    kept: list[NewChunk] = []
    room = cap
    for stream, ts, data in reversed(chunks):
        if room <= 0:
            break
        piece = data if len(data) <= room else data[len(data) - room :]
        kept.append((stream, ts, piece))
        room -= len(piece)
    kept.reverse()
    return kept, total - cap


def _drop_oldest(
    db: Connection, run_id: int, excess: int, has_marker: bool
) -> tuple[int, int | None]:
    """Delete the run's oldest chunks (and its marker) until ``excess`` bytes are freed; the bytes
    freed and the id of the newest chunk deleted (None when nothing was stored)."""
    freed, last, after = 0, None, 0
    if has_marker:
        first = db.execute("SELECT MIN(id) FROM output WHERE run_id = ?", (run_id,)).fetchone()
        after = int(first[0]) if first and first[0] is not None else 0
        last = after or None
    while freed < excess:
        page = db.execute(
            "SELECT id, length(data) FROM output WHERE run_id = ? AND id > ? ORDER BY id LIMIT 256",
            (run_id, after),
        ).fetchall()
        if not page:
            break
        for chunk_id, size in page:
            freed += int(size)
            last = after = int(chunk_id)
            if freed >= excess:
                break
    if last is not None:
        db.execute("DELETE FROM output WHERE run_id = ? AND id <= ?", (run_id, last))
    return freed, last
