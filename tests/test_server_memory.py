"""The server's output buffers go back to the system once freed (hgrun/server/memory.py).

In a thread (the server reads engine sockets in threads, so in glibc's per-thread arenas), 200
buffers of 1 MiB are made between small live objects and then freed. Without the pinned
threshold glibc keeps all 200 MB (seen: 213 MB before and after the free); with it they go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hgrun.server.memory import fix_malloc_thresholds

SCRIPT = textwrap.dedent(
    """
    import threading
    from hgrun.server.memory import fix_malloc_thresholds

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024

    assert fix_malloc_thresholds()
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
    print(seen["held"], rss_mb())
    """
)

glibc = pytest.mark.skipif(
    not os.path.exists("/proc/self/status") or not fix_malloc_thresholds(),
    reason="needs Linux and glibc's mallopt",
)


@glibc
def test_freed_output_buffers_go_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    held, after = map(int, out.split())
    assert held >= 200, out  # the 200 MB really were resident
    assert after < held - 150, f"{after} MB still resident after freeing 200 MB (held {held})"
