"""A command the image cannot run, said plainly.

A run's first process is Docker's init (docker-init, i.e. tini, ``HostConfig.Init``), which
execs the command. When that exec fails, tini writes one line before anything of the command
could run, and exits 127 (ENOENT) or 126 (EACCES), docker run's codes::

    [FATAL tini (7)] exec nosuchcmd failed: No such file or directory

That line means nothing to a user who typed ``hgrun run nosuchcmd``. :func:`explain` turns it,
as the first output of a container, into hgrun's own line::

    hgrun: command not found in the image: nosuchcmd

(tini: ``src/tini.c``, ``spawn()``: ``PRINT_FATAL("exec %s failed: %s", ...)``.)
"""

from __future__ import annotations

import re

# tini prints with a "\n"; through a TTY (onlcr) it arrives as "\r\n".
_TINI_EXEC = re.compile(rb"^\[FATAL tini \(\d+\)\] exec (.+?) failed: ([^\r\n]*)(\r?\n)")

_PREFIX = b"[FATAL tini ("
MAX_LINE = 4096  # tini's line is one path and one strerror: never near this

NOT_FOUND = "No such file or directory"
NOT_EXECUTABLE = "Permission denied"


def incomplete(first_output: bytes) -> bool:
    """True while ``first_output`` could still become tini's line: it starts like it (or is
    shorter than its start) and has no line end yet. tini's ``fprintf`` to an unbuffered stderr
    may reach the stream in more than one piece; wait for the rest before :func:`explain`."""
    if len(first_output) >= MAX_LINE or b"\n" in first_output:
        return False
    head = first_output[: len(_PREFIX)]
    return _PREFIX.startswith(head)


def explain(first_output: bytes) -> bytes | None:
    """hgrun's line for the init's exec failure at the start of ``first_output``, followed by
    the rest of it; None when ``first_output`` does not start with one (leave it as it is)."""
    found = _TINI_EXEC.match(first_output)
    if found is None:
        return None
    name = found.group(1).decode(errors="replace")
    why = found.group(2).decode(errors="replace")
    if why == NOT_FOUND:
        line = f"hgrun: command not found in the image: {name}"
        if name == "sh":
            line += (
                " (one argument is a command line for sh -c; give the command and its"
                " arguments as separate words to run it without a shell)"
            )
    elif why == NOT_EXECUTABLE:
        line = f"hgrun: command not executable in the image: {name} (permission denied)"
    else:
        line = f"hgrun: cannot run {name} in the image: {why}"
    return line.encode() + found.group(3) + first_output[found.end() :]
