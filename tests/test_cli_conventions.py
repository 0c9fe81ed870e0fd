"""The CLI as Heroku, Scalingo and Dokku users expect it (issue 13), end to end against a real
server and dockerd: how a command line is run, which options are hgrun's, that `hgrun run` runs
the live release and never deploys, and how a command the image lacks is reported."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.apps import BUSYBOX_IMAGE, deploy_busybox_app, unique, write_busybox_app
from support.cli import Cli, check, text

from hgrun.cli.runargs import Split, split_after_command
from hgrun.errors import InputError


@pytest.fixture(scope="module")
def app(cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("conv-app")
    name = deploy_busybox_app(cli, root, unique("conv"), procfile="hello: echo hello\n")
    return name, root


@pytest.fixture(scope="module")
def other(cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> str:
    root = tmp_path_factory.mktemp("conv-other")
    (root / "marker").write_text("other\n")
    return deploy_busybox_app(cli, root, unique("other"))


def run(cli: Cli, root: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return cli("run", *args, cwd=root, input=b"", **kw)  # type: ignore[arg-type]


# -- 1. one argument is a command line for sh -c; several run as given ------------------------


def test_one_argument_is_a_shell_command_line(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    assert check(run(cli, root, "ls -1 /app | wc -l")).strip().isdigit()
    assert check(run(cli, root, "echo $((6 * 7)) > /tmp/x && cat /tmp/x")) == "42\n"


def test_several_arguments_run_as_given_without_a_shell(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    assert check(run(cli, root, "echo", "a | b", "$HOME")) == "a | b $HOME\n"
    assert run(cli, root, "sh", "-c", "exit 3").returncode == 3


def test_a_word_that_is_not_utf8_is_refused_before_anything_is_made(
    cli: Cli, app: tuple[str, Path]
) -> None:
    """A shell passes any bytes; JSON carries only text: said in the CLI's terms, exit 2."""
    _, root = app
    for args, what in (
        (("echo", "ok", "caf\udce9"), "argument 3 of the command is not UTF-8 text (character 4)"),
        (("--env", "A=\udcff", "echo"), "--env 'A' is not UTF-8 text (character 3)"),
    ):
        done = run(cli, root, *args)
        assert done.returncode == 2, done.stderr
        lines = text(done.stderr).splitlines()
        assert lines[0] == f"error: {what}"
        assert lines[1].startswith("hint: hgrun sends commands and env values as UTF-8")


@pytest.mark.parametrize("attempt", range(3))  # tini's line may arrive in pieces
def test_a_command_the_image_lacks_is_said_plainly_with_127(
    cli: Cli, app: tuple[str, Path], attempt: int
) -> None:
    _, root = app
    done = run(cli, root, "nosuchcmd")
    assert done.returncode == 127
    assert text(done.stderr) == "hgrun: command not found in the image: nosuchcmd\n"
    assert "tini" not in text(done.stderr)
    several = run(cli, root, "nosuchcmd", "--flag")
    assert several.returncode == 127
    assert text(several.stderr) == "hgrun: command not found in the image: nosuchcmd\n"
    # In the app log too, not tini's line.
    logs = check(cli("logs", "-n", "5", cwd=root))
    assert "tini" not in logs and "command not found in the image: nosuchcmd" in logs


