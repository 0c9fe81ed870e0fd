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
