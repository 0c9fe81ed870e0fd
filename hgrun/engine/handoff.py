"""A command handed to a container that is already running: the warm pool's wire, no I/O.

A warm container (:mod:`hgrun.server.warm`) is started ahead of any run with :data:`SHIM` as
its command: a POSIX shell that reads a script on its stdin up to a line ``.``, then evaluates
it. :func:`script` writes that script for a run: its env exported, its argv set, the
:data:`MARKER` printed, then ``exec`` of the command, which so becomes the container's main
process (its exit code is the container's, Docker's log and its die event are the run's).

The script is written through the attach stream, so on a TTY the terminal echoes it back (the
line discipline echoes what it is given before the shell reads it): :class:`Handoff` drops
every byte of stdout before the marker, and the marker. The marker is made by ``printf`` from
escapes, so the echoed script (printable ASCII only, see below) can never contain it. It ends
with a line end: Docker's log writes a line only once it has ended, and a run taken
up after a restart of its server reads its start from that log (``attach`` with ``logs=1``
gives the log, then what comes after: a line not yet ended is in neither).

Only printable ASCII goes on the wire, in short lines: a terminal in
canonical mode would read control bytes as editing keys (^C, ^U, ^D...) and cuts lines at 4,095
bytes. Other bytes are rebuilt inside the container by ``printf`` octal escapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hgrun.engine import STDOUT

# ``sh -c SHIM``: the lines before ``.`` are the script, each a whole command (joined with ``;``:
# the shim stays one line in ``ps``); a stdin that ends before the ``.`` is an error.
SHIM = (
    'while IFS= read -r __hgrun_l; do [ "$__hgrun_l" = . ] && break; '
    '__hgrun_s="$__hgrun_s$__hgrun_l;"; done; '
    '[ "$__hgrun_l" = . ] || exit 125; eval "$__hgrun_s"'
)
MARKER = b"\x1b]hgrun;go\x07"  # an OSC sequence, which a terminal ignores; then a line end
MAX_SCRIPT = 64 * 1024  # a larger run (a huge env) is started the usual way
CHUNK = 120  # bytes of a value per line (an escape is 4 characters)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_V = "__hgrun_v"


def script(command: Sequence[str], env: Mapping[str, str]) -> bytes | None:
    """The script that runs ``command`` with ``env`` in a warm container; None when it cannot
    say it (a name a shell cannot export, a NUL byte, over :data:`MAX_SCRIPT`)."""
    if not command or any("\0" in s for s in (*command, *env.keys(), *env.values())):
        return None
    lines: list[str] = []
    for name, value in env.items():
        if not _NAME.match(name):
            return None
        lines += _assign(value)
        lines.append(f'export {name}="${_V}"')
    lines.append("set --")
    for arg in command:
        lines += _assign(arg)
        lines.append(f'set -- "$@" "${_V}"')
    lines.append("printf '\\033]hgrun;go\\007\\n'")
    lines += _LOOKUP
    lines.append(f"unset {_V} __hgrun_t __hgrun_l __hgrun_s __hgrun_e __hgrun_i __hgrun_d")
    lines.append('exec "$@"')
    lines.append(".")
    text = "".join(line + "\n" for line in lines)
    return text.encode("ascii") if len(text) <= MAX_SCRIPT else None


# The command looked up as docker-init's execvp would (a name with a slash as it is, else each
# $PATH entry): not found is 127, found but not an executable file 126, said as docker-init says
# it, so that hgrun.execfailure puts it in the same words as for a container made for the run
# (a failed exec would otherwise end the shell with its own message, which varies by shell).
_LOOKUP = [
    '__hgrun_e=127; case $1 in */*) [ -e "$1" ] && { __hgrun_e=126;'
    ' [ -f "$1" ] && [ -x "$1" ] && __hgrun_e=0; } ;;'
    " *) __hgrun_i=$IFS; IFS=:; set -f; for __hgrun_d in $PATH; do __hgrun_d=${__hgrun_d:-.};"
    ' [ -e "$__hgrun_d/$1" ] && { [ -f "$__hgrun_d/$1" ] && [ -x "$__hgrun_d/$1" ]'
    " && { __hgrun_e=0; break; }; __hgrun_e=126; }; done; set +f; IFS=$__hgrun_i ;; esac",
    "case $__hgrun_e in"
    " 127) printf '[FATAL tini (%s)] exec %s failed: No such file or directory\\n' $$ \"$1\" >&2;"
    " exit 127 ;;"
    " 126) printf '[FATAL tini (%s)] exec %s failed: Permission denied\\n' $$ \"$1\" >&2;"
    " exit 126 ;; esac",
]


def _assign(value: str) -> list[str]:
    """Lines that leave ``value``'s UTF-8 bytes in the shell variable ``__hgrun_v``."""
    data = value.encode("utf-8", "surrogateescape")
    lines = [f"{_V}="]
    for start in range(0, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        if all(0x20 <= b < 0x7F for b in chunk):
            quoted = chunk.decode("ascii").replace("'", "'\\''")
            lines.append(f"{_V}=\"${_V}\"'{quoted}'")
        else:
            # printf's format: every byte but letters and digits as an octal escape; the x kept
            # after it, as command substitution strips trailing newlines.
            fmt = "".join(chr(b) if chr(b).isalnum() and b < 0x80 else f"\\{b:03o}" for b in chunk)
            lines.append(f"__hgrun_t=$(printf '{fmt}x'); {_V}=\"${_V}${{__hgrun_t%x}}\"")
    return lines


class Handoff:
    """Drops what comes before :data:`MARKER` on stdout (a TTY's echo of the script, nothing
    otherwise), then passes everything on. Past ``limit`` bytes without it, gives up and passes
    what it held: a container that never printed it shows what it said instead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done = False
        self._held = b""

    def feed(self, stream: int, data: bytes) -> bytes:
        """What of ``data`` (a piece of ``stream``) is the run's output."""
        if self.done or stream != STDOUT:
            return data
        self._held += data
        at = self._held.find(MARKER)
        if at >= 0:
            after = self._held[at + len(MARKER) :]
            if after in (b"", b"\r"):
                return b""  # its line end ("\r\n" on a TTY) is in the next piece
            self.done, self._held = True, b""
            for line_end in (b"\n", b"\r\n"):
                if after.startswith(line_end):
                    return after[len(line_end) :]
            return after
        if len(self._held) > self.limit:
            self.done = True
            held, self._held = self._held, b""
            return held
        return b""
