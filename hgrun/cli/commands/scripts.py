"""``hgrun scripts`` and ``hgrun scripts:run``."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import click

from hgrun import errors
from hgrun.cli import views
from hgrun.cli.commands.runs import attach_run
from hgrun.cli.options import (
    Context,
    app_name_or_here,
    app_option,
    json_option,
    pass_ctx,
    show_rows,
)
from hgrun.errors import ExitStatus, InputError
from hgrun.vocabulary import RunStatus


def _script(ctx: Context, app: str, name: str) -> dict[str, Any]:
    for script in ctx.api.get(f"/v1/apps/{app}/scripts"):
        if script["name"] == name:
            return dict(script)
    raise errors.NotFoundError(
        f"app {app} has no script {name!r}",
        "scripts come from hgrun.yaml; list them with `hgrun scripts`",
    )


@click.command()
@app_option
@json_option
@pass_ctx
def scripts(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """The app's scripts: schedule, next fire time, policies and the last run."""
    items = ctx.api.get(f"/v1/apps/{app_name_or_here(app_name)}/scripts")
    show_rows(ctx, items, as_json, views.SCRIPT_COLUMNS, views.script_row)


@click.command("scripts:run")
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
        # Sent byte for byte as typed or as the file holds it (validated, never re-serialised).
        if input_text.startswith("@"):
            try:
                body = Path(input_text[1:]).read_bytes()
            except OSError as e:
                raise InputError(f"--input {input_text}: cannot read it ({e})") from e
        else:
            body = os.fsencode(input_text)
        try:
            json.loads(body)
        except ValueError as e:
            raise InputError(f"--input: not valid JSON ({e})", "e.g. --input '{\"id\": 42}'") from e
    script = _script(ctx, app_name_or_here(app_name), name)
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
        # Waits before attaching: a run in the script's own backlog has no session yet.
        from hgrun.cli import slotwait

        if not info.get("queue"):
            ctx.output.info(f"{info['label']} is queued behind the script's running run ...")
        terminal = ctx.terminal
        waiting = slotwait.Waiting(
            lambda: dict(ctx.api.get(f"/v1/runs/{run_id}")),
            terminal.stderr if terminal.stderr_isatty else None,
        )
        try:
            slotwait.wait_out(waiting, interval=0.5)
        except KeyboardInterrupt:
            waiting.clear()
            with contextlib.suppress(errors.HgrunError):
                ctx.api.post(f"/v1/runs/{run_id}/stop")
            raise
    return attach_run(ctx, run_id, use_tty)


def _wait_for(ctx: Context, run_id: int) -> dict[str, Any]:
    while True:
        info: dict[str, Any] = ctx.api.get(f"/v1/runs/{run_id}")
        if RunStatus(info["status"]).finished:
            return info
        time.sleep(0.5)


def _exit_code(info: dict[str, Any]) -> int:
    if info["status"] == "timed_out":
        return int(ExitStatus.TIMED_OUT)
    if info["exit_code"] is not None:
        return int(info["exit_code"])
    return 0 if info["status"] == "succeeded" else int(ExitStatus.ERROR)


COMMANDS = (scripts, scripts_run)
