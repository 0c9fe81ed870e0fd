"""The server gives the memory of a run's output back to the system once it is freed.

A run's output passes through buffers of up to 1 MiB (reads off the engine's socket, pieces
joined for the store and for viewers), in several threads. glibc's malloc serves the first such
blocks with mmap, but once one is freed it raises its mmap threshold to that size (the "dynamic
threshold") and later ones come from the heaps of the threads' arenas, where a freed block below
a live one is never returned. Measured with bench/run.py: the server at 79 MB fresh held 250 MB
after two runs of 100 MB of output, and kept it.

Pinning the threshold (mallopt) fixes that but makes every large buffer an mmap whose pages
fault in zeroed, which cost the output path a third more CPU. Instead a thread calls
malloc_trim(3) every few seconds: it returns the free pages of every arena (about 25 ms for
200 MB; ctypes releases the GIL for the call, so the event loop goes on). On a C library other
than glibc (musl has no malloc_trim) nothing is started.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("hgrun.memory")

TRIM_EVERY = 5.0  # seconds between trims


def _malloc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def start_trimming(every: float = TRIM_EVERY) -> Callable[[], None] | None:
    """Trim malloc's free memory every ``every`` seconds in a daemon thread; returns its stop,
    or None when the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return None
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.wait(every):
            try:
                trim()
            except Exception:  # never seen; the server goes on without it
                log.exception("malloc_trim failed; memory is no longer trimmed")
                return

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
    return stopped.set
