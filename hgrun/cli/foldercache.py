"""``hgrun run``'s folder check, remembered: what loading and hashing an app folder found, kept per
folder in the user's cache directory until the folder changes.

The check (does this folder differ from the live release?) needs the manifest's app name, or why
the folder does not load, and the build context's hash. Computing them imports the manifest's
stack (YAML, the models, the stacks: ~100 ms of CPU) and reads every file of the context; a shell
loop of ``hgrun run`` in an unchanged folder would pay that at each turn, alongside the run's
create. So the answers are kept in ``$XDG_CACHE_HOME/hgrun/folders/`` (else ``~/.cache``), one
file per folder, and used again while nothing they depend on changed.

An entry is used only when all of this is as it was when the entry was computed (the key):
hgrun's version, the Python version, the folder and the working directory (load errors name
files relative to it), the source files of hgrun (and of YAML and croniter) that computed it, and
the stat signature (kind, size, mtime and ctime in ns, inode, device, mode) of every path the load
consulted (manifest, Procfile, Dockerfile, ``.dockerignore``, the stack's project files: see
:func:`hgrun.cli.appdir.load`, followed if symlinks) and of every entry the context hash reads
(:func:`hgrun.dockerignore.scan`, with the targets of symlinks), and the kind of any socket, FIFO
or device at the top (a stack's marker may be one). Directories count by name, kind
and inode: what they hold is listed entry by entry, so a file the context ignores may come and go
without invalidating the entry. What the load reads beyond the folder (the system's time zone
database, for a manifest's ``timezone:``) is not in the key.

Racy entries, as git handles its index (Documentation/technical/racy-git.txt): a file changed in
the same timestamp tick as the one seen, or while the check ran, keeps its stat signature. So an
entry is written only when every time in its signature is more than :data:`RACY_NS` before the
check began; otherwise the next run checks again (and writes it once the files are older).

Entries are written to a temporary file and renamed over the old one: a reader sees the old entry
or the new one, never a torn file. A file that cannot be read, parsed or written is a miss, never
an error: the cache only ever saves time.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import hgrun
from hgrun.cli import appdir
from hgrun.dockerignore import DOCKERIGNORE, load_dockerignore, scan
from hgrun.errors import HgrunError

# On the path of `hgrun run`'s folder check: the manifest, YAML, the models and pathlib are
# imported only on a miss (tests/test_cli_imports.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

FORMAT = 1
# Two seconds, as git's racy check allows for coarse file system clocks (FAT's 2 s mtimes).
RACY_NS = 2_000_000_000
KEEP = 256  # folders remembered; the least recently written beyond that are removed
STALE_TEMP_NS = 3600 * 1_000_000_000  # a temporary file a killed writer left behind
# Third-party packages whose code decides a load's answer besides hgrun's own.
_DEPENDENCIES = ("yaml", "croniter")


def directory(environ: Mapping[str, str]) -> str:
    """The cache's folder: ``$XDG_CACHE_HOME/hgrun/folders`` (else under ~/.cache)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hgrun", "folders")


def entry_file(cache_dir: str, root: str) -> str:
    """The file that holds ``root``'s entry in ``cache_dir``."""
    return os.path.join(cache_dir, _sha256(os.fsencode(root)).hexdigest()[:32] + ".json")


