"""The attach client against a real WebSocket server on loopback.

The server here is a few lines on top of :class:`hgrun.relay.protocol.ServerConnection`: it echoes
stdin as stdout, reports on stderr, and ends with an exit status, or misbehaves on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import signal
import struct
import termios
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from websockets.asyncio.server import Response, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.typing import Subprotocol

from hgrun import errors
from hgrun.cli.attach import attach
from hgrun.cli.terminal import Terminal
from hgrun.relay import protocol
from hgrun.relay.protocol import Resize, StdinClosed, StdinData

TOKEN = {"Authorization": "Bearer s3cret", "X-Workspace-Id": "ws1"}


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@dataclasses.dataclass
class Seen:
    """What the test server saw from the client."""

    stdin: bytearray = dataclasses.field(default_factory=bytearray)
    events: list[object] = dataclasses.field(default_factory=list)
    headers: Headers | None = None
    subprotocol: str | None = None
    offsets: list[int] = dataclasses.field(default_factory=list)  # -1: none sent
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def record(self, event: object) -> None:
        if isinstance(event, StdinData):
            self.stdin += event.data
        else:
            self.events.append(event)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()


async def _handler(ws: ServerConnection, seen: Seen) -> None:
    seen.headers = ws.request.headers if ws.request else None
    seen.subprotocol = ws.subprotocol
    assert ws.subprotocol is not None
    conn = protocol.ServerConnection(ws.subprotocol)
    path, _, query = ws.request.path.partition("?") if ws.request else ("", "", "")
    kind, _, arg = path.strip("/").partition("/")
    offset = int(dict(urllib.parse.parse_qsl(query)).get("offset", "-1"))
    seen.offsets.append(offset)

    if kind == "resume":
        # Output, then the connection goes as if the network went; a client that comes back
        # says how much it has and gets the rest, each byte once.
        output = b"first part|second part"
        if offset < 0:
            await ws.send(conn.stdout(output[:10]))
            await ws.send(conn.stderr(b"err"))
            async for message in ws:
                for event in conn.receive(message):
                    seen.record(event)
                    if isinstance(event, StdinData) and b"!" in event.data:
                        assert ws.transport is not None
                        ws.transport.abort()
                        return
            return
        rest = output[max(0, offset - 3) :]  # 3 bytes of stderr were sent too
        await ws.send(conn.stdout(rest))
        async for message in ws:
            for event in conn.receive(message):
                seen.record(event)
                if isinstance(event, StdinData) and b"q" in event.data:
                    await ws.send(conn.exit(int(arg or 0)))
                    return
        return

    if kind == "garbage":
        await ws.send(b"\x07what")
        await ws.wait_closed()
        return
    if kind == "failure-without-code":
        await ws.send(b'\x03{"metadata":{},"status":"Failure","reason":"InternalError"}')
        return
    async for message in ws:
        for event in conn.receive(message):
            seen.record(event)
            if isinstance(event, StdinData):
                await ws.send(conn.stdout(event.data))
                if kind == "tty" and b"!" in event.data:
                    assert ws.transport is not None
                    ws.transport.abort()
                    return
                if kind == "tty" and b"q" in event.data:
                    await ws.send(conn.exit(int(arg)))
                    return
            elif isinstance(event, StdinClosed):
                if kind == "drop":
                    assert ws.transport is not None
                    ws.transport.abort()  # no close frame: as if the network went away
                    return
                if kind == "close":
                    await ws.close(1001, "server shutting down")
                    return
                await ws.send(conn.stderr(b"got %d bytes\n" % len(seen.stdin)))
                await ws.send(conn.exit(int(arg or 0)))
                return
        if kind == "v4" and len(seen.stdin) >= int(arg):
            # v4 cannot deliver EOF: this command ends once it has read what it wanted.
            await ws.send(conn.exit(0))
            return


def _process_request(ws: ServerConnection, request: Request) -> Response | None:
    if request.headers.get("Authorization") != TOKEN["Authorization"]:
        return ws.respond(HTTPStatus.UNAUTHORIZED, "no\n")
    kind, _, arg = request.path.partition("?")[0].strip("/").partition("/")
    if kind == "refuse":
        return ws.respond(HTTPStatus(int(arg)), "refused\n")
    if kind == "refuse-json":
        body = '{"error":"forbidden","message":"token scope is trigger","hint":"use another"}'
        return ws.respond(HTTPStatus.FORBIDDEN, body)
    return None


@contextlib.asynccontextmanager
async def server(select: str | None = None) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    def choose(ws: ServerConnection, offered: Any) -> Subprotocol | None:
        chosen = select if select in offered else protocol.negotiate(offered)
        return Subprotocol(chosen) if chosen else None

    async with serve(
        lambda ws: _handler(ws, seen),
        "127.0.0.1",
        0,
        select_subprotocol=choose,
        process_request=_process_request,
        compression=None,
        max_size=None,
    ) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", seen


def _feed(data: bytes) -> BinaryIO:
    """A pipe whose read end gets ``data`` then EOF, written by a thread (as a shell would)."""
    r, w = os.pipe()

    def write() -> None:
        with open(w, "wb") as f:
            f.write(data)

    threading.Thread(target=write, daemon=True).start()
    return open(r, "rb", buffering=0)


def _terminal(tmp_path: Path, stdin: BinaryIO | None) -> Terminal:
    out = open(tmp_path / "stdout", "wb")
    err = open(tmp_path / "stderr", "wb")
    return Terminal.on(stdin, out, err)


def _outputs(tmp_path: Path, terminal: Terminal) -> tuple[bytes, bytes]:
    terminal.stdout.close()
    terminal.stderr.close()
    return (tmp_path / "stdout").read_bytes(), (tmp_path / "stderr").read_bytes()


# --- tty=False: pipes --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 1024 * 1024 + 17])
def test_binary_stdin_round_trips_byte_exact(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    terminal = _terminal(tmp_path, _feed(data))

    async def main() -> tuple[int, Seen]:
        async with server() as (url, seen):
            code = await attach(f"{url}/echo/0", TOKEN, terminal, tty=False, run_id=42)
        return code, seen

    code, seen = run(main())
    out, err = _outputs(tmp_path, terminal)
    assert code == 0
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert err == b"got %d bytes\n" % size
    assert seen.events == [StdinClosed()]
    assert seen.subprotocol == protocol.V5
    assert seen.headers is not None and seen.headers["X-Workspace-Id"] == "ws1"


def test_100_mb_of_stdin_is_quick(tmp_path: Path) -> None:
    data = os.urandom(100 * 1024 * 1024)
    terminal = _terminal(tmp_path, _feed(data))

    async def main() -> int:
        async with server() as (url, _):
            return await attach(f"{url}/echo/0", TOKEN, terminal, tty=False)

    started = time.monotonic()
    assert run(main()) == 0
    elapsed = time.monotonic() - started
    out, _ = _outputs(tmp_path, terminal)
    assert len(out) == len(data) and out == data
    assert elapsed < 30, f"100 MB took {elapsed:.1f}s"


@pytest.mark.parametrize("code", [0, 1, 7, 124, 255])
def test_exit_code_propagates(tmp_path: Path, code: int) -> None:
    terminal = _terminal(tmp_path, _feed(b"select 1;\n"))

    async def main() -> int:
        async with server() as (url, _):
            return await attach(f"{url}/echo/{code}", TOKEN, terminal, tty=False)

    assert run(main()) == code
    assert _outputs(tmp_path, terminal) == (b"select 1;\n", b"got 10 bytes\n")


def test_failure_without_exit_code_is_125(tmp_path: Path) -> None:
    terminal = _terminal(tmp_path, _feed(b""))

    async def main() -> int:
        async with server() as (url, _):
            return await attach(f"{url}/failure-without-code", TOKEN, terminal, tty=False)

    assert run(main()) == 125


def _devnull() -> BinaryIO:
    return open(os.devnull, "rb")


def _regular_file(tmp_path: Path) -> BinaryIO:
    (tmp_path / "in").write_bytes(b"from a file\n" * 10000)
    return open(tmp_path / "in", "rb")


def _closed_fd() -> BinaryIO:
    f = open(os.devnull, "rb")
    f.close()
    return f


@pytest.mark.parametrize(
    ("make_stdin", "expected"),
    [
        (lambda tmp: None, b""),
        (lambda tmp: _devnull(), b""),
        (lambda tmp: _closed_fd(), b""),
        (lambda tmp: io.BytesIO(b"in memory"), b"in memory"),
        (_regular_file, b"from a file\n" * 10000),
    ],
    ids=["no-stdin", "dev-null", "closed", "bytesio", "regular-file"],
)
def test_eof_is_delivered(
    tmp_path: Path, make_stdin: Callable[[Path], BinaryIO | None], expected: bytes
) -> None:
    terminal = _terminal(tmp_path, make_stdin(tmp_path))

    async def main() -> Seen:
        async with server() as (url, seen):
            assert await attach(f"{url}/echo/3", TOKEN, terminal, tty=False) == 3
        return seen

    seen = run(main())
    assert seen.events == [StdinClosed()]
    assert _outputs(tmp_path, terminal)[0] == expected


def test_v4_sends_stdin_but_no_eof(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    terminal = _terminal(tmp_path, _feed(data))

    async def main() -> Seen:
        async with server(select=protocol.V4) as (url, seen):
            assert await attach(f"{url}/v4/{len(data)}", TOKEN, terminal, tty=False) == 0
        return seen

    seen = run(main())
    assert seen.subprotocol == protocol.V4
    assert seen.events == []
    assert bytes(seen.stdin) == data


@pytest.mark.parametrize(
    ("path", "reason"),
    [("drop", ""), ("close", ": server shutting down")],
)
def test_lost_connection_says_how_to_take_it_up_again(
    tmp_path: Path, path: str, reason: str
) -> None:
    terminal = _terminal(tmp_path, _feed(b"hello"))

    async def main() -> None:
        async with server() as (url, _):
            await attach(f"{url}/{path}", TOKEN, terminal, tty=False, run_id=42)

    with pytest.raises(errors.UnreachableError) as caught:
        run(main())
    assert (
        caught.value.message == f"lost the connection to the server before run 42 finished{reason}"
    )
    assert caught.value.hint is not None
    assert "`hgrun attach 42`" in caught.value.hint and "grace period" in caught.value.hint
    assert _outputs(tmp_path, terminal)[0] == b"hello"  # what came before the drop was written


def test_protocol_violation_from_the_server(tmp_path: Path) -> None:
    terminal = _terminal(tmp_path, _feed(b""))

    async def main() -> None:
        async with server() as (url, _):
            await attach(f"{url}/garbage", TOKEN, terminal, tty=False)

    with pytest.raises(protocol.ProtocolError, match="unknown channel 7"):
        run(main())


@pytest.mark.parametrize(
    ("path", "headers", "error", "message"),
    [
        ("echo/0", {}, errors.AuthError, "did not accept your token when attaching to run 42"),
        ("refuse/403", TOKEN, errors.ForbiddenError, "your token may not attach to run 42"),
        ("refuse/404", TOKEN, errors.NotFoundError, "run 42 was not found in this workspace"),
        ("refuse/500", TOKEN, errors.HgrunError, "the server refused to attach to run 42"),
        ("refuse-json", TOKEN, errors.ForbiddenError, "token scope is trigger"),
    ],
)
def test_refused_handshake(
    tmp_path: Path,
    path: str,
    headers: dict[str, str],
    error: type[errors.HgrunError],
    message: str,
) -> None:
    terminal = _terminal(tmp_path, _feed(b""))

    async def main() -> None:
        async with server() as (url, _):
            await attach(f"{url}/{path}", headers, terminal, tty=False, run_id=42)

    with pytest.raises(error) as caught:
        run(main())
    assert type(caught.value) is error
    assert message in caught.value.message
    assert caught.value.hint


def test_unreachable_server(tmp_path: Path) -> None:
    terminal = _terminal(tmp_path, _feed(b""))
    with pytest.raises(errors.UnreachableError, match="cannot attach to run 9"):
        run(attach("ws://127.0.0.1:1/v1/runs/9/attach", TOKEN, terminal, tty=False, run_id=9))


# --- tty=True: a pty ---------------------------------------------------------------------------


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.fixture
def pty_terminal() -> Any:
    master, slave = os.openpty()
    _set_size(slave, 100, 30)
    stdin = open(slave, "rb", buffering=0, closefd=False)
    stdout = open(slave, "wb", buffering=0, closefd=False)
    terminal = Terminal.on(stdin, stdout, stdout)
    yield master, slave, terminal
    os.close(master)
    os.close(slave)


def _read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_tty_raw_mode_resize_and_restore(pty_terminal: Any) -> None:
    master, slave, terminal = pty_terminal
    assert terminal.stdin_isatty and terminal.size() == (100, 30)
    before = termios.tcgetattr(slave)

    async def main() -> tuple[int, Seen]:
        async with server() as (url, seen):
            task = asyncio.create_task(attach(f"{url}/tty/3", TOKEN, terminal, tty=True))
            await seen.wait_for(lambda: Resize(100, 30) in seen.events)
            during = termios.tcgetattr(slave)
            assert not during[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
            _set_size(slave, 132, 43)
            os.kill(os.getpid(), signal.SIGWINCH)
            await seen.wait_for(lambda: Resize(132, 43) in seen.events)
            os.write(master, b"ls\r\x03\x1b[A")  # Ctrl-C and an arrow key go through as bytes
            await seen.wait_for(lambda: bytes(seen.stdin) == b"ls\r\x03\x1b[A")
            os.write(master, b"q")
            return await task, seen

    code, seen = run(main())
    assert code == 3
    assert seen.events == [Resize(100, 30), Resize(132, 43)]
    assert bytes(seen.stdin) == b"ls\r\x03\x1b[Aq"
    assert _read_available(master) == b"ls\r\x03\x1b[Aq"  # raw: no echo, no \n -> \r\n
    assert termios.tcgetattr(slave) == before
    assert signal.getsignal(signal.SIGWINCH) in (signal.SIG_DFL, None)


def test_tty_is_restored_when_the_connection_drops(pty_terminal: Any) -> None:
    master, slave, terminal = pty_terminal
    before = termios.tcgetattr(slave)

    async def main() -> None:
        async with server() as (url, seen):
            task = asyncio.create_task(attach(f"{url}/tty/0", TOKEN, terminal, tty=True))
            await seen.wait_for(lambda: bool(seen.events))
            os.write(master, b"!")
            await task

    with pytest.raises(errors.UnreachableError, match="lost the connection"):
        run(main())
    assert termios.tcgetattr(slave) == before


def test_tty_is_restored_when_cancelled(pty_terminal: Any) -> None:
    master, slave, terminal = pty_terminal
    before = termios.tcgetattr(slave)

    async def main() -> None:
        async with server() as (url, seen):
            task = asyncio.create_task(attach(f"{url}/tty/0", TOKEN, terminal, tty=True))
            await seen.wait_for(lambda: bool(seen.events))
            # Cancelling is what KeyboardInterrupt does to the running coroutine.
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        run(main())
    assert termios.tcgetattr(slave) == before


def test_terminal_raw_restores_on_exception(pty_terminal: Any) -> None:
    _, slave, terminal = pty_terminal
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError), terminal.raw():
        assert termios.tcgetattr(slave) != before
        raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before


@pytest.mark.parametrize(
    ("isatty", "environ", "colour"),
    [
        (True, {}, True),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),
        (False, {}, False),
    ],
)
def test_colour(isatty: bool, environ: dict[str, str], colour: bool) -> None:
    terminal = Terminal(None, io.BytesIO(), io.BytesIO(), False, isatty, environ)
    assert terminal.colour is colour


@pytest.mark.parametrize(
    ("environ", "size"),
    [({}, (80, 24)), ({"COLUMNS": "120", "LINES": "50"}, (120, 50)), ({"COLUMNS": "x"}, (80, 24))],
)
def test_size_without_a_tty(environ: dict[str, str], size: tuple[int, int]) -> None:
    assert Terminal(None, io.BytesIO(), io.BytesIO(), environ=environ).size() == size


# --- reconnecting -------------------------------------------------------------------------------


def test_a_lost_connection_is_taken_up_again_from_the_bytes_shown(pty_terminal: Any) -> None:
    master, slave, terminal = pty_terminal
    before = termios.tcgetattr(slave)

    async def main() -> tuple[int, Seen]:
        async with server() as (url, seen):
            task = asyncio.create_task(
                attach(f"{url}/resume/4", TOKEN, terminal, tty=True, run_id=7, reconnect=10)
            )
            await seen.wait_for(lambda: Resize(100, 30) in seen.events)
            os.write(master, b"!")  # the server drops the connection
            await seen.wait_for(lambda: len(seen.offsets) == 2)
            # Taken up again: a size change first, so a full-screen program redraws.
            await seen.wait_for(lambda: seen.events.count(Resize(100, 30)) == 2)
            os.write(master, b"q")
            return await task, seen

    code, seen = run(main())
    assert code == 4
    assert seen.offsets == [-1, 13]  # 10 bytes of stdout and 3 of stderr were shown
    assert seen.events == [Resize(100, 30), Resize(100, 29), Resize(100, 30)]
    shown = _read_available(master)
    assert shown.count(b"hgrun: connection lost; reconnecting to run 7...\r\n") == 1
    assert shown.replace(b"hgrun: connection lost; reconnecting to run 7...\r\n", b"") == (
        b"first part\r\nerr|second part"  # hgrun's stderr at column 0 in raw mode
    )
    assert termios.tcgetattr(slave) == before


def test_reconnecting_gives_up_after_the_window(tmp_path: Path) -> None:
    terminal = _terminal(tmp_path, _feed(b"!"))
    started = time.monotonic()

    async def main() -> None:
        async with server() as (url, seen):
            task = asyncio.create_task(
                attach(f"{url}/resume/0", TOKEN, terminal, tty=False, run_id=8, reconnect=1.0)
            )
            await seen.wait_for(lambda: bool(seen.offsets))
        await task  # the server is gone: no reconnect can succeed

    with pytest.raises(errors.UnreachableError, match="lost the connection") as caught:
        run(main())
    assert time.monotonic() - started < 10
    assert caught.value.hint is not None and "`hgrun attach 8`" in caught.value.hint
    out, err = _outputs(tmp_path, terminal)
    assert out == b"first part" and err == b"errhgrun: connection lost; reconnecting to run 8...\n"
