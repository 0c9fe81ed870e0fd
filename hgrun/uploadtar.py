"""The ``--file`` upload as the server lets it reach a container: a tar stream checked entry by
entry and re-emitted with regular files and folders under the upload root only.

Sans-I/O, like :mod:`hgrun.relay.protocol`: :meth:`UploadFilter.feed` takes the bytes a client
sent and returns the bytes to hand to the engine; :meth:`UploadFilter.close` checks the stream
ended where a tar may end and returns the end-of-archive marker. Memory stays flat: file
contents pass through as they come; only a header (512 bytes) or a bounded extended header is
ever held. The tar format is POSIX.1-2001 (pax, IEEE Std 1003.1 ``pax`` "ustar Interchange
Format" and "pax Interchange Format"), with GNU's long names (``L``) and base-256 numbers.

Refused, each with an :class:`UploadError` naming the entry: absolute paths, ``..``, anything
outside the upload root, symbolic and hard links, devices, FIFOs and every other entry type,
setuid and setgid files, a declared size over the cap, a bad header checksum, and a stream that
ends before the end-of-archive marker. Every entry is written anew: owner root, mode masked to
``0o777`` (no sticky bit on files), the root folder ``0o1777`` like ``/tmp``.
"""

from __future__ import annotations

import posixpath
import tarfile

from hgrun.errors import InputError

BLOCK = 512
MAX_NAME = 4096  # bytes of a path (PATH_MAX)
MAX_META = 64 * 1024  # bytes of one pax extended header or GNU long name
ROOT = "uploads"

# Entry types (the typeflag byte): what each is called in an error.
_FILE_TYPES = (b"0", b"\0", b"7")  # regular file (old and new), contiguous file
_DIR = b"5"
_PAX = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_REFUSED = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"K": "a link (GNU long link name)",
    b"S": "a sparse file",
}
_HINT = "uploads carry regular files and folders only, under uploads/"


class UploadError(InputError):
    """The upload is not a tar of regular files and folders under the upload root (a 400)."""

    code = "bad_upload"


