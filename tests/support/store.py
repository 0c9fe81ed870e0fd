"""A real SQLite store for unit tests: a workspace, an app with one release, and runs made with
defaults (a detached `true` on starter) that a test overrides only where it matters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hgrun.models import App, Manifest, Release, Run, Trigger, TriggerKind
from hgrun.store import Store

WORKSPACE = "default"


def new_store(path: Path, **options: Any) -> Store:
    """A store at ``path`` (a file) with the workspace ``default``; ``options`` go to Store."""
    store = Store(path, **options)
    store.ensure_workspace(WORKSPACE)
    return store


def new_release(store: Store, app: App, **fields: Any) -> Release:
    """``store.create_release`` for ``app``: image ``sha256:x``, an empty Procfile, a manifest
    naming only the app, no env, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "image": "sha256:x",
        "context_hash": "h" * 64,
        "procfile": {},
        "manifest": Manifest(name=app.name),
        "env": {},
        "description": "Deploy",
        **fields,
    }
    return store.create_release(app.id, **values)


def app_with_release(store: Store, name: str = "app") -> tuple[App, Release]:
    """A new app with one release (``new_release``'s defaults)."""
    app = store.create_app(WORKSPACE, name)
    return app, new_release(store, app)


def new_run(store: Store, app: App, release: Release, **fields: Any) -> Run:
    """``store.create_run`` for ``app``'s ``release``: a detached `true` on starter, started by
    the user admin, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "workspace": WORKSPACE,
        "app_id": app.id,
        "release_id": release.id,
        "command": ["true"],
        "process_type": None,
        "tty": False,
        "detached": True,
        "uploads": False,
        "size": "starter",
        "timeout": 60.0,
        "env": {},
        "trigger": Trigger(TriggerKind.USER, "admin"),
        **fields,
    }
    return store.create_run(**values)


@contextlib.contextmanager
def counted_writes(store: Store) -> Iterator[list[str]]:
    """Each write transaction ``store`` begins inside the block: one ``"tx"`` in the list
    each (a batch's promise of one transaction is a count, not a timing)."""
    writes: list[str] = []
    database = store._db  # noqa: SLF001 - counting the store's write transactions
    begin = database.tx

    def counted() -> Any:
        writes.append("tx")
        return begin()

    database.tx = counted  # type: ignore[method-assign]
    try:
        yield writes
    finally:
        database.tx = begin  # type: ignore[method-assign]


@contextlib.contextmanager
def traced_sql(store: Store) -> Iterator[list[str] | None]:
    """The SQL statements the store runs inside the block, values bound (SQLite's trace);
    None on PostgreSQL, whose planner picks by its statistics (no plan to assert)."""
    raw = store._db._db if store.backend == "sqlite" else None  # type: ignore[attr-defined]  # noqa: SLF001
    if raw is None:
        yield None
        return
    statements: list[str] = []
    raw.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        raw.set_trace_callback(None)


def assert_index_seek(store: Store, sql: str, index: str | None = None) -> str:
    """Assert SQLite answers ``sql`` (values bound) by a search of an index (``index``, when
    named) that gives the rows in the order asked: no scan of the table, no sort step (``USE
    TEMP B-TREE``). Returns the plan, one line, for further checks."""
    raw = store._db._db  # type: ignore[attr-defined]  # noqa: SLF001 - the SQLite connection
    plan = " ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "SEARCH runs USING INDEX" in plan, (sql, plan)
    assert "TEMP B-TREE" not in plan, (sql, plan)  # rows come in id order, no sort
    if index is not None:
        assert f"USING INDEX {index} " in plan, (sql, plan)
    return plan
