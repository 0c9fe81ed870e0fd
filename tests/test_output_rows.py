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
        # Up to the size: 4 + 4 fit in 8, the next starts a row; a big piece is cut to fill
        # the row it joins, then rows of the size, its time on each.
        (
            [(1, b"aaaa", 1.0), (1, b"bbbb", 1.0), (1, b"cc", 1.0), (1, b"d" * 20, 1.001)],
            [
                (1, 1.0, b"aaaabbbb"),
                (1, 1.0, b"ccdddddd"),
                (1, 1.001, b"d" * 8),
                (1, 1.001, b"d" * 6),
            ],
        ),  # fmt: skip
        # A row just full closes; the next piece starts its own.
        ([(1, b"a" * 8, 1.0), (1, b"b", 1.0)], [(1, 1.0, b"a" * 8), (1, 1.0, b"b")]),
        # A cut piece's rest is still joined with what follows within the time.
        (
            [(1, b"x" * 10, 1.0), (1, b"y", 1.0), (2, b"e" * 9, 1.0)],
            [(1, 1.0, b"x" * 8), (1, 1.0, b"xxy"), (2, 1.0, b"e" * 8), (2, 1.0, b"e")],
        ),
    ],
    ids=["none", "one", "joined", "time", "streams", "size", "full", "cut"],
)
def test_rows(
    spec: list[tuple[int, bytes, float]], expected: list[tuple[int, float, bytes]]
) -> None:
    pieces = _pieces(*spec)
    got = rows(pieces, 8, 0.01)
    assert got == expected
    assert b"".join(data for _, _, data in got) == b"".join(p.data for p in pieces)
    assert all(type(data) is bytes and 0 < len(data) <= 8 for _, _, data in got)
