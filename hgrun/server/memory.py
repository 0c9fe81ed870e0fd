"""The server gives the memory of a run's output back once it is freed.

A run's output passes through buffers of up to 1 MiB (the engine's socket is read 1 MiB at a
time, pieces are joined for the store and for viewers). glibc's malloc serves blocks that large
with mmap, and unmaps them when freed, but only until the first one is freed: it then raises its
mmap threshold to that block's size (the "dynamic threshold", up to 32 MiB on 64-bit), and
every later block of that size comes from the heap, where a freed block in the middle of live
ones is never returned to the system. Measured with bench/run.py: the server at 79 MB fresh held
250 MB after two runs of 100 MB of output, and stayed there; with the threshold fixed, 107 MB.

Setting the threshold explicitly turns the dynamic adjustment off (mallopt(3)). Blocks under it
(Python's own small objects go to pymalloc's arenas anyway) are not affected. On a C library
other than glibc (musl has no mallopt) this does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept from moving
TRIM_THRESHOLD = 1024 * 1024  # a free heap top over 1 MiB goes back to the system


def fix_malloc_thresholds() -> bool:
    """Pin glibc's mmap and trim thresholds; True when the C library took them."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    took_mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    took_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return took_mmap and took_trim
