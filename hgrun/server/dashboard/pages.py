"""The dashboard's pages (GET): apps, runs, a run, a script, audit, tokens.

Each page checks what the API's matching route checks (``read`` for an app's runs, ``admin`` for
the audit log and tokens, :meth:`Principal.may_read_run` for a run or a script), so a page shows
exactly what its token may see. The ``/live/...`` twins render only the part of a page that
changes, for app.js to poll and swap in without a reload.
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
import zoneinfo
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hgrun import schedule
from hgrun.errors import ForbiddenError
from hgrun.models import App, Run, RunStatus, ScriptRecord, TriggerKind
from hgrun.server.api.requests import enum_param, int_param, path_id
from hgrun.server.api.runs import stderr_tail
from hgrun.server.dashboard import words
from hgrun.server.dashboard.web import Dashboard, Viewer, secure
from hgrun.server.workers import run_in

BADGES = 12  # latest runs shown per app or script on the Apps page
PAGE = 50
LOG_PAGE = 500  # output chunks per log request
MAX_LOG_PAGE_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class ScriptView:
    record: ScriptRecord
    app: str
    next_fire: datetime.datetime | None
    runs: list[Run]
    words: str | None


def _next_fires(script: ScriptRecord, now: float, n: int) -> list[datetime.datetime]:
    spec = script.spec
    if not spec.cron:
        return []
    at = datetime.datetime.fromtimestamp(now, datetime.UTC)
    zone = zoneinfo.ZoneInfo(spec.timezone)  # shown in the script's own zone, as it is written
    fires = []
    for _ in range(n):
        at = schedule.next_fire(spec.cron, spec.timezone, at)
        fires.append(at.astimezone(zone))
    return fires


def _script_view(dash: Dashboard, script: ScriptRecord, app: str, badges: int) -> ScriptView:
    fires = _next_fires(script, dash.now(), 1)
    return ScriptView(
        record=script,
        app=app,
        next_fire=fires[0] if fires else None,
        runs=dash.store.script_runs(script.id, limit=badges) if badges else [],
        words=words.describe(script.spec.cron) if script.spec.cron else None,
    )


def _apps_context(dash: Dashboard, viewer: Viewer) -> dict[str, Any]:
    """Apps with their latest runs and scripts; a trigger token sees only its own scripts."""
    store, ws = dash.store, viewer.principal.workspace
    entries = []
    if viewer.may("read"):
        for app in store.apps(ws):
            scripts = [_script_view(dash, s, app.name, 0) for s in store.scripts(ws, app.id)]
            runs = store.runs(ws, app_id=app.id, limit=BADGES)
            entries.append({"app": app, "runs": runs, "scripts": scripts})
    else:
        by_app: dict[int, list[ScriptView]] = {}
        names: dict[int, App] = {}
        for script in store.scripts(ws):
            if viewer.principal.may_trigger(script.id):
                app = names.setdefault(script.app_id, store.app_by_id(script.app_id))
                by_app.setdefault(app.id, []).append(_script_view(dash, script, app.name, BADGES))
        for app_id, scripts in by_app.items():
            entries.append({"app": names[app_id], "runs": None, "scripts": scripts})
    return {"entries": entries}


async def apps(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    return dash.render(request, "apps.html", viewer, title="Apps", **_apps_context(dash, viewer))


async def apps_live(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    return dash.render(request, "apps_body.html", viewer, **_apps_context(dash, viewer))


# -- runs ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filters:
    status: RunStatus | None
    trigger: TriggerKind | None
    script: ScriptRecord | None
    before: int | None

    def query(self, **extra: Any) -> str:
        """The query string of these filters (and ``extra``), for links."""
        values = {
            "status": self.status.value if self.status else None,
            "trigger": self.trigger.value if self.trigger else None,
            "script": self.script.spec.name if self.script else None,
            "before": self.before,
            **extra,
        }
        return urllib.parse.urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _filters(dash: Dashboard, app: App, request: Request) -> Filters:
    # The API's typed readers; an empty value is the form's "any" (its select sends it).
    q = request.query_params
    status = enum_param(q.get("status") or None, "status", RunStatus, "statuses")
    trigger = enum_param(q.get("trigger") or None, "trigger", TriggerKind, "triggers")
    script = dash.store.script_by_name(app.id, q["script"]) if q.get("script") else None
    before = int_param(q.get("before") or None, "before", 0) or None
    return Filters(status, trigger, script, before)


def page_of_runs(dash: Dashboard, workspace: str, app: App, f: Filters) -> tuple[list[Run], bool]:
    """One page of an app's runs, newest first, and whether an older page exists.

    Paged by key (``id < before``), every filter in the one query (each has an index, see
    ``Store.runs``): as fast on the last page of a million runs as on the first, and "older"
    is offered exactly when an older matching run exists.
    """
    rows = dash.store.runs(
        workspace,
        app_id=app.id,
        statuses=[f.status] if f.status else (),
        trigger_kind=f.trigger,
        script_id=f.script.id if f.script else None,
        limit=PAGE + 1,
        before=f.before,
    )
    return rows[:PAGE], len(rows) > PAGE


def _runs_context(dash: Dashboard, request: Request, viewer: Viewer) -> dict[str, Any]:
    if not viewer.may("read"):
        raise ForbiddenError(
            f"token {viewer.principal.name!r} (scope {viewer.scope.value}) may not list an"
            " app's runs",
            "a trigger token sees the runs of its own scripts on each script's page",
        )
    ws = viewer.principal.workspace
    app = dash.store.app(ws, request.path_params["app"])
    f = _filters(dash, app, request)
    rows, more = page_of_runs(dash, ws, app, f)
    older = f.query(before=rows[-1].id) if more and rows else None
    return {
        "app": app,
        "runs": rows,
        "filters": f,
        "older": older,
        "statuses": [s.value for s in RunStatus],
        "triggers": [t.value for t in TriggerKind],
        "scripts": [s.spec.name for s in dash.store.scripts(ws, app.id)],
        "live_query": f.query(),
    }


async def runs(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    # Store reads in the reads pool: the event loop keeps relaying shells meanwhile.
    ctx = await run_in(dash.server.workers.reads, _runs_context, dash, request, viewer)
    return dash.render(request, "runs.html", viewer, title=f"Runs of {ctx['app'].name}", **ctx)


async def runs_live(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    ctx = await run_in(dash.server.workers.reads, _runs_context, dash, request, viewer)
    return dash.render(request, "runs_body.html", viewer, **ctx)


# -- one run -------------------------------------------------------------------------------


def _readable_run(dash: Dashboard, request: Request, viewer: Viewer) -> Run:
    run: Run = dash.store.run(path_id(request, "run_id"), viewer.principal.workspace)
    if not viewer.principal.may_read_run(run.script_id):
        raise ForbiddenError(
            f"token {viewer.principal.name!r} may not read {run.label}",
            "a trigger token reads only the runs of the scripts it may trigger",
        )
    return run


def _run_context(dash: Dashboard, request: Request, viewer: Viewer) -> dict[str, Any]:
    run = _readable_run(dash, request, viewer)
    failed = run.status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST)
    return {
        "run": run,
        "app": dash.store.app_by_id(run.app_id),
        "size": words.size_of(run.size),
        "tail": stderr_tail(dash.store, run.id, 20) if failed else [],
        "may_stop": viewer.may("run") and run.status.active,
        "may_shell": viewer.may("run") and run.tty and run.status.active,
    }


async def run(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    ctx = _run_context(dash, request, viewer)
    return dash.render(request, "run.html", viewer, title=ctx["run"].label, **ctx)


async def run_live(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    return dash.render(request, "run_body.html", viewer, **_run_context(dash, request, viewer))


async def run_log(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    """A page of a run's output: ``{text, next, more, active}``; ``after`` is the cursor."""
    run = _readable_run(dash, request, viewer)
    after = int_param(request.query_params.get("after"), "after", 0)
    chunks = dash.store.output(run_id=run.id, after=after, limit=LOG_PAGE)
    cursor, size, parts = after, 0, []
    for chunk in chunks:
        parts.append(chunk.data)
        cursor = chunk.cursor
        size += len(chunk.data)
        if size > MAX_LOG_PAGE_BYTES:
            break
    active = dash.store.run(run.id).status.active
    body = {
        "text": b"".join(parts).decode("utf-8", errors="replace"),
        "next": cursor,
        "more": len(parts) < len(chunks) or len(chunks) == LOG_PAGE,
        "active": active,
    }
    return secure(JSONResponse(body))


