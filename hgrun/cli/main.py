"""The ``hgrun`` command. Only ``cli/`` prints or exits; one handler maps errors to exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from hgrun import __version__, errors
from hgrun.cli import appdir, uploads
from hgrun.cli.client import Api, Settings
from hgrun.cli.output import Output, ago, duration
from hgrun.cli.terminal import Terminal
from hgrun.duration import parse_duration
from hgrun.errors import ExitStatus, HgrunError, InputError
from hgrun.models import ENV_NAME, SIZES, RunStatus, TriggerKind


@dataclasses.dataclass
class Context:
    terminal: Terminal
    output: Output
    environ: dict[str, str]
    debug: bool = False
    _api: Api | None = None

    @property
    def settings(self) -> Settings:
        return Settings.load(self.environ)

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.settings)
        return self._api


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
app_option = click.option(
    "--app", "-a", "app_name", help="The app (default: the name in ./hgrun.yaml)."
)


def _app_name(app_name: str | None) -> str:
    if app_name:
        return app_name
    root = appdir.find_app_dir(Path.cwd())
    if root is None:
        raise InputError(
            "no app given and no hgrun.yaml in this folder or above",
            "pass --app NAME, or run hgrun from your app's folder",
        )
    return appdir.load(root).name


def _run_id(text: str) -> int:
    raw = text.removeprefix("run.")
    if not raw.isdigit():
        raise InputError(f"invalid run id {text!r}", "a run id looks like 42 or run.42")
    return int(raw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hgrun")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(click_ctx: click.Context, debug: bool) -> None:
    """hgrun: one-off containers and on-demand scripts for your app, self-hosted."""
    ctx = click_ctx.ensure_object(Context)
    ctx.debug = debug


# -- server and login ----------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the store lives.")
@click.option("--docker-host", help="The Docker engine (default: DOCKER_HOST or the socket).")
@click.option(
    "--engine",
    "engine_kind",
    type=click.Choice(["docker", "swarm"]),
    default="docker",
    show_default=True,
    help="One Docker engine, or a Docker Swarm (--docker-host is then its manager).",
)
@click.option(
    "--placement",
    multiple=True,
    help="Swarm placement constraint for every run, e.g. node.labels.pool==batch (repeatable).",
)
@click.option(
    "--placement-timeout",
    default="60s",
    show_default=True,
    help="How long a swarm run may wait for a node with room before it fails.",
)
@click.option("--grace", default="60s", show_default=True, help="Attached run kept after a drop.")
@click.option("--idle-timeout", default="30m", show_default=True, help="Idle attached session.")
@click.option("--max-timeout", default="1h", show_default=True, help="Cap on every run.")
@click.option("--max-upload", default=2048, show_default=True, help="Upload cap, in MB.")
@click.option("--notify-webhook", help="Also POST every script notification here.")
@click.option("--notify-email", multiple=True, help="Also mail every notification here.")
@click.option("--smtp-url", help="SMTP server for email, e.g. smtp://127.0.0.1:25.")
@click.option("--mail-from", default="hgrun@localhost", show_default=True)
@pass_ctx
def server(
    ctx: Context,
    host: str,
    port: int,
    data_dir: Path | None,
    docker_host: str | None,
    engine_kind: str,
    placement: tuple[str, ...],
    placement_timeout: str,
    grace: str,
    idle_timeout: str,
    max_timeout: str,
    max_upload: int,
    notify_webhook: str | None,
    notify_email: tuple[str, ...],
    smtp_url: str | None,
    mail_from: str,
) -> None:
    """Run the hgrun server (REST API, attach relay, supervisor) in the foreground."""
    from hgrun.server.main import serve
    from hgrun.server.notifier import Targets
    from hgrun.server.supervisor import Limits

    if data_dir is None:
        base = ctx.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        data_dir = Path(base) / "hgrun"
    limits = Limits(
        grace=_duration_flag("--grace", grace),
        idle_timeout=_duration_flag("--idle-timeout", idle_timeout),
        max_timeout=_duration_flag("--max-timeout", max_timeout),
        max_upload=max_upload * 1024 * 1024,
    )

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    if smtp_url and not smtp_url.startswith("smtp://"):
        raise InputError(f"--smtp-url {smtp_url!r}: expected smtp://HOST:PORT")
    targets = Targets(
        webhook=notify_webhook, email=notify_email, smtp_url=smtp_url, mail_from=mail_from
    )
    serve(
        host=host,
        port=port,
        data_dir=data_dir,
        docker_host=docker_host,
        limits=limits,
        targets=targets,
        environ=ctx.environ,
        say=say,
        engine_kind=engine_kind,
        placement=placement,
        placement_timeout=_duration_flag("--placement-timeout", placement_timeout),
    )


def _duration_flag(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise InputError(f"{flag} {value!r}: {e}", "use e.g. 90s, 15m or 1h") from e


@cli.command()
@click.option("--url", help="The server, e.g. http://127.0.0.1:8765.")
@click.option("--token", help="An API token (the admin token is printed at first start).")
@click.option("--workspace", help="The workspace (default: the token's own).")
@pass_ctx
def login(ctx: Context, url: str | None, token: str | None, workspace: str | None) -> None:
    """Save the server URL and token (in the XDG config folder, mode 0600)."""
    current = ctx.settings
    if token is None:
        if not ctx.terminal.stdin_isatty:
            raise InputError("--token is required when stdin is not a terminal")
        token = click.prompt("Token", hide_input=True)
    settings = Settings(url=(url or current.url).rstrip("/"), token=token, workspace=workspace)
    ctx._api = Api(settings)
    ctx.api.get("/v1/apps")  # proves the URL and the token before saving them
    path = settings.save(ctx.environ)
    ctx.output.success(f"Logged in to {settings.url}; saved in {path}")


# -- apps, deploys, releases, config -------------------------------------------------------


@cli.command("apps")
@json_option
@pass_ctx
def apps_list(ctx: Context, as_json: bool) -> None:
    """List apps."""
    apps = ctx.api.get("/v1/apps")
    if as_json:
        ctx.output.json(apps)
        return
    ctx.output.table(["Name", "Created"], [(a["name"], ago(a["created"])) for a in apps])


@cli.command("apps:create")
@click.argument("name")
@json_option
@pass_ctx
def apps_create(ctx: Context, name: str, as_json: bool) -> None:
    """Create an app."""
    app = ctx.api.post("/v1/apps", {"name": name})
    if as_json:
        ctx.output.json(app)
    else:
        ctx.output.success(f"Created app {app['name']}")


@cli.command()
@click.option(
    "--path",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="The app folder (default: the one holding ./hgrun.yaml).",
)
@json_option
@pass_ctx
def deploy(ctx: Context, folder: Path | None, as_json: bool) -> None:
    """Build the app in this folder (reusing an identical build) and release it."""
    app = _load_app(folder)
    release = _deploy(ctx, app, quiet=as_json)
    if as_json:
        ctx.output.json(release)


def _load_app(folder: Path | None) -> appdir.AppDir:
    root = folder or appdir.find_app_dir(Path.cwd())
    if root is None:
        raise InputError(
            "no hgrun.yaml in this folder or above", "run from your app's folder, or pass --path"
        )
    return appdir.load(root)


def _deploy(ctx: Context, app: appdir.AppDir, *, quiet: bool = False) -> dict[str, Any]:
    out = ctx.output
    started = time.monotonic()
    base = f"/v1/apps/{app.name}"
    ctx.api.get(base)  # an app that does not exist fails here, before any upload
    digest = app.context_hash()
    if ctx.api.exists(f"{base}/builds/{digest}"):
        if not quiet:
            out.info(f"Context {digest[:12]} is already built: reusing it, nothing to upload.")
    else:
        if not quiet:
            out.info(f"Building {app.name} (context {digest[:12]}) ...")
        image = None
        for event in ctx.api.stream_lines(
            "POST",
            f"{base}/builds",
            params={"network": app.manifest.network, "dockerfile": app.dockerfile},
            content=app.tar_chunks(),
            headers={"X-Context-Hash": digest, "Content-Type": "application/x-tar"},
        ):
            if "stream" in event and not quiet:
                out.info("  " + event["stream"])
            elif "error" in event:
                raise errors.from_json(event["error"], 400)
            elif "image" in event:
                image = event["image"]
        if image is None:
            raise HgrunError("the build ended without an image", "try `hgrun deploy` again")
    release = ctx.api.post(
        f"{base}/releases",
        {"context_hash": digest, "procfile": app.procfile_text, "manifest": app.manifest_text},
    )
    if not quiet:
        took = time.monotonic() - started
        what = "Unchanged:" if release.get("unchanged") else "Released"
        image = release["image"][7:19]
        out.success(f"{what} {app.name} v{release['version']} ({image}) in {took:.1f}s")
    return release


@cli.command()
@app_option
@json_option
@pass_ctx
def releases(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """List the app's releases, newest first."""
    items = ctx.api.get(f"/v1/apps/{_app_name(app_name)}/releases")
    if as_json:
        ctx.output.json(items)
        return
    ctx.output.table(
        ["Version", "Image", "Context", "Description", "Created"],
        [
            (
                f"v{r['version']}",
                r["image"][7:19],
                r["context_hash"][:12],
                r["description"],
                ago(r["created"]),
            )
            for r in items
        ],
    )


