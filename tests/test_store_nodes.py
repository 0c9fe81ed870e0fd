"""Registered node endpoints in the store (migration 7): set, replace, list, remove; on both
backends (``make_store``)."""

from __future__ import annotations

import pytest
from support.stores import StoreFactory

from hgrun.errors import NotFoundError


def test_node_endpoints_are_set_replaced_listed_and_removed(make_store: StoreFactory) -> None:
    now = iter(float(t) for t in range(100, 200))
    store = make_store("s", clock=lambda: next(now), workspace=None)
    assert store.node_endpoints() == []
    store.set_node_endpoint("n3", "tcp://10.0.0.3:2376", "admin")
    store.set_node_endpoint("n2", "tcp://10.0.0.2:2376", "admin")
    store.set_node_endpoint("n3", "tcp://10.0.0.33:2376", "ops")
    listed = [(n.name, n.endpoint, n.actor) for n in store.node_endpoints()]
    assert listed == [("n2", "tcp://10.0.0.2:2376", "admin"), ("n3", "tcp://10.0.0.33:2376", "ops")]
    store.remove_node_endpoint("n2")
    with pytest.raises(NotFoundError, match="no endpoint registered for node 'n2'"):
        store.remove_node_endpoint("n2")
    store.close()
    reopened = make_store("s", workspace=None)
    assert [n.name for n in reopened.node_endpoints()] == ["n3"]
