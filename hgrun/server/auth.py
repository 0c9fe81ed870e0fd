"""Bearer tokens, workspaces and scopes.

Tokens are ``hgr_`` + 256 random bits, shown once and stored as a SHA-256 hash. Lookup is by
hash; the final comparison is constant-time. A token belongs to one workspace; the optional
``X-Workspace-Id`` header must name it. Scopes nest: ``admin`` may do anything, ``deploy`` manages
apps, builds, releases and config and may run, ``run`` starts and watches runs, ``trigger`` may
only start scripts (optionally one script) and read those runs.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from collections.abc import Mapping

from hgrun.errors import AuthError, ForbiddenError
from hgrun.models import Scope, Token
from hgrun.store import Store, hash_token

TOKEN_PREFIX = "hgr_"

# What each scope grants, by action.
GRANTS: dict[Scope, frozenset[str]] = {
    Scope.ADMIN: frozenset({"admin", "deploy", "run", "read", "trigger"}),
    Scope.DEPLOY: frozenset({"deploy", "run", "read", "trigger"}),
    Scope.RUN: frozenset({"run", "read", "trigger"}),
    Scope.TRIGGER: frozenset({"trigger"}),
}


RUN_TOKEN_PREFIX = "run."  # tokens a run gets to trigger scripts from inside (fan-out)


def parent_of(trigger_name: str) -> int | None:
    """The run behind a run's own token (``run.42`` -> 42), for lineage."""
    if trigger_name.startswith(RUN_TOKEN_PREFIX) and trigger_name[4:].isdigit():
        return int(trigger_name[4:])
    return None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True)
class Principal:
    token: Token
    scripts: frozenset[str] | None = None
    """A run's own token: the ids of its app's scripts, the only ones it reaches; else None."""

    @property
    def workspace(self) -> str:
        return self.token.workspace

    @property
    def name(self) -> str:
        return self.token.name

    def may_trigger(self, script_id: int) -> bool:
        """A trigger token may be limited to one script; wider scopes may trigger any."""
        granted = "trigger" in GRANTS[self.token.scope]
        if self.scripts is not None and str(script_id) not in self.scripts:
            return False
        return granted and (self.token.script is None or self.token.script == str(script_id))

    def may_read_run(self, run_script_id: int | None) -> bool:
        if "read" in GRANTS[self.token.scope]:
            return True
        return run_script_id is not None and self.may_trigger(run_script_id)

    def require(self, action: str) -> None:
        if action not in GRANTS[self.token.scope]:
            raise ForbiddenError(
                f"token {self.token.name!r} (scope {self.token.scope.value}) may not {action}",
                "use a token with a wider scope; see `hgrun tokens`",
            )


def authenticate(store: Store, headers: Mapping[str, str]) -> Principal:
    """The principal behind a request's headers, or AuthError/ForbiddenError."""
    header = headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthError(
            "missing bearer token",
            "send `Authorization: Bearer <token>`; `hgrun login` stores one for the CLI",
        )
    digest = hash_token(secret.strip())
    found = store.token_by_hash(digest)
    # Found through an index on the digest of a 256-bit secret, which leaks nothing useful about
    # the secret; the digests are still compared in constant time before trusting the row.
    if found is None or not hmac.compare_digest(digest, found[1]):
        raise AuthError("invalid or revoked token", "log in again with a valid token")
    token = found[0]
    workspace = headers.get("x-workspace-id")
    if workspace and not hmac.compare_digest(workspace.encode(), token.workspace.encode()):
        raise ForbiddenError(
            f"token {token.name!r} does not belong to workspace {workspace!r}",
            "drop X-Workspace-Id or use a token of that workspace",
        )
    run_id = parent_of(token.name)
    if run_id is not None and token.scope is Scope.TRIGGER:
        # A run's own token reaches the scripts of its own app only, not the workspace's.
        app_id = store.run(run_id, token.workspace).app_id
        scripts = store.scripts(token.workspace, app_id=app_id)
        return Principal(token, frozenset(str(s.id) for s in scripts))
    return Principal(token)