class FolderCheck:
    """One app folder's answers: the manifest's app name (or why the folder does not load) and
    its build context's hash; from the cache when the folder is as it was, else computed, and
    then written by :meth:`save`.

    ``root``: the app folder (absolute); ``cwd``: the working directory the load's errors are
    relative to. ``clock``: epoch nanoseconds, the clock file times are compared with.
    ``version``: hgrun's, part of the key. Not thread-safe: one check, one thread.
    """

    def __init__(
        self,
        root: str,
        cache_dir: str,
        *,
        cwd: str,
        clock: Callable[[], int],
        version: str = hgrun.__version__,
    ) -> None:
        self.root = root
        self._file = entry_file(cache_dir, root)
        self._key = {
            "format": FORMAT,
            "hgrun": version,
            "python": sys.version,
            "root": root,
            "cwd": cwd,
        }
        self._clock = clock
        self._began = clock()  # before anything of the folder is read
        self._entry = self._lookup()
        self.hit = self._entry is not None
        """Whether the answers came from the cache (so far: a hit without the hash loads)."""
        self._app: appdir.AppDir | None = None
        self._error: str | None = None
        self._hash: str | None = None
        self._consulted: list[str] = []
        self._computed = False

    def manifest(self) -> tuple[str | None, str | None]:
        """``(app name, None)`` when the folder loads, else ``(None, why)`` (the load error's
        message). Raises what the load raises besides :class:`HgrunError`."""
        if self._entry is not None:
            return self._entry["name"], self._entry["error"]
        self._load()
        return (None if self._app is None else self._app.name), self._error

    def context_hash(self) -> str:
        """The build context's hash; only for a folder that loads (:meth:`manifest`)."""
        if self._entry is not None and self._entry["context_hash"] is not None:
            return str(self._entry["context_hash"])
        if self._entry is not None:  # known to load, never hashed: load it now
            self._entry = None
            self.hit = False
        self._load()
        if self._app is None:
            raise ValueError("the folder does not load: no context hash")
        if self._hash is None:
            self._hash = self._app.context_hash()
            self._computed = True
        return self._hash

    def save(self) -> None:
        """Write what was computed (nothing after a hit), unless a file it depends on changed
        within :data:`RACY_NS` of the check's start. Never raises for the cache's sake."""
        if not self._computed:
            return
        dockerfile = None if self._app is None else self._app.dockerfile
        consulted = sorted(set(self._consulted) | {DOCKERIGNORE})
        sources = _sources()
        try:
            digest, newest = signature(self.root, dockerfile, consulted, sources)
        except OSError:
            return  # the folder changed under the walk: the next run checks again
        if newest >= self._began - RACY_NS:
            return
        entry = {
            **self._key,
            "signature": digest,
            "dockerfile": dockerfile,
            "consulted": consulted,
            "sources": sources,
            "name": None if self._app is None else self._app.name,
            "error": self._error,
            "context_hash": self._hash,
        }
        write_entry(self._file, entry, self._clock)

    def _load(self) -> None:
        if self._computed:
            return
        self._computed = True
        try:
            self._app = appdir.load(appdir.as_path(self.root), self._consulted)
        except HgrunError as e:
            self._error = e.message
        except BaseException:
            self._computed = False  # nothing worth keeping
            raise

    def _lookup(self) -> dict[str, Any] | None:
        """The entry, when its key and signature match the folder as it is now."""
        entry = read_entry(self._file)
        if entry is None or any(entry.get(k) != v for k, v in self._key.items()):
            return None
        if not _well_formed(entry):
            return None
        try:
            digest, _ = signature(
                self.root, entry["dockerfile"], entry["consulted"], entry["sources"]
            )
        except (OSError, KeyError, TypeError, ValueError):
            return None
        return entry if digest == entry.get("signature") else None


def _well_formed(entry: dict[str, Any]) -> bool:
    name, error, digest = entry.get("name"), entry.get("error"), entry.get("context_hash")
    if (name is None) == (error is None):
        return False
    return all(v is None or isinstance(v, str) for v in (name, error, digest))


