"""Line assembly from stored output chunks (pure: no server, no Docker)."""

from __future__ import annotations

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
