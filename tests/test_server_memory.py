"""The server's output buffers go back to the system once freed (hgrun/server/memory.py).

In a thread (the server reads engine sockets in threads, so in glibc's per-thread arenas), 200
buffers of 1 MiB are made between small live objects and then freed. glibc alone keeps all
200 MB (seen: 213 MB before and after the free); with the trimming thread they go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hgrun.server.memory import _malloc_trim

SCRIPT = textwrap.dedent(
    """
    import threading, time
    from hgrun.server.memory import start_trimming

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024

    keep, seen = [], {}

    def work():
        first = bytearray(1 << 20)
        del first  # glibc raises its mmap threshold when a mapped block is freed
        blocks = []
        for _ in range(200):
            blocks.append(bytearray(1 << 20))
            keep.append(bytearray(1000))  # live heap objects between the big blocks
        seen["held"] = rss_mb()
        blocks.clear()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    freed = rss_mb()
    stop = TRIM
    deadline = time.monotonic() + (20 if stop else 0)
    while rss_mb() > seen["held"] - 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(seen["held"], freed, rss_mb())
    """
)

glibc = pytest.mark.skipif(
    not os.path.exists("/proc/self/status") or _malloc_trim() is None,
    reason="needs Linux and glibc's malloc_trim",
)


def _held_freed_after(trim: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("TRIM", trim)],
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
    assert after < held - 150, f"{after} MB still resident after freeing 200 MB (held {held})"


@glibc
def test_without_the_trimming_glibc_keeps_them() -> None:
    """What the trimming is for: without it the freed 200 MB stay (the first test's control)."""
    held, freed, _after = _held_freed_after("None")
    assert freed > held - 50, f"glibc returned the memory by itself ({held} -> {freed} MB)"
