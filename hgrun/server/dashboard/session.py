"""Dashboard sign-in: sessions behind a cookie, and the CSRF token of each session.

A person signs in with an API token; the server keeps a session that refers to that token by its
SHA-256 (the hash the store already indexes), never the token itself, and hands the browser a
random session id in a cookie. The book is keyed by the SHA-256 of that id too, so a memory dump
of the book yields neither a token nor a usable cookie. Each request looks the token up again, so
revoking it ends its sessions at once.

Sessions expire after ``idle`` seconds without a request and ``lifetime`` seconds after sign-in
(OWASP Session Management Cheat Sheet: both an idle and an absolute timeout). They live in this
process's memory: a server restart signs everyone out, which is the safe failure.

CSRF: every state-changing request must carry the session's own random CSRF token, in a form
field or the ``X-CSRF-Token`` header (the synchronizer-token pattern). The cookie is also
``SameSite=Strict``, so a cross-site form does not even carry the session. Pure: time comes in as
``now``; no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets

COOKIE = "hgrun_session"
PRE_COOKIE = "hgrun_signin"  # the sign-in form's own CSRF token, before any session exists
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"

IDLE = 12 * 3600.0
LIFETIME = 7 * 24 * 3600.0
MAX_SESSIONS = 10_000


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclasses.dataclass
class Session:
    """One signed-in browser: which token (by hash) and its CSRF token."""

    token_hash: str
    csrf: str
    created: float
    seen: float


@dataclasses.dataclass
class SessionBook:
    """Sessions by the SHA-256 of their cookie value; bounded, expiring."""

    idle: float = IDLE
    lifetime: float = LIFETIME
    limit: int = MAX_SESSIONS
    _sessions: dict[str, Session] = dataclasses.field(default_factory=dict)

    def open(self, token_hash: str, now: float) -> tuple[str, Session]:
        """A new session for the token with this hash: (cookie value, session)."""
        self._expire(now)
        if len(self._sessions) >= self.limit:
            # The oldest goes first: a flood of sign-ins cannot grow the book without bound.
            oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
            del self._sessions[oldest]
        cookie = secrets.token_urlsafe(32)
        session = Session(token_hash, secrets.token_urlsafe(32), now, now)
        self._sessions[_digest(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None, now: float) -> Session | None:
        """The live session behind a cookie value (touching it), or None."""
        if not cookie:
            return None
        key = _digest(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.seen = now
        return session

    def close(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_digest(cookie), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.seen > self.idle or now - session.created > self.lifetime

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Whether a request's CSRF token matches, compared in constant time."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def cookie_header(
    name: str, value: str, *, secure: bool, max_age: int | None = None, path: str = "/"
) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, and Secure when served over TLS.

    ``max_age=0`` deletes the cookie; None makes it a browser-session cookie (the server-side
    expiry still applies).
    """
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
