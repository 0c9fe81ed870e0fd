"""The composition root: store, engine, supervisor and API wired together, served by uvicorn."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from hgrun.engine import EngineInfo
from hgrun.engine.docker import DockerEngine
from hgrun.errors import HgrunError, InputError
from hgrun.models import Scope
from hgrun.server.api import Server, build_app, stderr_tail
from hgrun.server.auth import new_token
from hgrun.server.connections import HEAD_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD, guarded_protocol
from hgrun.server.notifier import Notifier, Targets
from hgrun.server.retention import Pruner, Retention
from hgrun.server.scheduler import Scheduler
from hgrun.server.scripts import ScriptRunner
from hgrun.server.supervisor import Limits, Supervisor
from hgrun.server.workers import Workers
from hgrun.store import Store
from hgrun.store.audit import AuditLog, load_key

if TYPE_CHECKING:
    from hgrun.engine.swarm import SwarmEngine

DEFAULT_WORKSPACE = "default"
REGISTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?$")  # a registry's HOST[:PORT]


def open_store(data_dir: Path, max_output: int | None = Retention.max_output) -> Store:
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise InputError(
            f"cannot create the data directory {data_dir}: {e.strerror}", "pass --data-dir"
        ) from e
    return Store(data_dir / "hgrun.db", max_output=max_output)


def open_engine(
    kind: str,
    docker_host: str | None,
    *,
    placement: Sequence[str] = (),
    placement_timeout: float = 60.0,
    registry: str | None = None,
) -> DockerEngine | SwarmEngine:
    """The engine the server runs on: one Docker engine, or a Docker Swarm through its manager.

    Bad configuration fails here, before anything serves: a swarm engine checks that
    ``docker_host`` is a swarm manager and that every ready node's engine endpoint answers.
    """
    if kind == "docker":
        if placement or registry:
            flag = "--placement" if placement else "--registry"
            raise InputError(f"{flag} applies to --engine swarm only")
        return DockerEngine(docker_host)
    if kind == "swarm":
        from hgrun.engine.swarm import SwarmEngine

        if not docker_host:
            raise InputError(
                "--engine swarm needs --docker-host: the swarm manager's engine",
                "e.g. --docker-host unix:///var/run/docker.sock on the manager",
            )
        if registry is not None and not REGISTRY.match(registry):
            raise InputError(
                f"--registry {registry!r}: expected HOST:PORT", "e.g. --registry 10.0.0.5:5000"
            )
        return SwarmEngine(
            docker_host,
            constraints=placement,
            placement_timeout=placement_timeout,
            registry=registry,
        )
    raise InputError(f"--engine {kind!r}: expected docker or swarm")


def first_start(store: Store) -> str | None:
    """Create the default workspace and its admin token; the token, or None if not first."""
    if not store.ensure_workspace(DEFAULT_WORKSPACE):
        return None
    token = new_token()
    store.add_token(DEFAULT_WORKSPACE, "admin", token, Scope.ADMIN)
    return token


def capacity(info: EngineInfo, environ: Mapping[str, str]) -> tuple[int, int]:
    """The most memory (bytes) and CPUs one run may ask for: what the engine's host has, or less
    when ``HGRUN_MAX_MEMORY_MB`` / ``HGRUN_MAX_CPUS`` say so (a host shared with other work; a
    test that must see a refusal whatever machine it runs on). Never more than the host has: a
    size over that is refused before anything starts (README "Sizes"), not by the engine."""

    def cap(name: str, host: int, unit: int) -> int:
        value = environ.get(name, "").strip()
        if not value:
            return host
        if not value.isdigit() or int(value) == 0:
            raise InputError(
                f"{name}={value!r} is not a positive whole number", f"unset {name} or fix it"
            )
        return min(int(value) * unit, host)

    return cap("HGRUN_MAX_MEMORY_MB", info.memory, 1024**2), cap("HGRUN_MAX_CPUS", info.cpus, 1)


def serve(
    *,
    host: str,
    port: int,
    data_dir: Path,
    docker_host: str | None,
    limits: Limits,
    targets: Targets,
    environ: Mapping[str, str],
    say: Callable[[str], None],
    engine_kind: str = "docker",
    placement: Sequence[str] = (),
    placement_timeout: float = 60.0,
    retention: Retention | None = None,
    registry: str | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> None:
    """Run the server until SIGTERM or SIGINT; runs in flight are taken up at the next start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    retention = retention or Retention()
    store = open_store(data_dir, retention.max_output)
    workers = Workers()
    engine = open_engine(
        engine_kind,
        docker_host,
        placement=placement,
        placement_timeout=placement_timeout,
        registry=registry,
    )
    info = engine.info()
    host_memory, host_cpus = capacity(info, environ)
    instance = store.meta("instance", lambda: secrets.token_hex(8))
    supervisor = Supervisor(store, engine, instance=instance, limits=limits)
    audit = AuditLog(data_dir / "audit.db", load_key(data_dir, environ))
    supervisor.audit = lambda action, run, payload: audit.append(
        run.workspace, run.id, action, {"actor": str(run.trigger), **payload}
    )
    advertised = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    scripts = ScriptRunner(store, supervisor, server_url=advertised)
    notifier = Notifier(
        targets,
        stderr_tail=lambda run_id: stderr_tail(store, run_id, 50),
        app_name=lambda app_id: store.app_by_id(app_id).name,
        executor=workers.mail,
    )
    scripts.on_run_finished.append(notifier.run_finished)
    scheduler = Scheduler(store, scripts)
    server = Server(
        store,
        engine,
        supervisor,
        scripts,
        audit,
        host_cpus=host_cpus,
        host_memory=host_memory,
        scheduler_ticks=lambda: scheduler.ticks,
        workers=workers,
    )
    pruner = Pruner(store, retention, pool=workers.reads)
    token = first_start(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Engine calls block a worker thread each; the default pool of cpu+4 threads makes a
        # burst of cron starts queue behind a few slow `docker stop`s. The engine says how many
        # calls it serves at once.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=engine.concurrency, thread_name_prefix="engine"
            )
        )
        await supervisor.start()
        await scripts.resume_queues()
        scheduler.start()
        pruner.start()
        say(f"hgrun server listening on http://{host}:{port}")
        say(f"engine {engine_kind} at {engine.host}, data in {data_dir}")
        if token:
            say(f"admin token: {token}")
            say("(shown once; it is stored only as a hash. Save it: `hgrun login --token ...`)")
        yield
        await scheduler.stop()
        await pruner.stop()
        await supervisor.shutdown()
        await notifier.drain()
        await engine.aclose()
        workers.shutdown()

    app = build_app(server)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        ws_max_size=16 * 1024 * 1024,
        # Checked before any request reaches the app: see hgrun.server.connections.
        http=guarded_protocol(MAX_HEAD, HEAD_TIMEOUT),
        limit_concurrency=max_connections + 1,  # uvicorn counts the new connection too
        h11_max_incomplete_event_size=MAX_HEAD,
    )
    try:
        uvicorn.Server(config).run()
    except HgrunError:
        raise
    finally:
        store.close()
        audit.close()