# -- one script ----------------------------------------------------------------------------


def _script_context(dash: Dashboard, request: Request, viewer: Viewer) -> dict[str, Any]:
    script = dash.store.script(path_id(request, "script_id"), viewer.principal.workspace)
    if not viewer.principal.may_read_run(script.id):
        raise ForbiddenError(f"token {viewer.principal.name!r} may not see {script.spec.name!r}")
    recent = dash.store.script_runs(script.id, limit=50)
    release = dash.store.latest_release(script.app_id)
    size = script.spec.size or (release.manifest.size if release else None)
    return {
        "script": script,
        "spec": script.spec,
        "size": words.size_of(size) if size else None,
        "app": dash.store.app_by_id(script.app_id),
        "words": words.describe(script.spec.cron) if script.spec.cron else None,
        "fires": _next_fires(script, dash.now(), 5),
        "runs": recent[:20],
        "bars": words.chart(recent, dash.now()),
        "chart_longest": words.longest_span(recent, dash.now()),
        "chart_width": words.WIDTH,
        "chart_height": words.HEIGHT,
        "may_trigger": viewer.principal.may_trigger(script.id),
    }


async def script(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    ctx = _script_context(dash, request, viewer)
    return dash.render(request, "script.html", viewer, title=ctx["spec"].name, **ctx)


async def script_live(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    ctx = _script_context(dash, request, viewer)
    return dash.render(request, "script_body.html", viewer, **ctx)


# -- admin ---------------------------------------------------------------------------------


async def audit(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    viewer.principal.require("admin")
    page = await run_in(
        dash.server.workers.reads, dash.server.audit.page, viewer.principal.workspace, None, 200
    )
    shown = {r.id for r in page.records}
    # A problem outside the page (a record of the first thousand altered, the newest deleted)
    # is still shown: verification covers the whole log.
    others = [p for p in page.problems if p.id not in shown]
    return dash.render(
        request, "audit.html", viewer, title="Audit", records=page.records[::-1], others=others
    )


async def tokens(dash: Dashboard, request: Request, viewer: Viewer) -> Response:
    return tokens_page(dash, request, viewer)


def tokens_page(
    dash: Dashboard, request: Request, viewer: Viewer, secret: str | None = None, status: int = 200
) -> Response:
    viewer.principal.require("admin")
    ws = viewer.principal.workspace
    scripts = {str(s.id): s for s in dash.store.scripts(ws)}
    apps = {a.id: a.name for a in dash.store.apps(ws)}
    rows = [
        {
            "token": t,
            "script": (
                f"{apps.get(scripts[t.script].app_id, '?')}/{scripts[t.script].spec.name}"
                if t.script in scripts
                else t.script
            ),
        }
        for t in dash.store.tokens(ws)
    ]
    choices = [f"{apps.get(s.app_id, '?')}/{s.spec.name}" for s in scripts.values()]
    return dash.render(
        request,
        "tokens.html",
        viewer,
        status=status,
        title="Tokens",
        rows=rows,
        secret=secret,
        script_choices=choices,
    )
