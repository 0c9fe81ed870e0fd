"""The ``hgrun`` CLI as a subprocess against a test server, and checking what it did."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from support.server import HgrunServer

CLI = [sys.executable, "-m", "hgrun.cli.main"]
"""How tests invoke hgrun: the module, so PYTHONPATH decides which tree is tested."""


class Cli:
    """Runs ``python -m hgrun.cli.main ARGS`` against a server, with its own XDG_CONFIG_HOME."""

    def __init__(self, server: HgrunServer, config_home: Path) -> None:
        self.server = server
        self.config_home = config_home

    def env(self, server: HgrunServer | None = None, **extra: str) -> dict[str, str]:
        """The environment of a CLI subprocess: the server's URL and token, no colour."""
        target = server or self.server
        return {
            **os.environ,
            "HGRUN_URL": target.url,
            "HGRUN_TOKEN": target.token,
            "XDG_CONFIG_HOME": str(self.config_home),
            "NO_COLOR": "1",
            **extra,
        }

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,  # noqa: A002 - mirrors subprocess.run
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        server: HgrunServer | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*CLI, *args],
            input=input,
            cwd=cwd,
            env={**self.env(server), **(env or {})},
            capture_output=True,
            timeout=timeout,
        )


def cli_popen(
    cli: Cli,
    *args: str,
    cwd: Path | None = None,
    server: HgrunServer | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``hgrun ARGS`` started in the background (stdin a pipe, output captured)."""
    return subprocess.Popen(
        [*CLI, *args],
        cwd=cwd,
        env={**cli.env(server), **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def check(done: subprocess.CompletedProcess[bytes], status: int = 0) -> str:
    """``done``'s stdout, after asserting its exit status (showing both streams when not)."""
    assert done.returncode == status, (
        f"exit {done.returncode}, wanted {status}\n--- stdout\n{text(done.stdout)[-3000:]}"
        f"\n--- stderr\n{text(done.stderr)[-3000:]}"
    )
    return text(done.stdout)


def run_id(label: str) -> int:
    """``42`` from ``run.42`` (what `hgrun run --detached` prints)."""
    label = label.strip()
    assert label.startswith("run.") and label[4:].isdigit(), f"not a run label: {label!r}"
    return int(label[4:])
