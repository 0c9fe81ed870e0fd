"""The server's one key for data at rest: the audit log and the store's secrets share it.

Where it lives: ``HGRUN_AUDIT_KEY`` (a Fernet key; during a rotation ``NEW,OLD``: the first
encrypts, every one decrypts), else ``<data_dir>/audit.key`` (made 0600 on first start). A
rotation by file writes the new key to ``audit.key.next`` first; while that file exists both keys
are accepted (a rotation cut short is finished at the next ``--rotate-key``), and the new key
replaces ``audit.key`` only once every record is re-encrypted under it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from hgrun.errors import InputError, StoreError

KEY_ENV = "HGRUN_AUDIT_KEY"
KEY_FILE = "audit.key"
NEXT_FILE = "audit.key.next"
SEALED = "fernet:"  # the prefix of a sealed value in the store; plain text never starts so


def _write_new_key(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key())


def _check(key: bytes) -> bytes:
    try:
        Fernet(key)
    except ValueError as e:
        raise InputError(
            f"the audit key is not a valid Fernet key ({e})",
            f"set {KEY_ENV} to 32 url-safe base64-encoded bytes, or remove {KEY_FILE}",
        ) from e
    return key


def load_keys(data_dir: Path, environ: Mapping[str, str]) -> list[bytes]:
    """The keys, newest first: the first encrypts, every one decrypts."""
    if environ.get(KEY_ENV):
        return [_check(k.strip().encode()) for k in environ[KEY_ENV].split(",") if k.strip()]
    path = data_dir / KEY_FILE
    if not path.exists():
        _write_new_key(path)
    keys = [_check(path.read_bytes().strip())]
    following = data_dir / NEXT_FILE
    if following.exists():
        keys.insert(0, _check(following.read_bytes().strip()))
    return keys


def load_key(data_dir: Path, environ: Mapping[str, str]) -> bytes:
    """The key that encrypts (see :func:`load_keys`)."""
    return load_keys(data_dir, environ)[0]


def begin_rotation(data_dir: Path, environ: Mapping[str, str]) -> list[bytes]:
    """The keys for a rotation, the new one first: by file, a new ``audit.key.next`` (kept if a
    rotation was cut short); by ``HGRUN_AUDIT_KEY``, it must already be ``NEW,OLD``."""
    if environ.get(KEY_ENV):
        keys = load_keys(data_dir, environ)
        if len(keys) < 2:
            raise InputError(
                f"{KEY_ENV} holds one key: nothing to rotate to",
                f"set {KEY_ENV}=NEW,OLD (make NEW with `python3 -c 'from cryptography.fernet"
                " import Fernet; print(Fernet.generate_key().decode())'`), rotate, then keep NEW",
            )
        return keys
    load_keys(data_dir, environ)  # makes audit.key on a first start
    if not (data_dir / NEXT_FILE).exists():
        _write_new_key(data_dir / NEXT_FILE)
    return load_keys(data_dir, environ)


def finish_rotation(data_dir: Path, environ: Mapping[str, str]) -> None:
    """Every record is under the new key: it becomes the only one (by file)."""
    if not environ.get(KEY_ENV):
        os.replace(data_dir / NEXT_FILE, data_dir / KEY_FILE)


class Sealer:
    """Seals strings for the store: ``fernet:<token>``; opens them (plain text from before the
    store encrypted anything passes through unchanged until the start-up migration seals it)."""

    def __init__(self, keys: list[bytes]) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        # Fernet costs ~0.1 ms a call in Python, and every trigger of a script seals the same
        # env snapshot (its release's) and every listing opens the same few: the latest
        # values each way are kept. Equal snapshots then share one ciphertext, which tells a
        # reader of the store that two runs had the same env: their release and input say so
        # already. Bounded (SEAL_CACHE short values): distinct inputs cost little memory.
        self._sealed: dict[str, str] = {}
        self._opened: dict[str, str] = {}

    def seal(self, text: str) -> str:
        sealed = self._sealed.get(text)
        if sealed is None:
            sealed = SEALED + self._fernet.encrypt(text.encode()).decode("ascii")
            _remember(self._sealed, text, sealed)
        return sealed

    def open(self, value: str) -> str:
        if not value.startswith(SEALED):
            return value
        opened = self._opened.get(value)
        if opened is not None:
            return opened
        try:
            opened = self._fernet.decrypt(value[len(SEALED) :].encode("ascii")).decode()
            _remember(self._opened, value, opened)
            return opened
        except InvalidToken as e:
            raise StoreError(
                "a secret in the store does not decrypt with the audit key",
                f"start the server with the key it was written with ({KEY_ENV} or {KEY_FILE})",
            ) from e


SEAL_CACHE = 256  # values kept each way by a Sealer
SEAL_CACHE_TEXT = 8 * 1024  # longer values are not kept (at most ~4 MB each way)


def _remember(cache: dict[str, str], key: str, value: str) -> None:
    if len(key) > SEAL_CACHE_TEXT:
        return
    if len(cache) >= SEAL_CACHE:
        cache.pop(next(iter(cache)))  # the oldest (dicts keep insertion order)
    cache[key] = value


def private_dir(path: Path) -> None:
    """``path`` and every file in it owner-only (0700 / 0600), also when it already existed."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    for child in path.iterdir():
        if child.is_file() and not child.is_symlink():
            os.chmod(child, 0o600)
