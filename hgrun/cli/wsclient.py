"""The attach client's WebSocket connection: the handshake on one socket, ws:// or wss://.

The opening of a run's attach WebSocket (RFC 6455 through :mod:`hgrun.relay.websocket`), and
what a refused handshake means as an hgrun error. Blocking code on the standard library alone
(``ssl`` is imported for ``wss://`` only): see :mod:`hgrun.cli.attach`, which moves the bytes.
"""

from __future__ import annotations

import contextlib
import json
import socket

from hgrun import errors
from hgrun.cli import trace
from hgrun.relay import websocket as wsproto
from hgrun.relay.protocol import SUBPROTOCOLS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Callable, Mapping
    from ssl import SSLContext  # ssl (OpenSSL) is imported for wss:// only
    from typing import Any

RECV_CHUNK = 256 * 1024
"""How much is read from the socket at a time."""
OPEN_TIMEOUT = 15.0


class WebSocket:
    """One open WebSocket: a non-blocking socket, what was read past the handshake, the agreed
    subprotocol and the answer's headers (names lower-case). ``again``: the errors that mean
    "not now" on this socket (TLS adds its own)."""

    def __init__(
        self,
        sock: socket.socket,
        subprotocol: str | None,
        headers: Mapping[str, str],
        rest: bytes,
        again: tuple[type[Exception], ...] = (BlockingIOError,),
    ) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self.headers = headers
        self.rest = rest
        self.again = again

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(
    url: str, headers: Mapping[str, str], what: str, ssl: SSLContext | None = None
) -> WebSocket:
    """Open the WebSocket at ``url`` (``ws://`` or ``wss://``, verified with ``ssl`` or the
    default context), offering the attach subprotocols.

    Raises :class:`~hgrun.errors.AuthError`, :class:`~hgrun.errors.ForbiddenError`,
    :class:`~hgrun.errors.NotFoundError` (or the server's own JSON error) when it refuses the
    upgrade, :class:`~hgrun.errors.UnreachableError` when it cannot be reached.
    """
    opened = _handshake(url, headers, what, ssl)
    if isinstance(opened, WebSocket):
        return opened
    raise _refused(*opened, what)


def create_and_connect(
    url: str,
    headers: Mapping[str, str],
    what: str,
    ssl: SSLContext | None = None,
    sent: Callable[[], object] | None = None,
) -> WebSocket | None:
    """:func:`connect` to an endpoint that creates the run it attaches to; None when the
    server refuses without an hgrun error, as one without that endpoint does (the caller then
    creates and attaches in two steps). ``sent()`` is called once the request has left, while
    the server makes the run: work done then costs the run no time."""
    opened = _handshake(url, headers, what, ssl, sent)
    if isinstance(opened, WebSocket):
        return opened
    if _json_error(opened[1]) is None:
        return None
    raise _refused(*opened, what)


