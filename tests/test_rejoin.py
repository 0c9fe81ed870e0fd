"""Where the engine's replay of a run's output joins the store's copy (hgrun.rejoin), as tables.

Each row is a run's whole output ``R``, what the store holds of it (its first ``total`` bytes,
the newest ``kept`` of them) and what the engine's log holds (``R[P:]``, ``P`` > 0 once it
rotated); the replay is fed in pieces and the store's questions answered by a search of the
kept bytes, as recovery does (:func:`hgrun.server.output.rejoined`). No Docker, no store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.store import app_with_release, new_run, new_store

from hgrun.rejoin import PROBE, Rejoin, Stored, lost_line
from hgrun.server.output import OutputLog, rejoined

SEQ = b"".join(b"%d\n" % n for n in range(1, 30001))  # 168,894 bytes, no repeat
YES = b"y\n" * 60000


def stored_of(output: bytes, total: int, kept: int) -> Stored:
    run = output[:total]
    return Stored(
        total=total,
        head=run[:PROBE] if kept == total else None,
        tail=run[-PROBE:] if kept else b"",
        kept=kept,
    )


def replay(
    output: bytes, total: int, kept: int, rotated: int, step: int = 1000
) -> tuple[bytes, bool, list[int]]:
    """What rejoin stores, whether it said output was lost, and the streams of its pieces."""
    kept_bytes = output[total - kept : total]

    async def find(probe: bytes) -> int | None:
        at = kept_bytes.rfind(probe)
        return None if at < 0 else total - kept + at

    async def source() -> AsyncIterator[tuple[int, bytes]]:
        engine = output[rotated:]
        for i in range(0, len(engine), step):
            yield 1, engine[i : i + step]

    async def run() -> tuple[bytes, bool, list[int]]:
        rejoin = Rejoin(stored_of(output, total, kept))
        pieces = [p async for p in rejoined(source(), rejoin, find)]
        return b"".join(d for _, d in pieces), rejoin.lost, [s for s, _ in pieces]

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("output", "total", "kept", "rotated", "step"),
    [
        # Nothing rotated: the join is a count, whatever the content.
        (SEQ, 100_000, 100_000, 0, 1000),
        (SEQ, 100_000, 100_000, 0, 7),
        (YES, 50_001, 50_001, 0, 999),  # repeating output: still exact
        (SEQ, 100, 100, 0, 1000),  # less stored than a probe
        (SEQ, len(SEQ), len(SEQ), 0, 1000),  # the store had it all
        (SEQ, 0, 0, 0, 1000),  # the store had nothing
        # Rotated, the engine's first bytes inside what the store kept.
        (SEQ, 100_000, 100_000, 60_000, 1000),
        (SEQ, 100_000, 100_000, 60_000, 50_000),
        (SEQ, 100_000, 100_000, 100_000 - 5000, 333),
        # Rotated to just before the store's end: a partial overlap.
        (SEQ, 100_000, 100_000, 100_000 - 100, 1000),
        (SEQ, 100_000, 100_000, 100_000 - 2000, 10_000),
        # The cap dropped the oldest: nothing rotated, or rotated inside the kept or the
        # dropped part.
        (SEQ, 100_000, 30_000, 0, 1000),
        (SEQ, 100_000, 30_000, 80_000, 1000),
        (SEQ, 100_000, 30_000, 40_000, 1000),
        (SEQ, 100_000, 30_000, 40_000, 100_000),
    ],
)
def test_the_replay_adds_exactly_what_the_store_lacks(
    output: bytes, total: int, kept: int, rotated: int, step: int
) -> None:
    got, lost, _ = replay(output, total, kept, rotated, step)
    assert not lost
    assert got == output[total:], (len(got), len(output) - total)


def test_a_replay_that_rotated_past_the_store_says_output_was_lost_then_keeps_all_it_has() -> None:
    got, lost, streams = replay(SEQ, 100_000, 100_000, 100_500)
    assert lost
    assert got == lost_line() + SEQ[100_500:]
    assert streams[0] == 2  # the line is on stderr


def test_past_the_store_with_the_oldest_dropped_the_loss_is_said_and_the_rest_kept() -> None:
    got, lost, _ = replay(SEQ, 100_000, 30_000, 100_500)
    assert lost
    assert got.startswith(lost_line())
    rest = got[len(lost_line()) :]
    assert rest and SEQ.endswith(rest)  # a suffix of the run: nothing doubled, order kept


def test_a_long_replay_past_the_store_with_the_oldest_dropped_keeps_all_it_has() -> None:
    big = b"".join(b"%d\n" % n for n in range(1, 300_001))
    got, lost, _ = replay(big, 100_000, 30_000, 150_000, step=4096)
    assert lost
    assert got == lost_line() + big[150_000:]


def test_an_engine_with_no_output_adds_nothing() -> None:
    assert replay(SEQ, 100_000, 100_000, len(SEQ))[:2] == (b"", False)
    assert replay(SEQ, 100_000, 30_000, len(SEQ))[:2] == (b"", False)


def test_streams_are_kept_apart_and_counted_together() -> None:
    pieces = [(1 if i % 3 else 2, b"%d\n" % i) for i in range(5000)]
    output = b"".join(d for _, d in pieces)
    total = len(b"".join(d for _, d in pieces[:3000]))
    rejoin = Rejoin(stored_of(output, total, total))
    got = []
    for stream, data in pieces:
        got += rejoin.feed(stream, data)
    got += rejoin.close()
    assert got == pieces[3000:]


LINES = SEQ[: SEQ.index(b"\n", 10_000) + 1]  # whole lines, more than a probe


def _fed(stored: bytes, engine: list[bytes]) -> tuple[list[bytes], Rejoin]:
    """What rejoin gives after each piece of ``engine``, the store holding all of ``stored``."""
    rejoin = Rejoin(
        Stored(total=len(stored), head=stored[:PROBE], tail=stored[-PROBE:], kept=len(stored))
    )
    return [b"".join(d for _, d in rejoin.feed(1, piece)) for piece in engine], rejoin


@pytest.mark.parametrize(
    ("stored", "engine", "new"),
    [
        # A TTY session's prompt is stored but not yet in Docker's log (no newline): the
        # engine's next bytes are new, and given at once (not after 4 KB).
        (b"hi\r\n/app # ", [b"hi\r\n", b"e", b"cho x\r\n"], [b"", b"e", b"cho x\r\n"]),
        # The log had it (finished meanwhile, or the container ended): the join is after it.
        (b"hi\r\n/app # ", [b"hi\r\n/app # ", b"ls\r\n"], [b"", b"ls\r\n"]),
        (b"hi\r\n/app # ", [b"hi\r\n/ap", b"p # ", b"ls\r\n"], [b"", b"", b"ls\r\n"]),
        # New output beginning like that line: held only until it differs.
        (b"hi\r\n/app # ", [b"hi\r\n", b"/ap", b"x\r\n"], [b"", b"", b"/apx\r\n"]),
        # A run with no finished line at all.
        (b"Password: ", [b"secret\n"], [b"secret\n"]),
        # A store that ends a line: decided at its end.
        (b"hi\n", [b"hi\n", b"x"], [b"", b"x"]),
        # Longer than a probe, ending unfinished.
        (LINES + b"pro", [LINES, b"new\n"], [b"", b"new\n"]),
        (LINES + b"pro", [LINES, b"pr", b"o\n"], [b"", b"", b"\n"]),
    ],
    ids=[
        "prompt-not-logged",
        "logged",
        "logged-in-pieces",
        "like-it",
        "no-line",
        "ends-a-line",
        "long-not-logged",
        "long-logged",
    ],  # fmt: skip
)
def test_an_unfinished_last_line_the_engines_log_may_lack(
    stored: bytes, engine: list[bytes], new: list[bytes]
) -> None:
    got, rejoin = _fed(stored, engine)
    assert got == new
    assert not rejoin.lost


def test_a_replay_that_ends_on_the_unfinished_line_adds_nothing() -> None:
    got, rejoin = _fed(b"hi\n/app # ", [b"hi\n/ap"])
    assert got == [b""] and rejoin.close() == []


def test_feeding_before_the_stores_answer_is_a_callers_bug() -> None:
    rejoin = Rejoin(stored_of(SEQ, 100_000, 100_000))
    rejoin.feed(1, SEQ[50_000 : 50_000 + PROBE])
    assert rejoin.asks == SEQ[50_000 : 50_000 + PROBE]
    with pytest.raises(RuntimeError):
        rejoin.feed(1, b"more")
    assert rejoin.answer(50_000) == []  # the join, 50,000 bytes on, is further on
    more = rejoin.feed(1, SEQ[50_000 + PROBE : 120_000])
    assert more == [(1, SEQ[100_000:120_000])]


# -- the store's side: its ends and a search of what it kept (a real SQLite store) ----------


def test_the_stores_ends_and_search_skip_the_caps_marker(tmp_path: Path) -> None:
    store = new_store(tmp_path / "hgrun.db", max_output=50_000)
    app, release = app_with_release(store)
    run = new_run(store, app, release)
    chunks = [(1, 0.0, SEQ[i : i + 7000]) for i in range(0, 100_000, 7000)]
    store.append_output(run.id, app.id, chunks)
    log = OutputLog(store, lambda: 0.0)
    stored = log.stored(run.id)
    total = 7000 * 15
    assert stored.total == total and stored.head is None
    assert stored.tail == SEQ[total - PROBE : total]
    assert 45_000 <= stored.kept <= 50_000
    # Across chunk boundaries, the last place, the run's byte offsets; the dropped part not.
    assert log.find(run.id, SEQ[69_990:70_010]) == 69_990
    assert log.find(run.id, SEQ[1000:1100]) is None
    assert log.find(run.id, b"\n") == total - 1


def test_a_store_with_nothing_dropped_gives_its_head(tmp_path: Path) -> None:
    store = new_store(tmp_path / "hgrun.db")
    app, release = app_with_release(store)
    run = new_run(store, app, release)
    store.append_output(run.id, app.id, [(1, 0.0, SEQ[:3000]), (2, 0.0, SEQ[3000:9000])])
    stored = OutputLog(store, lambda: 0.0).stored(run.id)
    assert stored == Stored(total=9000, head=SEQ[:PROBE], tail=SEQ[9000 - PROBE : 9000], kept=9000)
