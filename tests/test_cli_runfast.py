"""The quick reader of `hgrun run` (hgrun.cli.runfast) against click's reading, side by side.

Every command line below goes through both: where the quick reader answers, its RunArgs must be
the ones click's reading gives; where it declines (None), click reads it (and says what is
wrong). A new option of `hgrun run` that the quick reader does not know makes the first test fail
(click reads it, the quick reader declines or differs), so the two cannot drift apart.
"""

from __future__ import annotations

import click
import pytest

from hgrun.cli import runfast
from hgrun.cli.commands import runs
from hgrun.cli.runstart import RunArgs

QUICK = [
    "run true",
    "run echo hi there",
    "--debug run true",
    "run -a app --no-tty echo hi",
    "run --app app --tty bash",
    "run --app=app --size=pro -e A=1 --env B=2 --env=C=x=y env",
    "run -s standard -t worker",
    "run --type web -- --port 80",
    "run -d -n -x --json --no-build --build sleep 1",
    "run --detached --no-stdin --exit-code true",
    "run --timeout 90s -f a.txt --file b --file=c true",
    "run --tty --no-tty true",
    "run --no-tty --tty true",
    "run -a one -a two true",
    "run -- -a app ls",
    "run ls -a app -- x",
    "run -a app ls -la",
    "run - stdin",
    "run -e A=-1 true",
    "run --app= true",
    "run -- ",
]
DECLINED = [
    "run",
    "run -a app",
    "run --help",
    "run -h",
    "run -a app --help ls",
    "run --ap app ls",
    "run --apps app ls",
    "run -dn true",
    "run -aapp true",
    "run -a",
    "run -a --tty true",
    "run --tty=yes true",
    "run --detached=1 true",
    "run --",
    "run -f=c true",
    "ps",
    "--version",
    "apps:create x",
    "",
]


def _click(argv: list[str]) -> RunArgs | str:
    """click's reading of a `hgrun run` command line: its RunArgs, or its error's message."""
    words = argv[1:] if argv[:1] == ["--debug"] else argv
    assert words[:1] == ["run"]
    try:
        with runs.run.make_context("run", words[1:]) as click_ctx:
            args = runs.read_run_args(click_ctx)
    except click.exceptions.Exit:
        return "exit (--help)"
    except click.UsageError as e:
        return e.format_message()
    if not args.command and not args.process_type:
        return "usage: no command"
    return args


@pytest.mark.parametrize("line", QUICK)
def test_the_quick_reading_is_click_s(line: str) -> None:
    argv = line.split(" ") if line else []
    quick = runfast.parse(argv)
    assert quick is not None, "the quick reader declined a common form"
    assert quick == _click(argv)


@pytest.mark.parametrize("line", DECLINED)
def test_anything_unusual_is_left_to_click(line: str) -> None:
    argv = line.split(" ") if line else []
    assert runfast.parse(argv) is None


@pytest.mark.parametrize("line", [line for line in DECLINED if line.split(" ")[:1] == ["run"]])
def test_click_has_something_to_say_about_what_is_declined(line: str) -> None:
    """What the quick reader declines is not a plain run click would read the same way: it is
    an error or --help for click, or a form the quick reader leaves to it on purpose."""
    read = _click(line.split(" "))
    on_purpose = {"run -dn true", "run -aapp true", "run -a --tty true", "run -f=c true"}
    assert isinstance(read, str) or line in on_purpose, read
