"""Session fixtures: a real Docker engine, the local images, PostgreSQL, hgrun servers, the CLI.

Tests that need Docker ask for ``docker_host`` (directly, or through ``docker_client``,
``busybox_image``, ``python_image``, ``hgrun_server`` or ``cli``). The engine is
``$HGRUN_TEST_DOCKER_HOST`` when set (``scripts/test`` sets it); otherwise each pytest process
(each xdist worker) starts a private dockerd of its own with ``scripts/dockerd`` and deletes it at
the end. With a given engine, the containers labelled ``hgrun.run`` or ``hgrun.test`` and the
``hgrun-test/*`` images the session made are removed once the whole session is over (by the xdist
controller, so one worker never removes what another is still using).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

# Hypothesis runs every "hypothesis" entry point of site-packages when first imported (by its
# pytest plugin at the end of a run); a broken third-party one (trio 0.35's) must not fail the run.
os.environ.setdefault("HYPOTHESIS_NO_PLUGINS", "1")

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
BUSYBOX_IMAGE = "hgrun-test/busybox:latest"
PYTHON_IMAGE = "hgrun/python:bookworm"
# The debootstrapped toolchain image of each stack (scripts/images --STACK).
STACK_IMAGES = {
    s: f"hgrun/{s}:bookworm" for s in ("python", "node", "go", "ruby", "php", "rust", "java")
}
BASE_IMAGES = frozenset({BUSYBOX_IMAGE, *STACK_IMAGES.values()})
TEST_LABELS = ("hgrun.run", "hgrun.test")
ADMIN_TOKEN = re.compile(r"admin token: (\S+)")
_IMAGES_AT_START = "hgrun_test_images_at_start"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _script(name: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run scripts/<name>; return its stdout (the scripts print only their result there)."""
    done = subprocess.run(
        [str(SCRIPTS / name), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/{name} {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        )
    return done.stdout.strip()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# -- cleanup of a given engine, once per whole session ---------------------------------------


def _test_image_tags(client: docker.DockerClient) -> set[str]:
    return {t for image in client.images.list() for t in image.tags if t.startswith("hgrun-test/")}


def pytest_sessionstart(session: pytest.Session) -> None:
    given = os.environ.get("HGRUN_TEST_DOCKER_HOST")
    if not given or _is_xdist_worker(session.config):
        return
    client = docker.DockerClient(base_url=given)
    try:
        setattr(session.config, _IMAGES_AT_START, _test_image_tags(client))
    except docker.errors.DockerException:
        pass  # the docker_host fixture reports an unreachable engine where a test needs it
    finally:
        client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    given = os.environ.get("HGRUN_TEST_DOCKER_HOST")
    at_start: set[str] | None = getattr(session.config, _IMAGES_AT_START, None)
    if not given or at_start is None or _is_xdist_worker(session.config):
        return
    client = docker.DockerClient(base_url=given)
    try:
        for label in TEST_LABELS:
            for container in client.containers.list(
                all=True, filters={"label": label}, sparse=True
            ):
                try:
                    container.remove(force=True)
                except docker.errors.APIError:
                    pass  # gone already, or another session is removing it
        for tag in _test_image_tags(client) - at_start - BASE_IMAGES:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass
    finally:
        client.close()


# -- the engine and its images ---------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """A DOCKER_HOST URL for a real engine: $HGRUN_TEST_DOCKER_HOST, else a private dockerd."""
    given = os.environ.get("HGRUN_TEST_DOCKER_HOST")
    if given:
        yield given
        return
    # Short path under /tmp: the engine's unix sockets must fit in 108 bytes, and pytest's
    # tmp dirs are deep. One dir (and engine) per pytest process, so xdist workers don't meet.
    state = tempfile.mkdtemp(prefix="hgrun-dockerd-", dir="/tmp")
    env = {"HGRUN_DOCKERD_PRIVATE": "1"}
    try:
        host = _script("dockerd", "start", state, env=env)
        yield host
    finally:
        try:
            _script("dockerd", "stop", state, env=env)
        finally:
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host)
    try:
        yield client
    finally:
        client.close()


def _ensure_image(client: docker.DockerClient, docker_host: str, tag: str, flag: str) -> str:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        _script("images", flag, env={"DOCKER_HOST": docker_host})
    return tag


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient, docker_host: str) -> str:
    """'hgrun-test/busybox:latest': FROM scratch, static busybox, CMD ["sh"]."""
    return _ensure_image(docker_client, docker_host, BUSYBOX_IMAGE, "--busybox")