@cli.command()
@app_option
@json_option
@click.option("--shell", is_flag=True, help="Print as KEY='value' lines for a shell.")
@pass_ctx
def config(ctx: Context, app_name: str | None, as_json: bool, shell: bool) -> None:
    """Show the app's env vars."""
    values = ctx.api.get(f"/v1/apps/{_app_name(app_name)}/config")
    if as_json:
        ctx.output.json(values)
    elif shell or not ctx.output.interactive:
        for key, value in values.items():
            ctx.output.line(f"{key}={shlex.quote(value)}")
    else:
        ctx.output.table(["Key", "Value"], list(values.items()))


@cli.command("config:set")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@app_option
@pass_ctx
def config_set(ctx: Context, pairs: tuple[str, ...], app_name: str | None) -> None:
    """Set env vars for runs created from now on (makes a new release)."""
    changes = dict(_env_pair(p, "config:set") for p in pairs)
    ctx.api.patch(f"/v1/apps/{_app_name(app_name)}/config", changes)
    ctx.output.success(f"Set {', '.join(changes)}")


@cli.command("config:unset")
@click.argument("keys", nargs=-1, required=True)
@app_option
@pass_ctx
def config_unset(ctx: Context, keys: tuple[str, ...], app_name: str | None) -> None:
    """Unset env vars (makes a new release)."""
    for key in keys:
        _check_env_name(key, "config:unset")
    ctx.api.patch(f"/v1/apps/{_app_name(app_name)}/config", {k: None for k in keys})
    ctx.output.success(f"Unset {', '.join(keys)}")


