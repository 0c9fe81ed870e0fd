"""Which Docker networks a run or a build may join: a pure decision on the server's policy.

``none`` and ``bridge`` are every app's to use. ``host`` shares the host's network stack (the
server's own ports, the metadata endpoints of a cloud host), and a named network reaches the
containers on it (a database, another tenant's app): both need the server's permission,
``hgrun server --allow-network NAME`` (repeatable). ``container:<id>`` joins another container's
namespace and is never a valid name here.
"""

from __future__ import annotations

from collections.abc import Collection

from hgrun.errors import ForbiddenError

OPEN_NETWORKS = frozenset({"none", "bridge", "default"})


def check_network(network: str, allowed: Collection[str], what: str) -> None:
    """Raise ForbiddenError unless ``what`` may join ``network`` under ``allowed``."""
    if network in OPEN_NETWORKS or (network in allowed and ":" not in network):
        return
    raise ForbiddenError(
        f"{what} asks for network {network!r}, which this server does not allow",
        f"the server's operator may allow it: hgrun server --allow-network {network}"
        if ":" not in network
        else "use none, bridge, or a named network the server allows",
    )
