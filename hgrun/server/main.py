"""The composition root: store, engine, supervisor and API wired together, served by uvicorn."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from hgrun.engine import DEFAULT_BUILD_LIMITS, DEFAULT_LOG_BYTES, BuildLimits, EngineInfo
from hgrun.engine.docker import DockerEngine
from hgrun.engine.tls import EngineTLS
from hgrun.errors import HgrunError, InputError
from hgrun.models import Run, RunStatus, Scope
from hgrun.server.api import Server, build_app, stderr_tail
from hgrun.server.auditwriter import Appender, AuditWriter
from hgrun.server.auth import new_token
from hgrun.server.connections import HEAD_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD, guarded_protocol
from hgrun.server.launcher import Launcher
from hgrun.server.memory import start_trimming
from hgrun.server.notifier import Notifier, Targets
from hgrun.server.recovery import process_gone
from hgrun.server.retention import Pruner, Retention
from hgrun.server.scheduler import Scheduler
from hgrun.server.scripts import ScriptRunner
from hgrun.server.slots import DEFAULT_MAX_QUEUE, DEFAULT_MAX_RUNS
from hgrun.server.supervisor import Limits, Supervisor
from hgrun.server.warm import DEFAULT_SIZE as DEFAULT_WARM
from hgrun.server.warm import WarmPool
from hgrun.server.workers import Workers
from hgrun.store import Store
from hgrun.store.audit import AuditLog
from hgrun.store.keys import (
    Sealer,
    begin_rotation,
    finish_rotation,
    load_keys,
    private_dir,
)

if TYPE_CHECKING:
    from hgrun.engine.swarm import SwarmEngine

DEFAULT_WORKSPACE = "default"
ADMIN_TOKEN_FILE = "admin.token"
REGISTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?$")  # a registry's HOST[:PORT]


def open_data_dir(data_dir: Path) -> None:
    """The data directory, owner-only (0700, its files 0600) whether new or not; every file the
    server makes from now on is owner-only too (umask 077)."""
    os.umask(0o077)
    try:
        private_dir(data_dir)
    except OSError as e:
        raise InputError(
            f"cannot create the data directory {data_dir}: {e.strerror}", "pass --data-dir"
        ) from e


def open_store(
    data_dir: Path,
    environ: Mapping[str, str],
    max_output: int | None = Retention.max_output,
    store: str | None = None,
) -> Store:
    """The store, its secrets sealed with the audit key (see ``hgrun.store.keys``): the
    PostgreSQL database at ``store`` (a URL), else SQLite in the data dir. Servers sharing one
    PostgreSQL store share the key too (``HGRUN_AUDIT_KEY``): a store whose secrets do not open
    with this server's key is refused here."""
    open_data_dir(data_dir)
    sealer = Sealer(load_keys(data_dir, environ))
    return Store(store or data_dir / "hgrun.db", max_output=max_output, sealer=sealer)


def open_audit(data_dir: Path, keys: Sequence[bytes], store_url: str | None = None) -> AuditLog:
    """The audit log: in the PostgreSQL store at ``store_url`` (one log for every server on
    it), else ``audit.db`` in the data dir. ``keys[0]`` encrypts, the others still decrypt."""
    return AuditLog(store_url or data_dir / "audit.db", keys[0], old_keys=keys[1:])


def rotate_key(
    data_dir: Path, environ: Mapping[str, str], store_url: str | None = None
) -> tuple[int, int]:
    """Re-encrypt every secret of the store and every audit record under a new key (the server
    must be stopped). Both keys are accepted until the end; a rotation cut short is finished by
    running it again. Returns (store rows, audit records) rewritten."""
    open_data_dir(data_dir)
    keys = begin_rotation(data_dir, environ)
    store = Store(store_url or data_dir / "hgrun.db", sealer=Sealer(keys))
    try:
        rows = store.reseal(rotate=True)
    finally:
        store.close()
    # On PostgreSQL, the store's log, and a per-server audit.db left from before it: the old
    # file stays readable with the new key (docs/scale-out.md).
    old_file = data_dir / "audit.db"
    targets: list[Path | str] = [old_file]
    if store_url:
        targets = [store_url, old_file] if old_file.exists() else [store_url]
    records = 0
    for target in targets:
        audit = AuditLog(target, keys[0], old_keys=keys[1:])
        try:
            records += audit.rekey()
        finally:
            audit.close()
    finish_rotation(data_dir, environ)
    return rows, records


