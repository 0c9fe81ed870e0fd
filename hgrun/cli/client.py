"""The CLI's side of the REST API: where it is, who we are, and one place that maps errors."""

from __future__ import annotations

import os
import stat

from hgrun import errors

# `hgrun run` imports this module on its start path, and makes no request with Api (it attaches
# over its own socket): json, urllib.parse, pathlib and http.client (with the email package; ssl
# with OpenSSL) are imported where they are used, typing only by the checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import http.client
    import ssl
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path
    from typing import Any

    from hgrun.cli.uploads import FileSpan

DEFAULT_URL = "http://127.0.0.1:8765"


def config_path(environ: Mapping[str, str]) -> Path:
    from pathlib import Path

    return Path(config_file(environ))


def config_file(environ: Mapping[str, str]) -> str:
    """The login file's path: ``$XDG_CONFIG_HOME/hgrun/config.json`` (else under ~/.config)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hgrun", "config.json")


class Settings:
    """Where the server is and who we are. ``token_from``: where the token came from, for hints
    ("HGRUN_TOKEN", the config file's path, or ""; not compared). ``ca_cert``: a CA certificate
    (PEM file) that signs a private server's certificate; else the system's trust store
    (``HGRUN_CA_CERT``, or saved by ``hgrun login --ca-cert``). Not changed once made."""

    __slots__ = ("url", "token", "workspace", "token_from", "ca_cert")

    def __init__(
        self,
        url: str,
        token: str | None,
        workspace: str | None,
        token_from: str = "",
        ca_cert: str | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.workspace = workspace
        self.token_from = token_from
        self.ca_cert = ca_cert

    def _compared(self) -> tuple[str, str | None, str | None, str | None]:
        return (self.url, self.token, self.workspace, self.ca_cert)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        token = None if self.token is None else "..."  # never a secret in a traceback
        return (
            f"Settings(url={self.url!r}, token={token}, workspace={self.workspace!r},"
            f" token_from={self.token_from!r}, ca_cert={self.ca_cert!r})"
        )

    @classmethod
    def load(cls, environ: Mapping[str, str]) -> Settings:
        """The login file, overridden by HGRUN_URL, HGRUN_TOKEN and HGRUN_WORKSPACE."""
        path = config_file(environ)
        stored: dict[str, Any] = {}
        if os.path.exists(path):
            import json

            try:
                with open(path) as f:
                    stored = json.loads(f.read())
            except (OSError, ValueError) as e:
                raise errors.InputError(
                    f"{path}: cannot read the CLI config ({e})", "run `hgrun login` again"
                ) from e
        token_from = ""
        if environ.get("HGRUN_TOKEN"):
            token_from = "HGRUN_TOKEN"
        elif stored.get("token"):
            token_from = str(path)
        return cls(
            url=(environ.get("HGRUN_URL") or stored.get("url") or DEFAULT_URL).rstrip("/"),
            token=environ.get("HGRUN_TOKEN") or stored.get("token"),
            workspace=environ.get("HGRUN_WORKSPACE") or stored.get("workspace"),
            token_from=token_from,
            ca_cert=environ.get("HGRUN_CA_CERT") or stored.get("ca_cert"),
        )

    def save(self, environ: Mapping[str, str]) -> Path:
        """Write the login file with mode 0600 (created so, never readable by others)."""
        import json

        path = config_path(environ)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        saved = {
            "url": self.url,
            "token": self.token,
            "workspace": self.workspace,
            "ca_cert": self.ca_cert,
        }
        with os.fdopen(fd, "w") as f:
            json.dump(saved, f, indent=2)
        os.replace(tmp, path)
        return path

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "hgrun-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.workspace:
            headers["X-Workspace-Id"] = self.workspace
        return headers

    def ssl_context(self) -> ssl.SSLContext | None:
        """How to verify an https server: always (hostname and chain), with ``ca_cert`` if set;
        None for http."""
        if not self.url.startswith("https://"):
            return None
        import ssl

        try:
            return ssl.create_default_context(cafile=self.ca_cert)
        except (OSError, ssl.SSLError) as e:
            raise errors.InputError(
                f"cannot load the CA certificate {self.ca_cert}: {e}",
                "pass a PEM file: hgrun login --ca-cert PATH",
            ) from e

    def ws_url(self, path: str) -> str:
        base = self.url
        if base.startswith("https://"):
            return "wss://" + base[len("https://") :] + path
        return "ws://" + base.removeprefix("http://") + path


class Api:
    """A small blocking client on the standard library's http.client.

    httpx would do, but importing it (and httpcore, and trio when present) costs more than a
    whole `docker run`; a one-off's start time is the CLI's first impression.
    """

    def __init__(self, settings: Settings) -> None:
        import urllib.parse

        self.settings = settings
        url = urllib.parse.urlsplit(settings.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise errors.InputError(
                f"invalid server URL {settings.url!r}", "use e.g. http://127.0.0.1:8765"
            )
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._headers = {**settings.headers(), "Accept": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=60, context=self.settings.ssl_context()
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        return self._conn

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = 60,
    ) -> http.client.HTTPResponse:
        import http.client

        query = _query(params)
        target = self._prefix + path + (f"?{query}" if query else "")
        all_headers = {**self._headers, **(headers or {})}
        chunked = (
            body is not None and not isinstance(body, bytes) and "Content-Length" not in all_headers
        )
        if chunked:
            all_headers["Transfer-Encoding"] = "chunked"
        # A kept-alive connection the server closed meanwhile fails on first use: retry once
        # on a fresh one, for requests whose body can be sent again.
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.timeout = read_timeout
                if conn.sock is not None:
                    # A kept-alive socket keeps the timeout it was opened with: a build step
                    # that prints nothing for a minute would end the stream as "unreachable".
                    conn.sock.settimeout(read_timeout)
                conn.request(method, target, body=body, headers=all_headers, encode_chunked=chunked)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt == 2 or chunked:
                    raise self._unreachable(e) from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise self._unreachable(e) from e
        return self._checked(response)

    def _checked(self, response: http.client.HTTPResponse) -> http.client.HTTPResponse:
        """``response``, unless it is an error: then the error it carries, raised."""
        if response.status >= 400:
            data = response.read()
            try:
                _check(response.status, data)
            except (errors.AuthError, errors.ForbiddenError) as e:
                raise cli_hint(e, self.settings) from None
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import json

        if "json" in kwargs:
            kwargs["body"] = json.dumps(kwargs.pop("json")).encode()
            kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        if "content" in kwargs:
            kwargs["body"] = kwargs.pop("content")
        response = self._send(method, path, **kwargs)
        data = response.read()
        return json.loads(data) if data else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def put_file_pieces(
        self,
        path: str,
        pieces: Iterable[bytes | FileSpan],
        length: int,
        progress: Callable[[int], None] | None = None,
    ) -> Any:
        """PUT ``length`` bytes made of ``pieces``: bytes as they are, each :class:`FileSpan`
        from its file with ``sendfile`` (zero copy from the page cache on a plain connection;
        read and sent on TLS). On a connection of its own, closed after: the server may read
        such a body off its socket and then closes it."""
        import http.client
        import json

        self.close()
        headers = {
            **self._headers,
            "Content-Type": "application/x-tar",
            "Content-Length": str(length),
        }
        conn = self._connection()
        try:
            conn.timeout = None
            conn.putrequest("PUT", self._prefix + path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise self._unreachable(e) from e
        try:
            try:
                _send_pieces(conn, pieces, progress)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early (a refused entry, the cap): its answer says why
            response = self._checked(conn.getresponse())
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from e
        finally:
            self.close()
        return json.loads(data) if data else None

    def exists(self, path: str) -> bool:
        try:
            self._send("GET", path).read()
        except errors.NotFoundError:
            return False
        return True

    def stream_lines(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """An NDJSON response, one object per line, as it arrives."""
        import http.client
        import json

        body = None if content is None else (c for c in content if c)
        response = self._send(
            method, path, params=params, body=body, headers=headers, read_timeout=None
        )
        try:
            for line in response:
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from e
        finally:
            self.close()

    def _unreachable(self, e: Exception) -> errors.UnreachableError:
        import ssl

        if isinstance(e, ssl.SSLCertVerificationError):
            return untrusted(self.settings.url, e)
        return unreachable(self.settings.url, e)


def unreachable(url: str, e: BaseException) -> errors.UnreachableError:
    """The one-line error for a server that cannot be reached (``e``: why)."""
    return errors.UnreachableError(
        f"cannot reach the hgrun server at {url} ({e.__class__.__name__})",
        "start it with `hgrun server`, or point HGRUN_URL / `hgrun login --url` at it",
    )


def untrusted(url: str, e: ssl.SSLCertVerificationError) -> errors.UnreachableError:
    """The one-line error for a server whose certificate does not verify."""
    reason = e.verify_message or e.reason or "verification failed"
    return errors.UnreachableError(
        f"the server at {url} has a certificate this CLI does not trust ({reason})",
        "pass its CA: hgrun login --ca-cert CA.pem (or set HGRUN_CA_CERT)",
    )


def _query(params: Mapping[str, Any] | None) -> str:
    import urllib.parse

    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, str(item)))
    return urllib.parse.urlencode(pairs)


SENDFILE_SLICE = 8 * 1024 * 1024  # bytes per sendfile call: progress moves at least this often


def _send_pieces(
    conn: http.client.HTTPConnection,
    pieces: Iterable[bytes | FileSpan],
    progress: Callable[[int], None] | None,
) -> None:
    sock = conn.sock
    for piece in pieces:
        if isinstance(piece, bytes):
            sock.sendall(piece)
            continue
        from hgrun.cli.uploads import shrank

        with open(piece.path, "rb") as f:
            sent = 0
            while sent < piece.size:
                n = sock.sendfile(f, sent, min(SENDFILE_SLICE, piece.size - sent))
                if n == 0:
                    raise shrank(piece.path)
                sent += n
                if progress:
                    progress(n)


def _check(status: int, data: bytes) -> None:
    import json

    try:
        body = json.loads(data)
    except ValueError:
        text = data[:200].decode(errors="replace")
        body = {"message": f"server answered {status}: {text}"}
    if not isinstance(body, dict):
        body = {"message": f"server answered {status}"}
    raise errors.from_json(body, status)


def cli_hint(error: errors.HgrunError, settings: Settings) -> errors.HgrunError:
    """``error`` with a hint in the CLI's words (the flag, the env var, the command) instead of
    the API's ("send Authorization: Bearer"); the server's message is kept."""
    where = settings.token_from
    if isinstance(error, errors.AuthError):
        if not settings.token:
            hint = "set HGRUN_TOKEN, or run `hgrun login --token TOKEN` (the admin token is"
            hint += " printed when the server first starts)"
        elif where == "HGRUN_TOKEN":
            hint = "the token in HGRUN_TOKEN is not valid here: fix or unset it"
        else:
            hint = "log in again: `hgrun login --token TOKEN`"
    elif "workspace" in error.message:
        hint = "unset HGRUN_WORKSPACE, or `hgrun login --workspace` with the token's own"
    elif "scope" not in f"{error.message} {error.hint}":
        return error
    else:
        used = "HGRUN_TOKEN" if where == "HGRUN_TOKEN" else "your token (`hgrun login`)"
        hint = f"{used} lacks that scope; an admin makes one with `hgrun tokens:create`"
    return type(error)(error.message, hint)
