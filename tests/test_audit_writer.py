"""The audit writer: records off the caller's thread, in order, bounded, failures logged."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hgrun.errors import StoreError
from hgrun.server.auditwriter import AuditWriter
from hgrun.store.audit import AuditLog, load_key


class SlowLog:
    """An audit log whose writes wait for ``go``; it remembers what it wrote, in order."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.written: list[str] = []
        self.threads: set[str] = set()

    def append(
        self, workspace: str, run_id: int | None, action: str, payload: Mapping[str, Any]
    ) -> None:
        assert self.go.wait(10), "the test never let the write go"
        self.threads.add(threading.current_thread().name)
        if action == "fail":
            raise StoreError("the disk of the data directory is full")
        self.written.append(action)


def test_append_returns_before_the_write_and_close_writes_everything_in_order() -> None:
    log = SlowLog()
    writer = AuditWriter(log)
    for n in range(10):
        writer.append("default", n, f"run.{n}", {})  # would hang here if written in the caller
    assert log.written == []
    log.go.set()
    writer.close()
    assert log.written == [f"run.{n}" for n in range(10)]
    assert log.threads and not log.threads & {threading.current_thread().name}


def test_past_its_pending_records_append_waits_for_one_to_be_written() -> None:
    log = SlowLog()
    writer = AuditWriter(log, pending=2)
    writer.append("default", 1, "one", {})
    writer.append("default", 2, "two", {})
    third = threading.Thread(target=writer.append, args=("default", 3, "three", {}))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a third record was queued past the bound"
    log.go.set()
    third.join(10)
    assert not third.is_alive()
    writer.close()
    assert log.written == ["one", "two", "three"]


def test_a_record_that_cannot_be_written_is_logged_and_the_next_ones_still_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = SlowLog()
    log.go.set()
    writer = AuditWriter(log, pending=1)
    with caplog.at_level(logging.ERROR, "hgrun.audit"):
        writer.append("default", 7, "fail", {})
        writer.append("default", 8, "run.finish", {})
        writer.close()
    assert log.written == ["run.finish"]
    assert "cannot audit fail of run 7: the disk of the data directory is full" in caplog.text


def test_records_through_the_writer_make_one_verified_chain(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.db", load_key(tmp_path, {}))
    writer = AuditWriter(audit)
    callers = [
        threading.Thread(
            target=lambda k=k: [
                writer.append("default", k, f"run.{i}", {"i": i}) for i in range(25)
            ]
        )
        for k in range(4)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    writer.close()
    writer.append("default", 99, "after.close", {})  # written in the caller, still chained
    page = audit.page("default", limit=200)
    assert page.problems == []
    assert page.checked == 101
    audit.close()
