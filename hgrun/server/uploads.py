"""``--file`` uploads on their way into a container, extracted at its ``/``.

The API checks the client's tar entry by entry (:class:`hgrun.uploadtar.UploadFilter`, with
entries written under :data:`OUT_ROOT`); here the stream gets a first entry ``tmp`` of mode 1777
(the mode of ``/tmp`` on any Linux system, FHS 3.0 section 3.18) and is counted against the
server's cap. Extracted at ``/``, ``/tmp/uploads`` is then made by the upload itself, in an image
with no ``/tmp`` (``FROM scratch``, distroless) as in any other: Docker would otherwise make a
missing parent 0755, or refuse a target path that does not exist.
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator

from hgrun.errors import PayloadTooLargeError

EXTRACT_AT = "/"
OUT_ROOT = "tmp/uploads"  # where the checked entries are written, relative to EXTRACT_AT


def _tmp_entry() -> bytes:
    info = tarfile.TarInfo("tmp")
    info.type = tarfile.DIRTYPE
    info.mode = 0o1777
    return info.tobuf(format=tarfile.USTAR_FORMAT)


TMP_ENTRY = _tmp_entry()


class Upload:
    """One upload on its way into a container: ``tmp`` first, then the checked tar, counted
    and capped at ``cap`` bytes as it arrives."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.received = 0

    def check(self, size: int) -> None:
        """Refuse ``size`` bytes (declared, or received so far) over the cap."""
        if size > self.cap:
            raise PayloadTooLargeError(
                f"the upload is over the server's cap of {self.cap // 1024**2} MB",
                "upload fewer or smaller files, or raise the server's --max-upload",
            )

    async def stream(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        yield TMP_ENTRY
        async for chunk in body:
            self.received += len(chunk)
            self.check(self.received)
            yield chunk
