"""The launcher: one way from a request (``hgrun run``, a script trigger) to a run.

Command resolution (a Procfile type, a script's command, or an argv), the size (asked, else the
release's manifest, else the default) checked against what the host can give, the timeout
(asked, else the default, capped by the server) and the network (the manifest's, else none) are
decided here once, for the API and the script runner alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from hgrun.errors import CapacityError, ConflictError, InputError
from hgrun.models import DEFAULT_SIZE, SIZES, Release, Run, RunStatus, Trigger
from hgrun.procfile import command_line_argv, resolve_command
from hgrun.server.users import UserPolicy
from hgrun.store import NewRun

if TYPE_CHECKING:
    from hgrun.server.session import RunSession
    from hgrun.server.supervisor import Supervisor
    from hgrun.store import Store

DEFAULT_NETWORK = "none"


def network_of(release: Release) -> str:
    """The network a release's runs join: its manifest's ``network``, else none."""
    return release.manifest.network or DEFAULT_NETWORK


def size_of(release: Release, asked: str | None) -> str:
    """The size a run gets: the one asked for, else the manifest's, else the default."""
    size = asked or release.manifest.size or DEFAULT_SIZE
    if size not in SIZES:
        raise InputError(f"unknown size {size!r}", f"sizes: {', '.join(SIZES)}")
    return size


def command_of(
    release: Release,
    *,
    argv: Sequence[str] | None = None,
    process: str | None = None,
    shell: str | None = None,
) -> tuple[list[str], str | None]:
    """The argv a run executes and the Procfile type it came from.

    ``argv`` (``hgrun run``): a Procfile type with its arguments, like ``heroku run worker``,
    or a command (:func:`hgrun.procfile.resolve_command`). ``process`` (a script's
    ``process:``): that type. ``shell`` (a script's ``command:``): a command line, run by a
    shell unless it is one plain word.
    """
    if argv is not None:
        if not argv:
            raise InputError("the command is empty", "give a command: `hgrun run CMD...`")
        resolved = resolve_command(release.procfile, argv)
        if isinstance(resolved.command, str):
            return ["sh", "-c", resolved.command], resolved.process
        return list(resolved.command), None
    if process is not None:
        if process not in release.procfile:
            raise InputError(
                f"the release has no process type {process!r}",
                f"process types: {', '.join(release.procfile) or 'none'}",
            )
        return ["sh", "-c", release.procfile[process]], process
    return command_line_argv(shell or "true"), None


@dataclasses.dataclass(frozen=True)
class Request:
    """What a caller asks for; the launcher fills in the rest."""

    workspace: str
    app_id: int
    release: Release
    trigger: Trigger
    argv: Sequence[str] | None = None
    process: str | None = None
    shell: str | None = None
    size: str | None = None
    timeout: float | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    detached: bool = True
    tty: bool = False
    uploads: bool = False
    # A script's run: its name and record id, cron slot, parent run, and the status it is made
    # with (queued or skipped by the concurrency policy, with why).
    script: str | None = None
    script_id: int | None = None
    slot: str | None = None
    parent_run: int | None = None
    status: RunStatus = RunStatus.STARTING
    why: str | None = None
    # Launched at once by this server: the run is made with its lease held here (a script run
    # left in its queue, or skipped, is not).
    held: bool = True


class Launcher:
    def __init__(
        self, store: Store, supervisor: Supervisor, *, host_cpus: int, host_memory: int
    ) -> None:
        self.store = store
        self.supervisor = supervisor
        self.host_cpus = host_cpus
        self.host_memory = host_memory
        # hgrun server --require-non-root turns it on; callers check before a run is made.
        self.users = UserPolicy(supervisor.engine.image_user, require_non_root=False)

    def check_capacity(self, size_name: str) -> None:
        size = SIZES[size_name]
        if size.memory > self.host_memory or size.cpus > self.host_cpus:
            raise CapacityError(
                f"size {size_name} ({size.memory_mb} MB, {size.cpus:g} CPU) is more than this"
                f" host has ({self.host_memory // 1024**2} MB, {self.host_cpus} CPU)",
                "pick a smaller --size",
            )

    def timeout(self, asked: float | None) -> float:
        cap = self.supervisor.limits.max_timeout
        return cap if asked is None else min(asked, cap)

    def create(self, request: Request) -> Run:
        """Record the run the request asks for (nothing starts yet)."""
        made = self.store.create_runs([self.prepare(request)])[0]
        if made is None:
            raise ConflictError(f"script {request.script} already has a run for {request.slot}")
        return made

    def prepare(self, request: Request) -> NewRun:
        """The run the request asks for, resolved and checked, to be recorded (by
        :meth:`create`, or with others in one transaction: ``Store.create_runs``)."""
        release = request.release
        command, process = command_of(
            release, argv=request.argv, process=request.process, shell=request.shell
        )
        size = size_of(release, request.size)
        self.check_capacity(size)
        return NewRun(
            workspace=request.workspace,
            app_id=request.app_id,
            release_id=release.id,
            command=command,
            process_type=process,
            tty=request.tty and not request.detached,
            detached=request.detached,
            uploads=request.uploads,
            size=size,
            timeout=self.timeout(request.timeout),
            env={**release.env, **request.env},
            trigger=request.trigger,
            script=request.script,
            slot=request.slot,
            parent_run=request.parent_run,
            status=request.status,
            script_id=request.script_id,
            error=request.why,
            holder=(
                (self.supervisor.leases.owner, self.supervisor.leases.ttl)
                if request.held and not request.status.finished
                else None
            ),
        )

    async def start(
        self, run: Run, release: Release, extra_env: Mapping[str, str] | None = None
    ) -> RunSession:
        """Launch a recorded run (see :meth:`Supervisor.launch`)."""
        return await self.supervisor.launch(run, release, network_of(release), extra_env)

    async def run(self, request: Request) -> RunSession:
        """Record and launch at once (``hgrun run``, the dashboard's shell).

        With every slot taken (``--max-runs``) the run is recorded ``queued`` and waits in line
        (the session returned is the waiting one); with the line full too, nothing is recorded
        and :class:`~hgrun.errors.BusyError` (a 503) is raised. No ``await`` between the check
        and the launch taking its slot or its place in line.
        """
        slots = self.supervisor.slots
        slots.check()
        if slots.room() <= 0:
            request = dataclasses.replace(request, status=RunStatus.QUEUED)
        run = self.create(request)
        return await self.start(run, request.release)
