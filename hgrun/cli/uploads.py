"""``--file`` uploads: a tar stream made as it is sent, so memory stays flat whatever the size."""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hgrun.errors import InputError

CHUNK = 1024 * 1024
UPLOAD_ROOT = "uploads"  # extracted under /tmp, so files land in /tmp/uploads


@dataclasses.dataclass(frozen=True)
class Upload:
    path: Path
    arcname: str
    size: int
    kind: str  # file | dir (the server refuses links: hgrun/uploadtar.py)
    mode: int
    target: str = ""


def plan(paths: Sequence[str]) -> list[Upload]:
    """Every entry to send, checked before anything starts: a missing path is an error here."""
    entries: list[Upload] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists() and not path.is_symlink():
            raise InputError(f"--file {raw}: no such file or directory", "check the path")
        name = path.resolve().name if raw in (".", "..") else path.name
        if name in seen:
            raise InputError(
                f"--file {raw}: another --file is also named {name!r}",
                "both would land at /tmp/uploads/" + name + "; rename one",
            )
        seen.add(name)
        if path.is_symlink():
            # A link named on the command line is taken for what it points to; links inside
            # a folder are refused (the server takes regular files and folders only).
            path = path.resolve()
            if not path.exists():
                raise InputError(f"--file {raw}: a link to nothing", "check the path")
        entries.append(_entry(path, f"{UPLOAD_ROOT}/{name}"))
        if path.is_dir() and not path.is_symlink():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for child in sorted(dirs) + sorted(files):
                    full = Path(folder) / child
                    rel = full.relative_to(path).as_posix()
                    if full.is_dir() and not full.is_symlink():
                        entries.append(_entry(full, f"{UPLOAD_ROOT}/{name}/{rel}"))
                    elif child in files:
                        entries.append(_entry(full, f"{UPLOAD_ROOT}/{name}/{rel}"))
    return entries


def _entry(path: Path, arcname: str) -> Upload:
    try:
        st = path.lstat()
    except OSError as e:
        raise InputError(f"--file {path}: {e.strerror}") from e
    if stat.S_ISLNK(st.st_mode):
        raise InputError(
            f"--file {path}: a symbolic link inside a folder",
            "uploads carry regular files and folders only: copy what it points to, or pass"
            " it with its own --file",
        )
    if stat.S_ISDIR(st.st_mode):
        return Upload(path, arcname, 0, "dir", 0o755)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"--file {path}: not a regular file, folder or link")
    if not os.access(path, os.R_OK):
        raise InputError(f"--file {path}: permission denied", "check the file's permissions")
    return Upload(path, arcname, st.st_size, "file", 0o755 if st.st_mode & 0o111 else 0o644)


def total_bytes(entries: Sequence[Upload]) -> int:
    return sum(e.size for e in entries)


def tar_size(entries: Sequence[Upload]) -> int:
    """The exact length of :func:`tar_stream`'s output, so it can go with a Content-Length."""
    size = len(_header(_ROOT)) + 2 * tarfile.BLOCKSIZE
    for entry in entries:
        size += len(_header(entry))
        if entry.kind == "file":
            size += -(-entry.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return size


@dataclasses.dataclass(frozen=True)
class FileSpan:
    """A file's contents in the tar stream: ``size`` bytes of ``path``, sent from the file
    itself (with ``sendfile``: no copy through this process)."""

    path: Path
    size: int


def tar_pieces(entries: Sequence[Upload]) -> Iterator[bytes | FileSpan]:
    """POSIX tar for ``entries``: headers and padding as bytes, file contents as spans."""
    yield _header(_ROOT)
    for entry in entries:
        yield _header(entry)
        if entry.kind != "file":
            continue
        yield FileSpan(entry.path, entry.size)
        if entry.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - entry.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def tar_stream(
    entries: Sequence[Upload], progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """:func:`tar_pieces` as bytes only: file contents read in 1 MiB chunks."""
    for piece in tar_pieces(entries):
        if isinstance(piece, bytes):
            yield piece
            continue
        sent = 0
        with open(piece.path, "rb") as f:
            while sent < piece.size and (chunk := f.read(min(CHUNK, piece.size - sent))):
                sent += len(chunk)
                if progress:
                    progress(len(chunk))
                yield chunk
        if sent < piece.size:
            raise shrank(piece.path)


def shrank(path: Path) -> InputError:
    return InputError(f"--file {path}: the file shrank while it was being sent")


# Like /tmp itself: writable by a run that is not root (the generated Dockerfiles run as uid
# 10001), sticky so one user cannot remove another's files.
_ROOT = Upload(Path("."), UPLOAD_ROOT, 0, "dir", 0o1777)


def _header(entry: Upload) -> bytes:
    info = tarfile.TarInfo(entry.arcname)
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.mtime = int(entry.path.lstat().st_mtime) if entry.path != Path(".") else 0
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    else:
        info.size = entry.size
    return info.tobuf(format=tarfile.PAX_FORMAT)