def _env_pair(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"{where} {text!r}: expected KEY=VALUE", "e.g. DEBUG=1")
    _check_env_name(key, where)
    return key, value


def _check_env_name(key: str, where: str) -> None:
    if not ENV_NAME.match(key):
        raise InputError(
            f"{where} {key!r}: not a valid env var name",
            "use letters, digits and underscores, not starting with a digit",
        )


# -- runs ----------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@app_option
@click.option("--detached", "-d", is_flag=True, help="Run in the background; print the run id.")
@click.option(
    "--env",
    "-e",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an env var (repeatable).",
)
@click.option("--size", "-s", help=f"Size: {', '.join(SIZES)}.")
@click.option("--timeout", "-t", "timeout", help="Max duration, e.g. 90s, 15m, 1h.")
@click.option(
    "--file",
    "-f",
    "files",
    multiple=True,
    metavar="PATH",
    help="A file or folder to put in /tmp/uploads first (repeatable).",
)
@click.option("--no-build", is_flag=True, help="Run the live release; skip the build check.")
@click.option("--tty/--no-tty", default=None, help="Force a TTY on or off.")
@json_option
@pass_ctx
def run(
    ctx: Context,
    command: tuple[str, ...],
    app_name: str | None,
    detached: bool,
    env_pairs: tuple[str, ...],
    size: str | None,
    timeout: str | None,
    files: tuple[str, ...],
    no_build: bool,
    tty: bool | None,
    as_json: bool,
) -> int:
    """Run COMMAND in a fresh container of the app; exit with its exit code.

    A first word that names a Procfile type runs that type's command with the rest appended.
    """
    env = dict(_env_pair(p, "--env") for p in env_pairs)
    if size is not None and size not in SIZES:
        raise InputError(f"--size {size!r}: unknown size", f"sizes: {', '.join(SIZES)}")
    if timeout is not None:
        _duration_flag("--timeout", timeout)
    entries = uploads.plan(files)
    name = _prepare_app(ctx, app_name, no_build)
    use_tty = (ctx.terminal.stdin_isatty and ctx.terminal.stdout_isatty) if tty is None else tty
    if use_tty and not detached and "TERM" not in env and ctx.environ.get("TERM"):
        # The remote shell draws for the local terminal (as Scalingo's and Heroku's CLIs do).
        env["TERM"] = ctx.environ["TERM"]
    run_info = ctx.api.post(
        f"/v1/apps/{name}/runs",
        {
            "command": list(command),
            "env": env,
            "size": size,
            "timeout": timeout,
            "detached": detached,
            "tty": use_tty and not detached,
            "uploads": bool(entries),
        },
    )
    run_id = run_info["id"]
    if entries:
        _upload(ctx, run_id, entries)
    if detached:
        if as_json:
            ctx.output.json(run_info)
        else:
            ctx.output.line(run_info["label"])
            if ctx.terminal.stderr_isatty:
                ctx.output.info(
                    f"Follow it with `hgrun logs -f --run {run_id}`;"
                    f" stop it with `hgrun stop {run_id}`."
                )
        return 0
    return _attach(ctx, run_id, use_tty)


