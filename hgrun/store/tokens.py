"""Workspaces and API tokens (stored hashed)."""

from __future__ import annotations

import hashlib
from typing import Any

from hgrun.errors import ConflictError, NotFoundError
from hgrun.models import Scope, Token
from hgrun.store.base import StoreBase


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so one round of SHA-256 is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore(StoreBase):
    def ensure_workspace(self, workspace: str) -> bool:
        """Create the workspace if missing; True when it was created."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO workspaces (id, created) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (workspace, self._clock()),
            )
            return cur.rowcount == 1

    def workspace_exists(self, workspace: str) -> bool:
        return self._one("SELECT 1 FROM workspaces WHERE id = ?", (workspace,)) is not None

    def add_token(
        self,
        workspace: str,
        name: str,
        secret: str,
        scope: Scope,
        script: str | None = None,
        *,
        replace: bool = False,
    ) -> Token:
        """A new token; a name already taken is a ConflictError, unless ``replace``: then the
        token of that name takes the new secret (the old one stops working), live again."""
        with self._tx() as db:
            if replace:
                row = db.execute(
                    "INSERT INTO tokens (workspace, name, hash, scope, script, created)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workspace, name) DO UPDATE SET"
                    " hash = excluded.hash, scope = excluded.scope, script = excluded.script,"
                    " created = excluded.created, revoked = NULL RETURNING *",
                    (workspace, name, hash_token(secret), scope.value, script, self._clock()),
                ).fetchone()
                return _token(row)
            if db.execute(
                "SELECT 1 FROM tokens WHERE workspace = ? AND name = ?", (workspace, name)
            ).fetchone():
                raise ConflictError(
                    f"a token named {name!r} already exists", "pick another name or revoke it"
                )
            row = db.execute(
                "INSERT INTO tokens (workspace, name, hash, scope, script, created)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (workspace, name, hash_token(secret), scope.value, script, self._clock()),
            ).fetchone()
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


def _token(row: Any) -> Token:
    return Token(
        id=row["id"],
        workspace=row["workspace"],
        name=row["name"],
        scope=Scope(row["scope"]),
        script=row["script"],
        created=row["created"],
        revoked=row["revoked"],
    )
