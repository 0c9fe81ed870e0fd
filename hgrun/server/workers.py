"""Worker threads by kind of work, so that one kind never waits behind another.

The event loop's default executor is the engine's pool (``server/main.py`` sizes it to what the
engine serves at once); the supervisor's engine calls and output flushes run there. Builds
(minutes each), mail (an SMTP server that is slow to answer) and reads of stored output for
the API (a tail, a page of logs) each get a pool of their own here: a burst of any of them
holds its own threads only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def _pool(workers: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


@dataclasses.dataclass
class Workers:
    builds: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: _pool(2, "build")
    )
    mail: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: _pool(2, "mail")
    )
    reads: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: _pool(4, "read")
    )

    def shutdown(self) -> None:
        """Stop taking work; what runs finishes in its thread (nothing waits for it here)."""
        for pool in (self.builds, self.mail, self.reads):
            pool.shutdown(wait=False, cancel_futures=True)


async def run_in(
    pool: concurrent.futures.Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``asyncio.to_thread`` on a chosen pool instead of the loop's default one."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))
