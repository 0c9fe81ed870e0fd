"""``hgrun nodes`` on one Docker engine: the one host, ``local``; nothing to register. The
swarm's nodes, registration and TLS are in test_swarm.py (a real swarm)."""

from __future__ import annotations

import json

from support.cli import Cli, check, text


def test_one_engine_is_one_node_and_nodes_add_is_refused(cli: Cli) -> None:
    (node,) = json.loads(check(cli("nodes", "--json")))
    assert (node["name"], node["role"], node["state"], node["attach"]) == (
        "local",
        "single",
        "ready",
        True,
    ), node
    assert node["source"] == "docker-host" and node["endpoint"], node
    assert "local" in check(cli("nodes"))
    added = cli("nodes:add", "n2", "tcp://10.0.0.2:2376")
    assert added.returncode != 0
    assert "nodes:add applies to --engine swarm only" in text(added.stderr)
    bad = cli("nodes:add", "n2", "http://10.0.0.2")
    assert "expected tcp://HOST:PORT" in text(bad.stderr)
    gone = cli("nodes:remove", "n2")
    assert gone.returncode != 0 and "no endpoint registered for node 'n2'" in text(gone.stderr)
