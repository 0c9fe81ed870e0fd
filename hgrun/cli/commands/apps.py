"""``hgrun apps`` and ``hgrun apps:create``."""

from __future__ import annotations

import click

from hgrun.cli.options import Context, json_option, pass_ctx, show_rows
from hgrun.cli.output import ago
from hgrun.errors import InputError


@click.command("apps")
@json_option
@pass_ctx
def apps_list(ctx: Context, as_json: bool) -> None:
    """List apps."""
    apps = ctx.api.get("/v1/apps")
    show_rows(ctx, apps, as_json, ["Name", "Created"], lambda a: (a["name"], ago(a["created"])))


@click.command("apps:create")
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


@click.command("apps:destroy")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (for scripts).")
@json_option
@pass_ctx
def apps_destroy(ctx: Context, name: str, yes: bool, as_json: bool) -> None:
    """Delete an app with its releases, config, scripts and run history. Cannot be undone."""
    if not yes:
        if not ctx.terminal.stdin_isatty:
            raise InputError(
                f"destroying {name} needs a confirmation",
                f"pass --yes: `hgrun apps:destroy {name} --yes`",
            )
        ctx.api.get(f"/v1/apps/{name}")  # a typo fails here, before the question
        ctx.output.info(f"This deletes {name} with its releases, config, scripts and run history.")
        typed = click.prompt(f"Type {name} to confirm", default="", show_default=False)
        if typed != name:
            raise InputError(f"{typed!r} is not {name!r}: nothing was destroyed")
    answer = ctx.api.request("DELETE", f"/v1/apps/{name}")
    if as_json:
        ctx.output.json(answer)
    else:
        ctx.output.success(f"Destroyed app {name}")


COMMANDS = (apps_list, apps_create, apps_destroy)
