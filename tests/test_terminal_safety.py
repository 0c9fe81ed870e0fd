"""Control characters in server-supplied strings are made visible by the CLI (issue 8, item 3).

Unit tests of :func:`hgrun.cli.output.visible` and of the places it is applied (messages, table
cells on a terminal and in a pipe, detail fields, audit records, log prefixes), then the real
CLI against a real server: ``hgrun runs`` on a run whose command clears the screen.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from support.api import Api
from support.apps import deploy_busybox_app
from support.cli import Cli, check
from support.server import HgrunServer

from hgrun.cli import views
from hgrun.cli.output import Output, visible
from hgrun.cli.terminal import Terminal

HOSTILE = "a\x1b[2J\x1b]0;pwned\x07b\r\x00\x7f\x9b\u202ez"


@pytest.mark.parametrize(
    "text, shown",
    [
        ("plain text, é, 日本語, emoji 🙂", "plain text, é, 日本語, emoji 🙂"),
        ("\x1b[2J", "^[[2J"),
        ("\x1b]0;title\x07", "^[]0;title^G"),
        ("a\rb\nc\td", "a^Mb^Jc^Id"),
        ("\x00\x7f", "^@^?"),
        ("\x9b31m", "M-^[31m"),
        ("\u202eevil\u2066", "<U+202E>evil<U+2066>"),
        ("line\u2028break", "line<U+2028>break"),
    ],
)
def test_visible(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_visible_keeps_what_it_is_told() -> None:
    assert visible("one\ntwo\x1b", keep="\n") == "one\ntwo^["


def _output(tty: bool, environ: dict[str, str] | None = None) -> Output:
    return Output(
        Terminal(None, io.BytesIO(), io.BytesIO(), False, tty, environ or {"NO_COLOR": "1"})
    )


def _no_controls(text: str, allowed: str = "\n") -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c not in allowed) or 0x7F <= ord(c) <= 0x9F]
    assert not bad, (bad, text)


@pytest.mark.parametrize("tty", [False, True])
def test_tables_and_messages_show_controls(tty: bool, capsys: pytest.CaptureFixture[str]) -> None:
    output = _output(tty, {"TERM": "xterm"} if tty else {"NO_COLOR": "1"})
    output.table(["Run", "Command"], [("run.1", HOSTILE)])
    output.error(HOSTILE, HOSTILE)
    output.success(HOSTILE)
    output.info(HOSTILE)
    captured = capsys.readouterr()
    assert "^[[2J" in captured.out
    assert captured.err.count("^[[2J") == 4
    if not tty:  # a rich console on a "terminal" writes its own styling escapes
        _no_controls(captured.out, allowed="\n\t")  # tabs separate the columns
        _no_controls(captured.err)


def test_views_show_controls() -> None:
    run = {
        "label": "run.1", "app": "a\x1bpp", "command": ["sh", "-c", HOSTILE],
        "process_type": None, "trigger": {"kind": "user", "name": "x\x1b"}, "status": "failed",
        "exit_code": 1, "oom": False, "size": "starter", "detached": True, "env_keys": [],
        "created": 0.0, "duration": None, "error": HOSTILE,
    }  # fmt: skip
    for line in views.aligned(views.run_fields(run)):
        _no_controls(line)
    record = {
        "id": 1, "time": 0.0, "run": 1, "action": "run.start\x1b[2J", "problem": None,
        "payload": {"actor": "t\x1b", "command": [HOSTILE], "stdout": HOSTILE + "\nmore"},
    }  # fmt: skip
    for line in views.audit_lines(record):
        _no_controls(line)
    log = {"time": 0.0, "source": "run.1\x1b[2J", "stream": "stdout", "line": "\x1b[31mred"}
    shown = views.log_line(log)
    assert "run.1^[[2J:" in shown
    assert shown.endswith("\x1b[31mred")  # the run's own output passes as it is


@pytest.mark.docker
def test_hgrun_runs_shows_an_escaping_command_made_visible(
    cli: Cli, server: HgrunServer, busybox_image: str, tmp_path: Path
) -> None:
    app = deploy_busybox_app(cli, tmp_path)
    with Api(server) as api:
        response = api.http.post(
            f"/v1/apps/{app}/runs",
            json={"command": ["echo", "\x1b[2J\x1b]0;pwned\x07"], "detached": True},
        )
        assert response.status_code == 201, response.text
        api.finished_run(response.json()["id"])
    shown = check(cli("runs", "--app", app))
    assert "^[[2J^[]0;pwned^G" in shown
    _no_controls(shown, allowed="\n\t")
    info = check(cli("runs:info", f"run.{response.json()['id']}"))
    assert "^[[2J" in info
    _no_controls(info, allowed="\n")
