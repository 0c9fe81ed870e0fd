"""Engine stops of the runs a supervisor holds, each a task of its own.

An engine's stop takes up to the run's grace (SIGTERM, then SIGKILL), longer on a busy dockerd:
whoever asks for a stop (the watchdog at a deadline, `hgrun stop`, a failed upload) must not
wait for it inline, or one slow stop delays every other run's deadline. So each stop runs as a
task held here (one per run at a time: a second request while one is in flight joins it),
bounded by the grace and :data:`STOP_SLACK`, its error logged and returned, never raised.
"""

from __future__ import annotations

import asyncio
import logging

from hgrun.engine import Engine
from hgrun.errors import EngineError, HgrunError
from hgrun.models import Run

log = logging.getLogger("hgrun.supervisor")

STOP_SLACK = 10.0  # seconds past its grace an engine stop is waited for

StopTask = asyncio.Task[HgrunError | None]


class Stopper:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tasks: dict[int, StopTask] = {}

    def stop(self, run: Run, container_id: str, grace: float) -> StopTask:
        """The run's container stopped with ``grace`` by a task (the one in flight, if any)."""
        task = self._tasks.get(run.id)
        if task is None or task.done():
            task = asyncio.create_task(self._stop(run, container_id, grace))
            self._tasks[run.id] = task
            task.add_done_callback(lambda _: self._forget(run.id, task))
        return task

    def _forget(self, run_id: int, task: StopTask) -> None:
        if self._tasks.get(run_id) is task:
            del self._tasks[run_id]

    def cancel(self) -> None:
        """Stop waiting for every stop in flight (their engine calls end in their threads)."""
        for task in list(self._tasks.values()):
            task.cancel()

    async def _stop(self, run: Run, container_id: str, grace: float) -> HgrunError | None:
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self.engine.stop, container_id, grace), grace + STOP_SLACK
            )
        except TimeoutError:
            log.warning("run %s: the engine's stop took over %.0f s", run.id, grace + STOP_SLACK)
            return EngineError(f"the engine did not stop {run.label} in time")
        except HgrunError as e:
            log.error("run %s: the engine's stop failed: %s", run.id, e.message)
            return e
        except Exception as e:
            log.exception("run %s: the engine's stop failed", run.id)
            return EngineError(f"cannot stop {run.label}: {e}")
        return None
