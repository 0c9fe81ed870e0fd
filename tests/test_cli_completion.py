"""`hgrun completion` in a real bash and a real zsh, on a pseudo-terminal: Tab completes
through the colon of `config:unset` (bash splits words at ':', which stopped click's script)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hgrun.cli.main import cli as root_command

SHELLS = {
    "bash": (["bash", "--norc", "--noprofile", "-i"], ""),
    "zsh": (["zsh", "-f", "-i"], "autoload -Uz compinit && compinit -u; "),
}


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an `hgrun` that is this checkout's CLI (zsh's script wants it on PATH)."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "hgrun"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m hgrun.cli.main "$@"\n')
    script.chmod(0o755)
    return folder


def _read_until(fd: int, pattern: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not re.search(pattern, seen):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096).replace(b"\a", b"")  # the bell of an ambiguous Tab
            except OSError:
                break
    return seen


def _complete(shell: str, typed: str, bin_dir: Path, wanted: bytes) -> bytes:
    argv, prelude = SHELLS[shell]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PS1": "$ ",
        "TERM": "dumb",
    }
    master, slave = pty.openpty()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    try:
        os.write(master, f'{prelude}source <(hgrun completion {shell}); echo RE""ADY\n'.encode())
        assert b"READY\r\n" in _read_until(master, rb"READY\r\n")
        os.write(master, typed.encode())
        return _read_until(master, re.escape(wanted))
    finally:
        process.kill()
        process.wait()
        os.close(master)


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize(
    ("typed", "wanted"),
    [
        ("hgrun config:u\t", b"hgrun config:unset "),
        ("hgrun config:\tu\t", b"hgrun config:unset "),  # a Tab right after the colon too
        ("hgrun releases:r\t", b"hgrun releases:rollback "),
        ("hgrun apps:d\t", b"hgrun apps:destroy "),
    ],
)
def test_tab_completes_through_a_colon(
    shell: str, typed: str, wanted: bytes, bin_dir: Path
) -> None:
    seen = _complete(shell, typed, bin_dir, wanted)
    assert wanted in seen, seen


def test_every_command_with_a_colon_is_offered_after_the_colon() -> None:
    """The table the shells complete from: `config:` offers both config commands."""
    from click.shell_completion import ShellComplete

    completer = ShellComplete(root_command, {}, "hgrun", "_HGRUN_COMPLETE")
    offered = [item.value for item in completer.get_completions([], "config:")]
    assert offered == ["config:set", "config:unset"]
