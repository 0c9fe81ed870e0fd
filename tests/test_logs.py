"""Line assembly from stored output chunks (pure: no server, no Docker)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.store import app_with_release, new_run, new_store

from hgrun.models import OutputChunk
from hgrun.server.api.runs import stderr_tail
from hgrun.server.logs import MAX_LINE, STDERR, TAIL_PAGE, LineAssembler, tail_lines
from hgrun.store import Store


def test_line_assembler_splits_per_run_and_stream() -> None:
    assembler = LineAssembler()
    lines = assembler.feed(
        [
            OutputChunk(1, 10, 1, 1.0, b"a\nb"),
            OutputChunk(2, 11, 1, 1.5, b"x\n"),
            OutputChunk(3, 10, 2, 2.0, b"err\n"),
            OutputChunk(4, 10, 1, 3.0, b"c\r\nd"),
        ]
    )
    assert [(ln.run_id, ln.stream, ln.text) for ln in lines] == [
        (10, "stdout", "a"),
        (11, "stdout", "x"),
        (10, "stderr", "err"),
        (10, "stdout", "bc"),
    ]
    assert assembler.pending_runs() == [10]
    assert [ln.text for ln in assembler.flush(10)] == ["d"]
    assert assembler.flush() == []


def test_line_assembler_replaces_bad_utf8() -> None:
    (line,) = LineAssembler().feed([OutputChunk(1, 1, 1, 0.0, b"caf\xe9\n")])
    assert line.text == "caf\ufffd"


def _chunks(pieces: list[bytes], run_id: int = 1, stream: int = 2) -> list[OutputChunk]:
    return [OutputChunk(i + 1, run_id, stream, float(i), p) for i, p in enumerate(pieces)]


def test_a_line_split_across_many_chunks_is_one_line() -> None:
    assembler = LineAssembler()
    lines = assembler.feed(_chunks([b"he", b"l", b"", b"lo", b" wor", b"ld\nnext"]))
    assert [(ln.text, ln.cursor) for ln in lines] == [("hello world", 6)]
    (rest,) = assembler.flush()
    assert (rest.text, rest.cursor) == ("next", 6)


def test_a_progress_bar_without_newlines_is_emitted_in_capped_pieces() -> None:
    """100,000 "\\r progress" redraws and no newline: linear work, lines of at most the cap."""
    chunks = _chunks([b"\r progress"] * 100_000)
    fed = sum(len(c.data) for c in chunks)
    assembler = LineAssembler(max_line=64 * 1024)
    started = time.perf_counter()
    lines = assembler.feed(chunks) + assembler.flush()
    elapsed = time.perf_counter() - started
    print(f"100,000 progress chunks: {elapsed:.3f} s, work {assembler.work / fed:.2f} x input")
    # Nothing lost: the pieces and the last (flushed) line are the input, in order.
    assert "".join(ln.text for ln in lines) == (b"\r progress" * 100_000).decode()
    assert all(len(ln.text.encode()) <= 64 * 1024 for ln in lines)
    assert len(lines) == -(-fed // (64 * 1024))
    # Linear: a fixed small multiple of the input, whatever its size (re-splitting the growing
    # partial line on each chunk, as before, was about chunks/2 times the input).
    assert assembler.work <= 4 * fed


def test_a_16_mb_line_is_emitted_in_pieces_with_linear_work() -> None:
    line = b"x" * (16 * 1024 * 1024)
    for pieces in ([line + b"\n"], [line[i : i + 65536] for i in range(0, len(line), 65536)]):
        assembler = LineAssembler()
        started = time.perf_counter()
        lines = assembler.feed(_chunks(pieces)) + assembler.flush()
        elapsed = time.perf_counter() - started
        print(f"16 MB line in {len(pieces)} chunk(s): {elapsed:.3f} s")
        assert sum(len(ln.text) for ln in lines) == len(line)
        assert len(lines) == 256
        assert assembler.work <= 4 * len(line) + 64


@pytest.mark.parametrize("cap", [4, 5, 6, 7, 8, 64])
def test_pieces_never_split_a_utf8_character(cap: int) -> None:
    text = "aé€😀" * 50  # 1-, 2-, 3- and 4-byte characters
    data = text.encode()
    for chunking in (1, 3, len(data)):
        assembler = LineAssembler(max_line=cap)
        pieces = [data[i : i + chunking] for i in range(0, len(data), chunking)]
        lines = assembler.feed(_chunks(pieces)) + assembler.flush()
        assert "".join(ln.text for ln in lines) == text  # no U+FFFD from a cut sequence
        assert all(len(ln.text.encode()) <= cap for ln in lines)


def test_a_cap_too_small_for_a_character_is_refused() -> None:
    with pytest.raises(ValueError):
        LineAssembler(max_line=3)


def test_pending_since_is_where_a_waiting_line_began() -> None:
    assembler = LineAssembler()
    assembler.feed(_chunks([b"done\nwai", b"ting", b" still"]))
    assert assembler.pending_since() == 1
    assembler.feed([OutputChunk(9, 1, 2, 9.0, b"\n")])
    assert assembler.pending_since() is None


# -- tails read from the newest end, in bounded pages ------------------------------------------


def _store_with_output(tmp_path: Path, pieces: list[tuple[int, bytes]]) -> tuple[Store, int]:
    store = new_store(tmp_path / "tail.db", max_output=None)
    app, release = app_with_release(store)
    run = new_run(store, app, release)
    for i in range(0, len(pieces), 100):
        store.append_output(run.id, app.id, [(s, 1.0, d) for s, d in pieces[i : i + 100]])
    return store, run.id


def test_the_stderr_tail_reads_only_the_end_of_a_large_output(tmp_path: Path) -> None:
    """20 MB of output then 60 stderr lines: the tail of 50 reads a few pages, not 20 MB."""
    big = [(1, b"o" * 65535 + b"\n")] * 320 + [(2, b"e" * 1000 + b"\n")] * 200
    tail = [(2, f"err {i}\n".encode()) for i in range(60)]
    store, run_id = _store_with_output(tmp_path, big + tail)
    read: list[int] = []

    def pages(before: int | None) -> list[OutputChunk]:
        page = store.output(
            run_id=run_id, stream=STDERR, before=before, limit=TAIL_PAGE, newest_first=True
        )
        read.append(sum(len(c.data) for c in page))
        return page

    lines = tail_lines(pages, 50)
    assert [ln.text for ln in lines] == [f"err {i}" for i in range(10, 60)]
    assert sum(read) < 4 * TAIL_PAGE * 1001  # the pages it needed, not the run's output
    assert stderr_tail(store, run_id, 3) == ["err 57", "err 58", "err 59"]


def test_a_tail_of_one_endless_line_stops_at_its_byte_bound(tmp_path: Path) -> None:
    store, run_id = _store_with_output(tmp_path, [(2, b"x" * 65536)] * 200)  # 13 MB, no newline
    read: list[int] = []

    def pages(before: int | None) -> list[OutputChunk]:
        page = store.output(run_id=run_id, before=before, limit=TAIL_PAGE, newest_first=True)
        read.append(sum(len(c.data) for c in page))
        return page

    lines = tail_lines(pages, 2)
    assert sum(read) <= 3 * MAX_LINE + TAIL_PAGE * 65536
    assert all(len(ln.text) <= MAX_LINE for ln in lines) and len(lines) == 2


def test_a_tail_of_a_short_output_is_all_of_it(tmp_path: Path) -> None:
    store, run_id = _store_with_output(tmp_path, [(2, b"one\ntwo\nthr"), (2, b"ee")])
    assert stderr_tail(store, run_id, 50) == ["one", "two", "three"]
    assert stderr_tail(store, run_id, 0) == []
