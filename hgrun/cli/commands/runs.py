"""Runs: ``hgrun run``, ``attach``, ``ps``, ``runs``, ``runs:info`` and ``stop``.

:func:`attach_run` is the one way a command attaches the terminal to a run (``scripts:run`` too).
An attached `hgrun run` without uploads creates its run on the attach handshake itself
(``/v1/apps/{app}/runs/attach``): one connection, one round trip. The attach client and the upload
progress bar (rich) are imported when used, so a command that needs neither starts fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import click

from hgrun.cli import appdir, runargs, trace
from hgrun.cli.client import Api, Settings, cli_hint
from hgrun.cli.options import (
    Context,
    app_name_or_here,
    app_option,
    duration_flag,
    env_pair,
    json_option,
    parse_run_id,
    pass_ctx,
    show_rows,
)
from hgrun.cli.output import duration
from hgrun.cli.terminal import Terminal
from hgrun.errors import AuthError, ForbiddenError, HgrunError, InputError, NotFoundError
from hgrun.vocabulary import SIZES, RunStatus, TriggerKind

if TYPE_CHECKING:
    from hgrun.cli import attach, uploads

T = TypeVar("T")


class RunCommand(click.Command):
    """``hgrun run``: click parses the options before the command (an unknown one is an error
    with a "did you mean"); :mod:`hgrun.cli.runargs` takes hgrun's options after it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["hgrun.run.args"] = list(args)
        return super().parse_args(ctx, args)


