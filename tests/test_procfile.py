from __future__ import annotations

import pytest

from hgrun import execfailure
from hgrun.errors import ExitStatus, ProcfileError
from hgrun.procfile import command_line_argv, parse_procfile, resolve_command


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("web: python3 app.py", {"web": "python3 app.py"}),
        ("web: python3 app.py\n", {"web": "python3 app.py"}),
        ("web:python3 app.py", {"web": "python3 app.py"}),
        ("web:   python3 app.py   ", {"web": "python3 app.py"}),
        ("web: a\nworker: b\n", {"web": "a", "worker": "b"}),
        ("worker: b\nweb: a\n", {"worker": "b", "web": "a"}),
        ("web: a\r\nworker: b\r\n", {"web": "a", "worker": "b"}),
        ("\ufeffweb: a\n", {"web": "a"}),
        ("# a comment\nweb: a\n", {"web": "a"}),
        ("  # indented comment\nweb: a\n", {"web": "a"}),
        ("\n\n  \nweb: a\n\n", {"web": "a"}),
        ("  web: a", {"web": "a"}),
        ("web_2-b: a", {"web_2-b": "a"}),
        ("Web: a", {"Web": "a"}),
        ("web: python3 -c 'print(1)': x", {"web": "python3 -c 'print(1)': x"}),
        ("web: echo $PORT # not a comment", {"web": "echo $PORT # not a comment"}),
        ("web: a\tb", {"web": "a\tb"}),
    ],
)
def test_parse(text: str, expected: dict[str, str]) -> None:
    result = parse_procfile(text)
    assert result == expected
    assert list(result) == list(expected)


@pytest.mark.parametrize(
    ("text", "line", "col", "what", "hint_part"),
    [
        ("web python3 app.py", 1, 1, "expected 'name: command'", "name: command"),
        ("web: a\n\n  worker", 3, 3, "expected 'name: command', found 'worker'", "name: command"),
        ("web: a\nweb: b", 2, 1, "duplicate process type 'web'", "already defined on line 1"),
        ("web: a\r\nx: y\r\nweb: b\r\n", 3, 1, "duplicate process type 'web'", "line 1"),
        ("web:", 1, 5, "process type 'web' has no command", "after the ':'"),
        ("web:   \n", 1, 5, "process type 'web' has no command", "after the ':'"),
        ("  web:", 1, 7, "process type 'web' has no command", "after the ':'"),
        ("web page: a", 1, 1, "invalid name 'web page'", "letters, digits"),
        ("web : a", 1, 1, "invalid name 'web '", "no space before"),
        ("wéb: a", 1, 1, "invalid name 'wéb'", "letters, digits"),
        ("web.1: a", 1, 1, "invalid name 'web.1'", "letters, digits"),
        (": a", 1, 1, "empty process type name", "letters, digits"),
        ("\ufeff# c\nweb: a\nbad line", 3, 1, "expected 'name: command'", "name: command"),
    ],
)
def test_errors(text: str, line: int, col: int, what: str, hint_part: str) -> None:
    with pytest.raises(ProcfileError) as info:
        parse_procfile(text)
    err = info.value
    assert (err.file, err.line, err.col) == ("Procfile", line, col)
    assert err.what.startswith(what)
    assert err.message == f"Procfile:{line}:{col}: {err.what}"
    assert err.hint is not None and hint_part in err.hint
    assert err.exit_status == ExitStatus.INPUT


def test_error_names_the_file() -> None:
    with pytest.raises(ProcfileError, match=r"^apps/web/Procfile:1:1: "):
        parse_procfile("nope", file="apps/web/Procfile")


PROCFILE = {"web": "python3 -m http.server 8000", "worker": "python3 manage.py worker"}


