"""The CLI's side of the REST API: where it is, who we are, and one place that maps errors."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from hgrun import errors

DEFAULT_URL = "http://127.0.0.1:8765"


def config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hgrun" / "config.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    workspace: str | None

    @classmethod
    def load(cls, environ: Mapping[str, str]) -> Settings:
        """The login file, overridden by HGRUN_URL, HGRUN_TOKEN and HGRUN_WORKSPACE."""
        path = config_path(environ)
        stored: dict[str, Any] = {}
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise errors.InputError(
                    f"{path}: cannot read the CLI config ({e})", "run `hgrun login` again"
                ) from e
        return cls(
            url=(environ.get("HGRUN_URL") or stored.get("url") or DEFAULT_URL).rstrip("/"),
            token=environ.get("HGRUN_TOKEN") or stored.get("token"),
            workspace=environ.get("HGRUN_WORKSPACE") or stored.get("workspace"),
        )

    def save(self, environ: Mapping[str, str]) -> Path:
        """Write the login file with mode 0600 (created so, never readable by others)."""
        path = config_path(environ)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)
        os.replace(tmp, path)
        return path

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "hgrun-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.workspace:
            headers["X-Workspace-Id"] = self.workspace
        return headers

    def ws_url(self, path: str) -> str:
        base = self.url
        if base.startswith("https://"):
            return "wss://" + base[len("https://") :] + path
        return "ws://" + base.removeprefix("http://") + path


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http = httpx.Client(
            base_url=settings.url,
            headers=settings.headers(),
            timeout=httpx.Timeout(30.0, read=None),
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if not response.content:
            return None
        return response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        _check(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def put_stream(self, path: str, chunks: Iterable[bytes]) -> Any:
        return self.request(
            "PUT", path, content=chunks, headers={"Content-Type": "application/x-tar"}
        )

    def exists(self, path: str) -> bool:
        try:
            self._send("GET", path)
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
        try:
            with self._http.stream(
                method,
                path,
                params={k: v for k, v in (params or {}).items() if v is not None},
                content=content,
                headers=headers,
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e

    def _unreachable(self, e: Exception) -> errors.UnreachableError:
        return errors.UnreachableError(
            f"cannot reach the hgrun server at {self.settings.url} ({e.__class__.__name__})",
            "start it with `hgrun server`, or point HGRUN_URL / `hgrun login --url` at it",
        )


def _check(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"message": f"server answered {response.status_code}: {response.text[:200]}"}
    if not isinstance(body, dict):
        body = {"message": f"server answered {response.status_code}"}
    raise errors.from_json(body, response.status_code)