@click.command(cls=RunCommand, context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@app_option
@click.option(
    "--env",
    "-e",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an env var for this run (repeatable).",
)
@click.option("--size", "-s", help=f"Size: {', '.join(SIZES)}.")
@click.option(
    "--type",
    "-t",
    "process_type",
    metavar="TYPE",
    help="Run a Procfile process type (the command's words are appended).",
)
@click.option("--detached", "-d", is_flag=True, help="Run in the background; print the run id.")
@click.option(
    "--file",
    "-f",
    "files",
    multiple=True,
    metavar="PATH",
    help="A file or folder to put in /tmp/uploads first (repeatable).",
)
@click.option("--timeout", "timeout", metavar="DURATION", help="Max duration, e.g. 90s, 15m, 1h.")
@click.option(
    "--no-stdin",
    "-n",
    "no_stdin",
    is_flag=True,
    help="Do not read stdin (as ssh -n); for `hgrun run` in a `while read` loop.",
)
@click.option(
    "--build",
    is_flag=True,
    help="Build this folder and run that image, this once (never released, never cron's).",
)
@click.option("--tty/--no-tty", default=None, help="Force a TTY on or off.")
@click.option(
    "--exit-code", "-x", is_flag=True, help="Accepted as in heroku run; hgrun always does it."
)
@click.option("--no-build", is_flag=True, hidden=True)
@json_option
@click.pass_context
def run(
    click_ctx: click.Context,
    command: tuple[str, ...],
    app_name: str | None,
    env_pairs: tuple[str, ...],
    size: str | None,
    process_type: str | None,
    detached: bool,
    files: tuple[str, ...],
    timeout: str | None,
    no_stdin: bool,
    build: bool,
    tty: bool | None,
    exit_code: bool,
    no_build: bool,
    as_json: bool,
) -> int:
    """Run COMMAND in a fresh container of the app's live release; exit with its exit code.

    One argument is a command line for `sh -c`, so quote it as on Scalingo: `hgrun run 'ls -l |
    wc -l'`. Several arguments run as given, without a shell. A first word that names a Procfile
    type runs that type's command with the rest appended (or say it with --type).

    After the command, hgrun takes -a/--app, -s/--size, -e/--env and --type as heroku run does;
    every other word is the command's. After --, everything is the command's.

    `hgrun run` never deploys: from an app folder that differs from the live release, it says so
    on stderr and runs the live release; --build runs the folder's code this once instead.
    """
    trace.mark("parsed")
    ctx: Context = click_ctx.find_object(Context)
    raw: list[str] = click_ctx.meta.get("hgrun.run.args", [])
    if command and raw.count("--") == command.count("--"):
        # No `--` before the command: hgrun's options after it are hgrun's.
        split = runargs.split_after_command(command)
        command = split.command
        app_name = _once("--app", app_name, split.app)
        size = _once("--size", size, split.size)
        process_type = _once("--type", process_type, split.type)
        env_pairs = env_pairs + split.env
        noticed = [w for w in split.taken if not w.startswith(("-a ", "--app"))]
        if noticed:
            ctx.output.info(
                f"hgrun: took {', '.join(noticed)} after the command as hgrun's option(s);"
                " to give them to the command, put the command after --"
            )
    if not command and not process_type:
        raise click.UsageError("give a command, e.g. `hgrun run bash`, or a process type (--type)")
    env = dict(env_pair(p, "--env") for p in env_pairs)
    if size is not None and size not in SIZES:
        raise InputError(f"--size {size!r}: unknown size", f"sizes: {', '.join(SIZES)}")
    asked_timeout = duration_flag("--timeout", timeout) if timeout is not None else None
    entries: list[uploads.Upload] = []
    if files:
        from hgrun.cli import uploads

        entries = uploads.plan(files)
    name, built, folder_note = _prepare_app(ctx, app_name, build, check_folder=not no_build)
    terminal = ctx.terminal
    if no_stdin:
        terminal = dataclasses.replace(terminal, stdin=None, stdin_isatty=False)
    elif not detached:
        _hint_stdin_loop(ctx)
    use_tty = (terminal.stdin_isatty and terminal.stdout_isatty) if tty is None else tty
    if use_tty and not detached and "TERM" not in env and ctx.environ.get("TERM"):
        # The remote shell draws for the local terminal (as Scalingo's and Heroku's CLIs do).
        env["TERM"] = ctx.environ["TERM"]
    body: dict[str, Any] = {
        "command": list(command),
        "env": env,
        "size": size,
        "timeout": timeout,
        "detached": detached,
        "tty": use_tty and not detached,
        "uploads": bool(entries),
    }
    if process_type:
        body["type"] = process_type
    if built is not None:
        body["build"], body["procfile"] = built.context_hash, built.procfile_text
    trace.mark("request")
    opened: attach.WebSocket | None = None
    try:
        created = None if detached or entries else _create_attached(ctx, name, body)
        if created is not None:
            opened, run_info = created
        else:
            run_info = ctx.api.post(f"/v1/apps/{name}/runs", body)
    finally:  # said also when the create fails: the folder may be why
        if folder_note is not None and (note := folder_note.result()):
            ctx.output.info(note)
    trace.mark("created")
    run_id = run_info["id"]
    if (
        asked_timeout is not None
        and run_info.get("timeout")
        and run_info["timeout"] < asked_timeout
    ):
        ctx.output.info(
            f"hgrun: --timeout {timeout} is over the server's limit: {run_info['label']} stops"
            f" after {duration(run_info['timeout'])} (the server's --max-timeout)"
        )
    if entries:
        _upload(ctx, run_id, entries)
    if detached:
        if as_json:
            ctx.output.json(run_info)
        else:
            ctx.output.line(run_info["label"])
            if ctx.terminal.stderr_isatty:
                ctx.output.info(
                    f"Follow it with `hgrun logs -t --run {run_id}`;"
                    f" stop it with `hgrun stop {run_id}`."
                )
        return 0
    return attach_run(ctx, run_id, use_tty, terminal, opened)


def _create_attached(
    ctx: Context, app: str, body: dict[str, Any]
) -> tuple[attach.WebSocket, dict[str, Any]] | None:
    """Create the run and attach to it in one handshake (``/v1/apps/{app}/runs/attach``): the
    WebSocket and the run made. None when the request is too long for a header, or the server
    predates that endpoint: then it is a POST and an attach."""
    from hgrun.cli import attach
    from hgrun.relay import runheader

    request = runheader.encode(body)
    if len(request) > runheader.MAX_REQUEST:
        return None
    settings = ctx.settings
    try:
        ws = attach.create_and_connect(
            settings.ws_url(f"/v1/apps/{app}/runs/attach"),
            {**settings.headers(), runheader.HEADER: request},
            f"a new run of {app}",
            settings.ssl_context(),
        )
    except (AuthError, ForbiddenError) as e:
        raise cli_hint(e, settings) from None
    if ws is None:
        return None
    try:
        run_info = runheader.decode(ws.headers.get(runheader.HEADER.lower(), ""))
        if not isinstance(run_info, dict) or not isinstance(run_info.get("id"), int):
            raise InputError(f"the server's {runheader.HEADER} answer holds no run")
    except BaseException:
        ws.close()
        raise
    return ws, run_info


def _once(flag: str, before: str | None, after: str | None) -> str | None:
    if before is not None and after is not None and before != after:
        raise InputError(f"{flag} given twice ({before!r} and {after!r})")
    return after if after is not None else before


def _hint_stdin_loop(ctx: Context) -> None:
    """Say so when stdin is a file something already read part of: a `while read` loop's.

    A shell's `read` on a regular file reads a line and leaves the offset after it; `hgrun run`
    would then send the rest of the file to the command, and the loop ends after one turn.
    """
    stdin = ctx.terminal.stdin
    if stdin is None or ctx.terminal.stdin_isatty:
        return
    with contextlib.suppress(OSError, ValueError):
        fd = stdin.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.lseek(fd, 0, os.SEEK_CUR) > 0:
            ctx.output.info(
                "hgrun: stdin is a file already partly read (a `while read` loop?); the run"
                " reads the rest of it. Pass -n/--no-stdin to leave stdin to the loop."
            )


@dataclasses.dataclass(frozen=True)
class _Built:
    """What `--build` made: the folder's context (built) and its Procfile."""

    context_hash: str
    procfile_text: str


class _Background(Generic[T]):
    """``fn()`` in a daemon thread, started at once; :meth:`result` waits for its value (or
    raises what it raised). A CLI that exits meanwhile does not wait for it."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller of result()
            self._error = e

    def result(self) -> T | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _prepare_app(
    ctx: Context, app_name: str | None, build: bool, *, check_folder: bool = True
) -> tuple[str, _Built | None, _Background[str | None] | None]:
    """The app to run, with --build what this folder's build is, and the folder check.

    Never deploys. From the folder of the app being run, when the folder differs from the live
    release, one line on stderr says so and how to act on it: that check (the manifest loaded,
    the folder hashed, the live release asked for) runs in a thread, alongside the run's
    create; its note is the returned result. ``check_folder`` False (``--no-build``) skips it.
    """
    root = appdir.find_app_dir(Path.cwd())
    name = app_name or (appdir.quick_name(root) if root is not None else None)
    if build:
        if root is None:
            raise InputError("--build needs an app folder", "run from your app's folder")
        app = appdir.load(root)
        if app_name and app_name != app.name:
            raise InputError(
                f"--build builds this folder, which is app {app.name}, not {app_name}",
                "drop --app, or run from that app's folder",
            )
        # Only now: the build view is not loaded for a run of the live release.
        from hgrun.cli.commands.deploy import build_context

        digest = build_context(ctx, app, quiet=not ctx.terminal.stderr_isatty)
        return app.name, _Built(digest, app.procfile_text), None
    if name is None:
        name = app_name_or_here(app_name)  # the manifest parsed whole (its errors are shown)
    note = None
    if check_folder and root is not None and appdir.quick_name(root) in (None, name):
        settings, folder = ctx.settings, root
        note = _Background(lambda: _folder_differs(settings, folder, name))
    return name, None, note


def _folder_differs(settings: Settings, root: Path, name: str) -> str | None:
    """The note to show when the folder differs from ``name``'s live release (or does not
    load); None when it is the live release. Its own API connection: it runs in a thread. An
    API error is left to the run's create, which meets it too."""
    try:
        app = appdir.load(root)
    except HgrunError as e:
        if appdir.quick_name(root) == name:
            return (
                f"hgrun: running the live release of {name}; this folder does not load"
                f" ({e.message}), so `hgrun deploy` would fail"
            )
        return None
    if app.name != name:
        return None
    api = Api(settings)
    try:
        live = api.get(f"/v1/apps/{name}").get("release")
    except HgrunError:
        return None
    finally:
        api.close()
    if live is None:
        return None  # the server says "no release yet, run `hgrun deploy`"
    if live["context_hash"] != app.context_hash():
        return (
            f"hgrun: this folder differs from {name}'s live release v{live['version']}, which"
            " is what runs; `hgrun deploy` releases the folder, `hgrun run --build` runs it"
            " this once"
        )
    return None


