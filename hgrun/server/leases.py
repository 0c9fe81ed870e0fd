"""Run leases: which server holds each run in flight, so no run is pumped or finished twice.

Each run a supervisor holds carries a lease in the store (``run:<id>``, ``host:pid:nonce`` and
an expiry), renewed by its watchdog. Another server takes a run up only once the lease expired
(or its holder's process is gone); a holder that stalled past its lease finds, at its next store
write, that it lost it, and lets the run go.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable

from hgrun.store import Store
from hgrun.store.base import run_lease

LEASE_TTL = 15.0  # renewed every few seconds; a SIGKILLed holder frees it within this


class LeaseLost(Exception):
    """The run's lease was taken by another server (this one stalled past it): that server
    follows the run now, and this one must neither store its output nor finish it."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"taken over by hgrun server {holder}")
        self.holder = holder


def this_host() -> str:
    """This process's host in a lease holder's id: the host name, and the PID namespace when it
    can be read (two servers in containers of one name must not read each other's pids)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}~{namespace}"


def lease_owner(nonce: str) -> str:
    """A lease holder's id: ``host:pid:nonce``, ``host`` as :func:`this_host` says."""
    return f"{this_host()}:{os.getpid()}:{nonce}"


def process_gone(holder: str) -> bool:
    """Whether a lease holder (``host:pid:nonce``) is a process of this host (and PID namespace)
    that has died: its lease need not be waited out."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != this_host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Leases:
    """The leases of the runs one server holds."""

    def __init__(self, store: Store, clock: Callable[[], float], ttl: float = LEASE_TTL) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.owner = lease_owner(secrets.token_hex(4))
        self._until: dict[int, float] = {}  # run -> until when (by ``clock``) it surely is ours

    def hold(self, run_id: int) -> str | None:
        """Take or renew the run's lease; None when held here, else who holds it."""
        now = self.clock()
        holder = self.store.claim_lease(run_lease(run_id), self.owner, self.ttl, process_gone)
        if holder is None:
            self._until[run_id] = now + self.ttl
        else:
            self._until.pop(run_id, None)
        return holder

    async def taken(self, run_id: int, *, confirm: bool = False) -> str | None:
        """None while the run's lease is this server's, else who took it over.

        A lease renewed so recently that it cannot have run out is trusted without asking the
        store (a margin of a third of its life: the watchdog renews it that often); otherwise,
        or with ``confirm``, it is claimed again, from a worker thread.
        """
        if not confirm and self.clock() < self._until.get(run_id, 0.0) - self.ttl / 3:
            return None
        return await asyncio.to_thread(self.hold, run_id)

    def release(self, run_id: int) -> None:
        self._until.pop(run_id, None)
        self.store.release_lease(run_lease(run_id), self.owner)

    def forget(self, run_id: int) -> None:
        """The run is another server's now: its lease is not ours to release."""
        self._until.pop(run_id, None)
