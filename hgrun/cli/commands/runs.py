"""Runs: ``hgrun run``, ``attach``, ``ps``, ``runs``, ``runs:info`` and ``stop``.

What ``hgrun run`` does once its arguments are read is :mod:`hgrun.cli.runstart`'s, and so is
:func:`attach_run`, the one way a command attaches the terminal to a run (``scripts:run`` too).
The attach client and the upload progress bar (rich) are imported when used, so a command that
needs neither starts fast.
"""

from __future__ import annotations

from typing import Any

import click

from hgrun.cli import runstart
from hgrun.cli.options import (
    Context,
    app_name_or_here,
    app_option,
    json_option,
    parse_run_id,
    pass_ctx,
    show_rows,
)
from hgrun.errors import InputError, NotFoundError
from hgrun.vocabulary import SIZES, RunStatus, TriggerKind

attach_run = runstart.attach_run  # scripts:run's, and `hgrun attach`'s


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
def run(click_ctx: click.Context, **params: Any) -> int:
    """Run COMMAND in a fresh container of the app's live release; exit with its exit code.

    One argument is a command line for `sh -c`, so quote it as on Scalingo: `hgrun run 'ls -l |
    wc -l'`. Several arguments run as given, without a shell. A first word that names a Procfile
    type runs that type's command with the rest appended (or say it with --type).

    After the command, hgrun takes -a/--app, -s/--size, -e/--env and --type as heroku run does;
    every other word is the command's. After --, everything is the command's.

    `hgrun run` never deploys: from an app folder that differs from the live release, it says so
    on stderr and runs the live release; --build runs the folder's code this once instead.
    """
    args = read_run_args(click_ctx)
    if not args.command and not args.process_type:
        raise click.UsageError(runstart.NO_COMMAND)
    return runstart.start(click_ctx.ensure_object(Context), args)


def read_run_args(click_ctx: click.Context) -> runstart.RunArgs:
    """What click read of ``hgrun run``'s command line (the parameters are RunArgs' fields)."""
    return runstart.RunArgs(raw=tuple(click_ctx.meta.get("hgrun.run.args", [])), **click_ctx.params)


@click.command("attach")
@click.argument("run_id")
@click.option("--tty/--no-tty", default=None, help="Force a TTY on or off.")
@pass_ctx
def attach_cmd(ctx: Context, run_id: str, tty: bool | None) -> int:
    """Attach to a run in flight (after a dropped connection, say); exit with its code."""
    number = parse_run_id(run_id)
    info = ctx.api.get(f"/v1/runs/{number}")
    use_tty = bool(info["tty"]) if tty is None else tty
    queued = info["status"] == "queued" and bool(info.get("queue"))  # waiting for a slot
    return attach_run(ctx, number, use_tty and ctx.terminal.stdin_isatty, queued=queued)


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
