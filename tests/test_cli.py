"""The CLI as a user meets it: version, login, file:line:col errors for bad app files, one-line
errors with distinct exit codes, JSON output for scripts, and plain text off a terminal."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import stat
import subprocess
from pathlib import Path

import pytest
from support.apps import deploy_busybox_app, unique, write_busybox_app
from support.cli import Cli, check, run_id, text
from support.server import HgrunServer, free_port

import hgrun.cli.commands
from hgrun import __version__
from hgrun.cli.main import COMMANDS

ANSI = re.compile(rb"\x1b[\[\]()]")
# Input errors are usage (2) or, for a file, input (3); see hgrun.errors.ExitStatus.
INPUT_STATUSES = {2, 3}
NOT_FOUND = 5
UNREACHABLE = 7


def assert_one_line_error(
    done: subprocess.CompletedProcess[bytes], statuses: set[int] | int | None = None
) -> str:
    """``error: ...`` on stderr (and at most a ``hint: ...`` line), non-zero, no traceback;
    returns the error line."""
    code = done.returncode
    stderr = text(done.stderr)
    stdout = text(done.stdout)
    assert code != 0, f"exit 0\n{stdout}\n{stderr}"
    if statuses is not None:
        wanted = {statuses} if isinstance(statuses, int) else statuses
        assert code in wanted, f"exit {code}, wanted one of {wanted}\n{stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    lines = stderr.splitlines()
    assert 1 <= len(lines) <= 2, f"not a one-line error:\n{stderr}"
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), stderr
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), stderr
    assert stdout == "", stdout
    return lines[0]


@pytest.fixture(scope="module")
def app(cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str) -> tuple[str, Path]:
    """A deployed busybox app with one finished run."""
    root = tmp_path_factory.mktemp("cli-app")
    name = deploy_busybox_app(cli, root, unique("cli"))
    check(cli("run", "--app", name, "echo", "hi", input=b""))
    return name, root


# -- version and login -----------------------------------------------------------------------


def test_version(cli: Cli) -> None:
    out = check(cli("--version"))
    assert "hgrun" in out and __version__ in out


def test_help_lists_the_commands(cli: Cli) -> None:
    out = check(cli("--help"))
    for command in ("deploy", "run", "attach", "ps", "runs", "logs", "stop", "login", "config"):
        assert command in out


def test_the_lazy_command_table_names_each_command_where_it_is_defined() -> None:
    """Start-up reads ``COMMANDS`` instead of importing every command module: a command missing
    from it (or filed under the wrong module) would be unreachable."""
    defined = {
        command.name: info.name
        for info in pkgutil.iter_modules(hgrun.cli.commands.__path__)
        for command in importlib.import_module(f"hgrun.cli.commands.{info.name}").COMMANDS
    }
    assert defined == COMMANDS


def test_login_writes_a_0600_config_that_later_commands_use(
    cli: Cli, server: HgrunServer, tmp_path: Path
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HGRUN_URL": "", "HGRUN_TOKEN": ""}
    done = cli("login", "--url", server.url, "--token", server.token, env=env, input=b"")
    check(done)
    path = tmp_path / "hgrun" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stat.S_IMODE(path.parent.stat().st_mode) & 0o077
    saved = json.loads(path.read_text())
    assert saved["url"] == server.url and saved["token"] == server.token
    assert server.token not in text(done.stdout) + text(done.stderr)
    # Without HGRUN_URL / HGRUN_TOKEN, the saved login is used...
    assert isinstance(json.loads(check(cli("apps", "--json", env=env))), list)
    # ...and HGRUN_URL still overrides it.
    elsewhere = {**env, "HGRUN_URL": f"http://127.0.0.1:{free_port()}"}
    assert_one_line_error(cli("apps", env=elsewhere), UNREACHABLE)


def test_login_replaces_a_world_readable_config_with_a_0600_one(
    cli: Cli, server: HgrunServer, tmp_path: Path
) -> None:
    path = tmp_path / "hgrun" / "config.json"
    path.parent.mkdir()
    path.write_text('{"url": "http://old", "token": "old"}')
    path.chmod(0o644)
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HGRUN_URL": "", "HGRUN_TOKEN": ""}
    check(cli("login", "--url", server.url, "--token", server.token, env=env, input=b""))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == server.token


def test_login_with_a_bad_token_fails_and_saves_nothing(
    cli: Cli, server: HgrunServer, tmp_path: Path
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HGRUN_URL": "", "HGRUN_TOKEN": ""}
    done = cli("login", "--url", server.url, "--token", "hgr_wrong", env=env, input=b"")
    assert_one_line_error(done, 4)
    assert not (tmp_path / "hgrun" / "config.json").exists()


# -- bad Procfiles and manifests: file:line:col, exit 3, no traceback ------------------------

BAD_PROCFILES: list[tuple[str, str, int]] = [
    ("no colon", "web python3 app.py\n", 1),
    ("duplicate", "web: a\nworker: b\nweb: c\n", 3),
    ("empty command", "# types\n\nweb:\n", 3),
    ("empty command, spaces", "web:    \n", 1),
    ("space in name", "we b: x\n", 1),
    ("space before colon", "web : x\n", 1),
    ("empty name", ": x\n", 1),
    ("non-ascii name", "wörker: x\n", 1),
    ("crlf, duplicate", "web: a\r\nweb: b\r\n", 2),
    ("bom, second line bad", "\ufeffweb: a\nbroken\n", 2),
    ("indented bad line", "web: a\n   oops\n", 2),
]


@pytest.mark.parametrize(
    ("content", "line"), [(c, n) for _, c, n in BAD_PROCFILES], ids=[k for k, _, _ in BAD_PROCFILES]
)
def test_deploy_refuses_a_bad_procfile_with_its_location(
    cli: Cli, tmp_path: Path, content: str, line: int
) -> None:
    name = unique("badproc")
    root = write_busybox_app(tmp_path / "app", name)
    (root / "Procfile").write_bytes(content.encode())
    done = cli("deploy", cwd=root, input=b"")
    first = assert_one_line_error(done, 3)
    match = re.search(r"Procfile:(\d+):(\d+): ", first)
    assert match, first
    assert int(match.group(1)) == line, first


HEAD = "name: {name}\nbuild:\n  dockerfile: Dockerfile\n"
BAD_MANIFESTS: list[tuple[str, str, int, str]] = [
    ("unknown key", HEAD + "sise: starter\n", 4, "did you mean"),
    ("unknown size", HEAD + "size: huge\n", 4, "huge"),
    ("size not a string", HEAD + "size: [starter]\n", 4, "size"),
    ("bad env name", HEAD + "env:\n  1BAD: x\n", 5, "1BAD"),
    ("env name with dash", HEAD + "env:\n  MY-VAR: x\n", 5, "MY-VAR"),
    ("env value a list", HEAD + "env:\n  GOOD: [a, b]\n", 5, "GOOD"),
    ("env without value", HEAD + "env:\n  EMPTY:\n", 5, "EMPTY"),
    ("bad network", HEAD + "network: container:abc\n", 4, "network"),
    (
        "bad duration",
        HEAD + "scripts:\n  rep:\n    command: x\n    timeout: 10 parsecs\n",
        7,
        "timeout",
    ),
    ("bad cron", HEAD + 'scripts:\n  rep:\n    command: x\n    cron: "61 * * * *"\n', 7, "cron"),
    (
        "cron wrong fields",
        HEAD + 'scripts:\n  rep:\n    command: x\n    cron: "* * *"\n',
        7,
        "cron",
    ),
    (
        "unknown process",
        HEAD + "scripts:\n  rep:\n    process: nosuch\n",
        6,
        "nosuch",
    ),
    (
        "unknown script key",
        HEAD + "scripts:\n  rep:\n    command: x\n    cocurrency: skip\n",
        7,
        "did you mean",
    ),
    ("script size", HEAD + "scripts:\n  rep:\n    command: x\n    size: jumbo\n", 7, "jumbo"),
    (
        "bad timezone",
        HEAD + "scripts:\n  rep:\n    command: x\n    timezone: Mars/Base\n",
        7,
        "Mars",
    ),
    ("duplicate key", HEAD + "size: starter\nsize: standard\n", 5, "size"),
    ("bad app name", "name: Bad_Name\nbuild:\n  dockerfile: Dockerfile\n", 1, "Bad_Name"),
    # The parser notices the missing "]" at the end of the stream, on line 5.
    ("yaml syntax", HEAD + "env: [unclosed\n", 5, "YAML"),
    ("tab indent", HEAD + "env:\n\tA: b\n", 5, ""),
    ("not a mapping", "- just\n- a list\n", 1, ""),
    ("missing dockerfile", "name: {name}\nbuild:\n  dockerfile: Nope.Dockerfile\n", 3, "Nope"),
]


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [(c, n, w) for _, c, n, w in BAD_MANIFESTS],
    ids=[k for k, *_ in BAD_MANIFESTS],
)
def test_deploy_refuses_a_bad_manifest_with_its_location(
    cli: Cli, tmp_path: Path, content: str, line: int, needle: str
) -> None:
    name = unique("badman")
    root = write_busybox_app(tmp_path / "app", name)
    (root / "hgrun.yaml").write_text(content.format(name=name))
    done = cli("deploy", cwd=root, input=b"")
    first = assert_one_line_error(done, 3)
    match = re.search(r"hgrun\.yaml:(\d+):(\d+): ", first)
    assert match, first
    assert int(match.group(1)) == line, first
    assert needle in text(done.stderr)


def test_run_in_a_folder_with_a_bad_procfile_names_it_and_runs_the_live_release(
    cli: Cli, tmp_path: Path
) -> None:
    """`hgrun run` runs the live release: a broken folder is said, not in the way."""
    root = write_busybox_app(tmp_path / "app", unique("badrun"), procfile="web: a\nweb: b\n")
    unreachable = {"HGRUN_URL": f"http://127.0.0.1:{free_port()}"}
    done = cli("run", "true", cwd=root, env=unreachable, input=b"")
    assert done.returncode == UNREACHABLE
    notice = text(done.stderr).splitlines()[0]
    assert notice.startswith("hgrun: running the live release of badrun-")
    assert "Procfile:2:1: duplicate process type 'web'" in notice


# -- one-line errors -------------------------------------------------------------------------


def test_unknown_app(cli: Cli) -> None:
    missing = unique("nope")
    for args in (
        ("runs", "--app", missing),
        ("ps", "--app", missing),
        ("releases", "--app", missing),
        ("logs", "--app", missing),
        ("config", "--app", missing),
        ("run", "--app", missing, "true"),
        ("run", "--app", missing, "--detached", "true"),
    ):
        first = assert_one_line_error(cli(*args, input=b""), NOT_FOUND)
        assert missing in first, args


def test_deploy_of_an_app_never_created_says_how_to_create_it(cli: Cli, tmp_path: Path) -> None:
    name = unique("uncreated")
    root = write_busybox_app(tmp_path / "app", name)
    done = cli("deploy", cwd=root, input=b"")
    first = assert_one_line_error(done, NOT_FOUND)
    assert name in first
    assert "apps:create" in text(done.stderr)


def test_unknown_size(cli: Cli, app: tuple[str, Path]) -> None:
    name, _ = app
    first = assert_one_line_error(
        cli("run", "--app", name, "--size", "huge", "true", input=b""), INPUT_STATUSES
    )
    assert "huge" in first


@pytest.mark.parametrize("pair", ["1A=x", "A-B=x", "=x", "NOEQUALS", "A B=x"])
def test_bad_env_name(cli: Cli, app: tuple[str, Path], pair: str) -> None:
    name, _ = app
    done = cli("run", "--app", name, "--env", pair, "true", input=b"")
    assert_one_line_error(done, INPUT_STATUSES)


@pytest.mark.parametrize("value", ["abc", "-1s", "10 parsecs"])
def test_bad_timeout(cli: Cli, app: tuple[str, Path], value: str) -> None:
    name, _ = app
    done = cli("run", "--app", name, "--timeout", value, "true", input=b"")
    assert_one_line_error(done, INPUT_STATUSES)


def test_missing_file_path(cli: Cli, app: tuple[str, Path], tmp_path: Path) -> None:
    name, _ = app
    missing = tmp_path / "not-here.tar"
    done = cli("run", "--app", name, "--file", str(missing), "true", input=b"")
    assert str(missing) in assert_one_line_error(done, INPUT_STATUSES)
    # Nothing started: no run was created for it.
    runs = json.loads(check(cli("runs", "--app", name, "--json")))
    assert all("not-here" not in " ".join(r["command"]) for r in runs)


@pytest.mark.parametrize(
    "args",
    [("runs:info", "99999"), ("stop", "99999"), ("attach", "99999"), ("runs:info", "run.99999")],
    ids=" ".join,
)
def test_nonexistent_run_id(cli: Cli, args: tuple[str, ...]) -> None:
    first = assert_one_line_error(cli(*args, input=b""), NOT_FOUND)
    assert "99999" in first


@pytest.mark.parametrize("args", [("runs:info", "abc"), ("stop", "run."), ("attach", "x1")])
def test_malformed_run_id(cli: Cli, args: tuple[str, ...]) -> None:
    assert_one_line_error(cli(*args, input=b""), INPUT_STATUSES)


def test_config_set_refuses_a_bad_name(cli: Cli, app: tuple[str, Path]) -> None:
    name, _ = app
    assert_one_line_error(cli("config:set", "--app", name, "1A=x"), INPUT_STATUSES)
    assert_one_line_error(cli("config:set", "--app", name, "NOVALUE"), INPUT_STATUSES)


def test_debug_shows_the_traceback(cli: Cli) -> None:
    done = cli("--debug", "runs:info", "99999", input=b"")
    assert done.returncode == NOT_FOUND
    assert "Traceback" in text(done.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ("apps",),
        ("apps:create", "whatever"),
        ("runs", "--app", "x"),
        ("ps", "--app", "x"),
        ("logs", "--app", "x"),
        ("runs:info", "1"),
        ("stop", "1"),
        ("attach", "1"),
        ("run", "--app", "x", "true"),
    ],
    ids=" ".join,
)
def test_server_unreachable_exits_7(cli: Cli, args: tuple[str, ...]) -> None:
    env = {"HGRUN_URL": f"http://127.0.0.1:{free_port()}"}
    first = assert_one_line_error(cli(*args, env=env, input=b""), UNREACHABLE)
    assert "127.0.0.1" in first


def test_deploy_with_the_server_unreachable_exits_7(cli: Cli, tmp_path: Path) -> None:
    root = write_busybox_app(tmp_path / "app", unique("unreach"))
    env = {"HGRUN_URL": f"http://127.0.0.1:{free_port()}"}
    assert_one_line_error(cli("deploy", cwd=root, env=env, input=b""), UNREACHABLE)


def test_a_bad_token_exits_4(cli: Cli) -> None:
    done = cli("apps", env={"HGRUN_TOKEN": "hgr_garbage"})
    assert_one_line_error(done, 4)


# -- JSON for scripts ------------------------------------------------------------------------


def test_json_output_parses(cli: Cli, app: tuple[str, Path]) -> None:
    name, _ = app
    apps = json.loads(check(cli("apps", "--json")))
    assert name in [a["name"] for a in apps]

    releases = json.loads(check(cli("releases", "--app", name, "--json")))
    assert len(releases) >= 1
    assert {"version", "image", "context_hash", "created"} <= set(releases[0])

    label = check(cli("run", "--app", name, "--detached", "sleep", "1000", input=b"")).strip()
    number = run_id(label)
    try:
        ps = json.loads(check(cli("ps", "--app", name, "--json")))
        assert number in [r["id"] for r in ps]
        runs = json.loads(check(cli("runs", "--app", name, "--json")))
        assert number in [r["id"] for r in runs]
        assert any(r["command"] == ["echo", "hi"] for r in runs)
        info = json.loads(check(cli("runs:info", label, "--json")))
        assert info["id"] == number and info["command"] == ["sleep", "1000"]
    finally:
        stopped = json.loads(check(cli("stop", label, "--json")))
    assert stopped["status"] == "canceled"


def test_json_of_an_empty_app(cli: Cli) -> None:
    name = unique("empty")
    check(cli("apps:create", name))
    for command in ("releases", "runs", "ps"):
        assert json.loads(check(cli(command, "--app", name, "--json"))) == []


# -- plain text off a terminal ---------------------------------------------------------------


def test_no_ansi_escapes_when_not_a_terminal(cli: Cli, tmp_path: Path) -> None:
    """Colour is off because stdout is a pipe, even with NO_COLOR unset and a colour TERM."""
    env = {"NO_COLOR": "", "TERM": "xterm-256color", "FORCE_COLOR": ""}
    name = unique("plain")
    root = write_busybox_app(tmp_path / "app", name)
    outputs = [
        cli("apps:create", name, env=env),
        cli("deploy", cwd=root, env=env),
        cli("deploy", cwd=root, env=env),
        cli("apps", env=env),
        cli("releases", "--app", name, env=env),
        cli("run", "--app", name, "sh", "-c", "echo out; echo err >&2; exit 3", env=env, input=b""),
        cli("runs", "--app", name, env=env),
        cli("ps", "--app", name, env=env),
        cli("logs", "--app", name, env=env),
        cli("config", "--app", name, env=env),
        cli("runs:info", "99999", env=env),
        cli("run", "--app", name, "--size", "huge", "true", env=env, input=b""),
    ]
    assert outputs[1].returncode == 0 and outputs[5].returncode == 3
    for done in outputs:
        for stream in (done.stdout, done.stderr):
            assert not ANSI.search(stream), (done.args, stream[:500])
    assert b"out\n" == outputs[5].stdout
