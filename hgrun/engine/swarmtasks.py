"""Where a swarm run is: its service's task, the node it landed on, its container there.

A part of :class:`hgrun.engine.swarm.SwarmEngine` of its own (the engine inherits it and
provides the attributes): waiting for a service's one task to be placed and running, and
finding (once, then remembered) the node client and container id every per-run call goes to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hgrun.engine.docker import _translate
from hgrun.engine.swarmnodes import NodeClient, Nodes
from hgrun.engine.swarmspec import LABEL_FRAMED, TASK_ENDED, task_state, unplaceable
from hgrun.errors import EngineError, NotFoundError

# Services per task query when listing: their ids go in the query string (25 bytes each).
TASKS_AT_ONCE = 100


@dataclasses.dataclass
class _Task:
    node: NodeClient
    container_id: str
    framed: bool


class SwarmTasks:
    """The swarm engine's side of its services' tasks; the engine provides the attributes."""

    _api: Any  # docker.APIClient of the manager
    nodes: Nodes
    constraints: Sequence[str]
    placement_timeout: float
    _tasks: dict[str, _Task]
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]

    def _placed(self, service_id: str) -> _Task:
        """Poll the task until its container runs; raise with Swarm's reason if it cannot."""
        started = self._clock()
        pause = 0.02
        while True:
            task = self._current_task(service_id)
            if task is not None:
                state = (task.get("Status") or {}).get("State")
                reason = unplaceable(task)
                if state == "running":
                    return self._task(service_id, task)
                if state in TASK_ENDED:
                    _word, code, err = task_state(task)
                    raise EngineError(
                        f"swarm could not run the task: {err or state}"
                        + (f" (exit {code})" if code else "")
                    )
                if reason and self._clock() - started > self.placement_timeout:
                    raise EngineError(
                        f"swarm could not place the run: {reason}",
                        "a smaller --size, or free or add nodes; placement constraints:"
                        f" {', '.join(self.constraints) or 'none'}",
                    )
            if self._clock() - started > max(self.placement_timeout, 30.0) * 2:
                raise EngineError("swarm did not start the task in time")
            self._sleep(pause)
            pause = min(pause * 1.5, 0.25)

    def _current_task(self, service_id: str) -> dict[str, Any] | None:
        with _translate(f"cannot read the task of service {service_id[:12]}"):
            tasks: list[dict[str, Any]] = list(self._api.tasks(filters={"service": service_id}))
        if not tasks:
            return None
        # One task per service (a job of one, never restarted): the newest, to be sure.
        return max(tasks, key=_created)

    def _newest_tasks(self, service_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Service id -> its newest task (one task per service: a job of one, never restarted;
        the newest, to be sure), None before it has one, for many services in few calls to the
        manager. A service removed meanwhile is left out (the manager refuses a query naming
        it: its batch is asked again one service at a time)."""
        newest: dict[str, dict[str, Any] | None] = {}
        batches = [list(service_ids[at : at + TASKS_AT_ONCE])
                   for at in range(0, len(service_ids), TASKS_AT_ONCE)]  # fmt: skip
        while batches:
            some = batches.pop()
            try:
                with _translate("cannot list the tasks of swarm services"):
                    tasks = list(self._api.tasks(filters={"service": some}))
            except NotFoundError:
                if len(some) > 1:
                    batches += [[one] for one in some]
                continue
            newest.update((service, None) for service in some)
            for task in tasks:
                service = str(task.get("ServiceID", ""))
                known = newest.get(service)
                if known is None or _created(task) > _created(known):
                    newest[service] = task
        return newest

    def _task(self, service_id: str, task: Mapping[str, Any] | None = None) -> _Task:
        known = self._tasks.get(service_id)
        if known is not None:
            return known
        if task is None:
            try:
                task = self._current_task(service_id)
            except NotFoundError:
                task = None
        if task is None:
            raise NotFoundError(f"service {service_id[:12]} has no task")
        container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
        if not container or not task.get("NodeID"):
            raise NotFoundError(f"service {service_id[:12]} has no container yet")
        labels = (task.get("Spec") or {}).get("ContainerSpec", {}).get("Labels") or {}
        found = _Task(
            node=self.nodes.client(str(task["NodeID"])),
            container_id=str(container),
            framed=labels.get(LABEL_FRAMED) == "framed",
        )
        self._tasks[service_id] = found
        return found


def _created(task: Mapping[str, Any]) -> str:
    return str(task.get("CreatedAt", ""))
