"""Engine endpoints of swarm nodes registered by an operator (``hgrun nodes:add``).

Server wide, like the engine: a node is one of the swarm's, whatever the workspace. Plain SQL
(one table, text keys) so that it ports to PostgreSQL as it is.
"""

from __future__ import annotations

import dataclasses

from hgrun.errors import NotFoundError
from hgrun.store.base import StoreBase


@dataclasses.dataclass(frozen=True)
class NodeEndpoint:
    name: str  # the node's name in hgrun (its hgrun.node engine label, else its hostname)
    endpoint: str  # tcp://HOST:PORT (TLS when the server has --engine-tls)
    actor: str  # the token that registered it
    created: float


class NodeStore(StoreBase):
    def node_endpoints(self) -> list[NodeEndpoint]:
        """Every registered endpoint, by name."""
        rows = self._query("SELECT name, endpoint, actor, created FROM nodes ORDER BY name")
        return [NodeEndpoint(r[0], r[1], r[2], float(r[3])) for r in rows]

    def set_node_endpoint(self, name: str, endpoint: str, actor: str) -> NodeEndpoint:
        """Register (or replace) the endpoint of node ``name``."""
        now = self._clock()
        with self._tx() as db:
            db.execute("DELETE FROM nodes WHERE name = ?", (name,))
            db.execute(
                "INSERT INTO nodes (name, endpoint, actor, created) VALUES (?, ?, ?, ?)",
                (name, endpoint, actor, now),
            )
        return NodeEndpoint(name, endpoint, actor, now)

    def remove_node_endpoint(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(
                    f"no endpoint registered for node {name!r}", "see `hgrun nodes`"
                )
