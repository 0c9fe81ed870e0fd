"""Millions of runs written straight into an SQLite store, for the tests and benchmarks that
measure listings among them (tests/test_dashboard.py, bench/dashboard.py, bench/scripts.py).

One SQL statement makes every row inside SQLite (a recursive counter ``n(i)``, ``i`` from 0):
a million rows in seconds, where a Python loop or ``executemany`` takes minutes. The ``runs``
indexes, whatever the schema has, are dropped before and made again from their own SQL after
(a sort each, instead of millions of scattered B-tree inserts). The benchmarks import it with
``tests/`` on their path (it needs nothing of the test suite's).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any


def seed_runs(
    db: sqlite3.Connection,
    rows: int,
    columns: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    *,
    join: str = "",
) -> float:
    """Insert ``rows`` runs into ``db`` in one transaction; the seconds it took.

    ``columns``: column name -> its SQL expression, in terms of ``n.i`` (the row's number,
    from 0), the named ``params`` (``:name``) and the tables of ``join`` (a clause such as
    ``JOIN seed_scripts s ON s.k = n.i % :k``). Columns not named take their defaults. ``db``
    must not be in a transaction; its indexes on ``runs`` are all there again at the end.
    """
    started = time.monotonic()
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'"
        " AND sql IS NOT NULL"
    ).fetchall()
    db.execute("BEGIN")
    try:
        for name, _sql in indexes:
            db.execute(f"DROP INDEX {name}")
        db.execute(
            f"INSERT INTO runs ({', '.join(columns)})"
            " WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :rows)"
            f" SELECT {', '.join(columns.values())} FROM n {join}",
            {**(params or {}), "rows": rows},
        )
        for _name, sql in indexes:
            db.execute(sql)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return time.monotonic() - started
