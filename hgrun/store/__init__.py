"""The store: SQLite in the data directory, or PostgreSQL for several servers. Only here is SQL
written and sqlite3 or psycopg imported.

:class:`Store` composes one module per concept on one database (``base``; the dialect seam is
``database``): workspaces and tokens, apps and releases, runs and their transitions, scripts,
output, registered node endpoints, clients attached through a server that does not hold their
run (``viewers``). The audit log (``audit``) is a SQLite file of its own beside a SQLite store,
or tables of its own in a PostgreSQL store (one log for every server on it).
"""

from __future__ import annotations

from hgrun.store.apps import AppStore
from hgrun.store.base import StoreBase
from hgrun.store.nodes import NodeEndpoint, NodeStore
from hgrun.store.output import NewChunk, OutputStore
from hgrun.store.runs import NewRun, RunStore
from hgrun.store.scripts import ScriptStore
from hgrun.store.tokens import TokenStore, hash_token
from hgrun.store.viewers import RemoteViewer, ViewerStore

__all__ = ["NewChunk", "NewRun", "NodeEndpoint", "RemoteViewer", "Store", "hash_token"]


class Store(
    TokenStore, AppStore, RunStore, ScriptStore, OutputStore, NodeStore, ViewerStore, StoreBase
):
    """The whole store; see each base class for its concept."""
