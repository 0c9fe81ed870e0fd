"""Clients attached to a run through a server that does not hold it (several servers, one store).

The server a client reached follows the run's output from the store and writes its input to the
container through the engine; the server holding the run (its ``run:ID`` lease) must still count
that client: an attached run starts when its first client comes, is stopped after a grace period
with none, and is closed when idle. Each such client is a ``meta`` row ``viewer:<run>:<id>`` =
``"<until> <active>"`` (epoch seconds: the row counts until ``until``; ``active`` is when the
client last sent input), renewed by its server every few seconds, so a server that dies takes its
clients with it within the row's life. Plain SQL on ``meta``: no migration.
"""

from __future__ import annotations

import dataclasses

from hgrun.store.base import StoreBase

PREFIX = "viewer:"


@dataclasses.dataclass(frozen=True)
class RemoteViewer:
    run_id: int
    viewer: str  # the attachment's own id, unique across servers
    until: float  # the row counts until then (epoch seconds)
    active: float  # the client's last input (epoch seconds)


class ViewerStore(StoreBase):
    def see_viewer(self, run_id: int, viewer: str, until: float, active: float) -> None:
        """Record (or renew) a client of ``run_id`` attached through a server not holding it."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"{PREFIX}{run_id}:{viewer}", f"{until} {active}"),
            )

    def drop_viewer(self, run_id: int, viewer: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (f"{PREFIX}{run_id}:{viewer}",))

    def remote_viewers(self) -> list[RemoteViewer]:
        """Every client recorded and not expired; expired rows (a server that died with its
        clients) are deleted on the way."""
        now = self._clock()
        found: list[RemoteViewer] = []
        expired: list[str] = []
        for key, value in self._query(
            "SELECT key, value FROM meta WHERE key LIKE ?", (f"{PREFIX}%",)
        ):
            run, _, viewer = str(key)[len(PREFIX) :].partition(":")
            until, _, active = str(value).partition(" ")
            try:
                row = RemoteViewer(int(run), viewer, float(until), float(active))
            except ValueError:
                expired.append(str(key))  # not a row of ours: never counted
                continue
            if row.until > now:
                found.append(row)
            else:
                expired.append(str(key))
        if expired:
            with self._tx() as db:
                for key in expired:
                    db.execute("DELETE FROM meta WHERE key = ?", (key,))
        return found
