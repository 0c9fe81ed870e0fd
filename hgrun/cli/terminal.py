"""The terminal hgrun talks to, as an object the commands are given (and tests build).

Nothing reaches for ``sys.stdin``/``sys.stdout`` behind the caller's back: the CLI makes one
:class:`Terminal` with :meth:`Terminal.from_process`, tests make one on pipes, files or a pty.
"""

from __future__ import annotations

import contextlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from collections.abc import Iterator, Mapping
    from typing import BinaryIO

DEFAULT_SIZE = (80, 24)


def _isatty(stream: BinaryIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):  # closed or detached
        return False


def _fileno(stream: BinaryIO | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


class Terminal:
    """Binary standard streams plus what we know about them.

    ``stdin`` is None when the process has no stdin (fd 0 closed). ``environ`` is read for
    ``NO_COLOR``, ``COLUMNS`` and ``LINES``.
    """

    __slots__ = ("stdin", "stdout", "stderr", "stdin_isatty", "stdout_isatty", "environ")

    def __init__(
        self,
        stdin: BinaryIO | None,
        stdout: BinaryIO,
        stderr: BinaryIO,
        stdin_isatty: bool = False,
        stdout_isatty: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.stdin_isatty = stdin_isatty
        self.stdout_isatty = stdout_isatty
        self.environ: Mapping[str, str] = {} if environ is None else environ

    def __repr__(self) -> str:
        return (
            f"Terminal(stdin={self.stdin!r}, stdout={self.stdout!r}, stderr={self.stderr!r},"
            f" stdin_isatty={self.stdin_isatty}, stdout_isatty={self.stdout_isatty})"
        )

    def without_stdin(self) -> Terminal:
        """This terminal with no stdin (``hgrun run --no-stdin``)."""
        return Terminal(None, self.stdout, self.stderr, False, self.stdout_isatty, self.environ)

    @classmethod
    def from_process(cls) -> Terminal:
        """The terminal of this process: ``sys.std*`` binary buffers and ``os.environ``."""
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
        return cls(stdin, stdout, stderr, _isatty(stdin), _isatty(stdout), os.environ)

    @classmethod
    def on(
        cls,
        stdin: BinaryIO | None,
        stdout: BinaryIO,
        stderr: BinaryIO,
        environ: Mapping[str, str] | None = None,
    ) -> Terminal:
        """A terminal on the given streams, asking them whether they are ttys."""
        return cls(stdin, stdout, stderr, _isatty(stdin), _isatty(stdout), environ or {})

    @property
    def stderr_isatty(self) -> bool:
        return _isatty(self.stderr)

    @property
    def colour(self) -> bool:
        """Whether to colour output: stdout is a terminal and ``NO_COLOR`` is unset or empty
        (https://no-color.org)."""
        return self.stdout_isatty and not self.environ.get("NO_COLOR")

    def size(self) -> tuple[int, int]:
        """``(columns, rows)`` of the terminal: asked of stdout, then stdin, then ``COLUMNS``
        and ``LINES``, else 80x24."""
        for stream in (self.stdout, self.stdin):
            fd = _fileno(stream)
            if fd is None:
                continue
            try:
                cols, rows = os.get_terminal_size(fd)
            except OSError:
                continue
            if cols and rows:
                return cols, rows
        try:
            cols = int(self.environ.get("COLUMNS", ""))
            rows = int(self.environ.get("LINES", ""))
        except ValueError:
            return DEFAULT_SIZE
        return (cols, rows) if cols > 0 and rows > 0 else DEFAULT_SIZE

    @contextlib.contextmanager
    def raw(self) -> Iterator[None]:
        """Put the stdin tty in raw mode for the block, and always put it back as it was.

        Raw mode (``tty.setraw``): no echo, no line editing, no signals from Ctrl-C/Ctrl-Z, no
        output processing; bytes go through untouched. The saved attributes are restored with
        ``TCSAFLUSH`` on every way out, exceptions and cancellation included. A no-op when stdin
        is not a tty.
        """
        fd = _fileno(self.stdin) if self.stdin_isatty else None
        if fd is None:
            yield
            return
        import termios  # only a session on a tty goes raw
        import tty

        saved = termios.tcgetattr(fd)
        try:
            tty.setraw(fd, termios.TCSAFLUSH)
            yield
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
