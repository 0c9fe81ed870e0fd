"""Runs' exits as the Docker engine announces them, some 10 ms before ``wait`` can say.

Docker emits a container's ``die`` event (with its exit code) once the output has been copied
out, then cleans up (unmounts, releases the network) and only then marks it stopped, which is
when ``POST /containers/{id}/wait`` answers and when ``inspect`` (which waits for the same lock)
answers too: 9 to 12 ms on the project's machine, for every run, between the command's end and
its exit code. ``docker run`` pays the same; the issue asks hgrun to do better.

:class:`Exits` keeps one ``GET /events`` stream open for runs' containers (those labelled
:data:`hgrun.engine.LABEL_RUN`), notes their ``start``, ``oom`` and ``die`` events, and hands a
container's end, as a :class:`ContainerState`, to whoever waits for it. It is a shortcut only:
while the stream is down, or when the ``die`` does not come within :data:`GRACE` of the caller
asking (a container that died before the stream was open, a command that closed its output and
runs on, an event the engine dropped), :meth:`Exits.ended` answers None and the caller asks
``wait`` as before. What it remembers is bounded (:data:`REMEMBERED` containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from hgrun.engine import LABEL_RUN, ContainerState, ContainerStatus

log = logging.getLogger("hgrun.engine")

GRACE = 0.05  # seconds the die event may trail the end of the output before wait is asked
REMEMBERED = 4096  # containers whose events are kept (a run's are taken when it ends)
RETRY = (0.5, 5.0)  # the stream's reconnection delay: first, and at most (doubling)
MAX_EVENT = 64 * 1024  # bytes of one event, at most (Docker's are a few hundred)
FILTERS = json.dumps(
    {"type": ["container"], "event": ["start", "oom", "die"], "label": [LABEL_RUN]},
    separators=(",", ":"),
)

# The stream: given the query, an async context giving the answer's status and its lines.
Open = Callable[[dict[str, str]], AbstractAsyncContextManager[tuple[int, AsyncIterator[str]]]]


class _Seen:
    __slots__ = ("started", "oom", "ended")

    def __init__(self) -> None:
        self.started: float | None = None
        self.oom = False
        self.ended: ContainerState | None = None


class Exits:
    """Containers' ends from the engine's event stream (see the module's docstring)."""

    def __init__(self, open_stream: Open) -> None:
        self._open = open_stream
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._waiting: dict[str, asyncio.Future[ContainerState | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()  # set while the stream is open and read

    def watch(self) -> None:
        """Open the stream if it is not (idempotent); call before containers start, from the
        event loop, so their ends are seen."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def ended(self, container_id: str) -> ContainerState | None:
        """The container's end, once its ``die`` event came (at once if it came already);
        None when the stream is down or the event does not come within :data:`GRACE`."""
        seen = self._seen.get(container_id)
        if seen is not None and seen.ended is not None:
            del self._seen[container_id]
            return seen.ended
        if not self._live.is_set():
            return None
        future: asyncio.Future[ContainerState | None] = asyncio.get_running_loop().create_future()
        self._waiting[container_id] = future
        try:
            return await asyncio.wait_for(future, GRACE)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(container_id, None)
            self._seen.pop(container_id, None)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the stream ---------------------------------------------------------------------------

    async def _follow(self) -> None:
        delay = RETRY[0]
        while True:
            try:
                async with self._open({"filters": FILTERS}) as (status, lines):
                    if status != 200:
                        raise OSError(f"the engine answered {status}")
                    self._live.set()
                    delay = RETRY[0]
                    async for line in lines:
                        if len(line) <= MAX_EVENT and line.strip():
                            self._note(line)
                raise OSError("the engine ended the stream")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of the stream: wait answers meanwhile
                log.info("the engine's event stream is down (%s); retrying in %.1fs", e, delay)
            finally:
                self._live.clear()
                for future in self._waiting.values():  # their die may be missed: ask wait
                    if not future.done():
                        future.set_result(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY[1])

    def _note(self, line: str) -> None:
        try:
            event = json.loads(line)
            action = event["Action"]
            container_id = str(event["Actor"]["ID"])
            attributes: dict[str, Any] = event["Actor"].get("Attributes") or {}
            when = int(event["timeNano"]) / 1e9
        except (ValueError, KeyError, TypeError):
            return  # not an event of the shape asked for: the wait path covers its run
        seen = self._seen.get(container_id)
        if seen is None:
            seen = self._seen[container_id] = _Seen()
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
        if action == "start":
            seen.started, seen.oom, seen.ended = when, False, None
        elif action == "oom":
            seen.oom = True
        elif action == "die":
            try:
                code = int(attributes.get("exitCode", ""))
            except ValueError:
                return
            seen.ended = ContainerState(
                id=container_id,
                labels={k: str(v) for k, v in attributes.items() if k.startswith("hgrun.")},
                status=ContainerStatus.EXITED,
                exit_code=code,
                oom_killed=seen.oom,
                error="",
                finished_at=when,
                started_at=seen.started,
            )
            future = self._waiting.get(container_id)
            if future is not None and not future.done():
                future.set_result(seen.ended)
