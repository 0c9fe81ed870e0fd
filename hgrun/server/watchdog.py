"""The supervisor's watchdog: what must happen on time even when nothing else happens.

Each beat (every ``tick`` seconds), every run held here is checked at ``now``
(:meth:`Supervisor.check`: its deadlines, from :func:`hgrun.lifecycle.due`, and output held in
memory too long); every third of a lease's life the leases of the runs held here are renewed
(a run recorded final elsewhere is stopped, one taken over is let go), and a
recovery pass (as often: a dead server's runs are taken up within seconds of its leases
expiring, at once when it was a process of this host) takes up runs whose holder died, removes
strays, then runs the supervisor's ``on_recover`` hooks (scripts resume queues). The clock is the
supervisor's and the sleep is injectable, so a test drives beats without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from hgrun.server.remote import count_remote_viewers

if TYPE_CHECKING:
    from hgrun.server.supervisor import Supervisor

log = logging.getLogger("hgrun.watchdog")


class Watchdog:
    def __init__(
        self,
        supervisor: Supervisor,
        tick: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.supervisor = supervisor
        self.tick = tick
        self.sleep = sleep
        self.beats = 0

    async def run(self) -> None:
        """Beat every ``tick`` seconds until cancelled; one failing step never stops it."""
        while True:
            await self.sleep(self.tick)
            await self.beat()

    async def beat(self) -> None:
        sup = self.supervisor
        self.beats += 1
        now = sup.clock()
        try:
            await count_remote_viewers(sup, now)
        except Exception:
            log.exception("reading the clients attached through other servers failed")
        for session in list(sup.sessions.values()):
            try:
                await sup.check(session, now)
            except Exception:
                log.exception("run %s: watchdog check failed", session.run.id)
        ttl = sup.leases.ttl
        if self.beats % max(1, round(ttl / 3 / self.tick)) != 0:
            return
        try:
            await sup.recoverer.renew()
        except Exception:
            log.exception("renewing the leases failed")
        try:
            await sup.recoverer.recover()
        except Exception:
            log.exception("the recovery pass failed")
        for hook in sup.on_recover:
            try:
                await hook()
            except Exception:
                log.exception("a recovery hook failed")
