"""The warm pool's wire (hgrun.engine.handoff): the script a waiting shell reads, run by real
shells (dash, busybox's ash) through a pipe and through a terminal, and the filter that drops
what came before the marker. No Docker: the same shim, as a container's command would run it."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgrun import execfailure
from hgrun.engine import STDERR, STDOUT
from hgrun.engine.handoff import MARKER, MAX_SCRIPT, SHIM, Handoff, script

SHELLS = [["dash"], ["busybox", "sh"]]
SHOW = "import json, os, sys; print(json.dumps([sys.argv[1:], dict(os.environ), sys.stdin.read()]))"


def shells() -> list[list[str]]:
    found = [s for s in SHELLS if shutil.which(s[0])]
    if not found:
        pytest.skip("no dash or busybox here (scripts/setup installs both)")
    return found


def through_pipe(shell: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"]}
    return subprocess.run([*shell, "-c", SHIM], input=data, capture_output=True, env=env)


def through_terminal(shell: list[str], data: bytes) -> tuple[int, bytes]:
    """The shim on a pty, ``data`` typed into it: (exit code, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(shell[0], [*shell, "-c", SHIM], {"PATH": os.environ["PATH"]})
    os.write(fd, data)
    seen = b""
    while True:
        try:
            piece = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's last process ended
            break
        if not piece:
            break
        seen += piece
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen


ARGS = [
    ["it's", "", " two  spaces ", "$HOME", "`id`", "a\\b", "%s%d", "*", "-n"],
    ["new\nline\n", "\n", "tab\tand\r", "\x01\x1b[31m\x7f"],
    ["ünïcödé €", "日本語", "emoji 🙂"],
    ["x" * 5000],  # one value over a terminal's 4,095-byte line
    ["'" * 300, '"' * 300, "\\" * 300],
]
ENVS = [
    {},
    {"A": "v'1", "B_2": "tab\there\n", "_x": ""},
    {"LONG": "é" * 3000, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
]


@pytest.mark.parametrize("args", ARGS)
@pytest.mark.parametrize("env", ENVS)
def test_argv_env_and_stdin_arrive_exactly_through_a_pipe(
    args: list[str], env: dict[str, str]
) -> None:
    text = script([sys.executable, "-c", SHOW, *args], env)
    assert text is not None
    for shell in shells():
        done = through_pipe(shell, text + b"the run's own stdin\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(MARKER + b"\n"), done.stdout[:200]
        argv, seen_env, stdin = json.loads(done.stdout[len(MARKER) + 1 :])
        assert argv == args
        assert {k: seen_env.get(k) for k in env} == env
        assert not any(k.startswith("__hgrun") for k in seen_env), "the shim's own names leak"
        assert stdin == "the run's own stdin\n"


@pytest.mark.parametrize("args", ARGS)
def test_on_a_terminal_the_echo_is_dropped_and_only_the_command_shows(args: list[str]) -> None:
    # The command prints its argv back as JSON on one line: what the terminal shows after the
    # filter is exactly that line (with the terminal's \r\n), no byte of the typed script.
    text = script([sys.executable, "-c", SHOW.replace("sys.stdin.read()", "0"), *args], {})
    assert text is not None
    for shell in shells():
        code, seen = through_terminal(shell, text)
        assert code == 0
        assert b"__hgrun" in seen, "the terminal echoed the script (what the filter is for)"
        shown = Handoff(4 * len(text)).feed(STDOUT, seen)
        assert shown.endswith(b"\r\n") and shown.count(b"\r\n") == 1, shown[:300]
        assert json.loads(shown)[0] == args


def test_the_command_s_exit_code_is_the_shell_s() -> None:
    for shell in shells():
        assert through_pipe(shell, script(["sh", "-c", "exit 7"], {}) or b"").returncode == 7


@pytest.mark.parametrize(
    ("command", "code", "words"),
    [
        (
            "no-such-command-here",
            127,
            b"hgrun: command not found in the image: no-such-command-here",
        ),
        ("/no/such/file", 127, b"hgrun: command not found in the image: /no/such/file"),
        ("/etc/passwd", 126, b"hgrun: command not executable in the image: /etc/passwd (perm"),
        ("/etc", 126, b"hgrun: command not executable in the image: /etc (permission denied)"),
    ],
)
def test_a_command_that_cannot_run_is_said_as_for_a_container_made_for_it(
    command: str, code: int, words: bytes
) -> None:
    # docker-init's line, which hgrun.execfailure turns into hgrun's, and its exit code.
    for shell in shells():
        done = through_pipe(shell, script([command, "--flag"], {}) or b"")
        assert done.returncode == code
        assert done.stderr.startswith(b"[FATAL tini ("), done.stderr
        assert (execfailure.explain(done.stderr) or b"").startswith(words)


def test_a_name_is_looked_up_in_path_in_order() -> None:
    # The first executable file of that name wins; a directory or a plain file before it is
    # passed over, as execvp does.
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp, "a"), Path(tmp, "b")
        (first / "tool").mkdir(parents=True)
        second.mkdir()
        (second / "tool").write_text("#!/bin/sh\necho second $1\n")
        (second / "tool").chmod(0o755)
        env = {"PATH": f"{first}:{second}:/usr/bin:/bin"}
        for shell in shells():
            done = through_pipe(shell, script(["tool", "x"], env) or b"")
            assert done.stdout == MARKER + b"\nsecond x\n", done.stderr


def test_a_stdin_that_ends_before_the_script_does_runs_nothing() -> None:
    text = script(["sh", "-c", "echo ran"], {}) or b""
    for shell in shells():
        done = through_pipe(shell, text[: len(text) // 2])
        assert done.returncode == 125
        assert b"ran" not in done.stdout


@pytest.mark.parametrize(
    ("command", "env"),
    [
        ([], {}),  # nothing to run
        (["echo"], {"NOT-A-NAME": "x"}),  # a name a shell cannot export
        (["echo"], {"1ST": "x"}),
        (["echo", "nul\0byte"], {}),
        (["echo"], {"A": "nul\0"}),
        (["echo", "x" * MAX_SCRIPT], {}),  # over the script's bound
    ],
)
def test_what_the_shim_cannot_take_is_refused(command: list[str], env: dict[str, str]) -> None:
    assert script(command, env) is None


def test_only_short_printable_lines_go_on_the_wire() -> None:
    text = script(["x" * 5000, "é\n" * 2000], {"V": "\x00x"[1:] + "\x1b" * 500}) or b""
    lines = text.split(b"\n")
    assert max(len(line) for line in lines) < 1024  # a terminal cuts lines at 4,095 bytes
    assert all(0x20 <= b < 0x7F for b in text.replace(b"\n", b""))


# -- the filter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pieces",
    [
        [b"echo of the scr", b"ipt\r\n", MARKER[:3], MARKER[3:] + b"\r\nout", b"put"],
        [b"echo", MARKER, b"\r", b"\noutput"],
        [MARKER + b"\r", b"\nout", b"put"],
        [MARKER, b"\noutput"],
        [MARKER + b"\n", b"output"],
        [MARKER + b"output"],  # no line end: what follows is the run's
    ],
)
def test_the_marker_and_its_line_end_are_found_however_split(pieces: list[bytes]) -> None:
    drop = Handoff(1000)
    assert b"".join(drop.feed(STDOUT, piece) for piece in pieces) == b"output"


def test_stderr_passes_and_stdout_after_the_marker_is_untouched() -> None:
    drop = Handoff(1000)
    assert drop.feed(STDERR, b"sh: warning\n") == b"sh: warning\n"
    assert drop.feed(STDOUT, b"typed" + MARKER + b"\na" + MARKER) == b"a" + MARKER
    assert drop.feed(STDOUT, b"\nlater") == b"\nlater"


def test_past_its_limit_without_the_marker_it_gives_up_and_shows_all() -> None:
    drop = Handoff(10)
    assert drop.feed(STDOUT, b"0123456") == b""
    assert drop.feed(STDOUT, b"789abc") == b"0123456789abc"
    assert drop.feed(STDOUT, b"more") == b"more"


@settings(max_examples=150, deadline=None)
@given(
    args=st.lists(st.text(st.characters(blacklist_characters="\0"), max_size=40), max_size=4),
    env=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
            lambda k: k not in ("PATH", "PWD", "OLDPWD", "IFS", "PS4", "OPTIND", "PPID")
        ),
        st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=40),
        max_size=4,
    ),
)
def test_any_argv_and_env_arrive_exactly(args: list[str], env: dict[str, str]) -> None:
    args = [a.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for a in args]
    text = script([sys.executable, "-c", SHOW, *args], env)
    assert text is not None
    done = through_pipe(shells()[0], text)
    assert done.returncode == 0, done.stderr
    argv, seen_env, _ = json.loads(done.stdout[len(MARKER) + 1 :])
    assert argv == args
    assert {k: seen_env.get(k) for k in env} == env