@pytest.fixture(scope="session")
def python_image(docker_client: docker.DockerClient, docker_host: str) -> str:
    """'hgrun/python:bookworm': debootstrap minbase + python3, psycopg2; CMD ["python3"]."""
    return _ensure_image(docker_client, docker_host, PYTHON_IMAGE, "--python")


def stack_image_cached(stack: str) -> bool:
    """Whether ``scripts/images --STACK`` would take seconds (its tarball is cached), not a
    debootstrap: the slow tests of java and rust run only then."""
    done = subprocess.run([str(SCRIPTS / "images"), "--check", stack], capture_output=True)
    return done.returncode == 0


@pytest.fixture(scope="session")
def stack_image(docker_client: docker.DockerClient, docker_host: str) -> Callable[[str], str]:
    """``stack_image("go")`` -> 'hgrun/go:bookworm', made by scripts/images when missing
    (a debootstrap of about a minute the first time on a machine, then cached)."""

    def ensure(stack: str) -> str:
        return _ensure_image(docker_client, docker_host, STACK_IMAGES[stack], f"--{stack}")

    return ensure


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """DATABASE_URL of a throwaway cluster on 127.0.0.1 (superuser hgrun, database pyapp)."""
    port = str(free_port())
    url = _script("postgres", "start", port)
    try:
        yield url
    finally:
        _script("postgres", "stop", port)


# -- hgrun servers and the CLI ---------------------------------------------------------------


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
                self.token = match.group(1)

    def _wait_healthy(self) -> None:
        if self.process is None:
            raise RuntimeError("hgrun server was not started")
        deadline = time.monotonic() + self.startup_timeout
        healthy = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                healthy = httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
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


ServerFactory = Callable[..., HgrunServer]


@pytest.fixture(scope="session")
def hgrun_server(
    docker_host: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """A factory: ``hgrun_server(*extra_args, env=None, port=None, data_dir=None)`` starts an
    ``hgrun server`` on 127.0.0.1 with a fresh data dir and waits for /v1/health. Every server
    it started is killed at the end of the session."""
    started: list[HgrunServer] = []

    def start(
        *args: str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
    ) -> HgrunServer:
        server = HgrunServer(
            port=port or free_port(),
            data_dir=data_dir or tmp_path_factory.mktemp("hgrun-data"),
            docker_host=docker_host,
            args=args,
            env=dict(env or {}),
        )
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server(hgrun_server: ServerFactory) -> HgrunServer:
    """One shared ``hgrun server`` for the session (the one ``cli`` talks to by default)."""
    return hgrun_server()


class Cli:
    """Runs ``python -m hgrun.cli.main ARGS`` against a server, with its own XDG_CONFIG_HOME."""

    def __init__(self, server: HgrunServer, config_home: Path) -> None:
        self.server = server
        self.config_home = config_home

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,  # noqa: A002 - mirrors subprocess.run
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        server: HgrunServer | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        target = server or self.server
        full_env: dict[str, Any] = {
            **os.environ,
            "HGRUN_URL": target.url,
            "HGRUN_TOKEN": target.token,
            "XDG_CONFIG_HOME": str(self.config_home),
            "NO_COLOR": "1",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "hgrun.cli.main", *args],
            input=input,
            cwd=cwd,
            env=full_env,
            capture_output=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def cli(server: HgrunServer, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """``cli(*args, input=None, cwd=None, env=None, timeout=120, server=None)`` ->
    CompletedProcess (stdout/stderr bytes), with HGRUN_URL/HGRUN_TOKEN for the shared server
    (or ``server=``) and an isolated XDG_CONFIG_HOME."""
    return Cli(server, tmp_path_factory.mktemp("xdg-config"))
