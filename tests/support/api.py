"""A small REST client for one test server: runs, logs, scripts, with polls for run states."""

from __future__ import annotations

import json
from typing import Any

import httpx

from support.server import HgrunServer
from support.waits import wait_for

ACTIVE = frozenset({"queued", "starting", "running"})
"""The statuses of a run that may still change (the API's words)."""


class Api:
    """A REST client for one server, with its admin token unless told otherwise."""

    def __init__(self, server: HgrunServer, token: str | None = None) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token or server.token}"},
            timeout=60,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        """The JSON of ``GET path``, after asserting 200."""
        response = self.http.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    # -- runs ----------------------------------------------------------------------------

    def run_taking_upload(self, app: str, command: list[str]) -> int:
        """A detached run that waits for its ``--file`` upload: its number."""
        response = self.http.post(
            f"/v1/apps/{app}/runs", json={"command": command, "detached": True, "uploads": True}
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def run(self, number: int) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/v1/runs/{number}")
        return run

    def finished_run(self, number: int, timeout: float = 60) -> dict[str, Any]:
        """The run once its status is final (polled)."""

        seen: dict[str, Any] = {}

        def ended() -> dict[str, Any] | None:
            run = self.run(number)
            seen.update(run)
            return run if run["status"] not in ACTIVE else None

        try:
            return wait_for(ended, timeout, f"run {number} to end")
        except AssertionError as e:
            raise AssertionError(f"{e}; the run as last seen: {seen}") from None

    def running(self, number: int, timeout: float = 30) -> dict[str, Any]:
        """The run once it is running; fails if it ends first."""

        def up() -> dict[str, Any] | None:
            run = self.run(number)
            assert run["status"] in ACTIVE, f"run {number} ended before running: {run}"
            return run if run["status"] == "running" else None

        return wait_for(up, timeout, f"run {number} to be running")

    def stop(self, number: int) -> None:
        self.http.post(f"/v1/runs/{number}/stop")

    def log_lines(self, app: str, number: int) -> list[dict[str, Any]]:
        """The run's lines of the app log, as the API sends them."""
        response = self.http.get(f"/v1/apps/{app}/logs", params={"run": number})
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def log_text(self, app: str, number: int) -> str:
        """The run's output as text, a newline after each line."""
        return "".join(line["line"] + "\n" for line in self.log_lines(app, number))

    # -- scripts -------------------------------------------------------------------------

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

    def script_runs(self, script_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.get(f"/v1/scripts/{script_id}/runs", limit=limit)
        return runs
