"""What reaches the container's ``/`` for a ``--file`` upload: ``tmp`` (1777) first, then the
checked entries under ``tmp/uploads``, counted against the cap."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hgrun.cli.uploads import plan, tar_stream
from hgrun.errors import PayloadTooLargeError
from hgrun.server.uploads import OUT_ROOT, Upload
from hgrun.uploadtar import UploadFilter


async def _through(raw: bytes, cap: int, chunk: int) -> bytes:
    checked = UploadFilter(cap, out_root=OUT_ROOT)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), chunk):
            if out := checked.feed(raw[i : i + chunk]):
                yield out
        yield checked.close()

    upload = Upload(cap)
    return b"".join([piece async for piece in upload.stream(body())])


@pytest.mark.parametrize("chunk", [1, 511, 4096, 1 << 20])
def test_uploads_land_under_tmp_made_1777(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_bytes(b"a" * 1000)
    Path("d").mkdir()
    Path("d", "n" * 150 + ".txt").write_bytes(b"long")
    out = asyncio.run(_through(b"".join(tar_stream(plan(["a.txt", "d"]))), 1 << 30, chunk))
    with tarfile.open(fileobj=io.BytesIO(out)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert next(iter(members)) == "tmp"
        assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
        assert members["tmp/uploads"].isdir()
        assert archive.extractfile("tmp/uploads/a.txt").read() == b"a" * 1000  # type: ignore[union-attr]
        assert archive.extractfile("tmp/uploads/d/" + "n" * 150 + ".txt").read() == b"long"  # type: ignore[union-attr]


def test_a_declared_size_over_the_cap_is_refused_before_reading() -> None:
    with pytest.raises(PayloadTooLargeError, match="cap of 1 MB"):
        Upload(1024**2).check(1024**2 + 1)
    Upload(1024**2).check(1024**2)  # at the cap: taken
