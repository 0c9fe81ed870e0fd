"""The engine interface: what the server needs from a container engine.

Kept small on purpose so that a Docker Swarm (replicated-job) or Kubernetes Job backend fits the
same shape: output comes out as ``(stream, bytes)`` pairs (an engine's own framing, such as
Docker's multiplexed stream, stays inside it), container states are three words, and the engine
says how many blocking calls it serves at once. Only ``engine/`` imports ``docker``.
Every engine failure is an :class:`hgrun.errors.EngineError` (or :class:`NotFoundError` for a
container that is gone).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Protocol

from hgrun.models import Size

if TYPE_CHECKING:
    from hgrun.engine.span import SocketSpan

LABEL_RUN = "hgrun.run"
LABEL_APP = "hgrun.app"
LABEL_WORKSPACE = "hgrun.workspace"
LABEL_INSTANCE = "hgrun.instance"

# The streams of a run's output, numbered as the Kubernetes channel protocol and Docker do.
STDOUT = 1
STDERR = 2

# Capabilities an ordinary app command needs, from Docker's default set: files owned by other
# users (CHOWN, DAC_OVERRIDE, FOWNER, FSETID), dropping to another user (SETUID, SETGID),
# signalling its own children (KILL) and binding ports below 1024 (NET_BIND_SERVICE).
# Docker's defaults also grant MKNOD, NET_RAW, SETPCAP, SETFCAP, SYS_CHROOT and AUDIT_WRITE:
# those are left out.
# Docker's own log of a run (both engines), read at recovery (hgrun.rejoin): its "local" driver,
# not json-file. json-file writes each piece of output as a JSON object, every control byte as a
# six-byte escape, and that encoding was half of dockerd's CPU for a run's output: measured here on
# the raw attach stream (curl), 100 MB took 2.0 s with json-file and 1.05 s with local for zero
# bytes, 4.96 s against 3.56 s for lines of text. local writes the bytes as they are (protobuf,
# a few dozen bytes more per piece). Its rotated files are left uncompressed (gzip would cost
# dockerd CPU at each rotation and again at each replay). The size of each of its two files: the
# server passes its store's cap per run, so Docker's log holds at least what the store keeps, and
# stays bounded.
LOG_DRIVER = "local"
DEFAULT_LOG_BYTES = 100 * 1024 * 1024
LOG_FILES = 2


def log_options(log_bytes: int) -> dict[str, str]:
    """The log driver's options for a run's log of ``log_bytes`` per file."""
    return {"max-size": str(log_bytes), "max-file": str(LOG_FILES), "compress": "false"}


CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETUID",
    "SETGID",
    "KILL",
    "NET_BIND_SERVICE",
)


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    cpus: int
    memory: int
    version: str


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create a run's container; built from values, no I/O."""

    image: str
    command: Sequence[str]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    size: Size
    network: str = "none"
    tty: bool = False
    stdin: bool = False
    # The container's stdin stays open whatever happens to the connections attached to it (a
    # session that outlives its server); otherwise closing the attached stdin is its EOF.
    keep_stdin: bool = False
    working_dir: str | None = None
    placement: Sequence[str] = ()  # node constraints, for an engine of several hosts
    user: str | None = None  # docker run --user; None: the image's own
    # A read-only root filesystem, and a writable /tmp of the container's own (removed with it).
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class BuildLimits:
    """What one image build may use: memory (bytes, no swap), CPUs, and wall time (seconds),
    past which it is stopped (``hgrun server --build-memory/--build-cpus/--build-timeout``)."""

    memory: int = 2048 * 1024**2
    cpus: float = 2.0
    timeout: float = 30 * 60.0


DEFAULT_BUILD_LIMITS = BuildLimits()


class ContainerStatus(enum.StrEnum):
    """Where a run's container is, in words every engine can map its own states onto."""

    CREATED = "created"  # made, never started
    RUNNING = "running"  # started and not ended (paused or restarting counts)
    EXITED = "exited"  # ended; its exit code and its output can still be read


@dataclasses.dataclass(frozen=True)
class ContainerState:
    id: str
    labels: Mapping[str, str]
    status: ContainerStatus
    exit_code: int | None
    oom_killed: bool
    error: str
    finished_at: float | None = None  # epoch seconds, once the container has exited
    started_at: float | None = None
    # Only what a listing tells (id, labels, status): ``inspect`` it for the rest.
    partial: bool = False

    @property
    def running(self) -> bool:
        return self.status is ContainerStatus.RUNNING


class AttachStream(Protocol):
    """A container's attached stdio."""

    async def read(self) -> tuple[int, bytes] | None:
        """The next piece of output as ``(STDOUT or STDERR, bytes)``; None once it ended."""
        ...

    async def write(self, data: bytes) -> None: ...
    async def close_stdin(self) -> None: ...
    async def close(self) -> None: ...


class Engine(Protocol):
    """A container engine. Plain methods block (the server runs them in its engine pool of
    ``concurrency`` threads); ``attach``, ``put_archive`` and ``logs`` are asyncio."""

    concurrency: int

    def info(self) -> EngineInfo: ...
    def image_id(self, image: str) -> str | None: ...
    def image_user(self, image: str) -> str: ...
    def build(
        self,
        context: IO[bytes],
        *,
        tag: str,
        labels: Mapping[str, str],
        network: str,
        dockerfile: str = "Dockerfile",
        limits: BuildLimits = DEFAULT_BUILD_LIMITS,
    ) -> Iterator[str]: ...
    def create(self, spec: ContainerSpec) -> str: ...
    def node(self, container_id: str) -> str | None:
        """The name of the host a container was placed on; None for an engine of one host."""
        ...

    async def attach(
        self, container_id: str, *, tty: bool, stdin: bool, logs: bool, running: bool = False
    ) -> AttachStream:
        """Attach to the container's stdio: before its start, so no output is lost (as ``docker
        run`` does), or, ``running``, to one started before (a run taken up, another server's,
        a warm one): then EngineError when it has ended (or went) meanwhile, rather than a
        stream that never ends (Docker never ends an attach to a container that had ended)."""
        ...

    async def put_archive(
        self, container_id: str, path: str, data: AsyncIterator[bytes | memoryview | SocketSpan]
    ) -> None:
        """Extract the tar ``data`` into the container at ``path``. A piece of ``data`` may be
        a view of a buffer its source reuses for the next: use or copy it before asking."""
        ...

    def logs(self, container_id: str, *, tty: bool) -> AsyncIterator[tuple[int, bytes]]: ...
    def start(self, container_id: str) -> None: ...
    def resize(self, container_id: str, width: int, height: int) -> None: ...
    def wait(self, container_id: str) -> int: ...
    async def ended(self, container_id: str) -> ContainerState | None:
        """The state of a container whose output ended, as soon as the engine announces its
        exit, when it can say it sooner than ``wait``; None: ask ``wait``."""
        ...

    def inspect(self, container_id: str) -> ContainerState: ...
    def stop(self, container_id: str, grace: float) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def list(self, labels: Mapping[str, str]) -> list[ContainerState]:
        """The containers carrying ``labels``, in as few calls to the engine as it allows,
        whatever their number: a state may be ``partial`` (then ``inspect`` it for the rest)."""
        ...
