"""Domain values shared by the CLI, the server and the parsers. No I/O here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

# The domain's words are hgrun.vocabulary's (cheap for the CLI's start); re-exported here.
from hgrun.vocabulary import (  # noqa: F401 - re-exported
    ACTIVE_STATUSES,
    APP_NAME,
    DEFAULT_SIZE,
    ENV_NAME,
    FINAL_STATUSES,
    SIZES,
    Catchup,
    Concurrency,
    RunStatus,
    Scope,
    Size,
    TriggerKind,
)


@dataclasses.dataclass(frozen=True)
class Notify:
    """Where to report a script's outcome."""

    webhook: str | None = None
    email: tuple[str, ...] = ()
    on: tuple[str, ...] = ("failure",)  # any of: failure, success, timeout


@dataclasses.dataclass(frozen=True)
class Script:
    """A named command in the manifest (``command`` or a Procfile ``process`` type)."""

    name: str
    command: str | None = None
    process: str | None = None
    timeout: float = 15 * 60.0
    size: str | None = None
    concurrency: Concurrency = Concurrency.QUEUE
    cron: str | None = None
    catchup: Catchup = Catchup.SKIP
    starting_deadline: float | None = None
    timezone: str = "UTC"
    history: int = 100
    notify: Notify = dataclasses.field(default_factory=Notify)


@dataclasses.dataclass(frozen=True)
class Build:
    """How an app's image is built: its own Dockerfile, or one generated for a detected stack."""

    dockerfile: str | None = None
    stack: str | None = None  # one of hgrun.stacks.ORDER, when named in the manifest
    base: str | None = None
    builder: str | None = None  # the image of the build stage (compiled stacks, php)
    network: str | None = None  # the build's network; None: the app's network


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    build: Build = dataclasses.field(default_factory=Build)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    size: str = DEFAULT_SIZE
    network: str = "none"
    # The user runs are made as (docker run --user), else the image's own; a read-only root
    # filesystem with a writable /tmp.
    user: str | None = None
    read_only: bool = False
    scripts: Sequence[Script] = ()
    # Swarm placement constraints of every run of the app ("node.labels.pool==batch"); one
    # Docker host has nowhere else to place a run and ignores them.
    placement: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class Token:
    id: int
    workspace: str
    name: str
    scope: Scope
    script: str | None
    created: float
    revoked: float | None = None


@dataclasses.dataclass(frozen=True)
class App:
    id: int
    workspace: str
    name: str
    created: float


@dataclasses.dataclass(frozen=True)
class Release:
    id: int
    app_id: int
    version: int
    image: str
    context_hash: str
    procfile: Mapping[str, str]
    manifest: Manifest
    env: Mapping[str, str]
    description: str
    created: float
    actor: str = ""
    """Who made it: the name of the token behind the deploy, config change or rollback."""


@dataclasses.dataclass(frozen=True)
class Trigger:
    """Who or what started a run: a user's token, an API token, a cron slot or a parent run."""

    kind: TriggerKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What a run is asked to be: where, what, how, and who or what started it. A recorded
    :class:`Run` is one with its state; ``hgrun.store.NewRun`` one yet to be recorded."""

    workspace: str
    app_id: int
    release_id: int
    command: Sequence[str]
    process_type: str | None
    tty: bool
    detached: bool
    uploads: bool
    size: str
    timeout: float
    env: Mapping[str, str]
    trigger: Trigger
    script: str | None = None
    slot: str | None = None
    parent_run: int | None = None
    script_id: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run(RunSpec):
    """A recorded run: its spec, and where it is in the lifecycle (hgrun/lifecycle.py)."""

    id: int
    status: RunStatus
    exit_code: int | None
    oom: bool
    container_id: str | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    node: str | None = None  # the host the run was placed on, for an engine of several hosts
    output_bytes: int = 0  # of output stored (the store keeps the newest, up to its cap)
    output_dropped: int = 0  # of the oldest output dropped past the cap

    @property
    def label(self) -> str:
        """How logs and tables name the run, like Heroku's ``run.1234``."""
        return f"run.{self.id}"

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else None
        return None if end is None else max(0.0, end - self.started)


@dataclasses.dataclass(frozen=True)
class OutputChunk:
    """One stored piece of a run's output: ``cursor`` orders all chunks of a store (an app's
    log is read by cursor), ``stream`` is 1 (stdout) or 2 (stderr), ``ts`` epoch seconds.

    When the store's cap dropped a run's oldest output, its first chunk is a marker (stream 2,
    ``offset`` None) saying how much; the kept chunks' offsets still count from the run's
    first byte, so a reader resuming at a byte offset stays exact."""

    cursor: int
    run_id: int
    stream: int
    ts: float
    data: bytes
    # Where ``data`` starts in the run's output (stdout and stderr together, from the run's
    # first byte, dropped bytes included); None for the marker of dropped output.
    offset: int | None = None


def script_to_json(script: Script) -> dict[str, object]:
    return dataclasses.asdict(script)


def script_from_json(data: Mapping[str, object]) -> Script:
    """The inverse of :func:`script_to_json` (for specs the store kept)."""
    fields = dict(data)
    notify = fields.pop("notify", None) or {}
    if isinstance(notify, Mapping):
        fields["notify"] = Notify(
            webhook=notify.get("webhook"),  # type: ignore[arg-type]
            email=tuple(notify.get("email") or ()),  # type: ignore[arg-type]
            on=tuple(notify.get("on") or ("failure",)),  # type: ignore[arg-type]
        )
    fields["concurrency"] = Concurrency(str(fields.get("concurrency", "queue")))
    fields["catchup"] = Catchup(str(fields.get("catchup", "skip")))
    known = {f.name for f in dataclasses.fields(Script)}
    return Script(**{k: v for k, v in fields.items() if k in known})  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class ScriptRecord:
    """A script as registered on the server: the manifest's spec plus scheduling state."""

    id: int
    workspace: str
    app_id: int
    spec: Script
    cursor: float | None
    active: bool

    @property
    def name(self) -> str:
        return self.spec.name


def manifest_to_json(manifest: Manifest) -> dict[str, object]:
    """The manifest as the store keeps it in a release (plain JSON values)."""
    return {
        "name": manifest.name,
        "build": dataclasses.asdict(manifest.build),
        "env": dict(manifest.env),
        "size": manifest.size,
        "network": manifest.network,
        "user": manifest.user,
        "read_only": manifest.read_only,
        "scripts": [script_to_json(script) for script in manifest.scripts],
        "placement": list(manifest.placement),
    }


def manifest_from_json(data: Mapping[str, object]) -> Manifest:
    """The inverse of :func:`manifest_to_json`. Keys a release stored before a field existed
    take the field's default, as :func:`hgrun.manifest.parse_manifest` gives it."""
    build = data.get("build")
    known_build = {f.name for f in dataclasses.fields(Build)}
    env = data.get("env")
    scripts = data.get("scripts")
    placement = data.get("placement")
    return Manifest(
        name=str(data.get("name") or ""),
        build=Build(**{k: v for k, v in build.items() if k in known_build})  # type: ignore[arg-type]
        if isinstance(build, Mapping)
        else Build(),
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, Mapping) else {},
        size=str(data.get("size") or DEFAULT_SIZE),
        network=str(data.get("network") or "none"),
        user=str(data["user"]) if data.get("user") else None,
        read_only=data.get("read_only") is True,
        scripts=tuple(script_from_json(s) for s in scripts if isinstance(s, Mapping))
        if isinstance(scripts, list)
        else (),
        placement=tuple(str(p) for p in placement) if isinstance(placement, list) else (),
    )
