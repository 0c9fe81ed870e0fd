"""Helpers for the scripts acceptance tests: app folders declaring scripts, a REST client for
scripts, runs and tokens, and polling. Plain functions and classes, not fixtures; they need only
conftest (a real server, a real dockerd, the busybox image)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from conftest import BUSYBOX_IMAGE, Cli, HgrunServer

T = TypeVar("T")

ACTIVE = frozenset({"queued", "starting", "running"})


def unique(prefix: str) -> str:
    """A name no other test (or xdist worker) uses: ``prefix-<8 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def check(done: subprocess.CompletedProcess[bytes], status: int = 0) -> str:
    """``done``'s stdout, after asserting its exit status (showing both streams when not)."""
    assert done.returncode == status, (
        f"exit {done.returncode}, wanted {status}\n--- stdout\n{text(done.stdout)[-3000:]}"
        f"\n--- stderr\n{text(done.stderr)[-3000:]}"
    )
    return text(done.stdout)


def write_app(root: Path, name: str, scripts: str, *, top: str = "") -> Path:
    """An app folder on the busybox image whose hgrun.yaml declares ``scripts`` (YAML text,
    indented two spaces under ``scripts:``); ``top`` adds top-level keys (``network: host``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\n")
    (root / "Procfile").write_text("hello: echo hello\n")
    (root / "hgrun.yaml").write_text(
        f"name: {name}\nbuild:\n  dockerfile: Dockerfile\n{top}scripts:\n{scripts}"
    )
    return root


def deploy_app(
    cli: Cli,
    root: Path,
    name: str,
    scripts: str,
    *,
    top: str = "",
    server: HgrunServer | None = None,
) -> str:
    """Create ``name``, write its folder and deploy it; return the name."""
    write_app(root, name, scripts, top=top)
    check(cli("apps:create", name, server=server))
    check(cli("deploy", cwd=root, server=server))
    return name


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class ScriptApi:
    """A REST client for one server, with its admin token unless told otherwise."""

    def __init__(self, server: HgrunServer, token: str | None = None) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token or server.token}"},
            timeout=60,
        )

    def __enter__(self) -> ScriptApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def scripts(self, app: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(f"/v1/apps/{app}/scripts")
        return items

    def script_id(self, app: str, name: str) -> int:
        for script in self.scripts(app):
            if script["name"] == name:
                return int(script["id"])
        raise AssertionError(f"app {app} has no script {name}")

    def trigger(self, script_id: int, body: bytes = b"", **params: str) -> httpx.Response:
        return self.http.post(
            f"/v1/scripts/{script_id}/runs",
            content=body,
            params=params,
            headers={"Content-Type": "application/json"},
        )

    def start(self, script_id: int, body: bytes = b"") -> dict[str, Any]:
        """Trigger (detached); the run as answered, after asserting 201."""
        response = self.trigger(script_id, body)
        assert response.status_code == 201, (response.status_code, response.text)
        run: dict[str, Any] = response.json()
        return run

    def run(self, number: int) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/v1/runs/{number}")
        return run

    def finished_run(self, number: int, timeout: float = 60) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            run = self.run(number)
            return run if run["status"] not in ACTIVE else None

        return wait_for(ended, timeout, f"run {number} to end")

    def running(self, number: int, timeout: float = 30) -> dict[str, Any]:
        def up() -> dict[str, Any] | None:
            run = self.run(number)
            assert run["status"] in ACTIVE, f"run {number} ended before running: {run}"
            return run if run["status"] == "running" else None

        return wait_for(up, timeout, f"run {number} to be running")

    def script_runs(self, script_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.get(f"/v1/scripts/{script_id}/runs", limit=limit)
        return runs

    def log_text(self, app: str, number: int) -> str:
        response = self.http.get(f"/v1/apps/{app}/logs", params={"run": number})
        assert response.status_code == 200, response.text
        return "".join(
            json.loads(line)["line"] + "\n" for line in response.text.splitlines() if line
        )

    def stop(self, number: int) -> None:
        self.http.post(f"/v1/runs/{number}/stop")
