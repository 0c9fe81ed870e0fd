"""The ``hgrun`` command. Only ``cli/`` prints or exits; one handler maps errors to exit codes.

:func:`main` is that handler. The command line is read by click (:mod:`hgrun.cli.root`, the root
group every command hangs on), except the common forms of ``hgrun run``, read by
:mod:`hgrun.cli.runfast` so that a one-off starts without importing click.
"""

from __future__ import annotations

import contextlib
import os
import sys

from hgrun.cli import trace
from hgrun.cli.invocation import Context
from hgrun.cli.output import Output
from hgrun.cli.terminal import Terminal
from hgrun.errors import ExitStatus, HgrunError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Callable, Sequence
    from typing import Any


def __getattr__(name: str) -> Any:
    # `cli` and `COMMANDS` are the root group's (hgrun.cli.root), imported only when asked for.
    if name in ("cli", "COMMANDS"):
        from hgrun.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None, terminal: Terminal | None = None) -> int:
    """Run the CLI; return (and, as a script, exit with) its status. Errors print one line."""
    trace.mark("imports")
    terminal = terminal or Terminal.from_process()
    ctx = Context(terminal=terminal, output=Output(terminal), environ=dict(os.environ))
    args = list(sys.argv[1:] if argv is None else argv)
    ctx.debug = bool(args) and args[0] == "--debug"
    if "_HGRUN_COMPLETE" in os.environ:
        # A shell asks for completions: answer with the script that keeps `config:unset` whole.
        from hgrun.cli import completion

        completion.install()
    status = _handled(ctx, lambda: _dispatch(ctx, args))
    trace.dump()
    if argv is None:
        # Skip the interpreter's teardown (tens of ms of module cleanup): everything the CLI
        # writes is flushed here, and nothing else is left to finish.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    return status


def _dispatch(ctx: Context, args: list[str]) -> int:
    from hgrun.cli import runfast

    quick = runfast.parse(args)
    if quick is not None:
        from hgrun.cli import runstart

        return runstart.start(ctx, quick)
    from hgrun.cli import root

    return root.run_click(ctx, args)


def _handled(ctx: Context, call: Callable[[], int]) -> int:
    """``call()``'s status; any error it raises is one line (a traceback with --debug) and its
    exit status."""
    try:
        return call()
    except HgrunError as e:
        if ctx.debug:
            import traceback

            traceback.print_exc()
        ctx.output.error(e.message, e.hint)
        return int(e.exit_status)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Our reader went away (`hgrun logs | head`): not an error worth a message.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 141
    except Exception as e:
        if ctx.debug:
            import traceback

            traceback.print_exc()
        ctx.output.error(
            f"internal error: {e.__class__.__name__}: {e}",
            "run again with --debug for the traceback, and report it",
        )
        return int(ExitStatus.ERROR)
    finally:
        if ctx._api is not None:
            ctx._api.close()


if __name__ == "__main__":
    main()
