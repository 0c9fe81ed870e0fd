"""SQLite's WAL is checkpointed by the store's thread, never inside a commit (which runs on the
server's event loop): a real store, real files."""

from __future__ import annotations

import time
from pathlib import Path

from support.store import app_with_release, new_run, new_store


def test_commits_never_checkpoint_and_the_thread_copies_the_wal_back(tmp_path: Path) -> None:
    path = tmp_path / "hgrun.db"
    store = new_store(path)
    app, release = app_with_release(store)
    raw = store._db._db  # type: ignore[attr-defined]  # noqa: SLF001 - the SQLite connection
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size = path.stat().st_size
    for _ in range(300):  # ~1,500 WAL pages: SQLite's own checkpoint would run in a commit
        new_run(store, app, release, env={"K": "v" * 2000})
    # The thread copies the pages back into the database file (it grows), without a close.
    deadline = time.monotonic() + 30
    while path.stat().st_size <= size + 300 * 2000:
        assert time.monotonic() < deadline, "the WAL was never checkpointed"
        time.sleep(0.05)
    store.close()
