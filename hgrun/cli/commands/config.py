"""``hgrun config``, ``config:set`` and ``config:unset``: the app's env vars."""

from __future__ import annotations

import shlex

import click

from hgrun.cli.options import (
    Context,
    app_name_or_here,
    app_option,
    check_env_name,
    env_pair,
    json_option,
    pass_ctx,
)


@click.command()
@app_option
@json_option
@click.option("--shell", is_flag=True, help="Print as KEY='value' lines for a shell.")
@pass_ctx
def config(ctx: Context, app_name: str | None, as_json: bool, shell: bool) -> None:
    """Show the app's env vars."""
    values = ctx.api.get(f"/v1/apps/{app_name_or_here(app_name)}/config")
    if as_json:
        ctx.output.json(values)
    elif shell or not ctx.output.interactive:
        for key, value in values.items():
            ctx.output.line(f"{key}={shlex.quote(value)}")
    else:
        ctx.output.table(["Key", "Value"], list(values.items()))


@click.command("config:set")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@app_option
@json_option
@pass_ctx
def config_set(ctx: Context, pairs: tuple[str, ...], app_name: str | None, as_json: bool) -> None:
    """Set env vars for runs created from now on (makes a new release)."""
    changes = dict(env_pair(p, "config:set") for p in pairs)
    config = ctx.api.patch(f"/v1/apps/{app_name_or_here(app_name)}/config", changes)
    if as_json:
        ctx.output.json({"set": sorted(changes), "config": config})
    else:
        ctx.output.success(f"Set {', '.join(changes)}")


@click.command("config:unset")
@click.argument("keys", nargs=-1, required=True)
@app_option
@json_option
@pass_ctx
def config_unset(ctx: Context, keys: tuple[str, ...], app_name: str | None, as_json: bool) -> None:
    """Unset env vars (makes a new release); a key the app does not have is an error."""
    for key in keys:
        check_env_name(key, "config:unset")
    config = ctx.api.patch(f"/v1/apps/{app_name_or_here(app_name)}/config", {k: None for k in keys})
    if as_json:
        ctx.output.json({"unset": sorted(keys), "config": config})
    else:
        ctx.output.success(f"Unset {', '.join(keys)}")


COMMANDS = (config, config_set, config_unset)
