"""A run's container as Docker's create call takes it: what :mod:`hgrun.engine.docker` sends.

:func:`create_args` is to the Docker engine what :mod:`hgrun.engine.swarmspec` is to the swarm
engine: values in, the engine's arguments out, no I/O.
"""

from __future__ import annotations

from typing import Any

import docker.types

from hgrun.engine import CAPABILITIES, DEFAULT_LOG_BYTES, LOG_DRIVER, ContainerSpec, log_options

TMP = "/tmp"  # a read-only run's writable folder


def create_args(
    spec: ContainerSpec, log_bytes: int = DEFAULT_LOG_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """docker-py ``create_container`` kwargs and ``create_host_config`` kwargs for a run.

    Docker's own log of the output is its "local" driver (:data:`LOG_DRIVER`), :data:`LOG_FILES`
    files of ``log_bytes`` each (counted as Docker writes it: a few dozen bytes more per piece of
    output than the output itself).

    Hardening after OWASP's Docker cheat sheet: all capabilities dropped but the few an ordinary
    command needs, no-new-privileges, a pids limit, memory without swap (memswap == memory),
    CPU quota, an init process (docker-init, i.e. tini) that reaps zombies and forwards signals,
    no core dumps. Never privileged, no devices, no bind mounts (so never the Docker socket).

    ``read_only``: the root filesystem read-only and ``/tmp`` an anonymous volume, removed with
    the container (``remove`` passes ``v``). Not a tmpfs: Docker mounts a tmpfs only when the
    container starts, so an upload put into ``/tmp`` of the created container would be hidden
    under it, and it refuses an archive put anywhere else of a read-only root ("container rootfs
    is marked read-only"); a volume is mounted for the put too (moby daemon/archive.go).
    """
    host_config: dict[str, Any] = {
        "network_mode": spec.network,
        "init": True,
        "cap_drop": ["ALL"],
        "cap_add": list(CAPABILITIES),
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": spec.size.pids,
        "mem_limit": spec.size.memory,
        "memswap_limit": spec.size.memory,
        "nano_cpus": int(spec.size.cpus * 1e9),
        "ulimits": [
            {"Name": "nofile", "Soft": 4096, "Hard": 4096},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "privileged": False,
        # Docker's own copy of the output (read only at recovery) bounded too: the store keeps it.
        "log_config": {
            "type": LOG_DRIVER,
            "config": log_options(log_bytes),
        },
    }
    if spec.read_only:
        host_config["read_only"] = True
        host_config["mounts"] = [docker.types.Mount(TMP, None, type="volume")]
    create: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "environment": dict(spec.env),
        "labels": dict(spec.labels),
        "tty": spec.tty,
        # docker-py sets StdinOnce along with OpenStdin when detach is false: the container's
        # stdin then closes when the attached stdin closes, which is how EOF reaches a piped
        # command, and also when the server's connection drops. With detach true (keep_stdin)
        # StdinOnce is false: stdin stays open across attaches, and a session outlives a
        # restart of the server. With a TTY, Docker never closes stdin on detach either way
        # (moby container/stream/attach.go: `if cfg.CloseStdin && !cfg.TTY`).
        "stdin_open": spec.stdin,
        "detach": spec.keep_stdin,
        "working_dir": spec.working_dir,
    }
    if spec.user:
        create["user"] = spec.user
    return create, host_config
