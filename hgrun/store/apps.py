"""Apps, their config, the build cache and releases."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from hgrun.errors import ConflictError, NotFoundError
from hgrun.models import App, Manifest, Release, manifest_from_json, manifest_to_json
from hgrun.store.base import StoreBase

RELEASE_CACHE = 256  # decoded releases kept; a manifest with a thousand scripts is large


class AppStore(StoreBase):
    def create_app(self, workspace: str, name: str) -> App:
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM apps WHERE workspace = ? AND name = ?", (workspace, name)
            ).fetchone():
                raise ConflictError(f"app {name!r} already exists")
            row = db.execute(
                "INSERT INTO apps (workspace, name, created) VALUES (?, ?, ?) RETURNING *",
                (workspace, name, self._clock()),
            ).fetchone()
        return App(row["id"], row["workspace"], row["name"], row["created"])

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

    def delete_app(self, app_id: int) -> None:
        """Delete an app; its config, builds, releases, scripts, runs and output go with it
        (ON DELETE CASCADE)."""
        with self._tx() as db:
            db.execute("DELETE FROM apps WHERE id = ?", (app_id,))

    def apps(self, workspace: str) -> list[App]:
        rows = self._query("SELECT * FROM apps WHERE workspace = ? ORDER BY name", (workspace,))
        return [App(r["id"], r["workspace"], r["name"], r["created"]) for r in rows]

    def _sealed_columns(self) -> list[tuple[str, str, str]]:
        # Config values and each release's env snapshot are secrets; keys stay in clear.
        return [
            *super()._sealed_columns(),
            ("config", "app_id, key", "value"),
            ("releases", "id", "env"),
        ]

    def config(self, app_id: int) -> dict[str, str]:
        """The app's config, decrypted (values are sealed at rest)."""
        rows = self._query("SELECT key, value FROM config WHERE app_id = ? ORDER BY key", (app_id,))
        return {r["key"]: self._unseal(r["value"]) for r in rows}

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
                        (app_id, key, self._seal(value)),
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
                "INSERT INTO images (app_id, context_hash, image, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (app_id, context_hash) DO UPDATE SET image = excluded.image,"
                " created = excluded.created",
                (app_id, context_hash, image, self._clock()),
            )

    def create_release(
        self,
        app_id: int,
        *,
        image: str,
        context_hash: str,
        procfile: Mapping[str, str],
        manifest: Manifest,
        env: Mapping[str, str],
        description: str,
        actor: str = "",
    ) -> Release:
        with self._tx() as db:
            # Two deploys at once on two servers: one after the other, each its own version.
            self._db.lock(db, f"releases:{app_id}")
            row = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM releases WHERE app_id = ?", (app_id,)
            ).fetchone()
            new = db.execute(
                "INSERT INTO releases (app_id, version, image, context_hash, procfile, manifest,"
                " env, description, created, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING *",
                (
                    app_id,
                    row[0] + 1,
                    image,
                    context_hash,
                    json.dumps(dict(procfile)),
                    json.dumps(manifest_to_json(manifest)),
                    self._seal(json.dumps(dict(env))),
                    description,
                    self._clock(),
                    actor,
                ),
            ).fetchone()
        return _release(new, self._unseal)

    def releases(self, app_id: int, limit: int = 50) -> list[Release]:
        rows = self._query(
            "SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC LIMIT ?",
            (app_id, limit),
        )
        return [_release(r, self._unseal) for r in rows]

    def latest_release(self, app_id: int) -> Release | None:
        row = self._one(
            "SELECT id FROM releases WHERE app_id = ? ORDER BY version DESC LIMIT 1", (app_id,)
        )
        return self.release(row[0]) if row else None

    def release(self, release_id: int) -> Release:
        """One release, its manifest decoded to a :class:`Manifest`. Releases never change, so
        each is decoded once and kept (a manifest with a thousand scripts is a large JSON
        document, and every trigger reads it)."""
        cached = self._releases.get(release_id)
        if cached is not None:
            return cached
        row = self._one("SELECT * FROM releases WHERE id = ?", (release_id,))
        if row is None:
            raise NotFoundError(f"release #{release_id} not found")
        release = _release(row, self._unseal)
        with self._lock:
            if len(self._releases) >= RELEASE_CACHE:
                self._releases.clear()
            self._releases[release_id] = release
        return release


def _release(row: Any, unseal: Callable[[str], str]) -> Release:
    return Release(
        id=row["id"],
        app_id=row["app_id"],
        version=row["version"],
        image=row["image"],
        context_hash=row["context_hash"],
        procfile=json.loads(row["procfile"]),
        manifest=manifest_from_json(json.loads(row["manifest"])),
        env=json.loads(unseal(row["env"])),
        description=row["description"],
        created=row["created"],
        actor=row["actor"],
    )
