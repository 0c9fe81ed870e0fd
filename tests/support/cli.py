"""The ``hgrun`` CLI as a subprocess against a test server, and checking what it did."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from support.server import HgrunServer

CLI = [sys.executable, "-m", "hgrun.cli.main"]
"""How tests invoke hgrun: the module, so PYTHONPATH decides which tree is tested."""


class Cli:
    """Runs ``python -m hgrun.cli.main ARGS`` against a server, with its own XDG_CONFIG_HOME
    (and XDG_CACHE_HOME in it: ``hgrun run``'s folder check writes there)."""

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
            "XDG_CACHE_HOME": str(self.config_home / "cache"),
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


@contextlib.contextmanager
def cli_on_pty(
    cli: Cli, *args: str, cwd: Path, server: HgrunServer | None = None
) -> Iterator[tuple[int, int]]:
    """``hgrun ARGS`` from ``cwd`` with a pty for its terminal: its pid and the pty's fd. At
    the end the fd is closed and the process killed and reaped if the test did not reap it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: hgrun on a terminal
        os.chdir(cwd)
        os.execve(CLI[0], [*CLI, *args], cli.env(server))
    try:
        yield pid, fd
    finally:
        os.close(fd)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def read_until(fd: int, pattern: bytes, timeout: float) -> bytes:
    """Read the pty until ``pattern`` (a regex) shows; everything read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} never came; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def read_line(process: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    """The next line of ``process``'s stdout ("" at its end), or fail after ``timeout`` seconds
    (a thread reads, so a silent process cannot hang the test).

    It reads the pipe a byte at a time: ``communicate()`` later reads the pipe's fd, not the file
    object, so a buffered ``readline`` would swallow what came with the line."""
    got: list[bytes] = []
    fd = process.stdout.fileno()  # type: ignore[union-attr]

    def read() -> None:
        line = b""
        while not line.endswith(b"\n") and (byte := os.read(fd, 1)):
            line += byte
        got.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert got, f"no line from the CLI within {timeout} s"
    return got[0]
