"""The admin's commands: ``hgrun tokens``, ``tokens:create``, ``tokens:revoke``, ``audit``."""

from __future__ import annotations

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
    show_rows,
)
from hgrun.errors import ExitStatus


@click.command("tokens")
@json_option
@pass_ctx
def tokens_list(ctx: Context, as_json: bool) -> None:
    """The workspace's tokens (never their secrets)."""
    items = ctx.api.get("/v1/tokens")
    show_rows(ctx, items, as_json, views.TOKEN_COLUMNS, views.token_row)


@click.command("tokens:create")
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
        body["script"] = f"{app_name_or_here(app_name)}/{script_name}"
    token = ctx.api.post("/v1/tokens", body)
    if as_json:
        ctx.output.json(token)
        return
    ctx.output.line(token["token"])
    ctx.output.info(f"Token {name} ({scope}) created; the secret above is shown only once.")


@click.command("tokens:revoke")
@click.argument("name")
@json_option
@pass_ctx
def tokens_revoke(ctx: Context, name: str, as_json: bool) -> None:
    """Revoke a token at once."""
    answer = ctx.api.request("DELETE", f"/v1/tokens/{name}")
    if as_json:
        ctx.output.json(answer)
    else:
        ctx.output.success(f"Revoked token {name}")


@click.command()
@click.option("--run", "-r", "run_id", help="Only this run's records.")
@click.option("--limit", "-n", default=200, show_default=True, type=click.IntRange(1, 10000))
@click.option("--before", type=click.IntRange(1), help="Only records older than this id.")
@json_option
@pass_ctx
def audit(ctx: Context, run_id: str | None, limit: int, before: int | None, as_json: bool) -> int:
    """The audit log, decrypted: who ran what, with input and output. The server verifies the
    whole log, whatever is shown: exits 1 if any record was altered, deleted or added."""
    page = ctx.api.get(
        "/v1/audit",
        run=parse_run_id(run_id) if run_id else None,
        limit=limit,
        before=before,
    )
    if as_json:
        ctx.output.json(page)
    else:
        for record in page["records"]:
            for line in views.audit_lines(record):
                ctx.output.line(line)
    problems = page["problems"]
    if problems:
        shown = {r["id"] for r in page["records"] if r["problem"]}
        if not as_json:
            for problem in problems:
                if problem["id"] not in shown:
                    ctx.output.line(f"#{problem['id']} !! {problem['problem']}")
        ctx.output.error(
            f"{len(problems)} audit record(s) failed verification",
            "the audit store was changed outside hgrun",
        )
        return int(ExitStatus.ERROR)
    return 0


COMMANDS = (tokens_list, tokens_create, tokens_revoke, audit)