def _prepare_app(ctx: Context, app_name: str | None, no_build: bool) -> str:
    """The app to run; from an app folder, deploy first when its context changed."""
    root = appdir.find_app_dir(Path.cwd())
    if app_name or root is None:
        return _app_name(app_name)
    if no_build:
        # Nothing is built, so the manifest need not be parsed whole; just its name.
        name = appdir.quick_name(root)
        if name:
            return name
    app = appdir.load(root)
    if not no_build:
        current = ctx.api.get(f"/v1/apps/{app.name}").get("release")
        if current is None or current["context_hash"] != app.context_hash():
            _deploy(ctx, app, quiet=not ctx.terminal.stderr_isatty)
    return app.name


def _upload(ctx: Context, run_id: int, entries: list[uploads.Upload]) -> None:
    total = uploads.total_bytes(entries)
    path = f"/v1/runs/{run_id}/files"
    if not ctx.terminal.stderr_isatty:
        ctx.api.put_stream(path, uploads.tar_stream(entries), uploads.tar_size(entries))
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=ctx.output.err,
        transient=True,
    ) as progress:
        task = progress.add_task("Uploading", total=total)
        ctx.api.put_stream(
            path,
            uploads.tar_stream(entries, lambda n: progress.advance(task, n)),
            uploads.tar_size(entries),
        )
    ctx.output.info(f"Uploaded {len(entries)} file(s), {total / 1024**2:.1f} MB to /tmp/uploads")


