"""An app's build context: the files sent to the builder, as ``docker build`` would send them.

``.dockerignore`` is read and matched with Docker's rules (moby ``patternmatcher`` and the CLI's
``dockerignore.ReadAll``): patterns are Go ``filepath.Match`` globs plus ``**``, anchored at the
context root; a pattern that matches a directory excludes everything below it; ``!`` re-includes;
the last matching pattern wins. The Dockerfile and ``.dockerignore`` are always sent, as the
Docker CLI does (``build.TrimBuildFilesFromExcludes``).

The context is hashed and tarred deterministically, streaming file contents: the same files give
the same hash and the same tar bytes on any machine, whatever the mtimes, owners or umask.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal

DOCKERIGNORE = ".dockerignore"
_CHUNK = 1024 * 1024
_BOM = "\ufeff"
# Characters that mean nothing special in filepath.Match but do in a regexp (moby
# patternmatcher: shouldEscape).
_REGEX_SPECIALS = set(".+()|{}$")

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


def parse_dockerignore(text: str) -> list[str]:
    """Return the patterns of a ``.dockerignore`` text, normalised as the Docker CLI does.

    Lines starting with ``#`` are comments; blank lines are skipped; each pattern is trimmed and
    cleaned like Go's ``filepath.Clean`` (so ``fixtures/`` becomes ``fixtures``), and a leading
    ``/`` is dropped. Exceptions keep their leading ``!``.
    """
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    patterns = []
    for raw in text.splitlines():
        # Docker checks for "#" before trimming: " #x" is a pattern, not a comment.
        if raw.startswith("#"):
            continue
        pattern = raw.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            # normpath keeps a leading "//"; Go's Clean does not.
            if pattern.startswith("//"):
                pattern = "/" + pattern.lstrip("/")
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def load_dockerignore(root: str | os.PathLike[str]) -> list[str]:
    """Return the patterns of ``root/.dockerignore``, or ``[]`` when there is none."""
    try:
        with open(os.path.join(root, DOCKERIGNORE), encoding="utf-8") as f:
            return parse_dockerignore(f.read())
    except FileNotFoundError:
        return []


def is_ignored(path: str, patterns: Sequence[str]) -> bool:
    """Tell whether the context path ``path`` (relative, ``/``-separated) is excluded.

    ``patterns`` are normalised patterns as :func:`parse_dockerignore` returns them. A path is
    excluded when the last pattern matching it, or matching one of its parent directories, is
    not an exception (``!``). This is moby's ``PatternMatcher.MatchesOrParentMatches``.
    """
    path = posixpath.normpath(path)
    parent = posixpath.dirname(path)
    parents = parent.split("/") if parent else []
    matched = False
    for raw in patterns:
        exclusion = raw.startswith("!")
        # Only a pattern that could flip the answer needs evaluating.
        if exclusion != matched:
            continue
        pattern = _compile(raw[1:] if exclusion else raw)
        hit = pattern(path)
        if not hit:
            hit = any(pattern("/".join(parents[: i + 1])) for i in range(len(parents)))
        if hit:
            matched = not exclusion
    return matched


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> _Matcher:
    """Translate one pattern the way moby's ``Pattern.compile`` does, with its match types."""
    regex = "^"
    kind = "exact"
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                at_start = i == 0
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is read as "**"
                if i >= n:
                    # A trailing "**" matches everything below, as in .gitignore.
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regex"
                else:
                    # Any number of directories, none included.
                    regex += "(.*/)?"
                    kind = "regex"
                if at_start:
                    kind = "suffix"
                continue
            regex += "[^/]*"
            kind = "regex"
        elif ch == "?":
            regex += "[^/]"
            kind = "regex"
        elif ch in _REGEX_SPECIALS:
            regex += "\\" + ch
        elif ch == "\\":
            # A backslash escapes the next character; a trailing one stands for itself.
            if i + 1 < n:
                i += 1
                # re.escape, not a bare backslash: "\\d" means the letter d, not a digit.
                regex += re.escape(pattern[i])
                kind = "regex"
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = "regex"
        else:
            regex += ch
        i += 1
    return _Matcher(pattern, kind, regex + "$")


class _Matcher:
    def __init__(self, pattern: str, kind: str, regex: str) -> None:
        self.pattern = pattern
        self.kind = kind
        self.regex: re.Pattern[str] | None = None
        if kind == "regex":
            try:
                self.regex = re.compile(regex)
            except re.error:
                # Docker reports a bad pattern (e.g. an unclosed "[") as an error at build time;
                # a pattern that cannot match anything is the closest harmless reading here.
                self.kind = "never"

    def __call__(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.pattern
        if self.kind == "prefix":
            return path.startswith(self.pattern[:-2])
        if self.kind == "suffix":
            suffix = self.pattern[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        if self.kind == "regex" and self.regex is not None:
            return self.regex.match(path) is not None
        return False


def walk_context(
    root: str | os.PathLike[str],
    patterns: Sequence[str] | None = None,
    *,
    dockerfile: str = "Dockerfile",
) -> list[Entry]:
    """Return the context's entries under ``root``, sorted by path components, parents first.

    ``patterns`` defaults to ``root/.dockerignore``. Directories, regular files and symlinks
    (never followed) are listed; sockets, FIFOs and devices are skipped. An excluded directory
    is not descended into unless ``patterns`` has exceptions (``!``), which could re-include
    something below it.
    ``dockerfile`` and ``.dockerignore`` are never excluded.
    """
    root = os.fspath(root)
    if patterns is None:
        patterns = load_dockerignore(root)
    keep = {posixpath.normpath(dockerfile), DOCKERIGNORE}
    has_exceptions = any(p.startswith("!") for p in patterns)
    entries: list[Entry] = []

    def visit(directory: str, prefix: str) -> None:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = prefix + child.name
            st = child.stat(follow_symlinks=False)
            ignored = rel not in keep and is_ignored(rel, patterns)
            if stat.S_ISDIR(st.st_mode):
                if not ignored:
                    entries.append(Entry(rel, child.path, "dir"))
                holds_kept = any(k.startswith(rel + "/") for k in keep)
                if not ignored or has_exceptions or holds_kept:
                    visit(child.path, rel + "/")
            elif ignored:
                continue
            elif stat.S_ISREG(st.st_mode):
                executable = bool(st.st_mode & 0o111)
                entries.append(Entry(rel, child.path, "file", executable, size=st.st_size))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, child.path, "symlink", target=os.readlink(child.path)))

    visit(root, "")
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
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
