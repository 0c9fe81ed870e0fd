"""The server's cap on runs in flight (``hgrun server --max-runs``) and the line beyond it.

A run holds a slot from the moment its launch begins (its container being made) to its outcome
(or until another server takes it over): every kind counts, attached and detached one-offs, API
and cron triggers, script fan-out, the dashboard's shell, and runs taken up after a restart. A run
that finds every slot taken waits in line, recorded ``queued`` with no container (the state a
script's backlog uses, :mod:`hgrun.server.scripts`), and is launched first in, first out as soon
as a slot frees. The line is bounded (``--max-queue``): beyond it a request is refused with a 503
(:class:`~hgrun.errors.BusyError`) before anything is recorded.

Nothing here is proportional to the line on the event loop: a slot freed launches the head of
the line (O(1)); a position is a binary search over the waiting tickets (O(log n)); a run leaving
the line from the middle (``hgrun stop``) is one ``del`` of a list item (a memmove in C). A
waiting run holds no lease and is not looked at by the watchdog: nothing is renewed or checked
while it waits. The cap is this server's: several servers on one store each have their own.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from hgrun.errors import BusyError, ConflictError, ExitStatus
from hgrun.lifecycle import CANCELED_EXIT, Outcome, Phase, Stop, due, outcome
from hgrun.models import Run, RunStatus
from hgrun.server.session import Finished, RunSession

if TYPE_CHECKING:
    from hgrun.server.supervisor import Supervisor

log = logging.getLogger("hgrun.slots")

DEFAULT_MAX_RUNS = 1000  # the scale hgrun is measured at (issue 11: 1,000 runs in flight)
DEFAULT_MAX_QUEUE = 1000


class Admission(enum.StrEnum):
    START = "start"  # a slot is free and no one waits: launch now
    QUEUE = "queue"  # wait in line for a slot
    REFUSE = "refuse"  # the line is full: refuse (503), record nothing


def admit(in_flight: int, waiting: int, max_runs: int, max_queue: int) -> Admission:
    """What a new run gets, given the runs holding a slot and those waiting for one.

    ``max_runs`` 0 is no cap. A free slot goes to a new run only when no one waits (first in,
    first out: a run never overtakes the line); ``max_queue`` runs may wait, no more.
    """
    if max_runs <= 0 or (in_flight < max_runs and waiting == 0):
        return Admission.START
    if waiting < max_queue:
        return Admission.QUEUE
    return Admission.REFUSE


Start = Callable[[], Coroutine[Any, Any, None]]


@dataclasses.dataclass
class Waiter:
    """A run waiting for a slot: its session (phase ``queued``: clients may attach to it) and
    what launches it once it has one."""

    run_id: int
    script_id: int | None
    ticket: int
    session: RunSession
    start: Start


class RunSlots:
    """The slots of one server and its line. ``spawn`` runs a waiter's launch as a task."""

    def __init__(
        self,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        *,
        max_runs: int = DEFAULT_MAX_RUNS,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.spawn = spawn
        self.max_runs = max_runs
        self.max_queue = max_queue
        self.holding: set[int] = set()
        self._line: collections.OrderedDict[int, Waiter] = collections.OrderedDict()
        self._tickets: list[int] = []  # the waiters' tickets, ascending (they are handed out so)
        self._next_ticket = 0
        self._per_script: collections.Counter[int] = collections.Counter()
        self.attached: set[int] = set()  # waiting runs with a terminal: their leases are kept

    # -- asking ------------------------------------------------------------------------------

    def decision(self) -> Admission:
        return admit(len(self.holding), len(self._line), self.max_runs, self.max_queue)

    def room(self) -> int:
        """How many new runs would start now (a large number when there is no cap)."""
        if self.max_runs <= 0:
            return 1 << 30
        if self._line:
            return 0
        return max(0, self.max_runs - len(self.holding))

    def check(self) -> None:
        """Raise :class:`BusyError` when a new run could neither start nor wait."""
        if self.decision() is Admission.REFUSE:
            raise self.busy()

    def busy(self) -> BusyError:
        return BusyError(
            f"the server is running its most runs at once (--max-runs {self.max_runs}) and"
            f" {len(self._line)} more wait (--max-queue {self.max_queue}): try again later"
        )

    def waiting(self, run_id: int) -> bool:
        return run_id in self._line

    def session(self, run_id: int) -> RunSession | None:
        """The session of a run waiting here (clients attach to it), else None."""
        waiter = self._line.get(run_id)
        return waiter.session if waiter is not None else None

    def position(self, run_id: int) -> int | None:
        """How many runs wait ahead of ``run_id`` (0: it is next), or None when it does not
        wait here."""
        waiter = self._line.get(run_id)
        if waiter is None:
            return None
        return bisect.bisect_left(self._tickets, waiter.ticket)

    def info(self, run_id: int) -> dict[str, int] | None:
        """What the API says of a run waiting here: ``{"position", "max_runs"}`` (position 0:
        next), else None."""
        position = self.position(run_id)
        if position is None:
            return None
        return {"position": position, "max_runs": self.max_runs}

    def waiting_for_script(self, script_id: int) -> int:
        """Runs of the script waiting here: its policy started them, so they count as active."""
        return self._per_script.get(script_id, 0)

    def __len__(self) -> int:
        return len(self._line)

    # -- taking and giving back --------------------------------------------------------------

    def take(self, run_id: int) -> bool:
        """Take a slot for ``run_id`` when :func:`admit` says start (True); else nothing."""
        if run_id in self.holding:
            return True
        if self.decision() is not Admission.START:
            return False
        self.holding.add(run_id)
        return True

    def hold(self, run_id: int) -> None:
        """Count a run found in flight (taken up after a restart): it holds a slot, even over
        the cap (it runs already)."""
        self.holding.add(run_id)

    def wait(
        self,
        run_id: int,
        script_id: int | None,
        session: RunSession,
        start: Start,
        *,
        force: bool = False,
    ) -> None:
        """Put the run at the end of the line; :class:`BusyError` when the line is full (unless
        ``force``: runs taken up after a restart were accepted once already)."""
        if not force and len(self._line) >= self.max_queue:
            raise self.busy()
        ticket = self._next_ticket
        self._next_ticket += 1
        self._line[run_id] = Waiter(run_id, script_id, ticket, session, start)
        self._tickets.append(ticket)
        if script_id is not None:
            self._per_script[script_id] += 1
        if not session.run.detached:
            self.attached.add(run_id)
        self._admit()  # a slot may have freed since the caller asked (a forced wait)

    def cancel(self, run_id: int) -> Waiter | None:
        """Take the run out of the line (stopped while it waited); the waiter, or None."""
        waiter = self._line.pop(run_id, None)
        if waiter is not None:
            self._forget(waiter)
        return waiter

    def release(self, run_id: int) -> None:
        """The run no longer holds a slot here (it ended, or another server took it over):
        the head of the line is launched."""
        self.holding.discard(run_id)
        self._admit()

    def _admit(self) -> None:
        while self._line and (self.max_runs <= 0 or len(self.holding) < self.max_runs):
            _, waiter = self._line.popitem(last=False)
            self._forget(waiter)
            self.holding.add(waiter.run_id)
            self.spawn(waiter.start())

    def _forget(self, waiter: Waiter) -> None:
        self.attached.discard(waiter.run_id)
        at = bisect.bisect_left(self._tickets, waiter.ticket)
        if at < len(self._tickets) and self._tickets[at] == waiter.ticket:
            del self._tickets[at]
        if waiter.script_id is not None:
            self._per_script[waiter.script_id] -= 1
            if self._per_script[waiter.script_id] <= 0:
                del self._per_script[waiter.script_id]


# -- the supervisor's side: a run put in line, launched from it, or ended in it ------------------


def enqueue(
    sup: Supervisor, run: Run, launch: Callable[[RunSession], Awaitable[None]]
) -> RunSession:
    """Put ``run`` (not launched: no slot was free) in ``sup``'s line; its session, in phase
    ``queued``, which clients may attach to. ``launch`` is called with that session once the run
    has a slot. A detached run lets its lease go while it waits (nothing is renewed for it; on
    a store shared by several servers, whichever launches it first claims it); an attached one
    keeps it, renewed with the runs in flight, so no other server's recovery records it lost.
    A full line records the run failed and raises :class:`BusyError` (callers that can refuse
    before recording check :meth:`RunSlots.check` first)."""
    if run.detached:
        sup.leases.release(run.id)
    session = RunSession(run=run, phase=Phase.QUEUED, last_activity=sup.clock())

    async def start() -> None:
        await _start_waited(sup, session, launch)

    try:
        sup.slots.wait(run.id, run.script_id, session, start)
    except BusyError as e:
        sup.leases.release(run.id)
        failed = Outcome(RunStatus.FAILED, int(ExitStatus.CANNOT_RUN), e.message)
        sup.store.record_outcome(run.id, failed, finished=sup.clock())
        raise
    return session


async def _start_waited(
    sup: Supervisor, session: RunSession, launch: Callable[[RunSession], Awaitable[None]]
) -> None:
    """A slot freed for the run at the head of the line: launch it, unless its client left and
    did not come back within the grace (then it is canceled without a container)."""
    run = session.run
    try:
        stop = due(run, session.presence, sup.limits, sup.clock()).stop
        if stop is not None:
            session.stop = stop
            await sup.finish(session)
            return
        await launch(session)
    except ConflictError as e:  # another server on the store launched it first
        log.info("%s: not launched here: %s", run.label, e.message)
        sup.slots.release(run.id)
        for subscriber in session.subscribers:
            subscriber.let_go(f"{run.label} is followed by another hgrun server now")
    except Exception:
        # The launch recorded the run failed (the engine could not make its container).
        log.exception("%s: launching it from the line failed", run.label)
        sup.slots.release(run.id)


async def stop_unlaunched(sup: Supervisor, run_id: int, status: RunStatus, why: str) -> Run:
    """Stop a run this server has not launched: one waiting in its line is taken out of it
    (canceled without a container, its clients told), anything else is only recorded final
    (a script's backlog; a run another server holds sees it at its next lease renewal)."""
    waiter = sup.slots.cancel(run_id)
    run = sup.store.run(run_id)
    if not run.status.finished:
        stop = Stop(status, why or f"{run.label} was stopped")
        result = outcome(run, exit_code=None, stop=stop)
        run = sup.store.record_outcome(run_id, result, finished=sup.clock())
    if waiter is not None:
        end_waiting(waiter.session, run)
        sup.leases.release(run_id)
        sup.outcome_stored(run)  # a script run's own token dies with it
        await sup.announce(run)  # its script's queue goes on
    return run


def end_waiting(session: RunSession, run: Run) -> None:
    """The run ended before it had a container (stopped while it waited): its session's
    clients get its exit status."""
    session.run = run
    session.phase = Phase.FINISHING
    code = run.exit_code if run.exit_code is not None else CANCELED_EXIT
    session.outcome = Finished(code, run.status, run.error)
    session.finished.set()
    session.changed.set()
    for subscriber in session.subscribers:
        subscriber.wake()