def signature(
    root: str, dockerfile: str | None, consulted: Iterable[str], sources: Iterable[str]
) -> tuple[str, int]:
    """The digest of the stat signature of what an entry depends on, and the newest mtime or
    ctime (ns) among its files. Raises OSError when the folder cannot be walked."""
    lines: list[str] = []
    newest = 0
    for path in sources:
        line, newest = _stat_line("S", path, path, newest)
        lines.append(line)
    for rel in consulted:
        if not isinstance(rel, str):
            raise TypeError("consulted: not a path")
        line, newest = _stat_line("C", rel, os.path.join(root, rel), newest)
        lines.append(line)
    special = []
    with os.scandir(root) as top:
        # The walk skips sockets, FIFOs and devices; a stack's markers are names of any kind
        # (appdir.app_files), so those at the top count too.
        for entry in top:
            mode = entry.stat(follow_symlinks=False).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                special.append(f"X\0{entry.name}\0{mode}")
    lines += sorted(special)  # scandir lists in no particular order
    patterns = load_dockerignore(root)  # read whole: it decides the walk
    walked = scan(root, patterns, dockerfile=dockerfile) if dockerfile else scan(root, patterns)
    for rel, path, st in walked:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            lines.append(f"D\0{rel}\0{st.st_ino}\0{st.st_dev}\0{mode}")
            continue
        lines.append(f"W\0{rel}\0{_stat_fields(st)}")
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        if stat.S_ISLNK(mode):  # the hash reads the link; the load may read through it
            line, newest = _stat_line("T", rel, path, newest)
            lines.append(line)
    text = "\n".join(lines).encode("utf-8", "surrogateescape")
    return _sha256(text).hexdigest(), newest


def _stat_line(tag: str, shown: str, path: str, newest: int) -> tuple[str, int]:
    try:
        st = os.stat(path)
    except OSError as e:  # absent (or unreadable): that too is part of the answer
        return f"{tag}\0{shown}\0-{e.errno}", newest
    return f"{tag}\0{shown}\0{_stat_fields(st)}", max(newest, st.st_mtime_ns, st.st_ctime_ns)


def _stat_fields(st: os.stat_result) -> str:
    return (
        f"{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}"
    )


def _sources() -> list[str]:
    """The files of the code that computed the answers: hgrun's modules loaded now, and the
    packages of :data:`_DEPENDENCIES` (their top module: an upgrade rewrites it)."""
    files = []
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top == "hgrun" or (name in _DEPENDENCIES):
            file = getattr(module, "__file__", None)
            if isinstance(file, str):
                files.append(file)
    return sorted(files)


def read_entry(file: str) -> dict[str, Any] | None:
    """The entry in ``file``; None when there is none, or it cannot be read or parsed."""
    try:
        with open(file, "rb") as f:
            entry = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def write_entry(file: str, entry: Mapping[str, Any], clock: Callable[[], int]) -> None:
    """Replace ``file`` with ``entry`` atomically (a temporary file renamed over it); then
    prune the folder to :data:`KEEP` entries. Errors are let go: the cache is only a cache."""
    folder = os.path.dirname(file)
    temp = f"{file}.{os.getpid()}.{id(entry)}.{clock()}.tmp"  # unique among writers
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(entry, separators=(",", ":")).encode())
            os.replace(temp, file)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
    except (OSError, ValueError):
        return
    _prune(folder, clock())


def _prune(folder: str, now: int) -> None:
    """Remove the entries beyond :data:`KEEP` (least recently written first) and temporary
    files left by writers that died."""
    try:
        with os.scandir(folder) as it:
            found = []
            for e in it:
                try:
                    found.append((e.stat(follow_symlinks=False).st_mtime_ns, e.name, e.path))
                except OSError:
                    continue
    except OSError:
        return
    entries = sorted((t for t in found if t[1].endswith(".json")), reverse=True)
    doomed = [path for _, _, path in entries[KEEP:]]
    doomed += [p for t, n, p in found if n.endswith(".tmp") and t < now - STALE_TEMP_NS]
    for path in doomed:
        try:
            os.unlink(path)
        except OSError:
            pass


def _sha256(data: bytes) -> Any:
    """hashlib's sha256 without hashlib: importing it loads OpenSSL (~4 ms at every start)."""
    try:
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.11
        except ImportError:
            from hashlib import sha256
    return sha256(data)
