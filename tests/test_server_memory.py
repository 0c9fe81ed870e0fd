"""The server's output buffers go back to the system once freed (hgrun/server/memory.py).

In a thread (the server reads engine sockets in threads, so in glibc's per-thread arenas), 200
buffers of 1 MiB are made between small live objects and then freed. glibc alone keeps all
200 MB (seen: 213 MB before and after the free); with the trimming thread they go.

And at the top of a thread's arena, after a large block has raised glibc's dynamic thresholds:
there malloc_trim returns nothing (it trims the main arena's top only), the pinned trim threshold
does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hgrun.server.memory import _libc

SCRIPT = textwrap.dedent(
    """
    import threading, time
    from hgrun.server import memory
    from hgrun.server.memory import start_trimming

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024

    keep, seen = [], {}

    def work():
        first = bytearray(FIRST << 20)
        del first  # glibc raises its mmap (and trim) threshold when a mapped block is freed
        blocks = []
        for _ in range(BLOCKS):
            blocks.append(bytearray(1 << 20))
            if BETWEEN:
                keep.append(bytearray(1000))  # live heap objects between the big blocks
        seen["held"] = rss_mb()
        blocks.clear()

    stop = TRIM  # as the server does at its start, before any output
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    freed = rss_mb()  # may lag: the kernel counts a process's RSS lazily
    deadline = time.monotonic() + (WAIT if stop else 0)
    while rss_mb() > seen["held"] - BLOCKS * 3 // 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(seen["held"], freed, rss_mb())
    """
)

glibc = pytest.mark.skipif(
    not os.path.exists("/proc/self/status") or _libc() is None,
    reason="needs Linux and glibc's malloc_trim",
)


def _held_freed_after(
    trim: str, first_mb: int = 1, blocks: int = 200, between: bool = True, wait: float = 20
) -> tuple[int, int, int]:
    script = SCRIPT.replace("FIRST", str(first_mb)).replace("BETWEEN", str(between))
    script = script.replace("BLOCKS", str(blocks)).replace("WAIT", str(wait))
    out = subprocess.run(
        [sys.executable, "-c", script.replace("TRIM", trim)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    held, freed, after = map(int, out.split())
    return held, freed, after


@glibc
def test_freed_output_buffers_go_back_to_the_system() -> None:
    held, _freed, after = _held_freed_after("start_trimming(every=0.1)")
    assert held >= 200  # the 200 MB really were resident
    assert after <= held - 150, f"{after} MB still resident after freeing 200 MB (held {held})"


@glibc
def test_without_the_trimming_glibc_keeps_them() -> None:
    """What the trimming is for: without it the freed 200 MB stay (the first test's control)."""
    held, freed, _after = _held_freed_after("None")
    assert freed > held - 50, f"glibc returned the memory by itself ({held} -> {freed} MB)"


# The trimming thread alone: malloc_trim(0) every 0.1 s, the thresholds left to glibc.
TRIM_ONLY = "(setattr(memory, 'pin_thresholds', lambda libc: True), start_trimming(every=0.1))[1]"


@glibc
def test_a_freed_arena_top_goes_back_too() -> None:
    """The thread frees a 30 MiB block first (left to glibc, that lifts its trim threshold to
    60 MiB: the control below), then 50 MiB at the top of its arena: they go back."""
    held, _freed, after = _held_freed_after("start_trimming(every=0.1)", 30, 50, between=False)
    assert held >= 50
    assert after <= held - 37, f"{after} MB still resident after freeing 50 MB (held {held})"


@glibc
def test_malloc_trim_alone_keeps_a_freed_arena_top() -> None:
    """The control: without the pinned thresholds the freed top stays through 20 trims."""
    held, _freed, after = _held_freed_after(TRIM_ONLY, 30, 50, between=False, wait=2)
    assert after > held - 10, f"malloc_trim returned the arena's top ({held} -> {after} MB)"