def _upload(ctx: Context, run_id: int, entries: list[uploads.Upload]) -> None:
    from hgrun.cli import uploads

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


def attach_run(
    ctx: Context,
    run_id: int,
    tty: bool,
    terminal: Terminal | None = None,
    opened: attach.WebSocket | None = None,
) -> int:
    """Attach the terminal to run ``run_id`` until it ends (``opened``: a WebSocket already
    open on it); its exit code."""
    from hgrun.cli.attach import RECONNECT_WINDOW, attach_blocking

    settings = ctx.settings
    url = settings.ws_url(f"/v1/runs/{run_id}/attach")
    try:
        return attach_blocking(
            url,
            settings.headers(),
            terminal or ctx.terminal,
            tty=tty,
            run_id=run_id,
            ssl=settings.ssl_context(),
            reconnect=RECONNECT_WINDOW,
            opened=opened,
        )
    except (AuthError, ForbiddenError) as e:
        raise cli_hint(e, settings) from None
    except KeyboardInterrupt:
        # Without a TTY, Ctrl-C is ours: stop the remote command too, as `docker run` does.
        with contextlib.suppress(HgrunError):
            ctx.api.post(f"/v1/runs/{run_id}/stop")
        raise


@click.command("attach")
@click.argument("run_id")
@click.option("--tty/--no-tty", default=None, help="Force a TTY on or off.")
@pass_ctx
def attach_cmd(ctx: Context, run_id: str, tty: bool | None) -> int:
    """Attach to a run in flight (after a dropped connection, say); exit with its code."""
    number = parse_run_id(run_id)
    info = ctx.api.get(f"/v1/runs/{number}")
    use_tty = bool(info["tty"]) if tty is None else tty
    return attach_run(ctx, number, use_tty and ctx.terminal.stdin_isatty)