def audit_unstarted(audit: Appender, run: Run) -> None:
    """Record in the audit log a run that ended without the supervisor's ``run.finish``: lost
    (its container vanished, or the server stopped before it started) or failed before its
    command started (an image gone, a refused upload, the engine down)."""
    if run.status is RunStatus.LOST:
        action = "run.lost"
    elif run.started is None and run.status not in (RunStatus.SKIPPED, RunStatus.CANCELED):
        action = "run.not_started"
    else:
        return
    payload = {
        "actor": str(run.trigger),
        "command": list(run.command),
        "status": run.status.value,
        "error": run.error,
    }
    try:
        audit.append(run.workspace, run.id, action, payload)
    except HgrunError as e:  # the run's own record is written; the audit's failure is logged
        logging.getLogger("hgrun.audit").error("cannot audit %s: %s", run.label, e.message)


def check_tls(cert: str, key: str) -> None:
    """Refuse a certificate and key that do not load, before anything serves."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise InputError(
            f"cannot use --tls-cert {cert} with --tls-key {key}: {e}",
            "pass a PEM certificate and its PEM private key",
        ) from e


def save_admin_token(data_dir: Path, token: str) -> Path:
    """The first admin token, in a 0600 file of the data directory (replaced if present)."""
    path = data_dir / ADMIN_TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def open_engine(
    kind: str,
    docker_host: str | None,
    *,
    placement: Sequence[str] = (),
    placement_timeout: float = 60.0,
    registry: str | None = None,
    tls: str | None = None,
    registered: Callable[[], Mapping[str, str]] = dict,
    lost_after: float = 30.0,
    log_bytes: int = DEFAULT_LOG_BYTES,
) -> DockerEngine | SwarmEngine:
    """The engine the server runs on: one Docker engine, or a Docker Swarm through its manager.

    Bad configuration fails here, before anything serves: a swarm engine checks that
    ``docker_host`` is a swarm manager and that every ready node's engine endpoint answers.
    ``tls``: a folder with ca.pem, cert.pem and key.pem, for every ``tcp://`` engine endpoint;
    ``registered``: the node endpoints registered with ``hgrun nodes:add``. ``log_bytes``: the
    size of each of Docker's two log files of a container (the store's cap per run, so Docker's
    log holds at least what the store keeps: recovery joins the two, :mod:`hgrun.rejoin`).
    """
    engine_tls = EngineTLS.load(tls) if tls else None
    if kind == "docker":
        if placement or registry:
            flag = "--placement" if placement else "--registry"
            raise InputError(f"{flag} applies to --engine swarm only")
        return DockerEngine(docker_host, tls=engine_tls, log_bytes=log_bytes)
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
            tls=engine_tls,
            registered=registered,
            lost_after=lost_after,
            log_bytes=log_bytes,
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
    store_url: str | None = None,
    targets: Targets,
    environ: Mapping[str, str],
    say: Callable[[str], None],
    show_secret: Callable[[str], None] = lambda _text: None,
    tls: tuple[str, str] | None = None,
    allowed_networks: frozenset[str] = frozenset(),
    engine_kind: str = "docker",
    placement: Sequence[str] = (),
    placement_timeout: float = 60.0,
    retention: Retention | None = None,
    registry: str | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_runs: int = DEFAULT_MAX_RUNS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    warm: int = DEFAULT_WARM,
    require_non_root: bool = False,
    build_limits: BuildLimits = DEFAULT_BUILD_LIMITS,
    engine_tls: str | None = None,
    lost_after: float = 30.0,
) -> None:
    """Run the server until SIGTERM or SIGINT; runs in flight are taken up at the next start.

    ``say`` is the server's log (stdout); ``show_secret`` shows the first admin token once, on
    the terminal only (the CLI gives stderr when it is a tty, else nothing): a token never goes
    to the log, only to the 0600 file ``admin.token`` of the data directory. ``tls``: (cert,
    key) PEM files: HTTPS and WSS instead of HTTP and WS."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if tls is not None:
        check_tls(*tls)
    retention = retention or Retention()
    store = open_store(data_dir, environ, retention.max_output, store_url)
    workers = Workers()
    engine = open_engine(
        engine_kind,
        docker_host,
        placement=placement,
        placement_timeout=placement_timeout,
        registry=registry,
        tls=engine_tls,
        registered=lambda: {n.name: n.endpoint for n in store.node_endpoints()},
        lost_after=lost_after,
        log_bytes=retention.max_output,
    )
    info = engine.info()
    host_memory, host_cpus = capacity(info, environ)
    instance = store.meta("instance", lambda: secrets.token_hex(8))
    supervisor = Supervisor(store, engine, instance=instance, limits=limits)
    supervisor.slots.max_runs, supervisor.slots.max_queue = max_runs, max_queue
    if warm and engine_kind == "docker":
        supervisor.warm = WarmPool(engine, supervisor.leases.owner, size=warm)
    audit = open_audit(data_dir, load_keys(data_dir, environ), store_url)
    writer = AuditWriter(audit)  # records written off the event loop, in order

    def audit_run(action: str, run: Run, payload: dict[str, object]) -> None:
        # A run's start is written durably (the supervisor calls this in a thread while the
        # container is made, and starts the container only once it returns: a start that
        # cannot be audited fails its run); its end, in the writer's thread, in order.
        write = audit.append if action == "run.start" else writer.append
        write(run.workspace, run.id, action, {"actor": str(run.trigger), **payload})

    supervisor.audit = audit_run
    store.on_run_ended.append(lambda run: audit_unstarted(writer, run))
    scheme = "https" if tls else "http"
    advertised = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    launcher = Launcher(store, supervisor, host_cpus=host_cpus, host_memory=host_memory)
    launcher.users.require_non_root = require_non_root
    scripts = ScriptRunner(store, launcher, server_url=advertised)
    scripts.allowed_networks = allowed_networks
    notifier = Notifier(
        targets,
        stderr_tail=lambda run_id: stderr_tail(store, run_id, 50),
        app_name=lambda app_id: store.app_by_id(app_id).name,
        executor=workers.mail,
    )
    scripts.on_run_finished.append(notifier.run_finished)
    supervisor.on_recover.append(scripts.resume_queues)
    scheduler = Scheduler(store, scripts, owner=supervisor.leases.owner, holder_gone=process_gone)
    server = Server(
        store,
        engine,
        supervisor,
        launcher,
        scripts,
        audit,
        host_cpus=host_cpus,
        host_memory=host_memory,
        scheduler_ticks=lambda: scheduler.ticks,
        scheduler_wake=scheduler.wake,
        workers=workers,
        allowed_networks=allowed_networks,
        build_limits=build_limits,
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
        say(f"hgrun server listening on {scheme}://{host}:{port}")
        say(f"engine {engine_kind} at {engine.host}, data in {data_dir}")
        say(f"store {store.backend} at {store.location}")
        if audit.shared:
            say("audit log in the store: one log for every server on it")
            if (data_dir / "audit.db").exists():
                say(
                    f"{data_dir / 'audit.db'} is this server's audit log from before it: no"
                    " longer written, kept as it is (docs/scale-out.md says how to read it)"
                )
        if token:
            path = save_admin_token(data_dir, token)
            say(f"admin token saved in {path} (mode 0600; the server keeps only its hash)")
            show_secret(f"admin token: {token}")
            show_secret(f"(shown once. Log in with: hgrun login --token - < {path})")
        stop_trimming = start_trimming()  # a run's output buffers go back to the system
        yield
        await scheduler.stop()
        await pruner.stop()
        await supervisor.shutdown()
        await notifier.drain()
        await engine.aclose()
        workers.shutdown()
        if stop_trimming is not None:
            stop_trimming()

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
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    try:
        uvicorn.Server(config).run()
    except HgrunError:
        raise
    finally:
        writer.close()
        store.close()
        audit.close()
