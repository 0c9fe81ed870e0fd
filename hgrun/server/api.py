"""The REST API under ``/v1`` and the attach WebSocket.

Every route but ``/v1/health`` and ``/v1/openapi.json`` needs a bearer token with the right scope.
Errors are JSON ``{"error", "message", "hint"}`` with the matching status; bad input is a 4xx,
never a 500. Request bodies are size-capped; uploads and build contexts are streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hgrun import __version__, schedule
from hgrun.duration import parse_duration
from hgrun.engine import Engine
from hgrun.errors import (
    CapacityError,
    ConflictError,
    ForbiddenError,
    HgrunError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
)
from hgrun.manifest import parse_manifest
from hgrun.models import (
    APP_NAME,
    ENV_NAME,
    SIZES,
    App,
    Release,
    Run,
    RunStatus,
    Scope,
    ScriptRecord,
    Token,
    Trigger,
    TriggerKind,
)
from hgrun.procfile import parse_procfile, resolve_command
from hgrun.relay import protocol
from hgrun.server.auth import Principal, authenticate, new_token
from hgrun.server.logs import LineAssembler, LogLine
from hgrun.server.scripts import (
    MAX_INPUT,
    RUN_TOKEN_PREFIX,
    ScriptRunner,
    parent_of,
    trigger_for,
)
from hgrun.server.supervisor import Finished, Output, Supervisor
from hgrun.store import Store
from hgrun.store.audit import AuditLog

TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

log = logging.getLogger("hgrun.api")

MAX_JSON_BODY = 1024 * 1024
MAX_BUILD_CONTEXT = 2 * 1024**3


@dataclasses.dataclass
class Server:
    """What the routes need: the composition root builds one and hands it to :func:`build_app`."""

    store: Store
    engine: Engine
    supervisor: Supervisor
    scripts: ScriptRunner
    audit: AuditLog
    host_cpus: int
    host_memory: int
    clock: Callable[[], float] = time.time


Handler = Callable[[Server, Request], Awaitable[Response]]


def build_app(server: Server) -> Starlette:
    routes: list[BaseRoute] = [
        Route(path, _endpoint(server, handler), methods=[method])
        for method, path, handler, _summary in ROUTES
    ]
    routes.append(WebSocketRoute("/v1/runs/{run_id:int}/attach", _attach_endpoint(server)))
    return Starlette(routes=routes)


def _endpoint(server: Server, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(server, request)
        except HgrunError as e:
            return JSONResponse(e.to_json(), status_code=e.http_status)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse(
                {"error": "internal", "message": "internal server error", "hint": None},
                status_code=500,
            )

    return endpoint


# -- request helpers -----------------------------------------------------------------------


def _principal(server: Server, request: Request, action: str) -> Principal:
    principal = authenticate(server.store, request.headers)
    principal.require(action)
    return principal


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _body_bytes(request, MAX_JSON_BODY)
    try:
        value = json.loads(body or b"{}")
    except ValueError as e:
        raise InputError(f"request body is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InputError("request body must be a JSON object")
    return value


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None):
    value = body.get(name, default)
    if value is None or isinstance(value, kind):
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise InputError(f"field {name!r} must be a number")
        return value
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise InputError(f"field {name!r} must be {names}, not {type(value).__name__}")


def _app(server: Server, principal: Principal, request: Request) -> App:
    return server.store.app(principal.workspace, request.path_params["app"])


def _run(server: Server, principal: Principal, run_id: int) -> Run:
    return server.store.run(run_id, principal.workspace)


def _app_json(app: App) -> dict[str, Any]:
    return {"id": app.id, "name": app.name, "created": app.created}


def _release_json(release: Release) -> dict[str, Any]:
    return {
        "id": release.id,
        "version": release.version,
        "image": release.image,
        "context_hash": release.context_hash,
        "process_types": list(release.procfile),
        "env_keys": sorted(release.env),
        "description": release.description,
        "created": release.created,
    }


def run_json(run: Run, app_name: str | None = None) -> dict[str, Any]:
    return {
        "id": run.id,
        "label": run.label,
        "app": app_name,
        "release": run.release_id,
        "command": list(run.command),
        "process_type": run.process_type,
        "tty": run.tty,
        "detached": run.detached,
        "size": run.size,
        "timeout": run.timeout,
        "env_keys": sorted(run.env),
        "trigger": {"kind": run.trigger.kind.value, "name": run.trigger.name},
        "script": run.script,
        "parent_run": run.parent_run,
        "status": run.status.value,
        "exit_code": run.exit_code,
        "oom": run.oom,
        "error": run.error,
        "created": run.created,
        "started": run.started,
        "finished": run.finished,
        "duration": run.duration,
    }


# -- routes --------------------------------------------------------------------------------


async def health(server: Server, request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def openapi(server: Server, request: Request) -> Response:
    return JSONResponse(openapi_document())


async def list_apps(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "read")
    return JSONResponse([_app_json(a) for a in server.store.apps(principal.workspace)])


async def create_app(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "deploy")
    body = await _json_body(request)
    name = _field(body, "name", str)
    if not name or not APP_NAME.match(name):
        raise InputError(
            f"invalid app name {name!r}",
            "use lowercase letters, digits and dashes, starting with a letter",
        )
    app = server.store.create_app(principal.workspace, name)
    return JSONResponse(_app_json(app), status_code=201)


async def get_app(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "read")
    app = _app(server, principal, request)
    release = server.store.latest_release(app.id)
    return JSONResponse({**_app_json(app), "release": _release_json(release) if release else None})


async def get_config(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "deploy")
    app = _app(server, principal, request)
    return JSONResponse(server.store.config(app.id))


async def patch_config(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "deploy")
    app = _app(server, principal, request)
    body = await _json_body(request)
    changes: dict[str, str | None] = {}
    for key, value in body.items():
        if not ENV_NAME.match(key):
            raise InputError(
                f"invalid config name {key!r}",
                "names are letters, digits and underscores, not starting with a digit",
            )
        if value is not None and not isinstance(value, str):
            raise InputError(f"config value of {key} must be a string or null")
        changes[key] = value
    config = server.store.update_config(app.id, changes)
    latest = server.store.latest_release(app.id)
    if latest is not None:
        set_keys = sorted(k for k, v in changes.items() if v is not None)
        unset = sorted(k for k, v in changes.items() if v is None)
        words = ([f"Set {', '.join(set_keys)}"] if set_keys else []) + (
            [f"Unset {', '.join(unset)}"] if unset else []
        )
        _new_release(
            server,
            app,
            latest.image,
            latest.context_hash,
            latest.procfile,
            latest.manifest,
            "; ".join(words) or "Config change",
        )
    # Values stay out of the server's own log: only the keys are logged.
    log.info("app %s: config keys changed: %s", app.name, ", ".join(sorted(changes)))
    return JSONResponse(config)


async def get_build(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "deploy")
    app = _app(server, principal, request)
    image = server.store.built_image(app.id, request.path_params["hash"])
    if image is None or await asyncio.to_thread(server.engine.image_id, image) is None:
        raise NotFoundError("no image built from this context")
    return JSONResponse({"context_hash": request.path_params["hash"], "image": image})


async def create_build(server: Server, request: Request) -> Response:
    """Spool the tar (streamed to disk, capped), build it, stream the output as NDJSON."""
    principal = _principal(server, request, "deploy")
    app = _app(server, principal, request)
    context_hash = request.headers.get("x-context-hash", "")
    if len(context_hash) != 64 or any(c not in "0123456789abcdef" for c in context_hash):
        raise InputError("missing or malformed X-Context-Hash header (64 hex digits)")
    network = request.query_params.get("network", "none")
    dockerfile = request.query_params.get("dockerfile", "Dockerfile")
    spool = tempfile.TemporaryFile(prefix="hgrun-context-")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BUILD_CONTEXT:
            spool.close()
            raise PayloadTooLargeError(
                f"build context over {MAX_BUILD_CONTEXT // 1024**2} MB",
                "add large files to .dockerignore",
            )
        spool.write(chunk)
    spool.seek(0)
    tag = f"hgrun/{principal.workspace}-{app.name}:{context_hash[:12]}"
    labels = {"hgrun.app": app.name, "hgrun.workspace": principal.workspace}

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def build() -> None:
            try:
                for line in server.engine.build(
                    spool, tag=tag, labels=labels, network=network, dockerfile=dockerfile
                ):
                    loop.call_soon_threadsafe(queue.put_nowait, {"stream": line})
                image = server.engine.image_id(tag)
                if image is None:
                    raise HgrunError("the build finished but left no image")
                server.store.record_image(app.id, context_hash, image)
                loop.call_soon_threadsafe(queue.put_nowait, {"image": image})
            except HgrunError as e:
                loop.call_soon_threadsafe(queue.put_nowait, {"error": e.to_json()})
            except Exception as e:
                log.exception("build of %s failed", app.name)
                loop.call_soon_threadsafe(
                    queue.put_nowait, {"error": {"error": "build_failed", "message": str(e)}}
                )
            finally:
                spool.close()
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.create_task(asyncio.to_thread(build))
        while (event := await queue.get()) is not None:
            yield json.dumps(event).encode() + b"\n"
        await task

    return StreamingResponse(events(), media_type="application/x-ndjson")


async def list_releases(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "read")
    app = _app(server, principal, request)
    return JSONResponse([_release_json(r) for r in server.store.releases(app.id)])


async def create_release(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "deploy")
    app = _app(server, principal, request)
    body = await _json_body(request)
    context_hash = _field(body, "context_hash", str) or ""
    procfile_text = _field(body, "procfile", str, "") or ""
    manifest_text = _field(body, "manifest", str)
    if manifest_text is None:
        raise InputError("field 'manifest' (the text of hgrun.yaml) is required")
    image = server.store.built_image(app.id, context_hash)
    if image is None:
        raise NotFoundError(
            f"no image built from context {context_hash[:12]}", "upload the build context first"
        )
    procfile = parse_procfile(procfile_text) if procfile_text.strip() else {}
    manifest = parse_manifest(manifest_text, procfile=procfile)
    if manifest.name != app.name:
        raise InputError(
            f"hgrun.yaml names app {manifest.name!r}, not {app.name!r}",
            "deploy from the app's own folder, or pass --app",
        )
    manifest_json = _manifest_json(manifest)
    latest = server.store.latest_release(app.id)
    env = _release_env(server, app, manifest_json)
    if (
        latest is not None
        and latest.image == image
        and latest.procfile == procfile
        and latest.manifest == manifest_json
        and latest.env == env
    ):
        # Nothing changed: the live release stands, as `git push` of the same commit does.
        server.store.sync_scripts(principal.workspace, app.id, manifest.scripts)
        return JSONResponse({**_release_json(latest), "unchanged": True})
    release = _new_release(server, app, image, context_hash, procfile, manifest_json, "Deploy")
    server.store.sync_scripts(principal.workspace, app.id, manifest.scripts)
    return JSONResponse(_release_json(release), status_code=201)


def _manifest_json(manifest: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(manifest), default=str))


def _new_release(
    server: Server,
    app: App,
    image: str,
    context_hash: str,
    procfile: Any,
    manifest: Any,
    description: str,
) -> Release:
    return server.store.create_release(
        app.id,
        image=image,
        context_hash=context_hash,
        procfile=procfile,
        manifest=manifest,
        env=_release_env(server, app, manifest),
        description=description,
    )


def _release_env(server: Server, app: App, manifest: Any) -> dict[str, str]:
    """Manifest defaults overridden by the app's config: the env a release snapshots."""
    return {**(manifest.get("env") or {}), **server.store.config(app.id)}


