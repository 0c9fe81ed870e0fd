"""An ``hgrun server`` subprocess on loopback, as the ``hgrun_server`` fixture starts them."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

ADMIN_TOKEN = re.compile(r"admin token saved in (\S+) ")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HgrunServer:
    """An `hgrun server` subprocess on loopback. Its stdout and stderr are read by a thread
    into ``output`` (so the pipe never fills); ``token`` is the admin token it printed."""

    port: int
    data_dir: Path
    docker_host: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 60.0
    token: str = ""
    process: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    ca_cert: str | None = None  # serving HTTPS (args carry --tls-cert/--tls-key): its CA

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_cert else 'http'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "hgrun.cli.main", "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--docker-host", self.docker_host,
            *self.args,
        ]  # fmt: skip

    def start(self) -> HgrunServer:
        self.output = []
        self.process = subprocess.Popen(
            self.command(),
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        self._wait_healthy()
        return self

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        for raw in process.stdout or ():
            line = raw.decode(errors="replace")
            self.output.append(line)
            if match := ADMIN_TOKEN.search(line):
                self.token = Path(match.group(1)).read_text().strip()

    def _wait_healthy(self) -> None:
        if self.process is None:
            raise RuntimeError("hgrun server was not started")
        deadline = time.monotonic() + self.startup_timeout
        healthy = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                verify = ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else True
                answer = httpx.get(f"{self.url}/v1/health", timeout=2, verify=verify)
                healthy = answer.status_code == 200
            except httpx.TransportError:
                pass
            # The admin token is printed once, on the first start of a data dir; a restart
            # keeps the token it had.
            if healthy and self.token:
                return
            time.sleep(0.1)
        log = "".join(self.output)
        if self.process.poll() is None and healthy:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"hgrun server printed no 'admin token: ...' line:\n{log}")
        self.stop(signal.SIGKILL)
        raise RuntimeError(
            f"hgrun server on {self.url} not healthy within {self.startup_timeout} s "
            f"(exit {self.process.returncode}):\n{log}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send ``sig``, wait up to ``timeout`` (then SIGKILL); return the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode

    def restart(self, sig: int = signal.SIGTERM) -> HgrunServer:
        """Stop and start again on the same port and data dir (the token is kept)."""
        self.stop(sig)
        return self.start()

    @property
    def log(self) -> str:
        return "".join(self.output)


def https_server(certs: Path, data_dir: Path, docker_host: str) -> HgrunServer:
    """An ``hgrun server`` (not started) serving HTTPS with ``certs/server.pem`` and
    ``certs/server.key``, trusted through ``certs/ca.pem``: the files support/tls.py's
    ``certificate`` writes for a CA named ``ca`` and a server named ``server``."""
    return HgrunServer(
        port=free_port(),
        data_dir=data_dir,
        docker_host=docker_host,
        args=("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
        ca_cert=str(certs / "ca.pem"),
    )


def store_rows(server: HgrunServer, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the server's SQLite store, opened read-only with sqlite3 (what
    the store wrote, behind the server's back)."""
    db = sqlite3.connect(f"file:{server.data_dir / 'hgrun.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def instance_id(server: HgrunServer) -> str:
    """The server's instance id (the ``hgrun.instance`` label of its containers)."""
    rows = store_rows(server, "SELECT value FROM meta WHERE key = 'instance'")
    assert rows, "the store has no instance id"
    return str(rows[0][0])


def run_containers(client: docker.DockerClient, server: HgrunServer, number: int) -> list[Any]:
    """The containers of ``server``'s run ``number``. Every test's server numbers its runs from
    1 and they share the worker's dockerd (and live until the session ends): the run label alone
    finds other servers' runs too, so this one's instance label is part of the filter. Sparse:
    no inspect per container, which would race with its removal."""
    labels = [f"hgrun.instance={instance_id(server)}", f"hgrun.run={number}"]
    return list(client.containers.list(all=True, sparse=True, filters={"label": labels}))
