"""How a script's recorded runs are launched, and its queue handed on as runs end.

A part of :class:`~hgrun.server.scripts.ScriptRunner` of its own (the runner decides and records
runs; this launches them): each launched run gets a token of its own for fan-out triggers,
revoked with its outcome; when a run of a script ends, the oldest of its queued runs starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from hgrun.errors import ConflictError, ExitStatus, NotFoundError
from hgrun.lifecycle import Outcome
from hgrun.models import Release, Run, RunStatus, Scope, ScriptRecord
from hgrun.server.auth import RUN_TOKEN_PREFIX, new_token
from hgrun.server.launcher import Launcher
from hgrun.server.supervisor import Supervisor
from hgrun.store import Store

log = logging.getLogger("hgrun.scripts")


class ScriptLaunches:
    """The runner's launches and queue hand-off; the runner provides the attributes."""

    store: Store
    launcher: Launcher
    supervisor: Supervisor
    server_url: str
    clock: Callable[[], float]
    starts: asyncio.Semaphore | None
    on_run_finished: list[Callable[[Run, ScriptRecord], None]]

    def _counts(
        self, script_id: int, read: Mapping[int, dict[RunStatus, int]] | None = None
    ) -> tuple[int, int]:
        raise NotImplementedError

    def _exclusive(self, script_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def start(self, runs: Sequence[Run]) -> None:
        """Launch runs :meth:`record_slots` recorded ``starting``, in order, at most
        ``self.starts`` at a time. A run that cannot start is recorded failed by the supervisor
        (and logged here); one taken up meanwhile (by another server) is left to it."""

        if self.starts is None:
            self.starts = asyncio.Semaphore(self.supervisor.engine.concurrency)
        starts = self.starts

        async def one(run: Run) -> None:
            async with starts:
                try:
                    await self._launch(run, self.store.release(run.release_id))
                except ConflictError as e:
                    log.info("run %s: not started here: %s", run.id, e.message)
                except Exception as e:
                    log.warning("run %s: could not start: %s", run.id, e)
                finally:
                    self.supervisor.pending.discard(run.id)

        try:
            await asyncio.gather(*(one(run) for run in runs))
        finally:  # cancelled (a shutdown): what did not start is recovery's at the next start
            self.supervisor.pending.difference_update(run.id for run in runs)

    async def _launch(self, run: Run, release: Release) -> Run:
        """Start a run of a script, with a token of its own for fan-out triggers."""
        if run.id in self.supervisor.sessions or self.supervisor.slots.waiting(run.id):
            # Launched or in the server's line already: a new token would replace its own.
            raise ConflictError(f"{run.label} is already in flight")
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
        # A run that cannot start is recorded failed by the supervisor; take the next one.
        while (nxt := await self._take_queued(script)) is not None:
            try:
                await self._launch(nxt, self.store.release(nxt.release_id))
                return
            except ConflictError as e:
                # Another server on the store is starting it (its token or its lease is there
                # already): it is not ours to fail.
                log.info("run %s: started by another server: %s", nxt.id, e.message)
                return
            except Exception as e:
                log.warning("run %s: could not start from the queue: %s", nxt.id, e)
                if not self.store.run(nxt.id).status.finished:
                    self.store.record_outcome(
                        nxt.id,
                        Outcome(RunStatus.FAILED, int(ExitStatus.CANNOT_RUN), str(e)),
                        finished=self.clock(),
                    )
            finally:
                self.supervisor.pending.discard(nxt.id)

    async def _take_queued(self, script: ScriptRecord) -> Run | None:
        """The script's oldest queued run, now ``starting`` (so it counts as in flight), its
        lease held here and out of recovery (``supervisor.pending``) until it is launched; None
        when one is in flight, none waits, or another server holds it.

        Decided under the script's lock, which is not held while the engine makes the
        container: the triggers meanwhile see the run in flight and are decided in their
        batch, not one at a time behind the launch."""
        async with self._exclusive(script.id):
            if self._counts(script.id)[1]:
                return None
            nxt = self.store.oldest_queued(script.id)
            if nxt is None or self.supervisor.hold(nxt.id) is not None:
                return None
            nxt = self.store.mark_starting(nxt.id)
            self.supervisor.pending.add(nxt.id)
            return nxt

    async def resume_queues(self) -> None:
        """Start what waits in each script's queue with nothing in flight: after a restart, and
        after each recovery pass (a run queued by a server that died is started here)."""
        for script_id in self.store.queued_script_ids():
            try:
                script = self.store.script(script_id)
            except NotFoundError:
                continue
            await self.start_queued(script)