@pytest.mark.parametrize(
    ("argv", "command", "process"),
    [
        (["worker"], "python3 manage.py worker", "worker"),
        (["worker", "--once"], "python3 manage.py worker --once", "worker"),
        (["worker", "a b", "it's"], "python3 manage.py worker 'a b' 'it'\"'\"'s'", "worker"),
        (["worker", "$HOME", ";", "rm"], "python3 manage.py worker '$HOME' ';' rm", "worker"),
        (["bash"], ["bash"], None),
        # One argument is a command line for sh -c, as on Scalingo and Heroku ...
        (["ls -l /app | wc -l"], "ls -l /app | wc -l", None),
        (["echo $HOME"], "echo $HOME", None),
        (["FOO=1"], "FOO=1", None),
        (["*.txt"], "*.txt", None),
        (["~/bin/x"], "~/bin/x", None),
        ([" ls"], " ls", None),
        # ... unless it is one plain word, which runs the same without a shell ...
        (["nosuchcmd"], ["nosuchcmd"], None),
        (["./manage.py"], ["./manage.py"], None),
        (["/usr/bin/env"], ["/usr/bin/env"], None),
        # ... and not a word only a shell knows.
        (["cd"], "cd", None),
        (["exit"], "exit", None),
        (["export"], "export", None),
        # A line whose first word is a process type: that type, the rest as typed.
        (["worker --once  -v"], "python3 manage.py worker --once  -v", "worker"),
        (["worker"], "python3 manage.py worker", "worker"),
        # Several arguments run as given: quotes, pipes and globs are the command's own words.
        (["sh", "-c", "exit 3"], ["sh", "-c", "exit 3"], None),
        (["echo", "a | b"], ["echo", "a | b"], None),
        (["ls", "-a"], ["ls", "-a"], None),
        (["python3", "manage.py", "migrate"], ["python3", "manage.py", "migrate"], None),
        (["Worker"], ["Worker"], None),
        ([], [], None),
    ],
)
def test_resolve_command(argv: list[str], command: str | list[str], process: str | None) -> None:
    resolved = resolve_command(PROCFILE, argv)
    assert resolved == (command, process)
    assert resolved.command == command and resolved.process == process


def test_resolve_command_copies_argv() -> None:
    argv = ["bash"]
    resolved = resolve_command({}, argv)
    assert resolved.command == argv and resolved.command is not argv


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("true", ["true"]),
        ("python3 task.py | tee /tmp/log", ["sh", "-c", "python3 task.py | tee /tmp/log"]),
        ("cd", ["sh", "-c", "cd"]),
        ("./run.sh", ["./run.sh"]),
    ],
)
def test_command_line_argv(line: str, argv: list[str]) -> None:
    assert command_line_argv(line) == argv


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (
            b"[FATAL tini (7)] exec nosuchcmd failed: No such file or directory\n",
            b"hgrun: command not found in the image: nosuchcmd\n",
        ),
        (
            b"[FATAL tini (8)] exec /app/x failed: Permission denied\r\nrest",
            b"hgrun: command not executable in the image: /app/x (permission denied)\r\nrest",
        ),
        (
            b"[FATAL tini (9)] exec ./a.out failed: Exec format error\n",
            b"hgrun: cannot run ./a.out in the image: Exec format error\n",
        ),
        (b"hello\n", None),
        (b"x [FATAL tini (7)] exec a failed: No such file or directory\n", None),
    ],
)
def test_exec_failure_explained(data: bytes, shown: bytes | None) -> None:
    assert execfailure.explain(data) == shown


@pytest.mark.parametrize(
    ("data", "incomplete"),
    [
        (b"", True),
        (b"[FAT", True),
        (b"[FATAL tini (7)] exec nosuchcmd fai", True),
        (b"[FATAL tini (7)] exec x failed: No such file or directory\n", False),
        (b"hello", False),
        (b"[FATAL tini (7)] " + b"x" * 5000, False),
    ],
)
def test_exec_failure_incomplete(data: bytes, incomplete: bool) -> None:
    assert execfailure.incomplete(data) is incomplete
