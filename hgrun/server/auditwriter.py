"""The audit log's writer: one thread, records in the order they are given, off the event loop.

An audit record is encrypted, chained and written with a full fsync (and on PostgreSQL it waits
for the chain's lock): several milliseconds each. The supervisor records every run's end from
the event loop, so written there they held every other run, attach and cron slot for that long.
Here they go to one thread of their own, in order (the chain's order is the order of the calls).
A run's start is still written before the run goes on (``server/main.py``): a start that cannot
be audited fails its run. What may wait is bounded: past ``pending`` records not yet written,
``append`` blocks until one is, which is the log's back-pressure (and today's behaviour, at
worst).

A record that cannot be written (a full disk) is logged, as the run's own record is already
stored: the audit log's failure never fails a run.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from hgrun.errors import HgrunError

log = logging.getLogger("hgrun.audit")

PENDING = 64  # records given and not yet written before append blocks (each up to ~2 MB)


class Appender(Protocol):
    def append(
        self, workspace: str, run_id: int | None, action: str, payload: Mapping[str, Any]
    ) -> None: ...


class AuditWriter:
    """``append`` as the audit log's, returning once the record is queued (see the module)."""

    def __init__(self, audit: Appender, pending: int = PENDING) -> None:
        self._audit = audit
        self._slots = threading.BoundedSemaphore(pending)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="audit"
        )

    def append(
        self, workspace: str, run_id: int | None, action: str, payload: Mapping[str, Any]
    ) -> None:
        self._slots.acquire()
        try:
            self._pool.submit(self._write, workspace, run_id, action, payload)
        except RuntimeError:  # closed: the server is stopping; write it here, in order still
            self._write(workspace, run_id, action, payload)

    def _write(
        self, workspace: str, run_id: int | None, action: str, payload: Mapping[str, Any]
    ) -> None:
        try:
            self._audit.append(workspace, run_id, action, payload)
        except HgrunError as e:
            log.error("cannot audit %s of run %s: %s", action, run_id, e.message)
        except Exception:
            log.exception("cannot audit %s of run %s", action, run_id)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Write every record given so far, then stop (a later append writes in the caller)."""
        self._pool.shutdown(wait=True)
