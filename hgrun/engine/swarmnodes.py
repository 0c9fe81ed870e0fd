"""The swarm's nodes as hgrun sees them: their names, where their engines answer, their state.

The manager has no attach, logs or archive API for a task's container, so hgrun reaches each
node's own engine. Where: an endpoint the operator registered for the node by name (``hgrun
nodes:add``, kept in the store, passed in as ``registered``), else the one the node advertises
with the engine label ``hgrun.endpoint``, else (the manager's own node) the server's
``--docker-host``. A node with no endpoint at all is kept out of placement (a ``node.id!=``
constraint) until it gets one; an endpoint that does not answer is bad configuration at start.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import docker

from hgrun.engine import ContainerState
from hgrun.engine.docker import DockerEngine, _translate
from hgrun.engine.swarmspec import API_VERSION, LABEL_ENDPOINT, LABEL_NODE
from hgrun.engine.tls import EngineTLS, api_client
from hgrun.errors import EngineError, HgrunError, InputError

log = logging.getLogger("hgrun.swarm")
STATE_TTL = 1.0  # node states are read from the manager at most once a second, for all runs
REFRESH = 5.0  # the registered endpoints and the nodes without one, re-read this often
SERVICE_LABEL = "com.docker.swarm.service.id"  # Swarm's label on a task's container
NODE_TIMEOUT = 15.0  # a node's plain calls (inspect, stop); wait and uploads have their own


@dataclasses.dataclass
class NodeClient:
    """A node's engine, connected."""

    id: str
    name: str
    endpoint: str
    engine: DockerEngine
    api: docker.APIClient


@dataclasses.dataclass(frozen=True)
class NodeView:
    """One node for ``hgrun nodes``."""

    id: str
    name: str
    role: str  # manager or worker
    state: str  # Swarm's: ready, down, unknown, disconnected
    availability: str  # active, pause or drain
    endpoint: str | None
    source: str  # where the endpoint comes from: registered, label, docker-host or none
    attach: bool  # whether the server reaches that endpoint now (so can attach there)
    problem: str | None  # why not


def node_name(raw: Mapping[str, Any]) -> str:
    """A node's name in hgrun: its ``hgrun.node`` engine label, else its hostname."""
    description = raw.get("Description") or {}
    labels = (description.get("Engine") or {}).get("Labels") or {}
    return str(labels.get(LABEL_NODE) or description.get("Hostname") or str(raw["ID"])[:12])


