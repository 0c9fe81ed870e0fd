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
import logging
import time
from collections.abc import AsyncIterator, Callable

from hgrun.errors import (
    ConflictError,
    ExitStatus,
    ForbiddenError,
    HgrunError,
    InputError,
    NotFoundError,
)
from hgrun.lifecycle import Outcome
from hgrun.models import (
    Release,
    Run,
    RunStatus,
    Scope,
    ScriptRecord,
    Trigger,
    TriggerKind,
)
from hgrun.schedule import Decision, decide, skip_reason
from hgrun.server.auth import RUN_TOKEN_PREFIX, new_token, parent_of
from hgrun.server.launcher import Launcher, Request
from hgrun.server.networks import check_network
from hgrun.server.recovery import process_gone
from hgrun.store import Store

# A script's decision lease on a shared store: held for one trigger (a replace waits for its
# victims); a holder that dies frees it at its expiry, or at once on this host.
SCRIPT_LEASE_TTL = 120.0
log = logging.getLogger("hgrun.scripts")

INPUT_VAR = "HOSTINGGURU_RUN_INPUT"
INPUT_VAR_SHORT = "HGRUN_RUN_INPUT"  # the same bytes, under hgrun's own prefix
MAX_INPUT = 64 * 1024
MAX_FANOUT_DEPTH = 5  # runs started by runs started by runs ...: a self-triggering script stops


class ScriptRunner:
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
        self._locks: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self.on_run_finished: list[Callable[[Run, ScriptRecord], None]] = []
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
        async with self._exclusive(script.id):
            counts = self.store.script_run_counts(script.id)
            queued = counts.get(RunStatus.QUEUED, 0)
            active = counts.get(RunStatus.STARTING, 0) + counts.get(RunStatus.RUNNING, 0)
            policy = script.spec.concurrency
            decision = decide(policy, active, queued, self.backlog)
            status = RunStatus.SKIPPED if decision is Decision.SKIP else RunStatus.QUEUED
            why = skip_reason(policy, active, queued, self.backlog)
            try:
                run = self._create(
                    script, release, trigger, input_json, slot, parent_run, detached, tty, status,
                    why, held=decision in (Decision.START, Decision.REPLACE),
                )  # fmt: skip
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
            name, owner = f"script:{script_id}", self.supervisor.owner
            while self.store.claim_lease(name, owner, SCRIPT_LEASE_TTL, process_gone) is not None:
                await asyncio.sleep(0.05)
            try:
                yield
            finally:
                with contextlib.suppress(HgrunError):
                    self.store.release_lease(name, owner)

    def _create(
        self,
        script: ScriptRecord,
        release: Release,
        trigger: Trigger,
        input_json: str | None,
        slot: float | None,
        parent_run: int | None,
        detached: bool,
        tty: bool,
        status: RunStatus,
        why: str | None,
        *,
        held: bool = False,
    ) -> Run:
        spec = script.spec
        env = {} if input_json is None else {INPUT_VAR: input_json, INPUT_VAR_SHORT: input_json}
        try:
            return self.launcher.create(
                Request(
                    workspace=script.workspace,
                    app_id=script.app_id,
                    release=release,
                    trigger=trigger,
                    process=spec.process,
                    shell=None if spec.process else spec.command,
                    size=spec.size,
                    timeout=spec.timeout,
                    env=env,
                    detached=detached,
                    tty=tty,
                    script=spec.name,
                    script_id=script.id,
                    slot=None if slot is None else _slot_key(slot),
                    parent_run=parent_run,
                    status=status,
                    why=why,
                    held=held,
                )
            )
        except InputError as e:
            e.message = f"script {spec.name}: {e.message}"  # the same error, saying where
            e.args = (e.message,)
            raise

    def fanout_depth(self, run_id: int) -> int:
        """How many runs started by runs lead to ``run_id``: 1 for a run a person, a token or
        cron started (at most MAX_FANOUT_DEPTH + 1 lookups)."""
        depth, parent = 0, run_id
        while parent is not None and depth <= MAX_FANOUT_DEPTH:
            depth += 1
            parent = self.store.run(parent).parent_run
        return depth

    async def _launch(self, run: Run, release: Release) -> Run:
        """Start a run of a script, with a token of its own for fan-out triggers."""
        token = new_token()
        # Replaced if there: a server that died launching this run may have made it already.
        self.store.add_token(
            run.workspace, f"{RUN_TOKEN_PREFIX}{run.id}", token, Scope.TRIGGER, replace=True
        )
        extra = {"HGRUN_TOKEN": token, "HGRUN_WORKSPACE": run.workspace}
        if self.server_url:
            extra["HGRUN_URL"] = self.server_url
        try:
            session = await self.launcher.start(run, release, extra_env=extra)
        except Exception:
            self._revoke_run_token(run)
            raise
        return session.run

    def _revoke_run_token(self, run: Run) -> None:
        if run.script_id is None:
            return  # only script runs get a token of their own
        try:
            self.store.revoke_token(run.workspace, f"{RUN_TOKEN_PREFIX}{run.id}")
        except NotFoundError:
            pass

    async def _finished(self, run: Run) -> None:
        """A run ended: revoke its token, start the next queued one, prune, notify."""
        if run.script_id is None:
            return
        try:
            script = self.store.script(run.script_id)
        except NotFoundError:
            return
        await self.start_queued(script)
        self.store.prune_script_history(script.id, script.spec.history)
        for listener in self.on_run_finished:
            listener(run, script)

    async def start_queued(self, script: ScriptRecord) -> None:
        """Start the oldest queued run when none of the script's runs is in flight."""
        async with self._exclusive(script.id):
            counts = self.store.script_run_counts(script.id)
            if counts.get(RunStatus.STARTING, 0) + counts.get(RunStatus.RUNNING, 0):
                return
            # A run that cannot start is recorded failed by the supervisor; take the next one.
            while (nxt := self.store.oldest_queued(script.id)) is not None:
                if self.supervisor.hold(nxt.id) is not None:
                    return  # another server on the store is launching it
                try:
                    await self._launch(nxt, self.store.release(nxt.release_id))
                    return
                except ConflictError as e:
                    # Another server on the store is starting it (its token or its lease is
                    # there already): it is not ours to fail.
                    log.info("run %s: started by another server: %s", nxt.id, e.message)
                    return
                except Exception as e:
                    log.warning("run %s: could not start from the queue: %s", nxt.id, e)
                    if self.store.run(nxt.id).status is RunStatus.QUEUED:
                        self.store.record_outcome(
                            nxt.id,
                            Outcome(RunStatus.FAILED, int(ExitStatus.CANNOT_RUN), str(e)),
                            finished=self.clock(),
                        )

    async def resume_queues(self) -> None:
        """Start what waits in each script's queue with nothing in flight: after a restart, and
        after each recovery pass (a run queued by a server that died is started here)."""
        for script_id in self.store.queued_script_ids():
            try:
                script = self.store.script(script_id)
            except NotFoundError:
                continue
            await self.start_queued(script)


def trigger_for(token_name: str, scope: Scope) -> Trigger:
    """Who started a run, from the token alone (never from the request, so no token can record
    its run as a person's): a run's own token is the run (fan-out); an admin token is the
    person who runs the server (user); any other token is one made for a program (api).
    """
    if parent_of(token_name) is not None:
        return Trigger(TriggerKind.RUN, token_name)
    return Trigger(TriggerKind.USER if scope is Scope.ADMIN else TriggerKind.API, token_name)


def _slot_key(slot: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))
