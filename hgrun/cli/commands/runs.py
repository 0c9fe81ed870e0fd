"""Runs: ``hgrun run``, ``attach``, ``ps``, ``runs``, ``runs:info`` and ``stop``.

:func:`attach_run` is the one way a command attaches the terminal to a run (``scripts:run`` too).
The attach client (websockets), the upload progress bar (rich) and the deploy (with its build
view) are imported when used, so a run of the live release loads none of them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from hgrun.cli import appdir, uploads, views
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
from hgrun.errors import HgrunError, InputError
from hgrun.models import SIZES, RunStatus, TriggerKind


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
    env = dict(env_pair(p, "--env") for p in env_pairs)
    if size is not None and size not in SIZES:
        raise InputError(f"--size {size!r}: unknown size", f"sizes: {', '.join(SIZES)}")
    if timeout is not None:
        duration_flag("--timeout", timeout)
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
    return attach_run(ctx, run_id, use_tty)


def _prepare_app(ctx: Context, app_name: str | None, no_build: bool) -> str:
    """The app to run; from an app folder, deploy first when its context changed."""
    root = appdir.find_app_dir(Path.cwd())
    if app_name or root is None:
        return app_name_or_here(app_name)
    if no_build:
        # Nothing is built, so the manifest need not be parsed whole; just its name.
        name = appdir.quick_name(root)
        if name:
            return name
    app = appdir.load(root)
    if not no_build:
        current = ctx.api.get(f"/v1/apps/{app.name}").get("release")
        if current is None or current["context_hash"] != app.context_hash():
            # Only now: the build view is not loaded for a run of the live release.
            from hgrun.cli.commands.deploy import deploy_app

            deploy_app(ctx, app, quiet=not ctx.terminal.stderr_isatty)
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


def attach_run(ctx: Context, run_id: int, tty: bool) -> int:
    """Attach the terminal to run ``run_id`` until it ends; its exit code."""
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
    items = ctx.api.get(f"/v1/apps/{app_name_or_here(app_name)}/runs", **params)
    show_rows(ctx, items, as_json, views.RUN_COLUMNS, views.run_row)


@click.command("runs:info")
@click.argument("run_id")
@json_option
@pass_ctx
def runs_info(ctx: Context, run_id: str, as_json: bool) -> None:
    """One run: command, trigger, status, exit code, duration; stderr's tail on failure."""
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
