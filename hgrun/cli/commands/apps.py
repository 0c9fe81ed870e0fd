"""``hgrun apps`` and ``hgrun apps:create``."""

from __future__ import annotations

import click

from hgrun.cli.options import Context, json_option, pass_ctx, show_rows
from hgrun.cli.output import ago


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


COMMANDS = (apps_list, apps_create)
