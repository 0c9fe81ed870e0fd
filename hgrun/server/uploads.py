"""``--file`` uploads on their way into a container, extracted at its ``/`` (:func:`receive`,
for a run waiting in its container before the start).

The API checks the client's tar entry by entry (:class:`hgrun.uploadtar.UploadFilter`, with
entries written under :data:`OUT_ROOT`); here the stream gets a first entry ``tmp`` of mode 1777
(the mode of ``/tmp`` on any Linux system, FHS 3.0 section 3.18) and is counted against the
server's cap. Extracted at ``/``, ``/tmp/uploads`` is then made by the upload itself, in an image
with no ``/tmp`` (``FROM scratch``, distroless) as in any other: Docker would otherwise make a
missing parent 0755, or refuse a target path that does not exist.

A ``read_only: true`` app's run has a read-only root and a volume at ``/tmp``, and Docker puts
an archive into a read-only container only inside a volume: there the entries are written
under ``uploads`` and extracted at ``/tmp``, the first entry ``.`` (the volume's root, 1777).
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from hgrun.errors import ConflictError, EngineError, HgrunError, NotFoundError, PayloadTooLargeError
from hgrun.lifecycle import Phase, Stop
from hgrun.models import RunStatus

if TYPE_CHECKING:
    from hgrun.engine.span import SocketSpan
    from hgrun.server.supervisor import Supervisor

EXTRACT_AT = "/"
OUT_ROOT = "tmp/uploads"  # where the checked entries are written, relative to EXTRACT_AT


def _tmp_entry(name: str = "tmp") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o1777
    return info.tobuf(format=tarfile.USTAR_FORMAT)


TMP_ENTRY = _tmp_entry()


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an upload goes: the path the engine extracts at, the folder its checked entries
    are written under (relative to it), and the entry that makes ``/tmp`` first."""

    extract_at: str
    out_root: str
    lead: bytes


AT_ROOT = Target(EXTRACT_AT, OUT_ROOT, TMP_ENTRY)
IN_TMP = Target("/tmp", "uploads", _tmp_entry("."))


def target(read_only: bool) -> Target:
    """Where the upload of a run goes: into its ``/tmp`` volume when its root is read-only."""
    return IN_TMP if read_only else AT_ROOT


class Upload:
    """One upload on its way into a container: ``tmp`` first, then the checked tar, counted
    and capped at ``cap`` bytes as it arrives."""

    def __init__(self, cap: int, lead: bytes = TMP_ENTRY) -> None:
        self.cap = cap
        self.lead = lead
        self.received = 0

    def check(self, size: int) -> None:
        """Refuse ``size`` bytes (declared, or received so far) over the cap."""
        if size > self.cap:
            raise PayloadTooLargeError(
                f"the upload is over the server's cap of {self.cap // 1024**2} MB",
                "upload fewer or smaller files, or raise the server's --max-upload",
            )

    async def stream(
        self, body: AsyncIterator[bytes | memoryview | SocketSpan]
    ) -> AsyncIterator[bytes | memoryview | SocketSpan]:
        yield self.lead
        async for chunk in body:
            self.received += len(chunk)
            self.check(self.received)
            yield chunk


async def receive(
    supervisor: Supervisor,
    run_id: int,
    body: AsyncIterator[bytes | memoryview | SocketSpan],
    declared: int | None = None,
    target: Target = AT_ROOT,
) -> int:
    """Stream the checked tar (entries under ``target.out_root``) into the run's container
    before it starts; a ``declared`` size over the cap is refused. A failed upload fails the
    run. Returns the bytes received."""
    session = supervisor.sessions.get(run_id) or supervisor.slots.session(run_id)
    if session is None:
        raise NotFoundError(f"run {run_id} is not in flight")
    # Waiting for a slot (--max-runs), or its container being made: the upload waits for it.
    while session.phase in (Phase.QUEUED, Phase.CREATING, Phase.ATTACHING) and not session.stop:
        session.changed.clear()
        await session.changed.wait()
    if not session.run.uploads or session.uploads_done or session.uploading:
        raise NotFoundError(f"run {run_id} takes no upload", "pass --file when the run is created")
    if session.stop is not None or session.phase is not Phase.WAITING:
        raise ConflictError(f"{session.run.label} is {session.phase.value}: too late to upload")
    upload = Upload(supervisor.limits.max_upload, target.lead)
    session.uploading = True
    try:
        upload.check(declared or 0)
        if session.container_id is None:  # never: a waiting run has its container
            raise EngineError(f"{session.run.label} has no container")
        await supervisor.engine.put_archive(
            session.container_id, target.extract_at, upload.stream(body)
        )
    except Exception as e:
        why = e.message if isinstance(e, HgrunError) else str(e)
        await supervisor.request_stop(session, Stop(RunStatus.FAILED, f"the upload failed: {why}"))
        raise
    finally:
        session.uploading = False
    session.uploads_done = True
    if session.alone_since is not None:
        session.alone_since = supervisor.clock()  # the client's grace counts from now
    session.changed.set()
    return upload.received
