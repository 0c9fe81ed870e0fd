"""The engine's nodes: ``hgrun nodes``, ``nodes:add``, ``nodes:remove`` (admin tokens)."""

from __future__ import annotations

import click

from hgrun.cli import views
from hgrun.cli.options import Context, json_option, pass_ctx, show_rows


@click.command("nodes")
@json_option
@pass_ctx
def nodes_list(ctx: Context, as_json: bool) -> None:
    """Each node: its state, its runs in flight, and whether the server can attach there."""
    show_rows(ctx, ctx.api.get("/v1/nodes"), as_json, views.NODE_COLUMNS, views.node_row)


@click.command("nodes:add")
@click.argument("name")
@click.argument("endpoint")
@json_option
@pass_ctx
def nodes_add(ctx: Context, name: str, endpoint: str, as_json: bool) -> None:
    """Register where swarm node NAME's engine answers (tcp://HOST:PORT); it wins over the
    endpoint the node advertises. The server checks it is that node's engine first."""
    node = ctx.api.post("/v1/nodes", {"name": name, "endpoint": endpoint})
    if as_json:
        ctx.output.json(node)
    else:
        ctx.output.success(f"Node {name}: engine at {endpoint}")


@click.command("nodes:remove")
@click.argument("name")
@json_option
@pass_ctx
def nodes_remove(ctx: Context, name: str, as_json: bool) -> None:
    """Forget NAME's registered endpoint (the one it advertises counts again)."""
    answer = ctx.api.request("DELETE", f"/v1/nodes/{name}")
    if as_json:
        ctx.output.json(answer)
    else:
        ctx.output.success(f"Node {name}: registered endpoint removed")


COMMANDS = (nodes_list, nodes_add, nodes_remove)
