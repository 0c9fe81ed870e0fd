"""The root group of the ``hgrun`` command, with click: every command and its help.

The commands live in :mod:`hgrun.cli.commands`, one module per group, loaded when used;
:func:`run_click` reads the command line with click and maps click's own errors (a usage error is
one line and exit 2). :mod:`hgrun.cli.main` holds the one top-level handler of every other error.
"""

from __future__ import annotations

import importlib

import click

from hgrun import __version__
from hgrun.cli import examples
from hgrun.cli.invocation import Context
from hgrun.errors import ExitStatus, InputError

COMMANDS: dict[str, str] = {
    "server": "server",
    "login": "session",
    "logout": "session",
    "completion": "session",
    "apps": "apps",
    "apps:create": "apps",
    "apps:destroy": "apps",
    "deploy": "deploy",
    "releases": "deploy",
    "releases:rollback": "deploy",
    "config": "config",
    "config:set": "config",
    "config:unset": "config",
    "run": "runs",
    "attach": "runs",
    "ps": "runs",
    "runs": "runs",
    "runs:info": "runs",
    "stop": "runs",
    "logs": "logs",
    "scripts": "scripts",
    "scripts:run": "scripts",
    "tokens": "tokens",
    "tokens:create": "tokens",
    "tokens:revoke": "tokens",
    "audit": "tokens",
    "nodes": "nodes",
    "nodes:add": "nodes",
    "nodes:remove": "nodes",
}
"""Each command and the module of :mod:`hgrun.cli.commands` that defines it (in its ``COMMANDS``).

A module is imported when one of its commands runs (or ``--help`` lists them all), so starting
``hgrun run`` costs no other command's code."""


class Commands(click.Group):
    """The root group, loading each command's module on first use (see :data:`COMMANDS`).

    Each command's help ends with its examples (:mod:`hgrun.cli.examples`); ``help`` is here."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*COMMANDS, "help"])

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            # click suggests from the commands it holds; these load lazily, so suggest here.
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            ctx.fail(
                f"No such command {name!r}." + (f" Did you mean {close[0]!r}?" if close else "")
            )
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "help":
            return help_cmd
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        commands = importlib.import_module(f"hgrun.cli.commands.{module}").COMMANDS
        command = next((c for c in commands if c.name == cmd_name), None)
        if command is not None and command.epilog is None:
            command.epilog = examples.epilog(cmd_name)
        return command


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hgrun")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(click_ctx: click.Context, debug: bool) -> None:
    """hgrun: one-off containers and on-demand scripts for your app, self-hosted."""
    ctx = click_ctx.ensure_object(Context)
    ctx.debug = debug


cli.epilog = examples.epilog("hgrun")


@click.command("help")
@click.argument("command_name", required=False, metavar="[COMMAND]")
@click.pass_context
def help_cmd(click_ctx: click.Context, command_name: str | None) -> None:
    """Show the help of hgrun, or of one command (as `hgrun COMMAND --help`)."""
    ctx = click_ctx.find_object(Context)
    root = click_ctx.find_root()
    if command_name is None:
        ctx.output.line(cli.get_help(root))
        return
    command = cli.get_command(root, command_name)
    if command is None:
        import difflib

        close = difflib.get_close_matches(command_name, cli.list_commands(root), n=1)
        raise InputError(
            f"no command {command_name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
            "`hgrun help` lists the commands",
        )
    with click.Context(command, info_name=command_name, parent=root) as sub:
        ctx.output.line(command.get_help(sub))


def run_click(ctx: Context, args: list[str]) -> int:
    """Read ``args`` with click and run the command; its status. click's errors end here;
    every other error is left to the caller's one handler."""
    try:
        result = cli.main(args=args, prog_name="hgrun", obj=ctx, standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        # One line, as every other error: what is wrong, then where the options are listed.
        where = e.ctx.command_path if e.ctx is not None else "hgrun"
        what = "commands" if e.ctx is None or isinstance(e.ctx.command, click.Group) else "options"
        ctx.output.error(e.format_message(), f"`{where} --help` lists the {what}")
        return int(ExitStatus.USAGE)
    except click.ClickException as e:
        e.show()
        return int(ExitStatus.USAGE)
    except click.exceptions.Abort:
        return 130
