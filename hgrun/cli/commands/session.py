"""The CLI's own set-up: ``hgrun login`` and ``hgrun completion``."""

from __future__ import annotations

from pathlib import Path

import click

from hgrun.cli.client import Api, Settings, config_path
from hgrun.cli.options import Context, json_option, pass_ctx
from hgrun.errors import InputError


@click.command()
@click.option("--url", help="The server, e.g. http://127.0.0.1:8765.")
@click.option(
    "--token",
    help="An API token; - reads it from stdin (the first admin token is in the server's"
    " data dir, admin.token).",
)
@click.option("--workspace", help="The workspace (default: the token's own).")
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="The CA certificate (PEM) of a server with a private CA; saved for later commands.",
)
@json_option
@pass_ctx
def login(
    ctx: Context,
    url: str | None,
    token: str | None,
    workspace: str | None,
    ca_cert: str | None,
    as_json: bool,
) -> None:
    """Save the server URL and token (in the XDG config folder, mode 0600)."""
    current = ctx.settings
    if token == "-":
        # The first line of stdin: a token never has to appear in argv (ps, shell history).
        token = click.get_text_stream("stdin").readline().strip()
        if not token:
            raise InputError("--token -: no token on stdin", "e.g. hgrun login --token - < FILE")
    elif token is None:
        if not ctx.terminal.stdin_isatty:
            raise InputError(
                "--token is required when stdin is not a terminal",
                "pass --token - to read it from stdin",
            )
        token = click.prompt("Token", hide_input=True)
    settings = Settings(
        url=(url or current.url).rstrip("/"),
        token=token,
        workspace=workspace,
        ca_cert=str(Path(ca_cert).resolve()) if ca_cert else current.ca_cert,
    )
    ctx._api = Api(settings)
    ctx.api.get("/v1/apps")  # proves the URL and the token before saving them
    path = settings.save(ctx.environ)
    if as_json:
        ctx.output.json({"url": settings.url, "workspace": workspace, "config": str(path)})
    else:
        ctx.output.success(f"Logged in to {settings.url}; saved in {path}")


@click.command()
@json_option
@pass_ctx
def logout(ctx: Context, as_json: bool) -> None:
    """Forget the token `hgrun login` saved (the server URL is kept)."""
    path = config_path(ctx.environ)
    saved = Settings.load({k: v for k, v in ctx.environ.items() if not k.startswith("HGRUN_")})
    had = path.exists() and saved.token is not None
    if had:
        Settings(url=saved.url, token=None, workspace=saved.workspace, ca_cert=saved.ca_cert).save(
            ctx.environ
        )
    if as_json:
        ctx.output.json({"logged_out": had, "config": str(path)})
    elif had:
        ctx.output.success(f"Logged out: the token is gone from {path}")
    else:
        ctx.output.info(f"No token saved in {path}: nothing to forget")
    if ctx.environ.get("HGRUN_TOKEN"):
        ctx.output.info(
            "HGRUN_TOKEN is still set in this shell and still used: `unset HGRUN_TOKEN`"
        )


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(click_ctx: click.Context, shell: str) -> None:
    """Print the shell completion script: eval "$(hgrun completion bash)"."""
    from click.shell_completion import get_completion_class

    from hgrun.cli.completion import install

    install()  # bash: the script that keeps `config:unset` one word

    ctx = click_ctx.find_object(Context)
    cls = get_completion_class(shell)
    if cls is None:
        raise InputError(f"no completion for {shell}")
    root = click_ctx.find_root().command
    ctx.output.line(cls(root, {}, "hgrun", "_HGRUN_COMPLETE").source())


COMMANDS = (login, logout, completion)