async def create_run(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "run")
    app = _app(server, principal, request)
    body = await _json_body(request)
    release = server.store.latest_release(app.id)
    if release is None:
        raise NotFoundError(f"app {app.name!r} has no release yet", "run `hgrun deploy` first")
    argv = _field(body, "command", list)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InputError("field 'command' must be a non-empty list of strings")
    env = _field(body, "env", dict, {}) or {}
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise InputError(
                f"invalid env name {key!r}",
                "names are letters, digits and underscores, not starting with a digit",
            )
        if not isinstance(value, str):
            raise InputError(f"env value of {key} must be a string")
    manifest = release.manifest
    size = _field(body, "size", str)
    if size is None:
        size = str(manifest.get("size") or "starter")
    if size not in SIZES:
        raise InputError(f"unknown size {size!r}", f"sizes: {', '.join(SIZES)}")
    _check_capacity(server, size)
    timeout = _timeout(server, body.get("timeout"))
    resolved = resolve_command(release.procfile, argv)
    if isinstance(resolved.command, str):
        command = ["sh", "-c", resolved.command]
    else:
        command = list(resolved.command)
    detached = bool(_field(body, "detached", bool, False))
    tty = bool(_field(body, "tty", bool, False)) and not detached
    run = server.store.create_run(
        workspace=principal.workspace,
        app_id=app.id,
        release_id=release.id,
        command=command,
        process_type=resolved.process,
        tty=tty,
        detached=detached,
        uploads=bool(_field(body, "uploads", bool, False)),
        size=size,
        timeout=timeout,
        env={**release.env, **env},
        trigger=Trigger(TriggerKind.USER, principal.name),
    )
    log.info(
        "run %s: %s on app %s (env keys: %s)",
        run.id,
        run.command[:1],
        app.name,
        ", ".join(sorted(run.env)),
    )
    network = str(manifest.get("network") or "none")
    session = await server.supervisor.launch(run, release, network)
    return JSONResponse(run_json(session.run, app.name), status_code=201)


