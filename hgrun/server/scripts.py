"""Scripts: named commands from the manifest, triggered by hand, by the API or by cron.

Every trigger goes through :meth:`ScriptRunner.trigger`, which applies the script's concurrency
policy under a per-script lock, so a storm of simultaneous triggers sees one consistent count of
runs in flight. Queued runs wait as rows with status ``queued`` and no container; when a run of
the script ends, the oldest one starts. The store's unique key on (script, cron slot) makes a
second run of one slot impossible, across restarts and server processes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence

from hgrun.errors import (
    ConflictError,
    ForbiddenError,
    HgrunError,
    InputError,
    NotFoundError,
)
from hgrun.models import (
    Concurrency,
    Release,
    Run,
    RunStatus,
    Scope,
    ScriptRecord,
    Trigger,
    TriggerKind,
)
from hgrun.schedule import Decision, decide, skip_reason
from hgrun.server.auth import parent_of
from hgrun.server.intake import Batch, Due, slot_key
from hgrun.server.launcher import Launcher
from hgrun.server.networks import check_network
from hgrun.server.recovery import process_gone
from hgrun.server.scriptlaunch import ScriptLaunches
from hgrun.store import NewRun, Store

# A script's decision lease on a shared store: held for one trigger (a replace waits for its
# victims); a holder that dies frees it at its expiry, or at once on this host.
SCRIPT_LEASE_TTL = 120.0
log = logging.getLogger("hgrun.scripts")

MAX_INPUT = 64 * 1024
MAX_FANOUT_DEPTH = 5  # runs started by runs started by runs ...: a self-triggering script stops


@dataclasses.dataclass(frozen=True)
class SlotRuns:
    """What :meth:`ScriptRunner.record_slots` did with a batch of due cron slots."""

    made: list[Run]
    """The runs recorded (started, queued or skipped by each script's policy), in slot order."""
    to_start: list[Run]
    """Those of ``made`` the policy starts: recorded ``starting``; :meth:`ScriptRunner.start`."""
    already: list[tuple[ScriptRecord, float]]
    """Slots that already had their run (another process, or an earlier try, made it)."""
    later: list[tuple[ScriptRecord, float]]
    """Slots left to :meth:`ScriptRunner.trigger`, one at a time: their script has a trigger in
    flight here, or concurrency ``replace`` (its runs in flight are stopped first)."""


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """Due cron slots made ready to record (:meth:`ScriptRunner.plan_slots`): all that does not
    depend on the instant of the record, which is left to :meth:`ScriptRunner.record_slots`."""

    due: list[tuple[ScriptRecord, float]]
    """Every slot asked for, ``(script, slot)``."""
    items: list[tuple[Due, NewRun | HgrunError]]
    """Those recorded in the batch, each with its run prepared (:meth:`ScriptRunner._prepare`)."""
    cursors: dict[int, float]
    """The scripts' cron cursors, written with the batch (a slot that cannot run moves it too)."""
    later: list[tuple[ScriptRecord, float]]
    """Slots left to :meth:`ScriptRunner.trigger` (see :attr:`SlotRuns.later`)."""


class _Locked:
    """A batch's answer for a script whose lock is held: decide one at a time, under it."""


LOCKED = _Locked()
Recorded = Run | None | HgrunError | _Locked | asyncio.Task[Run]
"""What :meth:`ScriptRunner._record` gives each :class:`Due`: the run made (a task launching
it, for an API trigger the policy starts), None (its slot already had its run), the error that
refused it, or :data:`LOCKED`."""


class ScriptRunner(ScriptLaunches):
    def __init__(
        self,
        store: Store,
        launcher: Launcher,
        *,
        backlog: int = 1000,
        server_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.supervisor = supervisor = launcher.supervisor
        self.backlog = backlog
        self.server_url = server_url
        self.clock = clock
        self.allowed_networks: frozenset[str] = frozenset()  # see hgrun.server.networks
        # How many recorded runs :meth:`start` hands the engine at once (made at the first
        # start): creating and attaching more containers at a time than the engine's own pool
        # serves only makes each wait.
        self.starts: asyncio.Semaphore | None = None
        self._locks: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self.on_run_finished: list[Callable[[Run, ScriptRecord], None]] = []
        # API triggers arriving together are decided and recorded in one transaction each turn
        # of the event loop (see hgrun.server.intake); the launches they start are held here.
        self.intake: Batch[Due, Recorded] = Batch(self._record_triggers)
        self._launches: set[asyncio.Task[Run]] = set()
        supervisor.on_finish.append(self._finished)
        # A run's own token dies with the run: revoked as its outcome is stored, not later.
        supervisor.on_outcome.append(self._revoke_run_token)

    async def trigger(
        self,
        script: ScriptRecord,
        trigger: Trigger,
        *,
        input_json: str | None = None,
        slot: float | None = None,
        parent_run: int | None = None,
        detached: bool = True,
        tty: bool = False,
    ) -> Run | None:
        """Apply the concurrency policy; the run made (started, queued or skipped).

        None when ``slot`` already has its run (another process or an earlier try made it).
        """
        if input_json is not None and len(input_json.encode()) > MAX_INPUT:
            raise InputError(f"the run input is over {MAX_INPUT // 1024} KB")
        release = self.store.latest_release(script.app_id)
        if release is None:
            raise NotFoundError("the app has no release yet", "run `hgrun deploy` first")
        # Before any run is made: a release may outlive the server's permission for its network.
        check_network(release.manifest.network, self.allowed_networks, f"script {script.name}")
        await self.launcher.users.check(
            release.manifest.user, release.image, f"script {script.name}"
        )
        if parent_run is not None and self.fanout_depth(parent_run) >= MAX_FANOUT_DEPTH:
            raise ForbiddenError(
                f"run {parent_run} is already {MAX_FANOUT_DEPTH} triggers deep: it may not"
                " trigger more runs",
                "a script that triggers scripts must stop somewhere; see its parent runs",
            )
        if slot is None and self._batched(script):
            made = await self.intake.submit(
                Due(script, release, trigger, input_json, None, parent_run, detached, tty)
            )
            if isinstance(made, HgrunError):
                raise made
            if isinstance(made, asyncio.Task):
                # The launch is the batch's (it goes on if this caller goes away).
                return await asyncio.shield(made)
            if isinstance(made, Run):
                return made
            # LOCKED: a decision for this script holds its lock; wait for it, as below.
        async with self._exclusive(script.id):
            queued, active = self._counts(script.id)
            policy = script.spec.concurrency
            decision = decide(policy, active, queued, self.backlog)
            if slot is None and decision in (Decision.START, Decision.REPLACE):
                self.supervisor.slots.check()  # the server's line is full: 503, nothing made
            status = RunStatus.SKIPPED if decision is Decision.SKIP else RunStatus.QUEUED
            why = skip_reason(policy, active, queued, self.backlog)
            due = Due(script, release, trigger, input_json, slot, parent_run, detached, tty)
            held = decision in (Decision.START, Decision.REPLACE)
            try:
                with _saying_where(script):
                    run = self.launcher.create(due.request(status, why, held))
            except ConflictError:
                if slot is None:
                    raise
                return None
            if decision is Decision.REPLACE:
                for victim in self.store.runs(
                    script.workspace,
                    app_id=script.app_id,
                    statuses=[RunStatus.STARTING, RunStatus.RUNNING],
                    script=script.spec.name,
                    limit=1000,
                ):
                    if victim.script_id == script.id:
                        await self.supervisor.stop(
                            victim.id, RunStatus.CANCELED, f"replaced by {run.label}"
                        )
                        # The replacement starts only once the victim is gone: never two.
                        session = self.supervisor.sessions.get(victim.id)
                        if session is not None:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(
                                    session.finished.wait(),
                                    self.supervisor.limits.stop_grace + 30,
                                )
            if decision in (Decision.START, Decision.REPLACE):
                return await self._launch(run, release)
            return run

    def _counts(
        self, script_id: int, read: Mapping[int, dict[RunStatus, int]] | None = None
    ) -> tuple[int, int]:
        """The script's runs (queued, active), from the store's counts (``read``: already
        read for a batch). A run its policy started that waits for one of the server's slots
        (``--max-runs``) is recorded queued but counts as active: the policy decided it runs,
        and it will."""
        if read is None:
            read = self.store.script_run_counts([script_id])
        counts = read.get(script_id, {})
        waiting = self.supervisor.slots.waiting_for_script(script_id)
        queued = counts.get(RunStatus.QUEUED, 0) - waiting
        active = counts.get(RunStatus.STARTING, 0) + counts.get(RunStatus.RUNNING, 0) + waiting
        return max(0, queued), active

    def _held(self, script_id: int) -> bool:
        """Whether a decision on the script waits on the engine under its lock."""
        lock = self._locks.get(script_id)  # (no lock made for a script that never had one)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def _exclusive(self, script_id: int) -> AsyncIterator[None]:
        """One decision at a time per script (counts, then a run made and launched): within
        this server by a lock; on a store shared by several servers (PostgreSQL) also by the
        store's lease ``script:ID``, so two triggers on two servers at once obey the script's
        concurrency policy as on one."""
        async with self._locks[script_id]:
            if self.store.backend != "postgresql":
                yield
                return
            name, owner = f"script:{script_id}", self.supervisor.leases.owner
            while self.store.claim_lease(name, owner, SCRIPT_LEASE_TTL, process_gone) is not None:
                await asyncio.sleep(0.05)
            try:
                yield
            finally:
                with contextlib.suppress(HgrunError):
                    self.store.release_lease(name, owner)

    def plan_slots(self, due: Sequence[tuple[ScriptRecord, float]]) -> SlotPlan:
        """Make due cron slots ``(script, slot)``, oldest slot first per script, ready for
        :meth:`record_slots`: each slot's release read, checked and its run prepared; a slot
        left to :meth:`trigger` (below) set aside. The scheduler plans a slot ahead of it, so
        that at the slot only the decisions and the insert remain.

        A slot that cannot run (no release, a network the server does not allow, a size the
        host cannot give) is logged and passed, as its cursor moves. On PostgreSQL, a store
        several servers share, every slot is left to :meth:`trigger` (each decision holds the
        script's lease there), as is one of concurrency ``replace`` or whose script has a
        decision in flight here.
        """
        releases: dict[int, Release | None] = {}
        items: list[Due] = []
        cursors: dict[int, float] = {}
        later: list[tuple[ScriptRecord, float]] = []
        shared = self.store.backend == "postgresql"
        for script, slot in due:
            spec = script.spec
            if shared or spec.concurrency is Concurrency.REPLACE or self._held(script.id):
                later.append((script, slot))
                continue
            stamp = slot_key(slot)
            if script.app_id not in releases:
                releases[script.app_id] = self.store.latest_release(script.app_id)
            release = releases[script.app_id]
            if release is None:
                log.warning("script %s: slot %s not run: the app has no release", spec.name, stamp)
                cursors[script.id] = max(slot, cursors.get(script.id, slot))
                continue
            try:
                check_network(
                    release.manifest.network, self.allowed_networks, f"script {spec.name}"
                )
                if not self.launcher.users.check_known(
                    release.manifest.user, release.image, f"script {spec.name}"
                ):
                    later.append((script, slot))  # the image's user needs an engine call
                    continue
            except HgrunError as e:
                log.warning("script %s: slot %s not run: %s", spec.name, stamp, e.message)
                cursors[script.id] = max(slot, cursors.get(script.id, slot))
                continue
            cursors[script.id] = max(slot, cursors.get(script.id, slot))
            items.append(Due(script, release, Trigger(TriggerKind.CRON, stamp), slot=slot))
        prepared = zip(items, self._prepare(items), strict=True)
        return SlotPlan(list(due), list(prepared), cursors, later)

    def record_slots(self, plan: SlotPlan) -> SlotRuns:
        """Record the runs of planned cron slots (:meth:`plan_slots`) with the scripts' cron
        cursors, in one store transaction: a thousand scripts due at once are recorded within
        milliseconds of their slot, whatever the engine then takes.

        Each script's concurrency policy decides as :meth:`trigger` does, counting the runs
        this batch makes; a run the policy starts is recorded ``starting`` (so it counts as
        active at once, its lease held here) and held out of recovery until :meth:`start`
        launches it. No ``await``: nothing else in this process runs between the counts and
        the insert.
        """
        items: list[Due] = []
        prepared: list[NewRun | HgrunError] = []
        cursors, later = dict(plan.cursors), list(plan.later)
        for item, new in plan.items:
            if self._held(item.script.id):  # a decision took the script's lock since the plan
                later.append((item.script, item.slot or 0.0))
                cursors.pop(item.script.id, None)  # moved by its trigger, slot by slot
                continue
            items.append(item)
            prepared.append(new)
        made: list[Run] = []
        already: list[tuple[ScriptRecord, float]] = []
        recorded = self._decide(items, prepared, cursors)
        for item, result in zip(items, recorded, strict=True):
            slot = item.slot or 0.0  # every item here has its slot
            if isinstance(result, Run):
                made.append(result)
            elif result is None:
                already.append((item.script, slot))
            elif isinstance(result, HgrunError):
                log.warning("script %s: slot %s not run: %s", item.script.spec.name,
                            slot_key(slot), result.message)  # fmt: skip
        to_start = [run for run in made if run.id in self.supervisor.pending]
        return SlotRuns(made=made, to_start=to_start, already=already, later=later)

    def _batched(self, script: ScriptRecord) -> bool:
        """Whether a trigger of ``script`` is decided in a batch (:meth:`_record`): not on a
        store several servers share (each decision holds the script's lease there), nor for
        concurrency ``replace`` (its runs in flight are stopped before the new one starts)."""
        return self.store.backend != "postgresql" and script.spec.concurrency is not (
            Concurrency.REPLACE
        )

    def _record_triggers(self, items: Sequence[Due]) -> list[Recorded]:
        """The intake's handler: :meth:`_record` the API triggers of one loop turn; a run the
        policy starts is launched here, by a task of the runner's (its caller awaits it)."""
        results: list[Recorded] = []
        for item, result in zip(items, self._record(items), strict=True):
            if isinstance(result, Run) and result.id in self.supervisor.pending:
                task = asyncio.create_task(self._start_recorded(result, item.release))
                self._launches.add(task)
                task.add_done_callback(_retrieved)
                task.add_done_callback(self._launches.discard)
                results.append(task)
            else:
                results.append(result)
        return results

    async def _start_recorded(self, run: Run, release: Release) -> Run:
        try:
            return await self._launch(run, release)
        finally:
            self.supervisor.pending.discard(run.id)

    def _record(self, items: Sequence[Due]) -> list[Run | None | HgrunError | _Locked]:
        """:meth:`_decide` the items, their runs prepared here: one result per item;
        :data:`LOCKED` for one whose script's lock is held (a decision waits on the engine under
        it), to be decided one at a time under that lock."""
        locked = [self._held(item.script.id) for item in items]
        free = [item for item, held in zip(items, locked, strict=True) if not held]
        decided = iter(self._decide(free, self._prepare(free)))
        return [LOCKED if held else next(decided) for held in locked]

    def _prepare(self, items: Sequence[Due]) -> list[NewRun | HgrunError]:
        """Each item's run as the launcher resolves and checks it, recorded ``starting`` with
        its lease; :meth:`_decide` changes that where the policy decides otherwise. An item
        whose request is refused (a size the host cannot give) gets its error."""
        prepared: list[NewRun | HgrunError] = []
        for item in items:
            try:
                with _saying_where(item.script):
                    request = item.request(RunStatus.STARTING, None, held=True)
                    prepared.append(self.launcher.prepare(request))
            except HgrunError as e:
                prepared.append(e)
        return prepared

    def _decide(
        self,
        items: Sequence[Due],
        prepared: Sequence[NewRun | HgrunError],
        cursors: Mapping[int, float] | None = None,
    ) -> list[Run | None | HgrunError]:
        """Decide each item by its script's concurrency policy and record the runs
        (``prepared``: :meth:`_prepare`), with ``cursors`` (script id -> cron cursor), in one
        store transaction: one result per item.

        Each script's runs are counted once, then the counts move with each decision of the
        batch, in order, as if the items had come one at a time. A run the policy starts is
        recorded ``starting`` (so it counts as active at once, its lease held here) and held
        out of recovery (``supervisor.pending``) until it is launched. An item whose run could
        not be prepared gets its error; one whose cron slot already has its run, None. No
        ``await``: nothing else in this process runs between the counts and the insert. The
        callers keep out the items whose script's lock is held. A store error fails the whole
        batch (raised).
        """
        counts: dict[int, dict[RunStatus, int]] = {}
        results: list[Run | None | HgrunError] = [None] * len(items)
        batch: list[tuple[int, NewRun]] = []
        started: list[bool] = []  # per run of the batch: its policy starts it (START)
        room = self.supervisor.slots.room()  # runs that start now; the rest wait in line
        read = self.store.script_run_counts(item.script.id for item in items)  # one query
        for i, (item, new) in enumerate(zip(items, prepared, strict=True)):
            script, spec = item.script, item.script.spec
            if isinstance(new, HgrunError):
                results[i] = new
                continue
            if script.id not in counts:
                queued, active = self._counts(script.id, read)
                counts[script.id] = {RunStatus.QUEUED: queued, RunStatus.STARTING: active}
            have = counts[script.id]
            queued = have.get(RunStatus.QUEUED, 0)
            active = have.get(RunStatus.STARTING, 0) + have.get(RunStatus.RUNNING, 0)
            decision = decide(spec.concurrency, active, queued, self.backlog)
            status = {
                Decision.START: RunStatus.STARTING,
                Decision.ENQUEUE: RunStatus.QUEUED,
            }.get(decision, RunStatus.SKIPPED)
            if status is RunStatus.STARTING and room <= 0:
                if item.slot is None:
                    try:
                        self.supervisor.slots.check()  # the line is full: 503, nothing made
                    except HgrunError as e:
                        results[i] = e
                        continue
                # Every server slot is taken (--max-runs): recorded queued, it waits in the
                # server's line once launched (still active for its policy).
                status = RunStatus.QUEUED
            elif status is RunStatus.STARTING:
                room -= 1
            if status is not RunStatus.STARTING:
                why = skip_reason(spec.concurrency, active, queued, self.backlog)
                new = dataclasses.replace(new, status=status, error=why, holder=None)
            if status is not RunStatus.SKIPPED:
                # A run its policy starts counts as active, even one recorded queued for
                # want of a server slot (--max-runs).
                counted = RunStatus.STARTING if decision is Decision.START else status
                have[counted] = have.get(counted, 0) + 1
            batch.append((i, new))
            started.append(decision is Decision.START)
        made = self.store.create_runs([new for _, new in batch], cursors=cursors)
        for (i, _), run in zip(batch, made, strict=True):
            results[i] = run
        # Recovery (here, every lease period) must not launch these itself: they are launched
        # by the caller (start(), or the intake's task), which knows them by this set: those
        # recorded starting, and those the policy started that wait for a slot, queued.
        self.supervisor.pending.update(
            run.id for run, go in zip(made, started, strict=True) if run is not None and go
        )
        return results

    def fanout_depth(self, run_id: int) -> int:
        """How many runs started by runs lead to ``run_id``: 1 for a run a person, a token or
        cron started (at most MAX_FANOUT_DEPTH + 1 lookups)."""
        depth, parent = 0, run_id
        while parent is not None and depth <= MAX_FANOUT_DEPTH:
            depth += 1
            parent = self.store.run(parent).parent_run
        return depth


def trigger_for(token_name: str, scope: Scope) -> Trigger:
    """Who started a run, from the token alone (never from the request, so no token can record
    its run as a person's): a run's own token is the run (fan-out); an admin token is the
    person who runs the server (user); any other token is one made for a program (api).
    """
    if parent_of(token_name) is not None:
        return Trigger(TriggerKind.RUN, token_name)
    return Trigger(TriggerKind.USER if scope is Scope.ADMIN else TriggerKind.API, token_name)


@contextlib.contextmanager
def _saying_where(script: ScriptRecord) -> Iterator[None]:
    """An InputError about a script's run names the script (the same error, saying where)."""
    try:
        yield
    except InputError as e:
        e.message = f"script {script.spec.name}: {e.message}"
        e.args = (e.message,)
        raise


def _retrieved(task: asyncio.Task[Run]) -> None:
    """A launch whose caller went away: its failure is the supervisor's to record (the run is
    failed), not an unretrieved exception for asyncio to log."""
    if not task.cancelled():
        task.exception()
