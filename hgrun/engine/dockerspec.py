"""A run's container as Docker's create call takes it: what :mod:`hgrun.engine.docker` sends.

:func:`create_args` is to the Docker engine what :mod:`hgrun.engine.swarmspec` is to the swarm
engine: values in, the engine's arguments out, no I/O.
"""

from __future__ import annotations

import io
import tarfile
import time
from typing import Any

import docker.types

from hgrun.engine import CAPABILITIES, DEFAULT_LOG_BYTES, LOG_DRIVER, ContainerSpec, log_options

TMP = "/tmp"  # a read-only run's writable folder

# What Docker writes into /etc/hosts of a container on network "none" (moby libnetwork's
# default hosts file), for the containers made without libnetwork (see :func:`create_args`).
HOSTS = (
    b"127.0.0.1\tlocalhost\n"
    b"::1\tlocalhost ip6-localhost ip6-loopback\n"
    b"fe00::0\tip6-localnet\n"
    b"ff00::0\tip6-mcastprefix\n"
    b"ff02::1\tip6-allnodes\n"
    b"ff02::2\tip6-allrouters\n"
)


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

    Network ``none`` (the default): the container is made with Docker's ``NetworkDisabled``
    rather than through libnetwork's "none" driver. It still gets a network namespace of its
    own with only the loopback up (runc brings it up in a new namespace), as with ``docker run
    --network none``; what libnetwork costs besides is a sandbox per container and a prestart
    hook that re-executes dockerd at each start, about half the engine's CPU for a start
    (measured: 300 creates and starts 8 at a time, 34-42 s through libnetwork, 16-20 s without,
    host CPU 65-81 s against 30-38 s). The files libnetwork would have mounted, /etc/hosts
    (``localhost``) and /etc/hostname, are put into the created container instead
    (:func:`name_files`). Not for a read-only root, which refuses that put: such a run goes
    through libnetwork as before.
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
    if without_libnetwork(spec):
        create["network_disabled"] = True
    return create, host_config


def without_libnetwork(spec: ContainerSpec) -> bool:
    """Whether the run's container is made with ``NetworkDisabled`` (see :func:`create_args`):
    then :func:`name_files` must be put into it before it starts."""
    return spec.network == "none" and not spec.read_only


def name_files(container_id: str) -> bytes:
    """A tar of /etc/hosts and /etc/hostname as Docker writes them for network "none", to put
    at "/" of a container made without libnetwork. No entry for /etc itself: an existing one
    keeps its owner and mode, a missing one is made (0755) by Docker's unpacking."""
    hostname = f"{container_id[:12]}\n".encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("etc/hosts", HOSTS), ("etc/hostname", hostname)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