def _attach(ctx: Context, run_id: int, tty: bool) -> int:
    import asyncio

    from hgrun.cli.attach import attach as attach_session

    settings = ctx.settings
    url = settings.ws_url(f"/v1/runs/{run_id}/attach")
    try:
        return asyncio.run(
            attach_session(url, settings.headers(), ctx.terminal, tty=tty, run_id=run_id)
        )
    except KeyboardInterrupt:
        # Without a TTY, Ctrl-C is ours: stop the remote command too, as `docker run` does.
        with contextlib.suppress(HgrunError):
            ctx.api.post(f"/v1/runs/{run_id}/stop")
        raise


@cli.command("attach")
@click.argument("run_id")
@click.option("--tty/--no-tty", default=None, help="Force a TTY on or off.")
@pass_ctx
def attach_cmd(ctx: Context, run_id: str, tty: bool | None) -> int:
    """Attach to a run in flight (after a dropped connection, say); exit with its code."""
    number = _run_id(run_id)
    info = ctx.api.get(f"/v1/runs/{number}")
    use_tty = bool(info["tty"]) if tty is None else tty
    return _attach(ctx, number, use_tty and ctx.terminal.stdin_isatty)


RUN_COLUMNS = ["Run", "Status", "Command", "Trigger", "Exit", "Duration", "Created"]


def _run_row(r: dict[str, Any]) -> tuple[Any, ...]:
    command = r["command"]
    if r["process_type"]:
        shown = r["process_type"]
    elif command[:2] == ["sh", "-c"]:
        shown = command[2] if len(command) > 2 else ""
    else:
        shown = shlex.join(command)
    trigger = f"{r['trigger']['kind']}:{r['trigger']['name']}"
    return (
        r["label"],
        r["status"],
        shown[:60],
        trigger,
        r["exit_code"],
        duration(r["duration"]),
        ago(r["created"]),
    )


@cli.command()
@app_option
@json_option
@pass_ctx
def ps(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """What is running now: attached, detached and cron runs."""
    items = ctx.api.get(f"/v1/apps/{_app_name(app_name)}/runs", active=1, limit=500)
    if as_json:
        ctx.output.json(items)
        return
    ctx.output.table(
        ["Run", "Status", "Mode", "Command", "Trigger", "Started"],
        [
            (
                r["label"],
                r["status"],
                "detached" if r["detached"] else ("attached tty" if r["tty"] else "attached"),
                _run_row(r)[2],
                _run_row(r)[3],
                ago(r["started"]),
            )
            for r in items
        ],
    )


@cli.command()
@app_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Filter (repeatable).",
)
@click.option("--trigger", type=click.Choice([t.value for t in TriggerKind]), help="Filter.")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(1, 10000))
@json_option
@pass_ctx
def runs(
    ctx: Context,
    app_name: str | None,
    statuses: tuple[str, ...],
    trigger: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Run history, newest first."""
    params: dict[str, Any] = {"limit": limit, "trigger": trigger}
    if statuses:
        params["status"] = list(statuses)
    items = ctx.api.get(f"/v1/apps/{_app_name(app_name)}/runs", **params)
    if as_json:
        ctx.output.json(items)
        return
    ctx.output.table(RUN_COLUMNS, [_run_row(r) for r in items])


@cli.command("runs:info")
@click.argument("run_id")
@json_option
@pass_ctx
def runs_info(ctx: Context, run_id: str, as_json: bool) -> None:
    """One run: command, trigger, status, exit code, duration; stderr's tail on failure."""
    info = ctx.api.get(f"/v1/runs/{_run_id(run_id)}", stderr_tail=50)
    if as_json:
        ctx.output.json(info)
        return
    row = _run_row(info)
    fields = [
        ("Run", info["label"]),
        ("App", info["app"]),
        ("Command", shlex.join(info["command"])),
        ("Process type", info["process_type"] or ""),
        ("Trigger", row[3]),
        ("Status", info["status"]),
        ("Exit code", "" if info["exit_code"] is None else info["exit_code"]),
        ("OOM killed", "yes" if info["oom"] else "no"),
        ("Size", info["size"]),
        ("Mode", "detached" if info["detached"] else "attached"),
        ("Env keys", ", ".join(info["env_keys"])),
        ("Created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["created"]))),
        ("Duration", duration(info["duration"])),
    ]
    if info["error"]:
        fields.append(("Note", info["error"]))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        ctx.output.line(f"{key + ':':<{width + 1}} {value}")
    failed = info["status"] in ("failed", "timed_out", "lost", "canceled")
    if failed and info.get("stderr_tail"):
        ctx.output.line("\nLast lines of stderr:")
        for line in info["stderr_tail"]:
            ctx.output.line("  " + line)


@cli.command()
@app_option
@click.option("--run", "-r", "run_id", help="Only this run's output.")
@click.option("--tail", "-n", type=click.IntRange(0), default=None, help="Last N lines only.")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines.")
@json_option
@pass_ctx
def logs(
    ctx: Context,
    app_name: str | None,
    run_id: str | None,
    tail: int | None,
    follow: bool,
    as_json: bool,
) -> None:
    """The app's log: every run's output, each line with its time and source (run.N)."""
    name = _app_name(app_name)
    params = {
        "run": _run_id(run_id) if run_id else None,
        "tail": tail,
        "follow": 1 if follow else None,
    }
    with contextlib.suppress(KeyboardInterrupt):
        for line in ctx.api.stream_lines("GET", f"/v1/apps/{name}/logs", params=params):
            if as_json:
                ctx.output.line(json.dumps(line))
                continue
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line["time"]))
            source = f"{line['source']}{'/err' if line['stream'] == 'stderr' else ''}"
            ctx.output.line(f"{stamp} {source}: {line['line']}")