def test_a_file_that_is_not_executable_is_126(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = run(cli, root, "/app/hgrun.yaml")
    assert done.returncode == 126
    assert text(done.stderr) == (
        "hgrun: command not executable in the image: /app/hgrun.yaml (permission denied)\n"
    )


def test_an_image_without_a_shell(cli: Cli, tmp_path: Path, busybox_image: str) -> None:
    """Several words run without a shell; one line with shell syntax needs sh, and says so."""
    name = unique("nosh")
    root = tmp_path / "nosh"
    root.mkdir()
    (root / "Dockerfile").write_text(
        f"FROM {BUSYBOX_IMAGE} AS bb\nFROM scratch\nCOPY --from=bb /bin/busybox /bin/echo\n"
    )
    (root / "hgrun.yaml").write_text(f"name: {name}\nbuild:\n  dockerfile: Dockerfile\n")
    check(cli("apps:create", name))
    check(cli("deploy", cwd=root))
    assert check(run(cli, root, "echo", "no", "shell")) == "no shell\n"
    assert check(run(cli, root, "echo")) == "\n"  # one plain word needs no shell either
    done = run(cli, root, "echo hi | cat")
    assert done.returncode == 127
    err = text(done.stderr)
    assert err.startswith("hgrun: command not found in the image: sh (one argument is a command")
    assert "separate words" in err


# -- 2. options: before the command, after it, and after -- ----------------------------------


@pytest.mark.parametrize(
    ("typed", "wanted"),
    [
        ("--detach", "Did you mean '--detached'?"),
        ("--tpye", "--type"),
        ("--appp", "--app"),
    ],
)
def test_an_unknown_option_before_the_command_is_refused(
    cli: Cli, app: tuple[str, Path], typed: str, wanted: str
) -> None:
    _, root = app
    done = run(cli, root, typed, "echo", "hi")
    assert done.returncode == 2
    lines = text(done.stderr).splitlines()
    assert lines[0].startswith(f"error: No such option '{typed}'") and wanted in lines[0]
    assert lines[1] == "hint: `hgrun run --help` lists the options"
    assert done.stdout == b""


def test_app_after_the_command_is_hgruns_as_in_heroku(
    cli: Cli, app: tuple[str, Path], other: str
) -> None:
    _, root = app
    assert check(run(cli, root, "cat", "/app/marker", "-a", other)) == "other\n"
    assert check(run(cli, root, "cat", "/app/marker", f"--app={other}")) == "other\n"
    assert check(run(cli, root, "cat /app/marker", "--app", other)) == "other\n"


def test_everything_after_double_dash_is_the_commands(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    out = check(run(cli, root, "--", "ls", "-a", "/app"))
    assert ".." in out.split()
    # -e after -- is the command's (echo -e), not an env var.
    assert check(run(cli, root, "--", "echo", "-e", "a\\tb")) == "a\tb\n"


def test_a_short_flag_after_the_command_is_left_to_it(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    assert check(run(cli, root, "echo", "-n", "x")) == "x"
    assert check(run(cli, root, "sh", "-x", "-c", "true")) == ""


def test_env_after_the_command_is_taken_and_said(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = run(cli, root, "sh", "-c", "echo $FOO", "-e", "FOO=bar")
    assert check(done) == "bar\n"
    assert "took -e FOO=bar after the command" in text(done.stderr)


def test_a_dangling_app_flag_points_at_double_dash(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = run(cli, root, "ls", "-a")
    assert done.returncode == 2
    assert text(done.stderr).splitlines() == [
        "error: -a after the command needs a value",
        "hint: to give -a to the command, put the command after --: `hgrun run -- ls -a`",
    ]


def test_t_is_type_as_in_scalingo(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    assert check(run(cli, root, "-t", "hello")) == "hello\n"
    assert check(run(cli, root, "--type", "hello", "again")) == "hello again\n"
    done = run(cli, root, "-t", "bash")
    assert done.returncode == 2
    assert "has no process type 'bash'" in text(done.stderr)
    assert "process types: hello" in text(done.stderr)


def test_detached_before_the_command_is_an_option(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = run(cli, root, "--detached", "echo", "hi")
    assert check(done).startswith("run.")


@pytest.mark.parametrize(
    ("words", "split"),
    [
        (["ls"], Split(("ls",))),
        (["ls", "-l"], Split(("ls", "-l"))),
        (["ls", "-a", "other"], Split(("ls",), app="other", taken=("-a other",))),
        (["ls", "--app=x", "-l"], Split(("ls", "-l"), app="x", taken=("--app=x",))),
        (
            ["x", "-e", "A=1", "--env", "B=2"],
            Split(("x",), env=("A=1", "B=2"), taken=("-e A=1", "--env B=2")),
        ),
        (["x", "-s", "pro"], Split(("x",), size="pro", taken=("-s pro",))),
        (["x", "--type", "w"], Split(("x",), type="w", taken=("--type w",))),
        (["git", "log", "--", "-a", "f"], Split(("git", "log", "--", "-a", "f"))),
        (
            ["tail", "-f", "-n", "3", "-d", "-t", "-x"],
            Split(("tail", "-f", "-n", "3", "-d", "-t", "-x")),
        ),
        (["-a"], Split(("-a",))),
        (["x", "--apps", "y"], Split(("x", "--apps", "y"))),
    ],
)
def test_split_after_command(words: list[str], split: Split) -> None:
    assert split_after_command(words) == split


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["ls", "-a"], "-a after the command needs a value"),
        (["ls", "--size"], "--size after the command needs a value"),
        (["ls", "-a", "x", "--app", "y"], "--app given twice ('x' and 'y')"),
    ],
)
def test_split_after_command_errors(words: list[str], message: str) -> None:
    with pytest.raises(InputError) as caught:
        split_after_command(words)
    assert caught.value.message == message


# -- 3. hgrun run runs the live release and never deploys ------------------------------------


def test_run_runs_the_live_release_and_says_when_the_folder_differs(
    cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    root = tmp_path / "live"
    name = unique("live")
    write_busybox_app(root, name, manifest_extra="scripts:\n  note:\n    command: cat note.txt\n")
    (root / "note.txt").write_text("deployed\n")
    check(cli("apps:create", name))
    check(cli("deploy", cwd=root))
    before = json.loads(check(cli("releases", "--json", cwd=root)))
    same = run(cli, root, "cat", "note.txt")
    assert check(same) == "deployed\n" and text(same.stderr) == ""

    (root / "note.txt").write_text("edited\n")
    live = run(cli, root, "cat", "note.txt")
    assert check(live) == "deployed\n"
    version = before[0]["version"]
    assert text(live.stderr) == (
        f"hgrun: this folder differs from {name}'s live release v{version}, which is what runs;"
        " `hgrun deploy` releases the folder, `hgrun run --build` runs it this once\n"
    )
    built = run(cli, root, "--build", "cat", "note.txt")
    assert check(built) == "edited\n"
    # The folder's Procfile comes with --build; the live release does not have its new type.
    (root / "Procfile").write_text("hello: echo hello\nfresh: echo fresh from the folder\n")
    assert check(run(cli, root, "--build", "-t", "fresh")) == "fresh from the folder\n"
    assert "live release of" in text(run(cli, root, "-t", "fresh").stderr)
    after = json.loads(check(cli("releases", "--json", cwd=root)))
    assert after == before  # --build made no release
    assert check(run(cli, root, "cat", "note.txt")) == "deployed\n"
    # A script's run (cron's too: both take the app's latest release) runs the live release.
    assert check(cli("scripts:run", "note", cwd=root, input=b"")) == "deployed\n"


def test_a_broken_folder_does_not_block_the_live_release(
    cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    root = tmp_path / "broken"
    name = deploy_busybox_app(cli, root, unique("broken"))
    (root / "hgrun.yaml").write_text(f"name: {name}\nbuild:\n  dockerfile: Nope\n")
    done = run(cli, root, "echo", "still")
    assert check(done) == "still\n"
    assert f"hgrun: running the live release of {name}; this folder does not load" in text(
        done.stderr
    )
    # ps only needs the name: a typo elsewhere in hgrun.yaml does not stop it.
    check(cli("ps", cwd=root))


def test_rollback_makes_a_copy_of_an_earlier_release_and_says_who(
    cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    root = tmp_path / "rb"
    name = deploy_busybox_app(cli, root, unique("rb"))
    (root / "note.txt").write_text("one\n")
    check(cli("deploy", cwd=root))
    check(cli("config:set", "COLOUR=red", cwd=root))
    (root / "note.txt").write_text("two\n")
    check(cli("deploy", cwd=root))
    check(cli("config:set", "COLOUR=blue", "SHAPE=round", cwd=root))
    releases = json.loads(check(cli("releases", "--json", cwd=root)))
    live = releases[0]["version"]
    assert releases[0]["actor"] and releases[0]["description"] == "Set COLOUR, SHAPE"
    one = next(r for r in releases if r["description"] == "Set COLOUR")["version"]

    done = cli("releases:rollback", f"v{one}", "--json", cwd=root)
    back = json.loads(check(done))
    assert back["version"] == live + 1 and back["description"] == f"Rollback to v{one}"
    assert back["actor"] == releases[0]["actor"]
    assert check(run(cli, root, "sh", "-c", 'cat note.txt; echo "$COLOUR${SHAPE:-}"')) == (
        "one\nred\n"
    )
    assert json.loads(check(cli("config", "--json", cwd=root))) == {"COLOUR": "red"}
    table = check(cli("releases", cwd=root))
    assert "by" in table.splitlines()[0].split("\t")
    # Without a version: the one before the live release, here the one rolled back from.
    check(cli("releases:rollback", cwd=root))
    assert check(run(cli, root, "sh", "-c", 'cat note.txt; echo "$COLOUR$SHAPE"')) == (
        "two\nblueround\n"
    )
    bad = cli("releases:rollback", "v999", cwd=root)
    assert bad.returncode == 5 and f"app {name} has no release v999" in text(bad.stderr)


def test_apps_destroy_asks_or_takes_yes(cli: Cli, tmp_path: Path, busybox_image: str) -> None:
    root = tmp_path / "gone"
    name = deploy_busybox_app(cli, root, unique("gone"))
    check(run(cli, root, "true"))
    refused = cli("apps:destroy", name, input=b"")
    assert refused.returncode == 2
    assert f"pass --yes: `hgrun apps:destroy {name} --yes`" in text(refused.stderr)
    assert name in [a["name"] for a in json.loads(check(cli("apps", "--json")))]
    out = json.loads(check(cli("apps:destroy", name, "--yes", "--json")))
    assert out == {"name": name, "destroyed": True}
    assert name not in [a["name"] for a in json.loads(check(cli("apps", "--json")))]
    again = cli("ps", "-a", name)
    assert again.returncode == 5


# -- 4. listings: one shape for every table ---------------------------------------------------


@pytest.mark.parametrize(
    ("command", "header"),
    [
        (("apps",), "name\tcreated"),
        (("runs",), "run\tstatus\tcommand\ttrigger\texit\tduration\tcreated"),
        (("nodes",), "name\trole\tstate\tendpoint\tattach\truns"),
        (("tokens",), "name\tscope\tscript\tcreated"),
    ],
    ids=["apps", "runs", "nodes", "tokens"],
)
def test_every_listing_has_one_shape(
    cli: Cli, app: tuple[str, Path], command: tuple[str, ...], header: str
) -> None:
    """`--json` is the API's list; piped, the table is quiet: a lower-case, tab-separated
    header, one line a row with a cell under each column (an empty one empty, not "-"), no
    colour, nothing on stderr."""
    _, root = app
    check(run(cli, root, "true"))  # a run for `hgrun runs` to list
    rows = json.loads(check(cli(*command, "--json", cwd=root)))
    assert isinstance(rows, list) and rows, rows
    done = cli(*command, cwd=root)
    lines = check(done).splitlines()
    assert lines[0] == header
    assert len(lines) == len(rows) + 1, lines
    cells = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == len(lines[0].split("\t")) for row in cells), lines
    assert all(cell != "-" for row in cells for cell in row), lines  # empty is empty
    assert "\x1b" not in text(done.stdout)
    assert done.stderr == b""