def _check_capacity(server: Server, size_name: str) -> None:
    size = SIZES[size_name]
    if size.memory > server.host_memory or size.cpus > server.host_cpus:
        raise CapacityError(
            f"size {size_name} ({size.memory_mb} MB, {size.cpus:g} CPU) is more than this host"
            f" has ({server.host_memory // 1024**2} MB, {server.host_cpus} CPU)",
            "pick a smaller --size",
        )


def _timeout(server: Server, value: Any) -> float:
    cap = server.supervisor.limits.max_timeout
    if value is None:
        return cap
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise InputError(f"invalid timeout {value!r}: {e}", "use e.g. 90s, 15m or 1h") from e
    return min(seconds, cap)


async def list_runs(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "read")
    app = _app(server, principal, request)
    query = request.query_params
    statuses = []
    for word in query.getlist("status"):
        try:
            statuses.append(RunStatus(word))
        except ValueError as e:
            raise InputError(
                f"unknown status {word!r}", f"statuses: {', '.join(s.value for s in RunStatus)}"
            ) from e
    if query.get("active"):
        statuses = [RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING]
    trigger = None
    if query.get("trigger"):
        try:
            trigger = TriggerKind(query["trigger"])
        except ValueError as e:
            raise InputError(
                f"unknown trigger {query['trigger']!r}",
                f"triggers: {', '.join(t.value for t in TriggerKind)}",
            ) from e
    limit = _int_param(query.get("limit"), "limit", 50)
    runs = server.store.runs(
        principal.workspace, app_id=app.id, statuses=statuses, trigger_kind=trigger, limit=limit
    )
    return JSONResponse([run_json(r, app.name) for r in runs])


