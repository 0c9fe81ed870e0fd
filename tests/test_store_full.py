"""A store whose disk is full (SQLite's SQLITE_FULL, made here with ``max_page_count``): a
clear ``store_full`` error, and nothing left half-done when space returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from hgrun.errors import StoreError, StoreFullError
from hgrun.store.database import SqliteDatabase


def _full(tmp_path: Path) -> SqliteDatabase:
    db = SqliteDatabase(tmp_path / "x.db")
    with db.tx() as c:
        c.execute("CREATE TABLE t (v BLOB)")
    pages = db.query("PRAGMA page_count")[0][0]
    db.query(f"PRAGMA max_page_count = {pages + 2}")  # a disk with two pages left
    return db


def test_a_full_disk_is_a_store_full_error_with_a_hint(tmp_path: Path) -> None:
    db = _full(tmp_path)
    with pytest.raises(StoreFullError) as info:
        with db.tx() as c:
            c.execute("INSERT INTO t VALUES (?)", (b"x" * 200_000,))
    assert info.value.http_status == 507 and info.value.code == "store_full"
    assert "the disk of the data directory is full" in info.value.message
    assert "--data-dir" in (info.value.hint or "")
    assert isinstance(info.value, StoreError)  # callers that handle store errors handle it


def test_the_store_writes_again_once_space_returns(tmp_path: Path) -> None:
    db = _full(tmp_path)
    for _ in range(3):  # refused each time, never "cannot start a transaction within one"
        with pytest.raises(StoreFullError):
            with db.tx() as c:
                c.execute("INSERT INTO t VALUES (?)", (b"x" * 200_000,))
    db.query("PRAGMA max_page_count = 1000000")
    with db.tx() as c:
        c.execute("INSERT INTO t VALUES (?)", (b"y",))
    assert db.query("SELECT v FROM t")[0][0] == b"y"  # and none of the refused rows
    assert db.query("PRAGMA integrity_check")[0][0] == "ok"
