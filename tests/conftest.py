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
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import docker
import pytest
from support.apps import BUSYBOX_IMAGE
from support.cli import Cli
from support.server import HgrunServer, free_port
from support.stores import Databases, StoreFactory, postgres_binaries

# Hypothesis runs every "hypothesis" entry point of site-packages when first imported (by its
# pytest plugin at the end of a run); a broken third-party one (trio 0.35's) must not fail the run.
os.environ.setdefault("HYPOTHESIS_NO_PLUGINS", "1")

# A suite started in the background (`cmd &` in a script, nohup) inherits SIGINT ignored, and so
# would every CLI it spawns: the Ctrl-C tests need what a terminal gives, the default. A Python
# handler here becomes the default in the children (exec resets handlers, not an ignore).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
PYTHON_IMAGE = "hgrun/python:bookworm"
# The debootstrapped toolchain image of each stack (scripts/images --STACK).
STACK_IMAGES = {
    s: f"hgrun/{s}:bookworm" for s in ("python", "node", "go", "ruby", "php", "rust", "java")
}
BASE_IMAGES = frozenset({BUSYBOX_IMAGE, *STACK_IMAGES.values()})
TEST_LABELS = ("hgrun.run", "hgrun.test")
_IMAGES_AT_START = "hgrun_test_images_at_start"


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


@pytest.fixture(scope="session")
def store_databases(request: pytest.FixtureRequest) -> Iterator[Databases]:
    """PostgreSQL databases for the shared store suite, in this session's private cluster
    (the ``postgres`` fixture's). Skipped only where PostgreSQL is not installed: CI installs it
    (scripts/setup), so there the PostgreSQL half of the suite always runs."""
    if postgres_binaries() is None:
        pytest.skip(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres):"
            " run scripts/setup to test the PostgreSQL store"
        )
    databases = Databases(request.getfixturevalue("postgres"))
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``make_store(name="hgrun", **options)``: a real store on each backend in turn (see
    tests/support/stores.py); every store the test opened is closed at its end."""
    databases = (
        request.getfixturevalue("store_databases") if request.param == "postgresql" else None
    )
    factory = StoreFactory(request.param, tmp_path, databases)
    try:
        yield factory
    finally:
        factory.close()


# -- hgrun servers and the CLI ---------------------------------------------------------------


ServerFactory = Callable[..., HgrunServer]

# The servers each test started (by node id): a failing test's report shows their last lines,
# which are otherwise gone with the server (a failure seen only under CI's load says why).
_SERVERS_OF: dict[str, list[HgrunServer]] = {}
SERVER_LOG_TAIL = 12_000  # characters of each server's output in a failure's report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        shared = getattr(item, "funcargs", {}).get("server")  # the session's, if it used it
        mine = _SERVERS_OF.get(item.nodeid, [])
        for server in mine + ([shared] if isinstance(shared, HgrunServer) else []):
            tail = server.log[-SERVER_LOG_TAIL:]
            report.sections.append((f"hgrun server on port {server.port}, last lines", tail))
    if report.when == "teardown":
        _SERVERS_OF.pop(item.nodeid, None)


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
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        _SERVERS_OF.setdefault(test, []).append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server(hgrun_server: ServerFactory) -> HgrunServer:
    """One shared ``hgrun server`` for the session (the one ``cli`` talks to by default). It
    allows ``network: host`` (a script that calls the API from inside needs it); what a server
    without the permission refuses is in test_least_privilege.py."""
    return hgrun_server("--allow-network", "host")


@pytest.fixture(scope="session")
def cli(server: HgrunServer, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """``cli(*args, input=None, cwd=None, env=None, timeout=120, server=None)`` ->
    CompletedProcess (stdout/stderr bytes), with HGRUN_URL/HGRUN_TOKEN for the shared server
    (or ``server=``) and an isolated XDG_CONFIG_HOME."""
    return Cli(server, tmp_path_factory.mktemp("xdg-config"))