def _int_param(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit():
        raise InputError(f"query parameter {name!r} must be a whole number")
    return int(value)


async def get_run(server: Server, request: Request) -> Response:
    principal = authenticate(server.store, request.headers)
    run = _run(server, principal, request.path_params["run_id"])
    if not principal.may_read_run(run.script_id):
        raise ForbiddenError(
            f"token {principal.name!r} may not read {run.label}",
            "a trigger token reads only the runs of the scripts it may trigger",
        )
    app = server.store.app_by_id(run.app_id)
    body = run_json(run, app.name)
    tail = _int_param(request.query_params.get("stderr_tail"), "stderr_tail", 0)
    if tail:
        body["stderr_tail"] = stderr_tail(server.store, run.id, tail)
    return JSONResponse(body)


def stderr_tail(store: Store, run_id: int, n: int) -> list[str]:
    """The last ``n`` lines a run wrote to stderr."""
    assembler = LineAssembler()
    lines = assembler.feed(store.output(run_id=run_id, limit=10**9))
    lines += assembler.flush()
    return [line.text for line in lines if line.stream == "stderr"][-n:]


async def stop_run(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "run")
    run = _run(server, principal, request.path_params["run_id"])
    if run.status.finished:
        raise ConflictError(f"{run.label} already ended ({run.status.value})")
    stopped = await server.supervisor.stop(
        run.id, RunStatus.CANCELED, f"{run.label} was stopped by {principal.name}"
    )
    session = server.supervisor.sessions.get(run.id)
    if session is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.finished.wait(), 30)
        stopped = server.store.run(run.id)
    return JSONResponse(run_json(stopped, server.store.app_by_id(run.app_id).name))


