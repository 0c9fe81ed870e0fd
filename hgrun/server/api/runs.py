"""Runs: create one, list, read, stop, upload its files, and the app log the runs write."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hgrun.duration import parse_duration
from hgrun.engine.span import SocketSpan
from hgrun.errors import ConflictError, ForbiddenError, InputError, NotFoundError
from hgrun.models import ENV_NAME, App, OutputChunk, RunStatus, Trigger, TriggerKind
from hgrun.procfile import parse_procfile
from hgrun.server.api.requests import (
    bool_param,
    enum_param,
    field,
    int_param,
    json_body,
    path_app,
    path_id,
    principal,
    workspace_run,
)
from hgrun.server.api.responses import JSONResponse
from hgrun.server.api.views import run_json
from hgrun.server.auth import Principal, authenticate
from hgrun.server.launcher import Request as LaunchRequest
from hgrun.server.logs import (
    MAX_LINE,
    STDERR,
    TAIL_PAGE,
    LineAssembler,
    LogLine,
    tail_lines,
)
from hgrun.server.networks import check_network
from hgrun.server.rawbody import RequestBody
from hgrun.server.uploads import receive, target
from hgrun.server.workers import run_in
from hgrun.store import Store
from hgrun.uploadtar import UploadFilter

if TYPE_CHECKING:
    from hgrun.server.api import Server
    from hgrun.server.session import RunSession

log = logging.getLogger("hgrun.api")

DEFAULT_LOG_LINES = 1000  # lines of /logs without tail= or limit=
MAX_LOG_LINES = 10_000  # the most lines one /logs call returns before following
LOG_PAGE = 32  # chunks read at a time (a chunk is at most a few 100 KB)
LOG_PAGE_LINES = 2000  # lines sent at a time while following
MAX_STDERR_TAIL = 1000  # lines of GET /v1/runs/N?stderr_tail=
MAX_RUNS_PAGE = 10_000  # runs of one GET /v1/apps/A/runs


async def create_run(server: Server, request: Request) -> Response:
    caller = principal(server, request, "run")
    app = path_app(server, caller, request)
    session = await launch_run(server, caller, app, await json_body(request))
    run = session.run
    return JSONResponse(run_json(run, app.name, _queue(server, run.id)), status_code=201)


async def launch_run(
    server: Server, caller: Principal, app: App, body: dict[str, Any]
) -> RunSession:
    """Record and launch the run ``body`` asks for (the JSON of ``POST /v1/apps/{app}/runs``):
    its checks, its container made and attached. Raises the 4xx of a bad request before
    anything is recorded; an engine that fails records the run failed and raises."""
    release = server.store.latest_release(app.id)
    if release is None:
        raise NotFoundError(f"app {app.name!r} has no release yet", "run `hgrun deploy` first")
    built = field(body, "build", str)
    if built is not None:
        # `hgrun run --build`: this run only uses the image built from the user's folder, and
        # that folder's Procfile; the live release stays what cron and later runs use.
        image = server.store.built_image(app.id, built)
        if image is None:
            raise NotFoundError(f"no image built from context {built[:12]}", "build it first")
        procfile_text = field(body, "procfile", str, "") or ""
        procfile = parse_procfile(procfile_text) if procfile_text.strip() else {}
        release = dataclasses.replace(release, image=image, procfile=procfile)
    # A release deployed while the server allowed its network may outlive that permission.
    check_network(release.manifest.network, server.allowed_networks, f"app {app.name}")
    await server.launcher.users.check(release.manifest.user, release.image, f"app {app.name}")
    argv = field(body, "command", list, []) or []
    if not all(isinstance(a, str) for a in argv):
        raise InputError("field 'command' must be a list of strings")
    process = field(body, "type", str)
    if process is not None:
        # `hgrun run --type worker ARGS`: the type must exist, never run as a command name.
        if process not in release.procfile:
            raise InputError(
                f"the {'build' if built else 'live release'} of {app.name} has no process type"
                f" {process!r}",
                f"process types: {', '.join(release.procfile) or 'none (no Procfile)'}",
            )
        argv = [process, *argv]
    if not argv:
        raise InputError("field 'command' must be a non-empty list of strings")
    env = field(body, "env", dict, {}) or {}
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise InputError(
                f"invalid env name {key!r}",
                "names are letters, digits and underscores, not starting with a digit",
            )
        if not isinstance(value, str):
            raise InputError(f"env value of {key} must be a string")
    detached = bool(field(body, "detached", bool, False))
    session = await server.launcher.run(
        LaunchRequest(
            workspace=caller.workspace,
            app_id=app.id,
            release=release,
            trigger=Trigger(TriggerKind.USER, caller.name),
            argv=argv,
            size=field(body, "size", str),
            timeout=_timeout(body.get("timeout")),
            env=env,
            detached=detached,
            tty=bool(field(body, "tty", bool, False)),
            uploads=bool(field(body, "uploads", bool, False)),
        )
    )
    run = session.run
    log.info(
        "run %s: %s on app %s (env keys: %s)",
        run.id,
        run.command[:1],
        app.name,
        ", ".join(sorted(run.env)),
    )
    return session


def _queue(server: Server, run_id: int) -> dict[str, int] | None:
    """Where the run waits for a slot of this server (--max-runs), if it does."""
    return server.supervisor.slots.info(run_id)


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise InputError(f"invalid timeout {value!r}: {e}", "use e.g. 90s, 15m or 1h") from e


async def list_runs(server: Server, request: Request) -> Response:
    caller = principal(server, request, "read")
    app = path_app(server, caller, request)
    query = request.query_params
    words = query.getlist("status")
    statuses = [s for w in words if (s := enum_param(w, "status", RunStatus, "statuses"))]
    if bool_param(query.get("active"), "active"):
        statuses = [status for status in RunStatus if status.active]
    trigger = (
        enum_param(query["trigger"], "trigger", TriggerKind, "triggers")
        if query.get("trigger")
        else None
    )
    limit = int_param(query.get("limit"), "limit", 50, MAX_RUNS_PAGE)
    runs = server.store.runs(
        caller.workspace, app_id=app.id, statuses=statuses, trigger_kind=trigger, limit=limit
    )
    return JSONResponse([run_json(r, app.name, _queue(server, r.id)) for r in runs])


async def get_run(server: Server, request: Request) -> Response:
    caller = authenticate(server.store, request.headers)
    run = workspace_run(server, caller, path_id(request, "run_id"))
    if not caller.may_read_run(run.script_id):
        raise ForbiddenError(
            f"token {caller.name!r} may not read {run.label}",
            "a trigger token reads only the runs of the scripts it may trigger",
        )
    app = server.store.app_by_id(run.app_id)
    body = run_json(run, app.name, _queue(server, run.id))
    tail = int_param(request.query_params.get("stderr_tail"), "stderr_tail", 0, MAX_STDERR_TAIL)
    if tail:
        body["stderr_tail"] = await run_in(
            server.workers.reads, stderr_tail, server.store, run.id, tail
        )
    return JSONResponse(body)


def stderr_tail(store: Store, run_id: int, n: int) -> list[str]:
    """The last ``n`` lines a run wrote to stderr, read from the newest end in bounded pages
    (blocking: call it from a worker thread)."""

    def pages(before: int | None) -> list[OutputChunk]:
        return store.output(
            run_id=run_id, stream=STDERR, before=before, limit=TAIL_PAGE, newest_first=True
        )

    return [line.text for line in tail_lines(pages, n)]


async def stop_run(server: Server, request: Request) -> Response:
    caller = principal(server, request, "run")
    run = workspace_run(server, caller, path_id(request, "run_id"))
    if run.status.finished:
        raise ConflictError(f"{run.label} already ended ({run.status.value})")
    stopped = await server.supervisor.stop(
        run.id, RunStatus.CANCELED, f"{run.label} was stopped by {caller.name}"
    )
    session = server.supervisor.sessions.get(run.id)
    if session is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.finished.wait(), 30)
        stopped = server.store.run(run.id)
    return JSONResponse(run_json(stopped, server.store.app_by_id(run.app_id).name))


async def upload_files(server: Server, request: Request) -> Response:
    """The run's ``--file`` tar, checked entry by entry on its way to the container
    (:mod:`hgrun.uploadtar`); one upload per run, so two at once cannot double the cap."""
    caller = principal(server, request, "run")
    run = workspace_run(server, caller, path_id(request, "run_id"))
    if run.id in server.uploading:
        raise ConflictError(
            f"an upload to {run.label} is already under way", "a run takes one upload"
        )
    where = target(server.store.release(run.release_id).manifest.read_only)
    upload = UploadFilter(server.supervisor.limits.max_upload, out_root=where.out_root)
    length = request.headers.get("content-length", "")
    declared = int(length) if length.isascii() and length.isdigit() else None
    server.uploading.add(run.id)
    try:
        async with RequestBody(request) as body:
            await receive(server.supervisor, run.id, _checked(body, upload), declared, where)
    finally:
        server.uploading.discard(run.id)
    return JSONResponse({"run": run.id, "bytes": upload.received})


async def _checked(
    body: RequestBody, upload: UploadFilter
) -> AsyncIterator[bytes | memoryview | SocketSpan]:
    """``body`` through ``upload``: only checked entries reach the engine. A file's content
    that needs no look goes on as a span of the client's socket, spliced to the engine's."""
    while True:
        if (ahead := upload.content_ahead()) and (
            span := body.span(ahead, upload.truncated)
        ) is not None:
            yield span
            upload.passed(span.moved)  # all of it: the engine moved it before asking on
            continue
        chunk = await body.read()
        if chunk is None:
            break
        if out := upload.feed(chunk):
            yield out
    yield upload.close()


async def app_logs(server: Server, request: Request) -> Response:
    """The app's log as NDJSON lines; ``follow=1`` keeps streaming until the client leaves.

    Bounded: without ``after``, the newest ``tail`` lines (default: ``limit``); with
    ``after=CURSOR``, about ``limit`` lines after it (whole pages of chunks: page on with the
    last line's cursor).
    ``limit`` defaults to DEFAULT_LOG_LINES and is at most MAX_LOG_LINES. The store is read in
    pieces of LOG_PAGE chunks on the read workers, never on the event loop.
    """
    caller = principal(server, request, "read")
    app = path_app(server, caller, request)
    query = request.query_params
    run_id = int_param(query.get("run"), "run", 0) or None
    if run_id is not None:
        workspace_run(server, caller, run_id)
    lines_param = {}
    for name, default in (("limit", DEFAULT_LOG_LINES), ("tail", 0)):
        lines_param[name] = int_param(query.get(name), name, default)
        if lines_param[name] > MAX_LOG_LINES:
            raise InputError(
                f"query parameter {name!r}: {lines_param[name]} is over the most lines one call"
                f" returns ({MAX_LOG_LINES})",
                "page on with after=CURSOR (the cursor of the last line you have)",
            )
    limit, tail = lines_param["limit"], lines_param["tail"]
    follow = bool_param(query.get("follow"), "follow")
    after = int_param(query.get("after"), "after", 0)
    if not tail and "after" not in query:
        tail = limit
    store = server.store

    def start_cursor() -> int:
        """The cursor before the oldest chunk holding the last ``tail`` lines (read backwards
        in pages, at most ``tail + 1`` lines of MAX_LINE bytes)."""
        newlines, read, cursor = 0, 0, 0
        before = None
        while newlines <= tail and read < (tail + 1) * MAX_LINE:
            chunks = store.output(
                run_id=run_id, app_id=app.id, before=before, limit=TAIL_PAGE, newest_first=True
            )
            if not chunks:
                return 0
            for chunk in chunks:
                newlines += chunk.data.count(b"\n")
                read += len(chunk.data)
                cursor = chunk.cursor
                if newlines > tail:
                    break
            before = chunks[-1].cursor
        return cursor - 1

    def page(cursor: int) -> list[OutputChunk]:
        return store.output(run_id=run_id, app_id=app.id, after=cursor, limit=LOG_PAGE)

    def encode(lines: list[LogLine]) -> bytes:
        return b"".join(json.dumps(line.to_json()).encode() + b"\n" for line in lines)

    async def lines() -> AsyncIterator[bytes]:
        assembler = LineAssembler()
        cursor = await run_in(server.workers.reads, start_cursor) if tail else after
        first = True
        while True:
            # Following one run ends with the run: its status is read before its output, and
            # the supervisor stores all output before it records the final status.
            following = follow and not (
                run_id is not None
                and (await run_in(server.workers.reads, store.run, run_id)).status.finished
            )
            batch: list[LogLine] = []
            sent = 0
            paged = False  # stopped at ``limit`` with output left: the client pages on
            while chunks := await run_in(server.workers.reads, page, cursor):
                cursor = chunks[-1].cursor
                batch += assembler.feed(chunks)
                if first and not tail and sent + len(batch) >= limit:
                    paged = True
                    break
                if len(batch) > LOG_PAGE_LINES and not (first and tail):
                    yield encode(batch)
                    sent += len(batch)
                    batch = []
            if following:
                # A run's last line without a newline is shown once the run is over.
                for pending in assembler.pending_runs():
                    if pending not in server.supervisor.sessions:
                        batch += assembler.flush(pending)
            elif not paged:
                batch += assembler.flush()
            else:
                # Stop before the chunk where a waiting line began, so that the next page (from
                # the last line's cursor) reads that line whole; unless nothing would be left.
                since = assembler.pending_since()
                whole = [line for line in batch if since is None or line.cursor < since]
                batch = whole or batch
            if not paged and run_id is None:
                # Runs store output in batches: chunk order is not time order across runs. (One
                # run's lines, and a page, keep cursor order: the run's own order, and where the
                # next page starts.)
                batch.sort(key=lambda line: (line.time, line.cursor))
            if first and tail:
                batch = batch[-tail:]
            first = False
            if batch:
                yield encode(batch)
            if not following or await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
