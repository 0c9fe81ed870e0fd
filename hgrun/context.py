"""An app's build context: the files sent to the builder, as ``docker build`` would send them.

Which files those are (``.dockerignore`` read and matched with Docker's rules, and the walk) is
:mod:`hgrun.dockerignore`'s; this module hashes and tars them. The Dockerfile and
``.dockerignore`` are always sent, as the Docker CLI does (``build.TrimBuildFilesFromExcludes``).

The context is hashed and tarred deterministically, streaming file contents: the same files give
the same hash and the same tar bytes on any machine, whatever the mtimes, owners or umask.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from hgrun.dockerignore import (  # noqa: F401 - re-exported: the context's rules
    DOCKERIGNORE,
    is_ignored,
    load_dockerignore,
    parse_dockerignore,
    scan,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile  # imported where a tar is written

_CHUNK = 1024 * 1024

EntryKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class Entry:
    """One path of the context. ``relpath`` uses ``/`` and has no leading ``./``."""

    relpath: str
    path: str
    kind: EntryKind
    executable: bool = False
    target: str = ""  # a symlink's target, as stored in the link
    size: int = 0


def walk_context(
    root: str | os.PathLike[str],
    patterns: Sequence[str] | None = None,
    *,
    dockerfile: str = "Dockerfile",
) -> list[Entry]:
    """Return the context's entries under ``root``, sorted by path components, parents first.

    ``patterns`` defaults to ``root/.dockerignore``. What is listed, and what is not descended
    into, is :func:`hgrun.dockerignore.scan`'s. ``dockerfile`` and ``.dockerignore`` are never
    excluded.
    """
    entries: list[Entry] = []
    for rel, path, st in scan(root, patterns, dockerfile=dockerfile):
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(rel, path, "dir"))
        elif stat.S_ISREG(st.st_mode):
            executable = bool(st.st_mode & 0o111)
            entries.append(Entry(rel, path, "file", executable, size=st.st_size))
        else:
            entries.append(Entry(rel, path, "symlink", target=os.readlink(path)))
    entries.sort(key=lambda e: e.relpath.split("/"))
    return entries


def context_hash(
    root: str | os.PathLike[str],
    extra: bytes = b"",
    *,
    patterns: Sequence[str] | None = None,
    dockerfile: str = "Dockerfile",
) -> str:
    """Return the hex sha256 of the context: paths, kinds, exec bits, link targets, contents.

    Mtimes, owners and other mode bits are left out, as :func:`write_context_tar` leaves them
    out. ``extra`` (e.g. a generated Dockerfile) is hashed too. Contents are read in chunks,
    never whole. Each record is length-prefixed, so no two different contexts share an input.
    """
    h = hashlib.sha256(b"hgrun-context-v1\0")
    for entry in walk_context(root, patterns, dockerfile=dockerfile):
        if entry.kind == "file":
            h.update(f"F\0{entry.relpath}\0{int(entry.executable)}\0".encode())
            with open(entry.path, "rb") as f:
                # Hash the length read, not the stat size, so a file growing meanwhile
                # cannot make two contexts collide.
                size = 0
                content = hashlib.sha256()
                while chunk := f.read(_CHUNK):
                    content.update(chunk)
                    size += len(chunk)
            h.update(f"{size}\0".encode() + content.digest())
        elif entry.kind == "symlink":
            h.update(f"L\0{entry.relpath}\0{len(entry.target)}\0{entry.target}\0".encode())
        else:
            h.update(f"D\0{entry.relpath}\0".encode())
    h.update(f"X\0{len(extra)}\0".encode() + extra)
    return h.hexdigest()


def write_context_tar(
    root: str | os.PathLike[str],
    fileobj: IO[bytes],
    extra_files: Mapping[str, bytes] | None = None,
    *,
    patterns: Sequence[str] | None = None,
    dockerfile: str = "Dockerfile",
) -> None:
    """Write the context as an uncompressed tar stream to ``fileobj``.

    The tar is deterministic: entries sorted, parents before children, mtime 0, uid and gid 0,
    empty user and group names, mode 0755 for directories and executables and 0644 for other
    files. ``extra_files`` (``{relpath: content}``, e.g. a generated Dockerfile) are added as
    0644 files and replace a context file of the same path. ``fileobj`` need not be seekable;
    file contents are streamed, never held whole.
    """
    extra = {posixpath.normpath(k): v for k, v in (extra_files or {}).items()}
    entries = [
        e for e in walk_context(root, patterns, dockerfile=dockerfile) if e.relpath not in extra
    ]
    import tarfile  # here: `hgrun run`'s folder check hashes the context, never tars it

    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for item in _merge(entries, extra):
            if isinstance(item, Entry):
                _add_entry(tar, item)
            else:
                relpath, content = item
                info = _info(relpath, tarfile.REGTYPE, 0o644)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


def _merge(entries: list[Entry], extra: Mapping[str, bytes]) -> Iterable[Entry | tuple[str, bytes]]:
    items: list[tuple[list[str], Entry | tuple[str, bytes]]] = [
        (e.relpath.split("/"), e) for e in entries
    ]
    items += [(k.split("/"), (k, v)) for k, v in extra.items()]
    items.sort(key=lambda pair: pair[0])
    return [item for _, item in items]


def _add_entry(tar: tarfile.TarFile, entry: Entry) -> None:
    import tarfile

    if entry.kind == "dir":
        tar.addfile(_info(entry.relpath, tarfile.DIRTYPE, 0o755))
    elif entry.kind == "symlink":
        info = _info(entry.relpath, tarfile.SYMTYPE, 0o777)
        info.linkname = entry.target
        tar.addfile(info)
    else:
        info = _info(entry.relpath, tarfile.REGTYPE, 0o755 if entry.executable else 0o644)
        with open(entry.path, "rb") as f:
            # Size from the open file, so a file changed since the walk still gets a header
            # that matches what is read (tarfile copies exactly info.size bytes).
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
