"""Helpers for the acceptance tests: app folders, a REST client, CLI subprocesses, polling.

Plain functions and classes, not fixtures: each test module asks conftest's fixtures for the
server and the CLI and hands them to these.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from conftest import BUSYBOX_IMAGE, Cli, HgrunServer

T = TypeVar("T")

BUSYBOX_DOCKERFILE = f"FROM {BUSYBOX_IMAGE}\nCOPY . /app\nWORKDIR /app\n"


def unique(prefix: str) -> str:
    """An app name no other test (or xdist worker) uses: ``prefix-<8 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_busybox_app(
    root: Path,
    name: str,
    procfile: str = "hello: echo hello\n",
    manifest_extra: str = "",
) -> Path:
    """An app folder on the busybox test image: Dockerfile, hgrun.yaml and Procfile."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(BUSYBOX_DOCKERFILE)
    (root / "hgrun.yaml").write_text(
        f"name: {name}\nbuild:\n  dockerfile: Dockerfile\n{manifest_extra}"
    )
    (root / "Procfile").write_text(procfile)
    return root


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def check(done: subprocess.CompletedProcess[bytes], status: int = 0) -> str:
    """``done``'s stdout, after asserting its exit status (showing stderr when it differs)."""
    assert done.returncode == status, (
        f"exit {done.returncode}, wanted {status}\n--- stdout\n{text(done.stdout)[-3000:]}"
        f"\n--- stderr\n{text(done.stderr)[-3000:]}"
    )
    return text(done.stdout)


def deploy_busybox_app(
    cli: Cli,
    root: Path,
    name: str | None = None,
    *,
    server: HgrunServer | None = None,
    procfile: str = "hello: echo hello\n",
) -> str:
    """Create and deploy a busybox app in ``root``; return its name."""
    name = name or unique("bb")
    write_busybox_app(root, name, procfile)
    check(cli("apps:create", name, server=server))
    check(cli("deploy", cwd=root, server=server))
    return name


def run_id(label: str) -> int:
    """``42`` from ``run.42`` (what `hgrun run --detached` prints)."""
    label = label.strip()
    assert label.startswith("run.") and label[4:].isdigit(), f"not a run label: {label!r}"
    return int(label[4:])


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


class Api:
    """A small REST client for one server, with its admin token unless told otherwise."""

    def __init__(self, server: HgrunServer, token: str | None = None) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token or server.token}"},
            timeout=30,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def run(self, number: int) -> dict[str, Any]:
        response = self.http.get(f"/v1/runs/{number}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def finished_run(self, number: int, timeout: float = 60) -> dict[str, Any]:
        """The run once its status is final (polled)."""
        active = {"queued", "starting", "running"}

        def ended() -> dict[str, Any] | None:
            run = self.run(number)
            return run if run["status"] not in active else None

        return wait_for(ended, timeout, f"run {number} to end")

    def log_lines(self, app: str, number: int) -> list[dict[str, Any]]:
        response = self.http.get(f"/v1/apps/{app}/logs", params={"run": number})
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def cli_env(cli: Cli, server: HgrunServer | None = None, **extra: str) -> dict[str, str]:
    """The environment ``cli`` gives its subprocesses, for a Popen of our own."""
    target = server or cli.server
    return {
        **os.environ,
        "HGRUN_URL": target.url,
        "HGRUN_TOKEN": target.token,
        "XDG_CONFIG_HOME": str(cli.config_home),
        "NO_COLOR": "1",
        **extra,
    }


def cli_popen(
    cli: Cli,
    *args: str,
    cwd: Path | None = None,
    server: HgrunServer | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``hgrun ARGS`` started in the background (stdin a pipe, output captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hgrun.cli.main", *args],
        cwd=cwd,
        env={**cli_env(cli, server), **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def instance_id(server: HgrunServer) -> str:
    """The server's instance id (the ``hgrun.instance`` label of its containers), read from
    its store with sqlite3 in read-only mode."""
    db = sqlite3.connect(f"file:{server.data_dir / 'hgrun.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
    finally:
        db.close()
    assert row is not None, "the store has no instance id"
    return str(row[0])
