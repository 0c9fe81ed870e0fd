"""hgrun.server.auth without a server: scopes as a table written from the README, token
parsing, revocation, workspaces. Real SQLite, no Docker; fast enough for mutation testing.

The README ("Tokens", "The server and its API") and the module's contract: ``admin`` may do
anything; ``deploy`` manages apps, builds, releases and config and may run; ``run`` starts and
watches runs; ``trigger`` may only start scripts (optionally one script) and read those runs.
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import pytest

from hgrun.errors import AuthError, ForbiddenError
from hgrun.models import Scope, Token
from hgrun.server.auth import Principal, authenticate, new_token
from hgrun.store import Store

ACTIONS = ("admin", "deploy", "run", "read", "trigger")

# Written out from the README, not read from auth.GRANTS.
ALLOWED = {
    Scope.ADMIN: {"admin", "deploy", "run", "read", "trigger"},
    Scope.DEPLOY: {"deploy", "run", "read", "trigger"},
    Scope.RUN: {"run", "read", "trigger"},
    Scope.TRIGGER: {"trigger"},
}


def principal(scope: Scope, script: str | None = None, workspace: str = "default") -> Principal:
    token = Token(
        id=1, workspace=workspace, name="t", scope=scope, script=script, created=0.0, revoked=None
    )
    return Principal(token)


@pytest.mark.parametrize("scope", list(Scope), ids=str)
@pytest.mark.parametrize("action", ACTIONS)
def test_require(scope: Scope, action: str) -> None:
    if action in ALLOWED[scope]:
        principal(scope).require(action)
    else:
        with pytest.raises(ForbiddenError) as refused:
            principal(scope).require(action)
        assert scope.value in refused.value.message and action in refused.value.message
        assert refused.value.hint


def test_every_scope_is_in_the_table() -> None:
    assert set(ALLOWED) == set(Scope)


@pytest.mark.parametrize(
    ("scope", "script", "script_id", "expected"),
    [
        (Scope.TRIGGER, None, 3, True),  # a trigger token for any script
        (Scope.TRIGGER, "3", 3, True),  # limited to script 3
        (Scope.TRIGGER, "3", 4, False),
        (Scope.TRIGGER, "3", 33, False),
        (Scope.TRIGGER, "7", 5, False),  # compared as equal, not in any order
        (Scope.RUN, None, 4, True),
        (Scope.DEPLOY, None, 4, True),
        (Scope.ADMIN, None, 4, True),
    ],
)
def test_may_trigger(scope: Scope, script: str | None, script_id: int, expected: bool) -> None:
    assert principal(scope, script).may_trigger(script_id) is expected


@pytest.mark.parametrize(
    ("scope", "script", "run_script", "expected"),
    [
        (Scope.ADMIN, None, None, True),
        (Scope.DEPLOY, None, None, True),
        (Scope.RUN, None, None, True),
        (Scope.RUN, None, 7, True),
        (Scope.TRIGGER, None, None, False),  # a one-off run: not a trigger token's
        (Scope.TRIGGER, None, 7, True),  # any script's run, for an unlimited trigger token
        (Scope.TRIGGER, "7", 7, True),
        (Scope.TRIGGER, "7", 8, False),
    ],
)
def test_may_read_run(
    scope: Scope, script: str | None, run_script: int | None, expected: bool
) -> None:
    assert principal(scope, script).may_read_run(run_script) is expected


def test_new_tokens_are_hgr_and_256_random_bits() -> None:
    made = {new_token() for _ in range(100)}
    assert len(made) == 100
    for token in made:
        assert token.startswith("hgr_")
        assert len(token) == 4 + 43  # 32 random bytes, base64url without padding
        assert set(token[4:]) <= set(string.ascii_letters + string.digits + "-_")


def test_a_principal_is_immutable() -> None:
    """Authorization decisions read a Principal; nothing may widen it after authentication."""
    found = principal(Scope.TRIGGER, "3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.token = principal(Scope.ADMIN).token  # type: ignore[misc]


# -- authenticate against a real store -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "hgrun.db", clock=lambda: 1000.0)
    store.ensure_workspace("default")
    store.ensure_workspace("other")
    return store


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic YWRtaW46YWRtaW4=", "Token {secret}",
     "Basic {secret}", "Apikey {secret}", "Bearerx {secret}",
     "{secret}", "Bearer{secret}", "Bearer hgr_wrong", "Bearer {secret}x", "Bearer x{secret}"],
    ids=repr,
)  # fmt: skip
def test_authenticate_refuses(store: Store, header: str | None) -> None:
    secret = new_token()
    store.add_token("default", "ci", secret, Scope.ADMIN)
    headers = {} if header is None else {"authorization": header.format(secret=secret)}
    with pytest.raises(AuthError) as refused:
        authenticate(store, headers)
    assert refused.value.hint


@pytest.mark.parametrize("form", ["Bearer {secret}", "bearer {secret}", "BEARER  {secret} "])
def test_authenticate_accepts(store: Store, form: str) -> None:
    secret = new_token()
    store.add_token("default", "ci", secret, Scope.RUN, script=None)
    found = authenticate(store, {"authorization": form.format(secret=secret)})
    assert (found.name, found.workspace, found.token.scope) == ("ci", "default", Scope.RUN)


def test_a_revoked_token_is_refused(store: Store) -> None:
    secret = new_token()
    store.add_token("default", "ci", secret, Scope.ADMIN)
    authenticate(store, {"authorization": f"Bearer {secret}"})
    store.revoke_token("default", "ci")
    with pytest.raises(AuthError):
        authenticate(store, {"authorization": f"Bearer {secret}"})


def test_the_workspace_header_must_name_the_tokens_workspace(store: Store) -> None:
    secret = new_token()
    store.add_token("other", "ci", secret, Scope.ADMIN)
    bearer = {"authorization": f"Bearer {secret}"}
    assert authenticate(store, bearer).workspace == "other"
    assert authenticate(store, {**bearer, "x-workspace-id": "other"}).workspace == "other"
    assert authenticate(store, {**bearer, "x-workspace-id": ""}).workspace == "other"
    for wrong in ("default", "othe", "other ", "OTHER"):
        with pytest.raises(ForbiddenError) as refused:
            authenticate(store, {**bearer, "x-workspace-id": wrong})
        assert repr(wrong) in refused.value.message and refused.value.hint


def test_a_token_limited_to_a_script_keeps_its_limit_through_the_store(store: Store) -> None:
    secret = new_token()
    store.add_token("default", "cron", secret, Scope.TRIGGER, script="12")
    found = authenticate(store, {"authorization": f"Bearer {secret}"})
    assert found.may_trigger(12) and not found.may_trigger(13)
    with pytest.raises(ForbiddenError):
        found.require("read")
