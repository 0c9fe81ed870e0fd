"""More of issue 13 end to end: logs as heroku/dokku take them, tokens and scopes in the CLI,
--json, config:unset, help and examples, the run input byte for byte, status lines in a TTY."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from support.apps import deploy_busybox_app, unique, write_busybox_app
from support.cli import Cli, check, cli_popen, text

from hgrun.cli.attachsession import status_line
from hgrun.cli.examples import EXAMPLES
from hgrun.cli.main import cli as root_command


@pytest.fixture(scope="module")
def app(cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("habits-app")
    name = unique("habits")
    write_busybox_app(
        root,
        name,
        manifest_extra=(
            "scripts:\n"
            "  show:\n"
            '    command: printf \'%s|%s\' "$HOSTINGGURU_RUN_INPUT" "$HGRUN_RUN_INPUT"\n'
            "    concurrency: allow\n"
        ),
    )
    check(cli("apps:create", name))
    check(cli("deploy", cwd=root))
    return name, root


# -- 4. logs ---------------------------------------------------------------------------------


def test_logs_prints_the_last_100_lines_by_default(cli: Cli, app: tuple[str, Path]) -> None:
    name, root = app
    check(cli("run", "seq 1 150", cwd=root, input=b""))
    lines = check(cli("logs", cwd=root)).splitlines()
    assert len(lines) == 100
    assert lines[-1].endswith(": 150") and lines[0].endswith(": 51")
    assert len(check(cli("logs", "-n", "3", cwd=root)).splitlines()) == 3
    assert len(check(cli("logs", "--num", "7", cwd=root)).splitlines()) == 7


@pytest.mark.parametrize("flag", ["-t", "--tail", "-f"])
def test_following_one_run_ends_with_the_run_and_its_exit_code(
    cli: Cli, app: tuple[str, Path], flag: str
) -> None:
    name, root = app
    label = check(cli("run", "-d", "sleep 1; echo one; sleep 1; printf two; exit 4", cwd=root))
    number = label.strip().removeprefix("run.")
    started = time.monotonic()
    done = cli("logs", flag, "--run", number, cwd=root, timeout=60)
    assert done.returncode == 4, text(done.stderr)
    assert time.monotonic() - started < 30
    out = [line.split(": ", 1)[1] for line in text(done.stdout).splitlines()]
    assert out == ["one", "two"]  # the last line, without a newline, last


def test_ctrl_c_ends_a_follow_with_130(cli: Cli, app: tuple[str, Path]) -> None:
    name, root = app
    check(cli("run", "-a", name, "echo", "a line", input=b""))
    process = cli_popen(cli, "logs", "-t", "-a", name)
    try:
        assert process.stdout is not None and process.stdout.readline()  # following now
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
        assert "Traceback" not in text(process.stderr.read() if process.stderr else b"")
    finally:
        if process.poll() is None:
            process.kill()


# -- 5. tokens and scopes --------------------------------------------------------------------


def test_a_trigger_token_runs_its_script_attached(cli: Cli, app: tuple[str, Path]) -> None:
    name, root = app
    token_name = unique("hook")
    secret = check(
        cli("tokens:create", token_name, "--scope", "trigger", "--script", "show", "-a", name)
    ).strip()
    started = time.monotonic()
    done = cli(
        "scripts:run", "show", "-a", name, "--input", "{}", env={"HGRUN_TOKEN": secret}, input=b""
    )
    assert check(done) == "{}|{}"
    assert time.monotonic() - started < 30
    # `hgrun run` is not its to do: refused before anything is made, the hint in CLI words.
    refused = cli("run", "-a", name, "true", env={"HGRUN_TOKEN": secret}, input=b"")
    assert refused.returncode == 4
    err = text(refused.stderr).splitlines()
    assert err[0] == f"error: token '{token_name}' (scope trigger) may not run"
    assert err[1].startswith("hint: HGRUN_TOKEN lacks that scope")
    runs = json.loads(check(cli("runs", "-a", name, "--json")))
    assert all(r["command"] != ["true"] for r in runs)
    # `hgrun tokens` names the script.
    rows = json.loads(check(cli("tokens", "--json")))
    mine = next(r for r in rows if r["name"] == token_name)
    assert mine["script"] == f"{name}/show"
    table = check(cli("tokens"))
    assert f"{name}/show" in next(line for line in table.splitlines() if token_name in line)
    revoked = json.loads(check(cli("tokens:revoke", token_name, "--json")))
    assert revoked == {"name": token_name, "revoked": True}


def test_auth_hints_speak_the_cli(cli: Cli, app: tuple[str, Path]) -> None:
    name, _ = app
    bad = cli("ps", "-a", name, env={"HGRUN_TOKEN": "hgr_nope"})
    assert text(bad.stderr).splitlines() == [
        "error: invalid or revoked token",
        "hint: the token in HGRUN_TOKEN is not valid here: fix or unset it",
    ]
    none = cli("ps", "-a", name, env={"HGRUN_TOKEN": ""})
    assert "Authorization" not in text(none.stderr)
    assert "set HGRUN_TOKEN, or run `hgrun login --token TOKEN`" in text(none.stderr)


def test_logout_forgets_the_saved_token(cli: Cli, tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HGRUN_TOKEN": ""}
    login = json.loads(
        check(cli("login", "--token", cli.server.token, "--json", env=env, input=b""))
    )
    assert login["config"] == str(tmp_path / "hgrun" / "config.json")
    check(cli("apps", env=env))
    out = json.loads(check(cli("logout", "--json", env=env)))
    assert out["logged_out"] is True
    assert json.loads((tmp_path / "hgrun" / "config.json").read_text())["token"] is None
    after = cli("apps", env=env)
    assert after.returncode == 4 and "hgrun login" in text(after.stderr)


# -- 6. --json, config:unset, help and examples ----------------------------------------------


def test_every_command_that_reports_has_json() -> None:
    """All but those that print no report: a session (attach), a script (completion), the
    server, and help."""
    ctx = click.Context(root_command)
    without = {
        name
        for name in root_command.list_commands(ctx)
        if not any("--json" in p.opts for p in root_command.get_command(ctx, name).params)
    }
    assert without == {"attach", "completion", "server", "help"}


def test_config_set_and_unset_json_and_an_unknown_key(
    cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    root = tmp_path / "cfg"
    name = deploy_busybox_app(cli, root, unique("cfg"))
    out = json.loads(check(cli("config:set", "A=1", "B=2", "--json", cwd=root)))
    assert out == {"set": ["A", "B"], "config": {"A": "1", "B": "2"}}
    before = json.loads(check(cli("releases", "--json", cwd=root)))
    nope = cli("config:unset", "NOPE", cwd=root)
    assert nope.returncode == 5
    assert text(nope.stderr).splitlines()[0] == f"error: app {name} has no config var NOPE"
    assert json.loads(check(cli("releases", "--json", cwd=root))) == before
    out = json.loads(check(cli("config:unset", "A", "--json", cwd=root)))
    assert out == {"unset": ["A"], "config": {"B": "2"}}


def test_help_command_shows_a_commands_help(cli: Cli) -> None:
    assert check(cli("help", "config:set")) == check(cli("config:set", "--help"))
    wrong = cli("help", "lgos")
    assert wrong.returncode == 2
    assert "did you mean 'logs'?" in text(wrong.stderr)


def test_every_help_ends_with_examples_of_its_own_command() -> None:
    commands = {"hgrun": root_command, **root_command.commands}
    for name, command in commands.items():
        examples = EXAMPLES[name]
        assert 2 <= len(examples) <= 3, name
        word = "hgrun" if name == "hgrun" else f"hgrun {name}"
        assert all(word in e for e in examples), name
        assert command.epilog is not None and command.epilog.startswith("Examples:"), name


def test_run_help_ends_with_its_examples(cli: Cli) -> None:
    out = check(cli("run", "--help"))
    tail = out.rstrip().splitlines()[-3:]
    assert [line.strip() for line in tail] == [f"$ {e}" for e in EXAMPLES["run"]]


# -- 7 and 8. stdin, timeouts, the run input -------------------------------------------------


def test_no_stdin_leaves_stdin_to_a_loop(cli: Cli, app: tuple[str, Path], tmp_path: Path) -> None:
    name, root = app
    items = tmp_path / "items"
    items.write_text("a\nb\nc\n")
    hgrun = f"{sys.executable} -m hgrun.cli.main"
    loop = f'while read x; do {hgrun} run -a {name} {{}} echo "$x"; done < {items}'
    swallowed = subprocess.run(
        ["bash", "-c", loop.format("")], capture_output=True, env=cli.env(), timeout=120
    )
    assert text(swallowed.stdout) == "a\n"  # the run read b and c: the loop ended
    assert "a `while read` loop?" in text(swallowed.stderr)
    assert "-n/--no-stdin" in text(swallowed.stderr)
    kept = subprocess.run(
        ["bash", "-c", loop.format("-n")], capture_output=True, env=cli.env(), timeout=120
    )
    assert text(kept.stdout) == "a\nb\nc\n"
    assert "while read" not in text(kept.stderr)


def test_a_capped_timeout_is_said(cli: Cli, app: tuple[str, Path]) -> None:
    name, root = app
    done = cli("run", "--timeout", "2h", "true", cwd=root, input=b"")
    check(done)
    assert "hgrun: --timeout 2h is over the server's limit" in text(done.stderr)
    assert check(cli("run", "--timeout", "5m", "true", cwd=root, input=b"")) == ""


def test_the_run_input_arrives_byte_for_byte(cli: Cli, app: tuple[str, Path]) -> None:
    name, _ = app
    sent = '{"a":1,  "b" : [1,2],"é":"\\u00e9"}'
    done = cli("scripts:run", "show", "-a", name, "--input", sent, input=b"")
    assert check(done) == f"{sent}|{sent}"


@pytest.mark.parametrize(
    ("data", "at_start", "shown"),
    [
        (b"hgrun: run.7 timed out after 2s\n", True, b"hgrun: run.7 timed out after 2s\r\n"),
        (b"hgrun: x\n", False, b"\r\nhgrun: x\r\n"),
        (b"a\r\nb\n", True, b"a\r\nb\r\n"),
    ],
)
def test_status_lines_start_at_column_0_in_raw_mode(
    data: bytes, at_start: bool, shown: bytes
) -> None:
    assert status_line(data, at_start) == shown