class UploadFilter:
    """Check and re-emit one upload's tar stream.

    ``max_bytes`` caps both what is read and what any one entry may declare; ``root`` is the
    first path component every entry must have (the client's), ``out_root`` the one written
    (where the engine extracts it decides: ``uploads`` under ``/tmp``, or ``tmp/uploads``
    under ``/``).
    """

    def __init__(self, max_bytes: int, root: str = ROOT, out_root: str = ROOT) -> None:
        self.max_bytes = max_bytes
        self.root = root
        self.out_root = out_root.strip("/")
        self.entries = 0  # entries re-emitted
        self.received = 0  # bytes fed
        self._buffer = bytearray()
        self._data_left = 0  # bytes of the current file's content still to pass through
        self._skip = 0  # padding (or ignored content) still to drop
        self._meta: tuple[bytes, int, str] | None = None  # (type, size, entry) being gathered
        self._pax: dict[str, str] = {}  # the next entry's extended header
        self._long_name: str | None = None
        self._pad_out = 0  # zero bytes to emit after the current file's content
        self._ended = False
        self._started = False
        self._current = ""

    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        """The checked bytes to pass on for ``data`` (possibly none); raises UploadError.
        Inside a file's content that is ``data`` itself, not a copy."""
        self._count(len(data))
        if self._data_left > len(data) and self._started:
            # Inside a file's content, not at its end (most of an upload): passed on as it
            # came, no copy.
            self._data_left -= len(data)
            return data
        out = bytearray()
        if not self._started:
            self._started = True
            out += _header(self.out_root, tarfile.DIRTYPE, 0o1777, 0, 0)
        view = memoryview(data)
        while view and not self._ended:
            if self._data_left:
                n = min(self._data_left, len(view))
                out += view[:n]
                self._data_left -= n
                view = view[n:]
                if not self._data_left:
                    # Our padding out; the client's own padding, next in the input, dropped.
                    out += bytes(self._pad_out)
                    self._skip = self._pad_out
                    self._pad_out = 0
                continue
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            if self._meta is not None:
                kind, size, entry = self._meta
                n = min(size - len(self._buffer), len(view))
                self._buffer += view[:n]
                view = view[n:]
                if len(self._buffer) == size:
                    self._meta = None
                    self._apply_meta(kind, bytes(self._buffer), entry)
                    self._buffer.clear()
                    self._skip = _padding(size)
                continue
            n = min(BLOCK - len(self._buffer), len(view))
            self._buffer += view[:n]
            view = view[n:]
            if len(self._buffer) == BLOCK:
                block = bytes(self._buffer)
                self._buffer.clear()
                out += self._header_block(block)
        return bytes(out)

    def truncated(self) -> UploadError:
        """The error of a stream that stops here, before the end of the archive."""
        where = f" in entry {self._current!r}" if self._current else ""
        return UploadError(
            f"the upload ended before the end of the tar archive{where}",
            "the connection may have dropped: send the files again",
        )

    def content_ahead(self) -> int:
        """How many of the next bytes are a file's content that may pass on unread (with
        :meth:`passed`, e.g. spliced from socket to socket): all but the content's last byte,
        which goes through :meth:`feed` to end the entry, and never past the cap (the byte
        over it goes through :meth:`feed`, which refuses it)."""
        if not self._started or self._data_left <= 1:
            return 0
        return min(self._data_left - 1, self.max_bytes - self.received)

    def passed(self, n: int) -> None:
        """``n`` bytes of :meth:`content_ahead` went on unread: counted against the cap."""
        if not 0 <= n <= self.content_ahead():
            raise ValueError(f"{n} bytes passed, {self.content_ahead()} may")
        self._count(n)
        self._data_left -= n

    def _count(self, n: int) -> None:
        self.received += n
        if self.received > self.max_bytes:
            raise UploadError(
                f"the upload is over the server's cap of {self.max_bytes // 1024**2} MB",
                "upload fewer or smaller files, or raise the server's --max-upload",
            )

    def close(self) -> bytes:
        """The end-of-archive marker, once the stream ended where a tar may; else UploadError."""
        if not self._ended:
            raise self.truncated()
        out = b"" if self._started else _header(self.out_root, tarfile.DIRTYPE, 0o1777, 0, 0)
        return out + bytes(2 * BLOCK)

    # -- one header ------------------------------------------------------------------------

    def _header_block(self, block: bytes) -> bytes:
        if block == bytes(BLOCK):
            if self._pax or self._long_name is not None:
                raise UploadError("the tar archive ends after an extended header", _HINT)
            self._ended = True
            return b""
        _check_sum(block, self.entries)
        kind = block[156:157]
        raw_name = _name(block)
        entry = self._long_name if self._long_name is not None else raw_name
        entry = self._pax.get("path", entry)
        self._current = entry
        size = _number(block[124:136], entry, "size")
        if "size" in self._pax:
            if not self._pax["size"].isascii() or not self._pax["size"].isdigit():
                raise UploadError(f"upload entry {entry!r}: a malformed size", _HINT)
            size = int(self._pax["size"])
        if kind in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME):
            if size > (MAX_NAME if kind == _GNU_LONGNAME else MAX_META):
                raise UploadError(f"upload entry {entry!r}: an extended header too large", _HINT)
            if size == 0:
                self._apply_meta(kind, b"", entry)
            else:
                self._meta = (kind, size, entry)
            return b""
        self._pax, self._long_name = {}, None
        if kind in _REFUSED:
            raise UploadError(f"upload entry {entry!r} is {_REFUSED[kind]}", _HINT)
        if kind not in _FILE_TYPES and kind != _DIR:
            raise UploadError(f"upload entry {entry!r} has an unknown type {kind!r}", _HINT)
        path = self._path(entry)
        mode = _number(block[100:108], entry, "mode")
        mtime = min(_number(block[136:148], entry, "mtime"), 2**33 - 1)
        if kind == _DIR:
            if path == self.out_root:
                return b""  # the root was written first, with its own mode
            self.entries += 1
            return _header(path + "/", tarfile.DIRTYPE, mode & 0o777, 0, mtime)
        if mode & 0o6000:
            raise UploadError(f"upload entry {entry!r} is setuid or setgid", _HINT)
        if size > self.max_bytes:
            raise UploadError(
                f"upload entry {entry!r} declares {size} bytes, over the server's cap of"
                f" {self.max_bytes // 1024**2} MB",
                "upload fewer or smaller files, or raise the server's --max-upload",
            )
        if path == self.out_root:
            raise UploadError(f"upload entry {entry!r} is a file in place of the folder", _HINT)
        self.entries += 1
        self._data_left = size
        self._pad_out = _padding(size)
        return _header(path, tarfile.REGTYPE, mode & 0o777, size, mtime)

    def _apply_meta(self, kind: bytes, data: bytes, entry: str) -> None:
        if kind == _PAX:
            self._pax = _pax_records(data, entry)
        elif kind == _GNU_LONGNAME:
            self._long_name = _text(data.split(b"\0", 1)[0], entry)
        # A global pax header ("g") sets defaults hgrun does not use: dropped.

    def _path(self, entry: str) -> str:
        """``entry`` as a clean path under ``out_root``; refused unless under ``root``."""
        if not entry or len(entry.encode()) > MAX_NAME or "\0" in entry:
            raise UploadError(f"upload entry {entry!r}: an empty or overlong path", _HINT)
        if entry.startswith("/"):
            raise UploadError(f"upload entry {entry!r} is an absolute path", _HINT)
        parts = [p for p in entry.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UploadError(f"upload entry {entry!r} goes up a folder ('..')", _HINT)
        if not parts or parts[0] != self.root:
            raise UploadError(f"upload entry {entry!r} is outside {self.root}/", _HINT)
        return posixpath.join(self.out_root, *parts[1:])


def _padding(size: int) -> int:
    return -size % BLOCK


def _header(name: str, kind: bytes, mode: int, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = mtime
    info.uid = info.gid = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _text(raw: bytes, entry: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UploadError(f"upload entry {entry!r}: a path that is not UTF-8", _HINT) from e


def _name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix of the name (GNU puts times there)
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _text(name, name.decode("utf-8", "replace"))


def _number(field: bytes, entry: str, what: str) -> int:
    """A numeric header field: octal digits, or GNU's base-256 (first byte 0x80)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] and field[0] & 0x80:
        raise UploadError(f"upload entry {entry!r}: a negative {what}", _HINT)
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if any(c not in b"01234567" for c in digits):
        raise UploadError(f"upload entry {entry!r}: a malformed {what} field", _HINT)
    return int(digits, 8)


def _check_sum(block: bytes, index: int) -> None:
    stored = block[148:156].split(b"\0", 1)[0].strip(b" ")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    try:
        value = int(stored, 8)
    except ValueError:
        value = -1
    if value not in (unsigned, signed):
        raise UploadError(
            f"the upload is not a tar archive (bad header checksum at entry {index + 1})",
            "send a tar stream, as `hgrun run --file` does",
        )


def _pax_records(data: bytes, entry: str) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.find(b" ", pos, pos + 20)
        length = data[pos:space]
        if space < 0 or not length.isdigit():
            raise UploadError(f"upload entry {entry!r}: a malformed extended header", _HINT)
        end = pos + int(length)
        record = data[space + 1 : end]
        if end > len(data) or int(length) <= space - pos or not record.endswith(b"\n"):
            raise UploadError(f"upload entry {entry!r}: a malformed extended header", _HINT)
        key, sep, value = record[:-1].partition(b"=")
        if not sep:
            raise UploadError(f"upload entry {entry!r}: a malformed extended header", _HINT)
        records[_text(key, entry)] = _text(value, entry)
        pos = end
    return records
