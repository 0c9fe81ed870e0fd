"""Line assembly from stored output chunks (pure: no server, no Docker)."""

from __future__ import annotations

import time

import pytest

from hgrun.models import OutputChunk
from hgrun.server.logs import LineAssembler


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