@cli.command()
@click.argument("run_id")
@json_option
@pass_ctx
def stop(ctx: Context, run_id: str, as_json: bool) -> None:
    """Stop a run: SIGTERM, then SIGKILL after a grace period; it ends canceled."""
    info = ctx.api.post(f"/v1/runs/{_run_id(run_id)}/stop")
    if as_json:
        ctx.output.json(info)
    else:
        ctx.output.success(f"Stopped {info['label']} ({info['status']})")


# -- scripts, tokens, audit ----------------------------------------------------------------


def _script(ctx: Context, app: str, name: str) -> dict[str, Any]:
    for script in ctx.api.get(f"/v1/apps/{app}/scripts"):
        if script["name"] == name:
            return dict(script)
    raise errors.NotFoundError(
        f"app {app} has no script {name!r}",
        "scripts come from hgrun.yaml; list them with `hgrun scripts`",
    )


@cli.command()
@app_option
@json_option
@pass_ctx
def scripts(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """The app's scripts: schedule, next fire time, policies and the last run."""
    items = ctx.api.get(f"/v1/apps/{_app_name(app_name)}/scripts")
    if as_json:
        ctx.output.json(items)
        return
    rows = []
    for s in items:
        last = s["last_run"]
        schedule = f"{s['cron']} ({s['timezone']})" if s["cron"] else ""
        next_fire = ""
        if s["next_fire"]:
            next_fire = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["next_fire"]))
        rows.append(
            (
                s["name"],
                s["command"] or f"process {s['process']}",
                schedule,
                next_fire,
                f"{s['concurrency']}/{s['catchup']}",
                f"{last['label']} {ago(last['created'])}" if last else "",
                last["status"] if last else "",
            )
        )
    headers = ["Name", "Command", "Schedule", "Next", "Policy", "Last run", "Status"]
    ctx.output.table(headers, rows)