class Nodes:
    """The nodes of the swarm whose manager ``api`` is; thread-safe."""

    def __init__(
        self,
        api: docker.APIClient,
        *,
        manager_host: str,
        manager_node: str,
        tls: EngineTLS | None = None,
        registered: Callable[[], Mapping[str, str]] = dict,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self.manager_host = manager_host
        self.manager_node = manager_node
        self.tls = tls
        self._registered = registered
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh = threading.Lock()
        self._clients: dict[str, NodeClient] = {}
        self._states: tuple[float, dict[str, str]] | None = None
        self._refreshed: tuple[float, Mapping[str, str], tuple[str, ...]] | None = None

    # -- listing --------------------------------------------------------------------------

    def raw(self) -> list[dict[str, Any]]:
        with _translate("cannot list the swarm's nodes"):
            return list(self._api.nodes())

    def ready(self) -> list[dict[str, Any]]:
        """The nodes Swarm may place a task on now."""
        return [
            n
            for n in self.raw()
            if (n.get("Status") or {}).get("State") == "ready"
            and (n.get("Spec") or {}).get("Availability", "active") == "active"
        ]

    def endpoint(self, raw: Mapping[str, Any]) -> tuple[str | None, str]:
        """Where node ``raw``'s engine answers, and where that comes from."""
        registered = self._registered().get(node_name(raw))
        if registered:
            return registered, "registered"
        labels = ((raw.get("Description") or {}).get("Engine") or {}).get("Labels") or {}
        if labels.get(LABEL_ENDPOINT):
            return str(labels[LABEL_ENDPOINT]), "label"
        if raw.get("ID") == self.manager_node:
            return self.manager_host, "docker-host"
        return None, "none"

    def state(self, node_id: str) -> str:
        """Swarm's view of a node (ready, down, unknown, disconnected), read at most once a
        second for every caller (each run in flight asks while its output is quiet)."""
        with self._refresh:  # one caller asks the manager; the others wait for its answer
            cached = self._states
            now = self._clock()
            if cached is None or now - cached[0] > STATE_TTL:
                states = {
                    str(n["ID"]): str((n.get("Status") or {}).get("State") or "unknown")
                    for n in self.raw()
                }
                cached = self._states = (now, states)
        return cached[1].get(node_id, "unknown")

    def excluded(self) -> tuple[str, ...]:
        """Placement constraints keeping runs off the ready nodes hgrun cannot attach to (no
        endpoint anywhere), re-read every few seconds; a changed registered endpoint drops the
        node's connection so the next run uses the new one."""
        with self._lock:
            cached = self._refreshed
        now = self._clock()
        if cached is not None and now - cached[0] < REFRESH:
            return cached[2]
        registered = dict(self._registered())
        if cached is not None and cached[1] != registered:
            with self._lock:
                self._clients.clear()
        out = tuple(f"node.id!={n['ID']}" for n in self.ready() if self.endpoint(n)[0] is None)
        with self._lock:
            self._refreshed = (now, registered, out)
        return out

    # -- connecting -----------------------------------------------------------------------

    def client(self, node_id: str) -> NodeClient:
        """The node's engine, connected once (and again after its endpoint changed)."""
        with self._lock:
            known = self._clients.get(node_id)
        if known is not None:
            return known
        with _translate(f"cannot inspect swarm node {node_id[:12]}"):
            raw = self._api.inspect_node(node_id)
        name = node_name(raw)
        endpoint, _source = self.endpoint(raw)
        if endpoint is None:
            raise EngineError(
                f"swarm node {name} ({node_id[:12]}) has no engine endpoint",
                f"hgrun nodes:add {name} tcp://ADDRESS:2376, or start its dockerd with"
                f" --label {LABEL_ENDPOINT}=tcp://ADDRESS:2376",
            )
        node = self.connect(node_id, name, endpoint)
        with self._lock:
            return self._clients.setdefault(node_id, node)

    def connect(self, node_id: str, name: str, endpoint: str) -> NodeClient:
        """Connect to a node's engine and check it answers (within seconds: an address that
        drops packets must not hold the server's start for minutes); one clear error if not."""
        self.probe(name, endpoint, timeout=10.0).close()
        tls = self.tls if endpoint.startswith("tcp://") else None
        with _translate(f"cannot reach swarm node {name} at {endpoint}"):
            # Long calls (an image loaded, an archive read) need the long timeout.
            api = api_client(endpoint, version=API_VERSION, timeout=120, tls=self.tls)
            engine = DockerEngine(endpoint, timeout=NODE_TIMEOUT, tls=tls, version=API_VERSION)
        return NodeClient(id=node_id, name=name, endpoint=endpoint, engine=engine, api=api)

    def probe(self, name: str, endpoint: str, *, timeout: float = 5.0) -> docker.APIClient:
        """A client of ``endpoint`` that has just answered a ping; one clear error if none."""
        try:
            with _translate(f"cannot reach swarm node {name} at {endpoint}"):
                api = api_client(endpoint, version=API_VERSION, timeout=timeout, tls=self.tls)
                api.ping()
        except HgrunError as e:
            raise EngineError(
                f"cannot reach swarm node {name} at {endpoint}: {_cause(e)}",
                "check its dockerd answers there"
                + ("" if self.tls else " (TLS? hgrun server --engine-tls DIR)")
                + f"; the endpoint comes from `hgrun nodes:add` or the engine label"
                f" {LABEL_ENDPOINT}",
            ) from e
        return api

    def check(self) -> None:
        """At start: every ready node with an endpoint must answer there (else attach would
        fail run by run). A node without one is only logged: it gets no runs until
        ``hgrun nodes:add`` gives it one."""
        for raw in self.ready():
            if self.endpoint(raw)[0] is None:
                log.warning(
                    "swarm node %s has no engine endpoint: no runs go there until"
                    " `hgrun nodes:add %s tcp://ADDRESS:2376`",
                    node_name(raw),
                    node_name(raw),
                )
                continue
            self.client(str(raw["ID"]))

    def resolve(self, name: str, endpoint: str) -> str:
        """Check that ``endpoint`` is node ``name``'s own engine (it answers, and its swarm
        node id is that node's); returns the node's id. For ``hgrun nodes:add``."""
        by_name = {node_name(n): n for n in self.raw()}
        raw = by_name.get(name)
        if raw is None:
            raise InputError(
                f"no swarm node is named {name!r}",
                f"nodes: {', '.join(sorted(by_name)) or 'none'} (see `hgrun nodes`)",
            )
        if not endpoint.startswith("tcp://"):
            raise InputError(
                f"endpoint {endpoint!r}: expected tcp://HOST:PORT", "e.g. tcp://10.0.0.12:2376"
            )
        node_id = str(raw["ID"])
        api = self.probe(name, endpoint)
        try:
            with _translate(f"cannot read the engine info at {endpoint}"):
                answered = str((api.info().get("Swarm") or {}).get("NodeID") or "")
        finally:
            api.close()
        if answered != node_id:
            raise InputError(
                f"{endpoint} is not node {name}'s engine (its swarm node id is"
                f" {answered[:12] or 'none'}, {name}'s is {node_id[:12]})",
                "give the address of that node's own dockerd",
            )
        with self._lock:
            self._clients.pop(node_id, None)
            self._refreshed = None
        return node_id

    def forget(self, name: str) -> None:
        """Drop the connection to node ``name`` (its registered endpoint was removed)."""
        with self._lock:
            for node_id, client in list(self._clients.items()):
                if client.name == name:
                    del self._clients[node_id]
            self._refreshed = None

    def orphans(
        self, labels: Mapping[str, str], services: Callable[[], set[str]]
    ) -> list[tuple[NodeClient, ContainerState]]:
        """hgrun's task containers (carrying ``labels``) on the ready nodes whose service is
        gone: Swarm (dockerd 20.10) does not stop a removed replicated job's task, so a run given
        up while its node was away (a cut link) would go on there once the node is back.
        ``services``: the ids of the services that exist (asked again before answering, so a
        service made meanwhile is no orphan)."""
        known = services()
        found = []
        for raw in self.ready():
            if self.endpoint(raw)[0] is None:
                continue
            try:
                client = self.client(str(raw["ID"]))
                with _translate(f"cannot list the containers of swarm node {client.name}"):
                    summaries = client.api.containers(
                        all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
                    )
            except HgrunError:
                continue
            for summary in summaries:
                service = (summary.get("Labels") or {}).get(SERVICE_LABEL)
                if service and service not in known:
                    found.append((client, str(summary["Id"]), service))
        if not found:
            return []
        known = services()
        out = []
        for client, container_id, service in found:
            if service not in known:
                with contextlib.suppress(HgrunError):
                    out.append((client, client.engine.inspect(container_id)))
        return out

    def views(self) -> list[NodeView]:
        """Every node of the swarm, its endpoint tried now (in parallel, a few seconds at
        most for one that does not answer)."""
        nodes = sorted(self.raw(), key=node_name)

        def view(raw: Mapping[str, Any]) -> NodeView:
            node_id, name = str(raw["ID"]), node_name(raw)
            endpoint, source = self.endpoint(raw)
            problem = None
            if endpoint is None:
                problem = f"no endpoint: hgrun nodes:add {name} tcp://ADDRESS:2376"
            else:
                try:
                    self.probe(name, endpoint).close()
                except HgrunError as e:
                    problem = e.message
            return NodeView(
                id=node_id,
                name=name,
                role=str((raw.get("Spec") or {}).get("Role") or "worker"),
                state=str((raw.get("Status") or {}).get("State") or "unknown"),
                availability=str((raw.get("Spec") or {}).get("Availability") or "active"),
                endpoint=endpoint,
                source=source,
                attach=problem is None,
                problem=problem,
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            return list(pool.map(view, nodes))

    async def aclose(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            await client.engine.aclose()
            client.api.close()


def _cause(error: HgrunError) -> str:
    """The transport's own words, without our prefix (said once, by the caller)."""
    return error.message.partition(": ")[2] or error.message
