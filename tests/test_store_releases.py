"""Releases record who made them (the migration adding releases.actor), against real SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from support.store import new_release
from support.stores import StoreFactory

from hgrun.store import Store
from hgrun.store.schema import MIGRATIONS

ACTOR = next(i for i, m in enumerate(MIGRATIONS) if "releases ADD COLUMN actor" in m)
"""How many migrations come before the one that adds releases.actor."""


def test_a_release_records_its_actor(make_store: StoreFactory) -> None:
    store = make_store(clock=lambda: 1000.0)
    app = store.create_app("default", "app")
    made = new_release(store, app, actor="ci")
    assert made.actor == "ci"
    assert store.releases(app.id)[0].actor == "ci"
    assert new_release(store, app).actor == ""


def test_releases_made_before_the_migration_have_no_actor(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:ACTOR]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version = {ACTOR}")
    db.execute("INSERT INTO workspaces (id, created) VALUES ('default', 1)")
    db.execute("INSERT INTO apps (workspace, name, created) VALUES ('default', 'old', 1)")
    db.execute(
        "INSERT INTO releases (app_id, version, image, context_hash, procfile, manifest, env,"
        " description, created) VALUES (1, 1, 'sha256:x', 'h', '{}', ?, '{}', 'Deploy', 1)",
        ('{"name": "old"}',),
    )
    db.commit()
    db.close()
    store = Store(path, clock=lambda: 1000.0)
    assert store.schema_version == len(MIGRATIONS)
    assert store.releases(1)[0].actor == ""
