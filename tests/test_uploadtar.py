"""The upload filter without sockets: hostile tars refused naming the entry, good ones re-emitted.

The archives are made with the standard library's tarfile (and by hand where tarfile will not),
fed to :class:`hgrun.uploadtar.UploadFilter` in pieces of every size, and what comes out is read
back with tarfile. The same tars go to a real server in tests/test_runs_uploads.py.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from hgrun.uploadtar import BLOCK, UploadError, UploadFilter

CAP = 1024 * 1024


def make_tar(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def run_filter(data: bytes, piece: int = 10**9, cap: int = CAP, **kw) -> bytes:
    upload = UploadFilter(cap, **kw)
    out = b"".join(upload.feed(data[i : i + piece]) for i in range(0, len(data), piece))
    return out + upload.close()


def read_back(data: bytes) -> list[tuple[str, str, int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [
            (
                m.name,
                "dir" if m.isdir() else "file",
                m.mode,
                tar.extractfile(m).read() if m.isfile() else b"",  # type: ignore[union-attr]
            )
            for m in tar.getmembers()
        ]


GOOD = make_tar(
    entry("uploads", kind=tarfile.DIRTYPE, mode=0o1777),
    entry("uploads/a.txt", b"hello\n"),
    entry("uploads/dir", kind=tarfile.DIRTYPE, mode=0o755),
    entry("uploads/dir/" + "long" * 40 + ".bin", bytes(range(256)) * 5, mode=0o755),
    entry("./uploads/dir/empty", b""),
    entry("uploads/sticky", b"x", mode=0o1644),
)


@pytest.mark.parametrize("piece", [1, 7, 511, 512, 513, 4096, 10**9])
def test_a_good_upload_is_re_emitted_whole_in_any_pieces(piece: int) -> None:
    assert read_back(run_filter(GOOD, piece)) == [
        ("uploads", "dir", 0o1777, b""),
        ("uploads/a.txt", "file", 0o644, b"hello\n"),
        ("uploads/dir", "dir", 0o755, b""),
        ("uploads/dir/" + "long" * 40 + ".bin", "file", 0o755, bytes(range(256)) * 5),
        ("uploads/dir/empty", "file", 0o644, b""),
        ("uploads/sticky", "file", 0o644, b"x"),  # the sticky bit masked off a file
    ]


def test_the_cli_s_own_stream_passes(tmp_path) -> None:
    from hgrun.cli.uploads import plan, tar_size, tar_stream

    (tmp_path / "f.txt").write_bytes(b"data" * 1000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").write_bytes(b"g")
    entries = plan([str(tmp_path / "f.txt"), str(tmp_path / "d")])
    data = b"".join(tar_stream(entries))
    assert len(data) == tar_size(entries)
    names = [name for name, *_ in read_back(run_filter(data, 1000))]
    assert names == ["uploads", "uploads/f.txt", "uploads/d", "uploads/d/g"]


def test_the_root_can_be_written_elsewhere() -> None:
    out = read_back(run_filter(GOOD, out_root="tmp/uploads"))
    assert [name for name, *_ in out][:2] == ["tmp/uploads", "tmp/uploads/a.txt"]


def _chr_device():
    return entry("uploads/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)


@pytest.mark.parametrize(
    "hostile, words",
    [
        (entry("uploads/../../etc/passwd", b"root::0:0::/:/bin/sh\n"), ["'..'", "etc/passwd"]),
        (entry("../../etc/passwd", b"x"), ["'..'"]),
        (entry("/etc/passwd", b"x"), ["absolute", "/etc/passwd"]),
        (entry("elsewhere/x", b"x"), ["outside uploads/"]),
        (entry("uploads/ln", kind=tarfile.SYMTYPE, linkname="/etc/shadow"), ["symbolic link"]),
        (entry("uploads/hard", kind=tarfile.LNKTYPE, linkname="uploads/a"), ["hard link"]),
        (_chr_device(), ["character device", "uploads/null"]),
        (entry("uploads/blk", kind=tarfile.BLKTYPE), ["block device"]),
        (entry("uploads/fifo", kind=tarfile.FIFOTYPE), ["FIFO"]),
        (entry("uploads/suid", b"#!/bin/sh\n", mode=0o4755), ["setuid", "uploads/suid"]),
        (entry("uploads/sgid", b"x", mode=0o2755), ["setgid"]),
    ],
    ids=[
        "dotdot",
        "dotdot-top",
        "absolute",
        "outside",
        "symlink",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
        "setuid",
        "setgid",
    ],
)
def test_hostile_entries_are_refused_naming_them(hostile, words: list[str]) -> None:
    data = make_tar(entry("uploads/ok", b"fine"), hostile)
    with pytest.raises(UploadError) as caught:
        run_filter(data, 100)
    for word in words:
        assert word in caught.value.message


def test_a_huge_declared_size_is_refused_before_any_content() -> None:
    info, _ = entry("uploads/huge")
    info.size = 10 * 1024**4  # 10 TB, in GNU base-256 (over what 11 octal digits hold)
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    upload = UploadFilter(CAP)
    with pytest.raises(UploadError, match="declares 10995116277760 bytes"):
        upload.feed(header)


def test_a_pax_size_over_the_cap_is_refused() -> None:
    info, _ = entry("uploads/huge")
    info.pax_headers = {"size": str(5 * CAP)}
    with pytest.raises(UploadError, match="declares"):
        run_filter(info.tobuf(format=tarfile.PAX_FORMAT))


@pytest.mark.parametrize("cut", [100, BLOCK, BLOCK + 3, 2 * BLOCK + 1])
def test_a_truncated_stream_is_refused(cut: int) -> None:
    data = make_tar(entry("uploads/a.txt", b"x" * 2000))
    with pytest.raises(UploadError, match="ended before the end"):
        run_filter(data[: cut + BLOCK])  # pax header + part of the file's


def test_a_stream_without_its_end_marker_is_refused() -> None:
    data = make_tar(entry("uploads/a.txt", b"x" * 10))
    with pytest.raises(UploadError, match="ended before the end"):
        run_filter(data[: 2 * BLOCK])  # the header and the content, no end marker


def test_bytes_over_the_cap_are_refused_even_after_the_end() -> None:
    data = make_tar(entry("uploads/a.txt", b"x"))
    with pytest.raises(UploadError, match="over the server's cap"):
        run_filter(data + bytes(CAP), cap=CAP)


def test_not_a_tar_is_refused() -> None:
    with pytest.raises(UploadError, match="checksum"):
        run_filter(b"PK\x03\x04" + bytes(2000))


def test_an_empty_upload_is_just_the_root() -> None:
    assert read_back(run_filter(bytes(2 * BLOCK))) == [("uploads", "dir", 0o1777, b"")]


def test_the_cli_follows_a_named_link_and_refuses_one_inside_a_folder(tmp_path) -> None:
    from hgrun.cli.uploads import plan
    from hgrun.errors import InputError

    (tmp_path / "real.txt").write_text("x")
    (tmp_path / "named").symlink_to(tmp_path / "real.txt")
    (entry_,) = plan([str(tmp_path / "named")])
    assert (entry_.arcname, entry_.kind, entry_.size) == ("uploads/named", "file", 1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inner").symlink_to(tmp_path / "real.txt")
    with pytest.raises(InputError, match="symbolic link inside a folder"):
        plan([str(tmp_path / "d")])


def _with_passes(data: bytes, piece: int, cap: int = CAP) -> bytes:
    """The filter run as the server runs it with spans: whatever content_ahead allows goes on
    verbatim (as a splice would move it), the rest through feed."""
    upload = UploadFilter(cap)
    out, pos = bytearray(), 0
    while pos < len(data):
        if ahead := min(upload.content_ahead(), len(data) - pos):
            out += data[pos : pos + ahead]
            upload.passed(ahead)
            pos += ahead
            continue
        out += upload.feed(data[pos : pos + piece])
        pos += piece
    return bytes(out + upload.close())


@pytest.mark.parametrize("piece", [1, 511, 512, 4096, 10**9])
def test_content_passed_unread_gives_the_same_stream(piece: int) -> None:
    big = make_tar(entry("uploads/a.bin", bytes(range(256)) * 3000), entry("uploads/b", b"x"))
    for data in (GOOD, big):
        assert _with_passes(data, piece) == run_filter(data, piece)


def test_content_ahead_stops_at_the_cap_and_the_entry_s_last_byte() -> None:
    upload = UploadFilter(10_000)
    upload.feed(make_tar(entry("uploads/a", b"a" * 6000))[:512])
    assert upload.content_ahead() == 5999  # the last byte ends the entry, through feed
    upload.passed(5999)
    assert upload.content_ahead() == 0
    with pytest.raises(ValueError, match="1 bytes passed, 0 may"):
        upload.passed(1)
    data = make_tar(entry("uploads/a", b"a" * 2500), entry("uploads/b", b"b" * 2500))
    capped = UploadFilter(6000)  # a's header, content and padding (3072), b's header: 3584
    capped.feed(data[:512])
    capped.passed(capped.content_ahead())
    capped.feed(data[512 + 2499 : 3584])  # a's last byte and padding, b's header
    assert capped.received == 3584
    assert capped.content_ahead() == 6000 - 3584 < 2499  # not past the cap
    capped.passed(capped.content_ahead())
    with pytest.raises(UploadError, match="over the server's cap"):
        capped.feed(b"b")