async def upload_files(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "run")
    run = _run(server, principal, request.path_params["run_id"])
    received = await server.supervisor.upload(run.id, request.stream())
    return JSONResponse({"run": run.id, "bytes": received})


async def app_logs(server: Server, request: Request) -> Response:
    """The app's log as NDJSON lines; ``follow=1`` keeps streaming until the client leaves."""
    principal = _principal(server, request, "read")
    app = _app(server, principal, request)
    query = request.query_params
    run_id = _int_param(query.get("run"), "run", 0) or None
    if run_id is not None:
        _run(server, principal, run_id)
    tail = _int_param(query.get("tail"), "tail", 0)
    follow = query.get("follow") in ("1", "true")
    after = _int_param(query.get("after"), "after", 0)
    store = server.store

    def start_cursor() -> int:
        if not tail:
            return after
        # Walk back from the newest chunk until ``tail`` newlines are covered.
        newlines, cursor = 0, 0
        before = None
        while newlines <= tail:
            chunks = store.output(
                run_id=run_id, app_id=app.id, before=before, limit=256, newest_first=True
            )
            if not chunks:
                return 0
            for chunk in chunks:
                newlines += chunk[4].count(b"\n")
                cursor = chunk[0]
                if newlines > tail:
                    break
            before = chunks[-1][0]
        return cursor - 1

    def encode(lines: list[LogLine]) -> bytes:
        return b"".join(json.dumps(line.to_json()).encode() + b"\n" for line in lines)

    async def lines() -> AsyncIterator[bytes]:
        assembler = LineAssembler()
        cursor = start_cursor()
        first = True
        while True:
            batch: list[LogLine] = []
            while chunks := store.output(run_id=run_id, app_id=app.id, after=cursor, limit=512):
                cursor = chunks[-1][0]
                batch += assembler.feed(chunks)
                if len(batch) > 10_000 and not (first and tail):
                    yield encode(batch)
                    batch = []
            if not follow:
                batch += assembler.flush()
            else:
                # A run's last line without a newline is shown once the run is over.
                for pending in assembler.pending_runs():
                    if pending not in server.supervisor.sessions:
                        batch += assembler.flush(pending)
            if first and tail:
                batch = batch[-tail:]
            first = False
            if batch:
                yield encode(batch)
            if not follow or await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# -- scripts, tokens, audit ---------------------------------------------------------------


def script_json(server: Server, script: ScriptRecord, app_name: str) -> dict[str, Any]:
    spec = script.spec
    last = server.store.script_runs(script.id, limit=1)
    next_fire = None
    if spec.cron:
        now = datetime.datetime.fromtimestamp(server.clock(), datetime.UTC)
        next_fire = schedule.next_fire(spec.cron, spec.timezone, now).timestamp()
    return {
        "id": script.id,
        "app": app_name,
        "name": spec.name,
        "command": spec.command,
        "process": spec.process,
        "cron": spec.cron,
        "timezone": spec.timezone,
        "next_fire": next_fire,
        "concurrency": spec.concurrency.value,
        "catchup": spec.catchup.value,
        "timeout": spec.timeout,
        "size": spec.size,
        "history": spec.history,
        "notify": dataclasses.asdict(spec.notify),
        "last_run": run_json(last[0], app_name) if last else None,
    }