@cli.command("scripts:run")
@click.argument("name")
@app_option
@click.option(
    "--input",
    "input_text",
    metavar="JSON|@FILE",
    help="JSON for HOSTINGGURU_RUN_INPUT, or @file to read it from a file.",
)
@click.option("--detached", "-d", is_flag=True, help="Return at once with the run id.")
@click.option("--wait", is_flag=True, help="With --detached: wait for the end, exit with its code.")
@json_option
@pass_ctx
def scripts_run(
    ctx: Context,
    name: str,
    app_name: str | None,
    input_text: str | None,
    detached: bool,
    wait: bool,
    as_json: bool,
) -> int:
    """Trigger a script by hand; attached like `hgrun run`, or --detached."""
    body = b""
    if input_text is not None:
        raw = input_text
        if raw.startswith("@"):
            try:
                raw = Path(raw[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"--input {input_text}: cannot read it ({e})") from e
        try:
            body = json.dumps(json.loads(raw)).encode()
        except ValueError as e:
            raise InputError(f"--input: not valid JSON ({e})", "e.g. --input '{\"id\": 42}'") from e
    script = _script(ctx, _app_name(app_name), name)
    use_tty = ctx.terminal.stdin_isatty and ctx.terminal.stdout_isatty and not detached
    info = ctx.api.request(
        "POST",
        f"/v1/scripts/{script['id']}/runs",
        params={"detached": int(detached), "tty": int(use_tty), "via": "cli"},
        content=body,
        headers={"Content-Type": "application/json"},
    )
    run_id = info["id"]
    if info["status"] == "skipped":
        ctx.output.error(f"{info['label']} skipped: {info['error']}", None)
        return int(ExitStatus.CONFLICT)
    if detached:
        if wait:
            info = _wait_for(ctx, run_id)
        if as_json:
            ctx.output.json(info)
        else:
            ctx.output.line(info["label"])
        if wait:
            return _exit_code(info)
        return 0
    if info["status"] == "queued":
        ctx.output.info(f"{info['label']} is queued behind the script's running run ...")
        while info["status"] == "queued":
            time.sleep(0.5)
            info = ctx.api.get(f"/v1/runs/{run_id}")
    return _attach(ctx, run_id, use_tty)


def _wait_for(ctx: Context, run_id: int) -> dict[str, Any]:
    while True:
        info: dict[str, Any] = ctx.api.get(f"/v1/runs/{run_id}")
        if info["status"] not in ("queued", "starting", "running"):
            return info
        time.sleep(0.5)


def _exit_code(info: dict[str, Any]) -> int:
    if info["status"] == "timed_out":
        return int(ExitStatus.TIMED_OUT)
    if info["exit_code"] is not None:
        return int(info["exit_code"])
    return 0 if info["status"] == "succeeded" else int(ExitStatus.ERROR)


@cli.command("tokens")
@json_option
@pass_ctx
def tokens_list(ctx: Context, as_json: bool) -> None:
    """The workspace's tokens (never their secrets)."""
    items = ctx.api.get("/v1/tokens")
    if as_json:
        ctx.output.json(items)
        return
    ctx.output.table(
        ["Name", "Scope", "Script", "Created"],
        [(t["name"], t["scope"], t["script"] or "", ago(t["created"])) for t in items],
    )


@cli.command("tokens:create")
@click.argument("name")
@click.option("--scope", required=True, type=click.Choice(["admin", "deploy", "run", "trigger"]))
@click.option("--script", "script_name", help="Limit a trigger token to this script.")
@app_option
@json_option
@pass_ctx
def tokens_create(
    ctx: Context,
    name: str,
    scope: str,
    script_name: str | None,
    app_name: str | None,
    as_json: bool,
) -> None:
    """Create a token; its secret is printed once, on stdout."""
    body: dict[str, Any] = {"name": name, "scope": scope}
    if script_name:
        body["script"] = f"{_app_name(app_name)}/{script_name}"
    token = ctx.api.post("/v1/tokens", body)
    if as_json:
        ctx.output.json(token)
        return
    ctx.output.line(token["token"])
    ctx.output.info(f"Token {name} ({scope}) created; the secret above is shown only once.")


@cli.command("tokens:revoke")
@click.argument("name")
@pass_ctx
def tokens_revoke(ctx: Context, name: str) -> None:
    """Revoke a token at once."""
    ctx.api.request("DELETE", f"/v1/tokens/{name}")
    ctx.output.success(f"Revoked token {name}")


@cli.command()
@click.option("--run", "-r", "run_id", help="Only this run's records.")
@click.option("--limit", "-n", default=200, show_default=True, type=click.IntRange(1, 10000))
@json_option
@pass_ctx
def audit(ctx: Context, run_id: str | None, limit: int, as_json: bool) -> int:
    """The audit log, decrypted: who ran what, with input and output. Exits 1 if tampered."""
    records = ctx.api.get("/v1/audit", run=_run_id(run_id) if run_id else None, limit=limit)
    if as_json:
        ctx.output.json(records)
    else:
        for record in records:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["time"]))
            head = f"#{record['id']} {stamp} run.{record['run']} {record['action']}"
            if record["problem"]:
                ctx.output.line(f"{head} !! {record['problem']}")
                continue
            payload = dict(record["payload"] or {})
            actor = payload.pop("actor", "")
            ctx.output.line(f"{head} by {actor}")
            for key in ("command", "env_keys", "mode", "status", "exit_code", "error"):
                if payload.get(key) not in (None, "", []):
                    value = payload[key]
                    shown = shlex.join(value) if key == "command" else value
                    if key == "env_keys":
                        shown = ", ".join(value)
                    ctx.output.line(f"    {key}: {shown}")
            for key in ("input", "stdout", "stderr"):
                if payload.get(key):
                    ctx.output.line(f"    {key}:")
                    for line in str(payload[key]).splitlines()[-20:]:
                        ctx.output.line(f"      {line}")
    tampered = [r for r in records if r["problem"]]
    if tampered:
        ctx.output.error(
            f"{len(tampered)} audit record(s) failed verification",
            "the audit store was changed outside hgrun",
        )
        return int(ExitStatus.ERROR)
    return 0


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@pass_ctx
def completion(ctx: Context, shell: str) -> None:
    """Print the shell completion script: eval "$(hgrun completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:
        raise InputError(f"no completion for {shell}")
    ctx.output.line(cls(cli, {}, "hgrun", "_HGRUN_COMPLETE").source())


# -- the one top-level handler -------------------------------------------------------------


def main(argv: Sequence[str] | None = None, terminal: Terminal | None = None) -> int:
    """Run the CLI; return (and, as a script, exit with) its status. Errors print one line."""
    terminal = terminal or Terminal.from_process()
    ctx = Context(terminal=terminal, output=Output(terminal), environ=dict(os.environ))
    args = list(sys.argv[1:] if argv is None else argv)
    ctx.debug = bool(args) and args[0] == "--debug"
    status = _run_cli(ctx, args)
    if argv is None:
        # Skip the interpreter's teardown (tens of ms of module cleanup): everything the CLI
        # writes is flushed here, and nothing else is left to finish.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    return status


def _run_cli(ctx: Context, args: list[str]) -> int:
    try:
        result = cli.main(args=args, prog_name="hgrun", obj=ctx, standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return int(ExitStatus.USAGE)
    except click.exceptions.Abort:
        return 130
    except HgrunError as e:
        if ctx.debug:
            traceback.print_exc()
        ctx.output.error(e.message, e.hint)
        return int(e.exit_status)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Our reader went away (`hgrun logs | head`): not an error worth a message.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 141
    except Exception as e:
        if ctx.debug:
            traceback.print_exc()
        ctx.output.error(
            f"internal error: {e.__class__.__name__}: {e}",
            "run again with --debug for the traceback, and report it",
        )
        return int(ExitStatus.ERROR)
    finally:
        if ctx._api is not None:
            ctx._api.close()


if __name__ == "__main__":
    main()