def _handshake(
    url: str,
    headers: Mapping[str, str],
    what: str,
    ssl: SSLContext | None,
    sent: Callable[[], object] | None = None,
) -> WebSocket | tuple[wsproto.Answer, bytes]:
    """The open WebSocket, or the refusal's answer and body (the socket closed)."""
    secure, host, port, target = split_url(url)
    default_port = port == (443 if secure else 80)
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    key = wsproto.new_key()
    request = wsproto.handshake_request(host_header, target, key, SUBPROTOCOLS, headers)
    sock: socket.socket | None = None
    again: tuple[type[Exception], ...] = (BlockingIOError,)
    verify_error: tuple[type[Exception], ...] = ()  # a certificate the context refuses
    try:
        # An ASCII name as bytes: a str is encoded by the idna codec, whose import (with
        # stringprep and unicodedata) costs every start milliseconds.
        address: Any = host.encode("ascii") if host.isascii() else host
        sock = socket.create_connection((address, port), timeout=OPEN_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            import ssl as ssl_module

            again = (BlockingIOError, ssl_module.SSLWantReadError, ssl_module.SSLWantWriteError)
            verify_error = (ssl_module.SSLCertVerificationError,)
            if ssl is None:
                ssl = ssl_module.create_default_context()
            sock = ssl.wrap_socket(sock, server_hostname=host)
        trace.mark("request")  # the run request leaves now (the first mark wins)
        sock.sendall(request)
        if sent is not None:
            sent()
        received = b""
        while (answer := wsproto.parse_answer(received)) is None:
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                raise ConnectionResetError("the server closed the connection in the handshake")
            received += chunk
        if answer.status != 101:
            body = _body(sock, answer)
            sock.close()
            return answer, body
        subprotocol = wsproto.check_handshake(answer, key, SUBPROTOCOLS)
        sock.settimeout(None)
        sock.setblocking(False)
        return WebSocket(sock, subprotocol, answer.headers, answer.rest, again)
    except errors.HgrunError:
        if sock is not None:
            sock.close()
        raise
    except OSError as e:  # TimeoutError and ssl.SSLError too
        if sock is not None:
            sock.close()
        if isinstance(e, verify_error):
            reason = getattr(e, "verify_message", None) or getattr(e, "reason", None)
            raise errors.UnreachableError(
                f"cannot attach to {what}: the server's certificate is not trusted"
                f" ({reason or 'verification failed'})",
                hint="Pass its CA: hgrun login --ca-cert CA.pem (or set HGRUN_CA_CERT).",
            ) from e
        raise _unreachable(what, e) from e


def split_url(url: str) -> tuple[bool, str, int, str]:
    """A ``ws://`` or ``wss://`` URL as (secure, host, port, target): the host as
    :func:`urllib.parse.urlsplit` gives its ``hostname`` (lower-case, no brackets, no user
    info), the port or the scheme's, the path (``/`` if none) and query. Pure; urllib.parse
    is not imported for it (with ipaddress it costs every start of `hgrun run` milliseconds).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("ws", "wss"):
        raise errors.InputError(f"bad attach URL {url!r}: not a ws:// or wss:// URL")
    secure = scheme.lower() == "wss"
    rest = rest.partition("#")[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, target = rest[:end], rest[end:]
    netloc = netloc.rpartition("@")[2]
    if netloc.startswith("["):
        host, bracket, after = netloc[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise errors.InputError(f"bad attach URL {url!r}: invalid IPv6 address")
        port_text = after[1:]
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise errors.InputError(f"bad attach URL {url!r}: not a ws:// or wss:// URL")
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise errors.InputError(f"bad attach URL {url!r}: port {port_text!r} is not a number")
    port = int(port_text) if port_text else 0
    if port > 65535:
        raise errors.InputError(f"bad attach URL {url!r}: port out of range 0-65535")
    if target.startswith("?") or not target:
        target = "/" + target
    if target.endswith("?"):
        target = target[:-1]  # an empty query, as urlsplit drops it
    return secure, host.lower(), port or (443 if secure else 80), target


def _unreachable(what: str, e: BaseException) -> errors.UnreachableError:
    return errors.UnreachableError(
        f"cannot attach to {what}: {e or type(e).__name__}",
        hint="Check that the hgrun server is running and its URL is right.",
    )


def _body(sock: socket.socket, answer: wsproto.Answer) -> bytes:
    """The refusal's body: Content-Length of it, or up to the connection's end (capped)."""
    body = answer.rest
    length = answer.headers.get("content-length", "")
    want = int(length) if length.isdigit() else 64 * 1024
    with contextlib.suppress(OSError):
        while len(body) < min(want, 64 * 1024):
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                break
            body += chunk
    return body


def _json_error(body: bytes) -> dict[str, Any] | None:
    """The hgrun JSON error in a refusal's body, if it is one."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        parsed = json.loads(body or b"")
        if isinstance(parsed, dict) and parsed.get("error"):
            return parsed
    return None


def _refused(answer: wsproto.Answer, body: bytes, what: str) -> errors.HgrunError:
    """Turn a refused handshake into an hgrun error, using the server's JSON error if any."""
    status = answer.status
    parsed = _json_error(body)
    if parsed is not None:
        err = errors.from_json(parsed, status)
        if status in _REFUSALS and not isinstance(err, _REFUSALS[status][0]):
            cls = _REFUSALS[status][0]
            err = cls(err.message, err.hint)
        return err
    if status in _REFUSALS:
        cls, message, hint = _REFUSALS[status]
        return cls(message.format(what=what), hint)
    return errors.HgrunError(
        f"the server refused to attach to {what} (HTTP {status})",
        hint="Try again; if it persists, look at the server's log.",
    )


_REFUSALS: dict[int, tuple[type[errors.HgrunError], str, str]] = {
    401: (
        errors.AuthError,
        "the server did not accept your token when attaching to {what}",
        "Check that your API token is set and still valid.",
    ),
    403: (
        errors.ForbiddenError,
        "your token may not attach to {what}",
        "Attaching needs a token with the run scope in this workspace (X-Workspace-Id).",
    ),
    404: (
        errors.NotFoundError,
        "{what} was not found in this workspace",
        "`hgrun ps` lists the runs still going; a finished run cannot be attached.",
    ),
}