async def list_scripts(server: Server, request: Request) -> Response:
    """The app's scripts; a trigger token sees only those it may trigger (so CI can find them)."""
    principal = authenticate(server.store, request.headers)
    app = _app(server, principal, request)
    scripts = [
        s
        for s in server.store.scripts(principal.workspace, app_id=app.id)
        if principal.may_read_run(s.id)
    ]
    return JSONResponse([script_json(server, s, app.name) for s in scripts])


async def trigger_script(server: Server, request: Request) -> Response:
    """Start a script; the JSON body, if any, becomes HOSTINGGURU_RUN_INPUT in the container."""
    principal = authenticate(server.store, request.headers)
    script = server.store.script(request.path_params["script_id"], principal.workspace)
    if not principal.may_trigger(script.id):
        raise ForbiddenError(
            f"token {principal.name!r} may not trigger script {script.name!r}",
            "use a token with the trigger scope for this script",
        )
    body = await _body_bytes(request, MAX_INPUT)
    input_json = None
    if body.strip():
        try:
            input_json = json.dumps(json.loads(body))
        except ValueError as e:
            raise InputError(f"the run input is not valid JSON: {e}") from e
    query = request.query_params
    detached = query.get("detached", "1") not in ("0", "false")
    via_api = query.get("via") != "cli"
    parent = parent_of(principal.name)
    run = await server.scripts.trigger(
        script,
        trigger_for(principal.name, via_api),
        input_json=input_json,
        parent_run=parent,
        detached=detached,
        tty=query.get("tty") in ("1", "true"),
    )
    if run is None:  # only for cron slots
        raise ConflictError("this slot already ran")
    app = server.store.app_by_id(script.app_id)
    return JSONResponse(run_json(run, app.name), status_code=201)


async def list_script_runs(server: Server, request: Request) -> Response:
    principal = authenticate(server.store, request.headers)
    script = server.store.script(request.path_params["script_id"], principal.workspace)
    if not principal.may_read_run(script.id):
        raise ForbiddenError(f"token {principal.name!r} may not read runs of {script.name!r}")
    query = request.query_params
    limit = min(_int_param(query.get("limit"), "limit", 50), 1000)
    before = _int_param(query.get("before"), "before", 0) or None
    app = server.store.app_by_id(script.app_id)
    runs = server.store.script_runs(script.id, limit=limit, before=before)
    return JSONResponse([run_json(r, app.name) for r in runs])


