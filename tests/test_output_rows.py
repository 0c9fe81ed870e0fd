"""How a flush turns the pump's pieces into store rows (hgrun.server.output.rows): pure."""

from __future__ import annotations

import pytest

from hgrun.server.output import rows
from hgrun.server.session import Output


def _pieces(*spec: tuple[int, bytes, float]) -> list[Output]:
    out, offset = [], 0
    for stream, data, ts in spec:
        out.append(Output(stream, data, offset, ts))
        offset += len(data)
    return out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ([], []),
        ([(1, b"a", 0.0)], [(1, 0.0, b"a")]),
        # One stream, close in time: one row with the first piece's time.
        ([(1, b"a", 1.0), (1, b"b", 1.004), (1, b"c", 1.009)], [(1, 1.0, b"abc")]),
        # Too far from the row's first piece: a row of its own.
        ([(1, b"a", 1.0), (1, b"b", 1.004), (1, b"c", 1.02)], [(1, 1.0, b"ab"), (1, 1.02, b"c")]),
        # Another stream in between: the order is kept, never joined across it.
        (
            [(1, b"a", 1.0), (2, b"E", 1.0), (1, b"b", 1.0)],
            [(1, 1.0, b"a"), (2, 1.0, b"E"), (1, 1.0, b"b")],
        ),
        # Up to the size: 4 + 4 fit in 8, the next starts a row; a big piece stays whole.
        (
            [(1, b"aaaa", 1.0), (1, b"bbbb", 1.0), (1, b"cc", 1.0), (1, b"d" * 20, 1.0)],
            [(1, 1.0, b"aaaabbbb"), (1, 1.0, b"cc"), (1, 1.0, b"d" * 20)],
        ),
    ],
    ids=["none", "one", "joined", "time", "streams", "size"],
)
def test_rows(
    spec: list[tuple[int, bytes, float]], expected: list[tuple[int, float, bytes]]
) -> None:
    pieces = _pieces(*spec)
    got = rows(pieces, 8, 0.01)
    assert got == expected
    assert b"".join(data for _, _, data in got) == b"".join(p.data for p in pieces)
