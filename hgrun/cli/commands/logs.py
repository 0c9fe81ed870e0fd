"""``hgrun logs``: the app log, every run's output line by line, optionally followed.

The flags are Heroku's and Dokku's: ``-n/--num`` lines (default 100), ``-t/--tail`` to follow
(``-f/--follow`` kept as an alias). Following one run (``--run N``) ends when the run ends, with
its exit code; Ctrl-C ends any follow with 130, the prompt on a line of its own.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from hgrun.cli import views
from hgrun.cli.options import (
    Context,
    app_name_or_here,
    app_option,
    json_option,
    parse_run_id,
    pass_ctx,
)
from hgrun.errors import ExitStatus

DEFAULT_LINES = 100  # as heroku logs
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports ^C


@click.command()
@app_option
@click.option("--run", "-r", "run_id", metavar="RUN", help="Only this run's output.")
@click.option(
    "--num",
    "-n",
    "num",
    type=click.IntRange(0),
    default=DEFAULT_LINES,
    show_default=True,
    help="How many of the last lines to show (0: all).",
)
@click.option(
    "--tail",
    "-t",
    "follow",
    is_flag=True,
    help="Keep streaming new lines (as heroku logs --tail); with --run, until the run ends.",
)
@click.option("--follow", "-f", "follow", is_flag=True, help="Same as --tail.")
@json_option
@pass_ctx
def logs(
    ctx: Context,
    app_name: str | None,
    run_id: str | None,
    num: int,
    follow: bool,
    as_json: bool,
) -> int:
    """The app's log: every run's output, each line with its time and source (run.N)."""
    name = app_name_or_here(app_name)
    number = parse_run_id(run_id) if run_id else None
    params = {"run": number, "tail": num or None, "follow": 1 if follow else None}
    try:
        for line in ctx.api.stream_lines("GET", f"/v1/apps/{name}/logs", params=params):
            ctx.output.line(json.dumps(line) if as_json else views.log_line(line))
    except KeyboardInterrupt:
        # ^C was echoed where the cursor was: end that line, so the prompt starts on its own.
        if ctx.terminal.stderr_isatty:
            ctx.output.info("")
        return INTERRUPTED
    if follow and number is not None:
        return _run_exit_code(ctx, number)
    return 0


def _run_exit_code(ctx: Context, number: int) -> int:
    """The exit code of a run the server says has ended (it may take a moment to record)."""
    deadline = time.monotonic() + 10
    info: dict[str, Any] = ctx.api.get(f"/v1/runs/{number}")
    while info["status"] in ("queued", "starting", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        info = ctx.api.get(f"/v1/runs/{number}")
    if info["status"] == "timed_out":
        return int(ExitStatus.TIMED_OUT)
    if info["exit_code"] is not None:
        return int(info["exit_code"])
    return 0 if info["status"] == "succeeded" else int(ExitStatus.ERROR)


COMMANDS = (logs,)
