"""The server gives the memory of a run's output back to the system once it is freed.

A run's output passes through buffers of up to 1 MiB (reads off the engine's socket, pieces
joined for the store and for viewers), in several threads, each allocating from its own malloc
arena. glibc adjusts two thresholds as blocks are freed (the "dynamic threshold"): blocks above
the mmap threshold are mmapped, and the free top of an arena's heap is returned only past the
trim threshold, which follows twice the largest mmapped block freed so far, up to 64 MiB. So every
thread's arena kept up to tens of MB free but resident, and malloc_trim does not help there: it
returns the free chunks inside an arena, but the top of the main arena only. Measured with
bench/run.py's output (100 MB each): the server's heap, 59 MB fresh, was 93 MB after one run and
143 MB after eight (after sixteen, malloc counted 170 of its 201 MB free).

So the server pins both thresholds (mallopt): blocks up to 32 MiB still come from the arenas, as
the dynamic threshold gave (an mmap per buffer makes its pages fault in zeroed, a third more CPU
on the output path), and an arena's free top past 4 MiB goes back to the system as it is freed.
A thread also calls malloc_trim(0) every few seconds for the free chunks below live ones (about
25 ms for 200 MB; ctypes releases the GIL for the call, so the event loop goes on). The same runs
then held 73 MB of heap after the first and after the eighth. On a C library other than glibc
(musl has neither mallopt's thresholds nor malloc_trim) nothing is changed or started.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("hgrun.memory")

TRIM_EVERY = 5.0  # seconds between trims
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024**2  # the most glibc takes on 64-bit: the dynamic threshold's ceiling
TRIM_THRESHOLD = 4 * 1024**2


def _libc() -> ctypes.CDLL | None:
    """The C library the interpreter runs on, if it is glibc's (the one with malloc_trim)."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.restype = libc.mallopt.restype = ctypes.c_int
    return libc


def pin_thresholds(libc: ctypes.CDLL) -> bool:
    """Pin malloc's mmap and trim thresholds (see above); True if glibc took both."""
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def start_trimming(every: float = TRIM_EVERY) -> Callable[[], None] | None:
    """Pin malloc's thresholds and trim its free memory every ``every`` seconds in a daemon
    thread; returns its stop, or None when the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return None
    if not pin_thresholds(libc):
        log.warning("mallopt refused the thresholds; memory freed at an arena's top may stay")
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.wait(every):
            try:
                libc.malloc_trim(0)
            except Exception:  # never seen; the server goes on without it
                log.exception("malloc_trim failed; memory is no longer trimmed")
                return

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
    return stopped.set