async def _body_bytes(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise PayloadTooLargeError(f"request body over {cap // 1024} KB")
    return bytes(body)


def _token_json(token: Token) -> dict[str, Any]:
    return {
        "name": token.name,
        "scope": token.scope.value,
        "script": token.script,
        "created": token.created,
    }


async def list_tokens(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "admin")
    tokens = server.store.tokens(principal.workspace)
    return JSONResponse([_token_json(t) for t in tokens])


async def create_token(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "admin")
    body = await _json_body(request)
    name = _field(body, "name", str) or ""
    if not TOKEN_NAME.match(name) or name.startswith(RUN_TOKEN_PREFIX):
        raise InputError(
            f"invalid token name {name!r}",
            "use letters, digits, dots, dashes and underscores (not starting with 'run.')",
        )
    try:
        scope = Scope(_field(body, "scope", str) or "")
    except ValueError as e:
        raise InputError(
            f"unknown scope {body.get('scope')!r}", f"scopes: {', '.join(s.value for s in Scope)}"
        ) from e
    script_ref = _field(body, "script", str)
    script_id = None
    if script_ref:
        if scope is not Scope.TRIGGER:
            raise InputError("--script applies to trigger tokens only", "add --scope trigger")
        app_name, _, script_name = script_ref.rpartition("/")
        if not app_name:
            raise InputError(f"script {script_ref!r}: expected APP/SCRIPT")
        app = server.store.app(principal.workspace, app_name)
        script_id = str(server.store.script_by_name(app.id, script_name).id)
    secret = new_token()
    token = server.store.add_token(principal.workspace, name, secret, scope, script_id)
    return JSONResponse({**_token_json(token), "token": secret}, status_code=201)


async def revoke_token(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "admin")
    name = request.path_params["name"]
    if name == principal.name:
        raise ConflictError("a token cannot revoke itself", "revoke it with another admin token")
    server.store.revoke_token(principal.workspace, name)
    return JSONResponse({"name": name, "revoked": True})


async def audit_log(server: Server, request: Request) -> Response:
    principal = _principal(server, request, "admin")
    query = request.query_params
    run_id = _int_param(query.get("run"), "run", 0) or None
    limit = min(_int_param(query.get("limit"), "limit", 200), 10_000)
    records = server.audit.read(principal.workspace, run_id=run_id, limit=limit)
    return JSONResponse(
        [
            {
                "id": r.id,
                "time": r.ts,
                "run": r.run_id,
                "action": r.action,
                "payload": r.payload,
                "problem": r.problem,
            }
            for r in records
        ]
    )


# -- the attach WebSocket ------------------------------------------------------------------


def _attach_endpoint(server: Server) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        try:
            principal = authenticate(server.store, websocket.headers)
            principal.require("run")
            run = server.store.run(websocket.path_params["run_id"], principal.workspace)
        except HgrunError as e:
            await websocket.send_denial_response(
                JSONResponse(e.to_json(), status_code=e.http_status)
            )
            return
        subprotocol = protocol.negotiate(websocket.scope.get("subprotocols", []))
        if subprotocol is None:
            error = InputError(
                "no supported subprotocol", f"offer one of {', '.join(protocol.SUBPROTOCOLS)}"
            )
            await websocket.send_denial_response(JSONResponse(error.to_json(), status_code=400))
            return
        await websocket.accept(subprotocol=subprotocol)
        await relay(server, websocket, run, protocol.ServerConnection(subprotocol))

    return endpoint


async def relay(
    server: Server, websocket: WebSocket, run: Run, connection: protocol.ServerConnection
) -> None:
    """Move bytes between one client and the run; the framing lives in ``relay.protocol``."""
    session = server.supervisor.sessions.get(run.id)
    if session is None:
        # The run already ended: replay its output, then its status.
        for _cursor, _run_id, stream, _ts, data in server.store.output(run_id=run.id, limit=10**9):
            frame = connection.stdout(data) if stream == 1 else connection.stderr(data)
            await websocket.send_bytes(frame)
        run = server.store.run(run.id)
        await websocket.send_bytes(
            connection.exit(run.exit_code if run.exit_code is not None else 1)
        )
        await websocket.close()
        return
    session, subscriber = server.supervisor.subscribe(run.id)

    async def downstream() -> None:
        while True:
            item = await subscriber.queue.get()
            if isinstance(item, Output):
                frame = (
                    connection.stdout(item.data)
                    if item.stream == 1
                    else connection.stderr(item.data)
                )
                await websocket.send_bytes(frame)
            elif isinstance(item, Finished):
                reason = None if item.status is RunStatus.SUCCEEDED else _reason(item.status)
                await websocket.send_bytes(connection.exit(item.exit_code, reason, item.message))
                return

    async def upstream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            try:
                events = connection.receive(data)
            except protocol.ProtocolError as e:
                log.warning("run %s: protocol error from client: %s", run.id, e.message)
                return
            for event in events:
                if isinstance(event, protocol.StdinData):
                    await server.supervisor.stdin(session, event.data)
                elif isinstance(event, protocol.StdinClosed):
                    await server.supervisor.close_stdin(session)
                elif isinstance(event, protocol.Resize):
                    await server.supervisor.resize(session, event.width, event.height)

    down = asyncio.create_task(downstream())
    up = asyncio.create_task(upstream())
    try:
        done, _pending = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if down in done and down.exception() is None:
            with contextlib.suppress(Exception):
                await websocket.close()
    except WebSocketDisconnect:
        pass
    finally:
        for task in (down, up):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        server.supervisor.unsubscribe(session, subscriber)


def _reason(status: RunStatus) -> str:
    return {
        RunStatus.FAILED: "NonZeroExitCode",
        RunStatus.TIMED_OUT: "TimedOut",
        RunStatus.CANCELED: "Canceled",
    }.get(status, "InternalError")


# -- the route table and its OpenAPI document ----------------------------------------------

ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/v1/health", health, "Liveness and version; no token needed"),
    ("GET", "/v1/openapi.json", openapi, "This document"),
    ("GET", "/v1/apps", list_apps, "List apps [read]"),
    ("POST", "/v1/apps", create_app, "Create an app: {name} [deploy]"),
    ("GET", "/v1/apps/{app}", get_app, "An app and its current release [read]"),
    ("GET", "/v1/apps/{app}/config", get_config, "The app's env vars [deploy]"),
    ("PATCH", "/v1/apps/{app}/config", patch_config, "Set (string) or unset (null) [deploy]"),
    ("GET", "/v1/apps/{app}/builds/{hash}", get_build, "Is this context built? [deploy]"),
    ("POST", "/v1/apps/{app}/builds", create_build, "Build a tar context; NDJSON [deploy]"),
    ("GET", "/v1/apps/{app}/releases", list_releases, "Releases, newest first [read]"),
    ("POST", "/v1/apps/{app}/releases", create_release, "Release a built context [deploy]"),
    ("POST", "/v1/apps/{app}/runs", create_run, "Create a one-off run [run]"),
    ("GET", "/v1/apps/{app}/runs", list_runs, "Run history; status, trigger, active [read]"),
    ("GET", "/v1/apps/{app}/logs", app_logs, "The app log as NDJSON; run, tail, follow [read]"),
    ("GET", "/v1/runs/{run_id:int}", get_run, "One run; stderr_tail=N [read]"),
    ("POST", "/v1/runs/{run_id:int}/stop", stop_run, "SIGTERM, then SIGKILL [run]"),
    ("PUT", "/v1/runs/{run_id:int}/files", upload_files, "Tar into /tmp/uploads [run]"),
    ("GET", "/v1/apps/{app}/scripts", list_scripts, "The app's scripts [read]"),
    ("POST", "/v1/scripts/{script_id:int}/runs", trigger_script, "Trigger; body=input [trigger]"),
    ("GET", "/v1/scripts/{script_id:int}/runs", list_script_runs, "A script's runs [trigger]"),
    ("GET", "/v1/tokens", list_tokens, "Tokens of the workspace [admin]"),
    ("POST", "/v1/tokens", create_token, "Create: {name, scope, script}; shown once [admin]"),
    ("DELETE", "/v1/tokens/{name}", revoke_token, "Revoke a token [admin]"),
    ("GET", "/v1/audit", audit_log, "The decrypted audit log; run=ID [admin]"),
]


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, _handler, summary in ROUTES:
        clean = path.replace(":int", "")
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in clean.split("/")
            if part.startswith("{")
        ]
        paths.setdefault(clean, {})[method.lower()] = {
            "summary": summary,
            "parameters": params,
            "responses": {"default": {"$ref": "#/components/responses/Error"}},
            **(
                {} if path in ("/v1/health", "/v1/openapi.json") else {"security": [{"bearer": []}]}
            ),
        }
    paths["/v1/runs/{run_id}/attach"] = {
        "get": {
            "summary": "WebSocket attach; subprotocol v5.channel.k8s.io or v4.channel.k8s.io [run]",
            "parameters": [
                {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"101": {"description": "Switching Protocols"}},
            "security": [{"bearer": []}],
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "hgrun", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {"type": "string"},
                                    "message": {"type": "string"},
                                    "hint": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                }
            },
        },
    }