@click.command()
@app_option
@json_option
@pass_ctx
def ps(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """What is running now: attached, detached and cron runs."""
    from hgrun.cli import views

    items = ctx.api.get(f"/v1/apps/{app_name_or_here(app_name)}/runs", active=1, limit=500)
    show_rows(ctx, items, as_json, views.PS_COLUMNS, views.ps_row)


@click.command()
@app_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Filter (repeatable).",
)
@click.option("--trigger", type=click.Choice([t.value for t in TriggerKind]), help="Filter.")
@click.option("--script", "script_name", metavar="NAME", help="Only this script's runs.")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(1, 10000))
@json_option
@pass_ctx
def runs(
    ctx: Context,
    app_name: str | None,
    statuses: tuple[str, ...],
    trigger: str | None,
    script_name: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Run history, newest first."""
    from hgrun.cli import views

    app = app_name_or_here(app_name)
    if script_name is not None:
        if statuses or trigger:
            raise InputError(
                "--script lists all of a script's runs: it takes no --status or --trigger",
                "drop them, or use --status/--trigger without --script",
            )
        # GET /v1/scripts/{id}/runs: one index seek among any number of runs (Store.script_runs).
        found = [s for s in ctx.api.get(f"/v1/apps/{app}/scripts") if s["name"] == script_name]
        if not found:
            raise NotFoundError(
                f"app {app} has no script {script_name!r}",
                "scripts come from hgrun.yaml; list them with `hgrun scripts`",
            )
        # At most 1,000 a page there: older ones are read page by page, by id.
        items: list[Any] = []
        while len(items) < limit:
            params: dict[str, Any] = {"limit": min(1000, limit - len(items))}
            if items:
                params["before"] = items[-1]["id"]
            page = ctx.api.get(f"/v1/scripts/{found[0]['id']}/runs", **params)
            items += page
            if len(page) < params["limit"]:
                break
    else:
        params = {"limit": limit, "trigger": trigger}
        if statuses:
            params["status"] = list(statuses)
        items = ctx.api.get(f"/v1/apps/{app}/runs", **params)
    show_rows(ctx, items, as_json, views.RUN_COLUMNS, views.run_row)


@click.command("runs:info")
@click.argument("run_id")
@json_option
@pass_ctx
def runs_info(ctx: Context, run_id: str, as_json: bool) -> None:
    """One run: command, trigger, status, exit code, duration; stderr's tail on failure."""
    from hgrun.cli import views

    info = ctx.api.get(f"/v1/runs/{parse_run_id(run_id)}", stderr_tail=50)
    if as_json:
        ctx.output.json(info)
        return
    for line in views.aligned(views.run_fields(info)):
        ctx.output.line(line)
    if info["status"] in views.FAILED_STATUSES and info.get("stderr_tail"):
        ctx.output.line("\nLast lines of stderr:")
        for line in info["stderr_tail"]:
            ctx.output.line("  " + line)


@click.command()
@click.argument("run_id")
@json_option
@pass_ctx
def stop(ctx: Context, run_id: str, as_json: bool) -> None:
    """Stop a run: SIGTERM, then SIGKILL after a grace period; it ends canceled."""
    info = ctx.api.post(f"/v1/runs/{parse_run_id(run_id)}/stop")
    if as_json:
        ctx.output.json(info)
    else:
        ctx.output.success(f"Stopped {info['label']} ({info['status']})")


COMMANDS = (run, attach_cmd, ps, runs, runs_info, stop)
