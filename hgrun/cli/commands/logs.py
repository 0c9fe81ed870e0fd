"""``hgrun logs``: the app log, every run's output line by line, optionally followed."""

from __future__ import annotations

import contextlib
import json

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


@click.command()
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
    name = app_name_or_here(app_name)
    params = {
        "run": parse_run_id(run_id) if run_id else None,
        "tail": tail,
        "follow": 1 if follow else None,
    }
    with contextlib.suppress(KeyboardInterrupt):
        for line in ctx.api.stream_lines("GET", f"/v1/apps/{name}/logs", params=params):
            ctx.output.line(json.dumps(line) if as_json else views.log_line(line))


COMMANDS = (logs,)
