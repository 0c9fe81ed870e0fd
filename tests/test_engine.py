"""The Docker engine's own framing stays inside it: pairs out, Docker's states in three words."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hgrun.engine import STDERR, STDOUT, ContainerStatus
from hgrun.engine.dockerwire import RawAttach, container_state
from hgrun.engine.multiplex import frame


class _Sink:
    """The writer half of a connection, never written to in these tests."""

    def close(self) -> None: ...


async def _read_all(raw: bytes, tty: bool, chunk: int) -> list[tuple[int, bytes]]:
    reader = asyncio.StreamReader()
    for i in range(0, len(raw), chunk):
        reader.feed_data(raw[i : i + chunk])
    reader.feed_eof()
    stream = RawAttach(reader, _Sink(), tty)  # type: ignore[arg-type]
    out = []
    while (piece := await stream.read()) is not None:
        out.append(piece)
    return out


@pytest.mark.parametrize("chunk", [1, 3, 8, 9, 1000])
def test_attach_yields_stream_pairs_in_order(chunk: int) -> None:
    raw = frame(STDOUT, b"out1") + frame(STDERR, b"err") + frame(STDOUT, b"out2")
    pieces = asyncio.run(_read_all(raw, tty=False, chunk=chunk))
    assert b"".join(p for s, p in pieces if s == STDOUT) == b"out1out2"
    assert b"".join(p for s, p in pieces if s == STDERR) == b"err"
    assert [s for s, _ in pieces] == [STDOUT, STDERR, STDOUT]


def test_attach_with_a_tty_is_raw_stdout() -> None:
    raw = b"\x01\x00\x00\x00\x00\x00\x00\x05hello"
    assert asyncio.run(_read_all(raw, tty=True, chunk=1000)) == [(STDOUT, raw)]


@pytest.mark.parametrize(
    ("docker_status", "running", "status"),
    [
        ("created", False, ContainerStatus.CREATED),
        ("running", True, ContainerStatus.RUNNING),
        ("paused", True, ContainerStatus.RUNNING),
        ("restarting", True, ContainerStatus.RUNNING),
        ("exited", False, ContainerStatus.EXITED),
        ("dead", False, ContainerStatus.EXITED),
        ("removing", False, ContainerStatus.EXITED),
        ("", True, ContainerStatus.RUNNING),  # an unknown word: Running decides
        ("", False, ContainerStatus.EXITED),
    ],
)
def test_docker_states(docker_status: str, running: bool, status: ContainerStatus) -> None:
    raw: dict[str, Any] = {"Id": "abc", "State": {"Status": docker_status, "Running": running}}
    assert container_state(raw).status is status
    assert container_state(raw).running is (status is ContainerStatus.RUNNING)
