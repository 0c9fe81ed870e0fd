"""The swarm service of a run, as values: Engine API 1.41 bodies built and read, no I/O.

:func:`service_spec` is to the swarm engine what ``engine/dockerspec.py::create_args`` is to the
single-host one; the task-state readers turn Swarm's answers into the interface's words.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from hgrun.engine import (
    CAPABILITIES,
    DEFAULT_LOG_BYTES,
    LOG_DRIVER,
    ContainerSpec,
    ContainerStatus,
    log_options,
)
from hgrun.errors import InputError

API_VERSION = "1.41"
LABEL_ENDPOINT = "hgrun.endpoint"  # engine label: where this node's dockerd answers hgrun
LABEL_NODE = "hgrun.node"  # engine label: the node's name in hgrun (else its hostname)
LABEL_FRAMED = "hgrun.stdin"  # service label: "framed" when stdin goes through the shim's frames
SHIM_PATH = "/.hgrun-shim"
GO_FILE = ".hgrun-go"  # in "/": the shim starts the command once this appears
STOP_GRACE = 10.0

# Swarm task states (Engine API, TaskState) in the interface's three words. "orphaned" is a
# task whose node has been down too long; "remove" one being removed.
_TASK_STATUS = {
    "new": ContainerStatus.CREATED,
    "allocated": ContainerStatus.CREATED,
    "pending": ContainerStatus.CREATED,
    "assigned": ContainerStatus.CREATED,
    "accepted": ContainerStatus.CREATED,
    "preparing": ContainerStatus.CREATED,
    "ready": ContainerStatus.CREATED,
    "starting": ContainerStatus.CREATED,
    "running": ContainerStatus.RUNNING,
}
TASK_ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


def task_command(
    command: Sequence[str],
    entrypoint: Sequence[str] | None,
    image_cmd: Sequence[str] | None,
    *,
    framed: bool,
) -> list[str]:
    """The task's full argv: the shim, then what ``docker run IMAGE COMMAND`` would run.

    A service's ``Command`` replaces the image's ENTRYPOINT (Engine API, ContainerSpec), so the
    entrypoint is put back in front of the command here; an empty command is the image's CMD.
    """
    flags = ["-g", "-f"] if framed else ["-g"]
    argv = [*(entrypoint or ()), *(command or image_cmd or ())]
    return [SHIM_PATH, *flags, "--", *argv]


def service_spec(
    spec: ContainerSpec,
    *,
    name: str,
    argv: Sequence[str],
    shim: tuple[str, str],
    constraints: Sequence[str] = (),
    grace: float = STOP_GRACE,
    log_bytes: int = DEFAULT_LOG_BYTES,
) -> dict[str, Any]:
    """The ``POST /services/create`` body for one run (Engine API 1.41), from values only.

    A replicated job of one task that is never restarted; the run's labels on the service and
    on its container; the size as limits AND reservations (so Swarm never places a run on a
    node that cannot give its size); the single-host hardening wherever the 1.41 spec carries
    it (capabilities, init, pids limit, ulimits; never privileged, no mounts). ``shim`` is the
    swarm config (id, name) holding the shim, mounted read-only and executable. ``user`` is
    carried; ``read_only`` is refused: the shim waits for a file put in the task's ``/``.
    ``log_bytes``: the task's Docker log, as the single-host engine's (``log_options``).
    """
    if spec.read_only:
        raise InputError(
            "read_only: true is not supported by hgrun server --engine swarm",
            "remove read_only from hgrun.yaml, or run the app on a --engine docker server",
        )
    framed = spec.stdin and not spec.tty
    labels = {**spec.labels, **({LABEL_FRAMED: "framed"} if framed else {})}
    container: dict[str, Any] = {
        "Image": spec.image,
        "Labels": dict(labels),
        "Command": list(argv),
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Init": True,
        "TTY": spec.tty,
        # An attached run's input goes to stdin (as the shim's frames, without a TTY).
        "OpenStdin": spec.stdin,
        "CapabilityDrop": ["ALL"],
        "CapabilityAdd": list(CAPABILITIES),
        "Ulimits": [
            {"Name": "nofile", "Soft": 4096, "Hard": 4096},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "StopGracePeriod": int(grace * 1e9),
        "Configs": [
            {
                "File": {"Name": SHIM_PATH, "UID": "0", "GID": "0", "Mode": 0o555},
                "ConfigID": shim[0],
                "ConfigName": shim[1],
            }
        ],
    }
    if spec.working_dir:
        container["Dir"] = spec.working_dir
    if spec.user:
        container["User"] = spec.user
    nano_cpus = int(spec.size.cpus * 1e9)
    task: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": {
            "Limits": {
                "NanoCPUs": nano_cpus,
                "MemoryBytes": spec.size.memory,
                "Pids": spec.size.pids,
            },
            "Reservations": {"NanoCPUs": nano_cpus, "MemoryBytes": spec.size.memory},
        },
        "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
        "LogDriver": {"Name": LOG_DRIVER, "Options": log_options(log_bytes)},
        "Placement": {"Constraints": list(constraints)},
        "ForceUpdate": 0,
    }
    # A service cannot join network "none" ("network none not found"): no network at all gives
    # the task only its loopback, which is what "none" means. "host" and named (attachable
    # overlay) networks are joined by name.
    if spec.network and spec.network != "none":
        task["Networks"] = [{"Target": spec.network}]
    return {
        "Name": name,
        "Labels": dict(labels),
        "TaskTemplate": task,
        "Mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
    }


def frame(data: bytes) -> bytes:
    """One stdin frame for the shim: 4-byte big-endian length, then the bytes (b"" is EOF)."""
    return struct.pack(">I", len(data)) + data


def task_state(task: Mapping[str, Any]) -> tuple[ContainerStatus, int | None, str]:
    """A task's status as (three-word status, exit code, Swarm's error text)."""
    status = task.get("Status") or {}
    state = str(status.get("State", ""))
    container = status.get("ContainerStatus") or {}
    # Only a task that ran to its end has a real exit code; a running, shut down, rejected or
    # orphaned one reports 0 there.
    exit_code = container.get("ExitCode") if state in ("complete", "failed") else None
    word = _TASK_STATUS.get(state, ContainerStatus.EXITED)
    return word, exit_code, str(status.get("Err") or "")


def unplaceable(task: Mapping[str, Any]) -> str | None:
    """Swarm's reason when the scheduler finds no node for the task ("no suitable node ..")."""
    status = task.get("Status") or {}
    err = str(status.get("Err") or "")
    if status.get("State") == "pending" and "no suitable node" in err:
        return err
    return None
