"""How a release's image reaches the swarm's nodes, never through a public registry.

With ``--registry``: pushed once from the manager, and named by that registry's digest. Without:
streamed from the manager to each ready node that lacks it (``docker save | docker load``
through the Engine API, chunk by chunk, never whole in memory), and named by its full id, which
a node never tries to pull.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import docker
import docker.errors

from hgrun.engine.docker import _translate
from hgrun.errors import EngineError


class Node(Protocol):
    id: str
    name: str
    api: docker.APIClient


class ImageShipper:
    """Ships images from the manager (``api``) to the nodes ``nodes()`` lists (the ready ones)."""

    def __init__(
        self,
        api: docker.APIClient,
        registry: str | None,
        nodes: Callable[[], Sequence[Node]],
    ) -> None:
        self._api = api
        self.registry = registry
        self._nodes = nodes
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._on: set[tuple[str, str]] = set()  # (node id, image id) known to be there
        self._pushed: dict[str, str] = {}  # image id -> its reference in the registry

    def ship(self, image: str, image_id: str) -> str:
        """Make ``image`` (whose id is ``image_id``) reachable from every node; return the
        reference a service names it by."""
        # One distribution of an image at a time: a burst of first runs of a release would
        # otherwise push (or load) it once each, and concurrent pushes of one blob make the
        # registry answer 500.
        with self._lock:
            lock = self._locks.setdefault(image_id, threading.Lock())
        with lock:
            if self.registry:
                return self._push(image_id)
            self._spread(image, image_id)
            return image_id

    def _spread(self, image: str, image_id: str) -> None:
        for node in self._nodes():
            if (node.id, image_id) in self._on:
                continue
            try:
                node.api.inspect_image(image_id)
            except docker.errors.NotFound:
                with _translate(f"cannot copy image {image} to swarm node {node.name}"):
                    stream = self._api.get_image(image, chunk_size=1 << 20)
                    node.api.load_image(stream, quiet=True)
            except (docker.errors.DockerException, OSError) as e:
                raise EngineError(f"cannot reach swarm node {node.name}: {e}") from e
            self._on.add((node.id, image_id))

    def _push(self, image_id: str) -> str:
        """Push to the registry and return REGISTRY/hgrun/release:<image id>@<digest> (a tag
        never names two images; a node that has the digest does not pull again)."""
        repository = f"{self.registry}/hgrun/release"
        tag = image_id.removeprefix("sha256:")
        known = self._pushed.get(image_id)
        if known is not None:
            return known
        reference = f"{repository}:{tag}"
        with _translate(f"cannot push the image to the registry {self.registry}"):
            self._api.tag(image_id, repository, tag)
            for event in self._api.push(repository, tag, stream=True, decode=True):
                digest = (event.get("aux") or {}).get("Digest")
                if digest:
                    reference = f"{repository}:{tag}@{digest}"
                if "error" in event:
                    raise EngineError(
                        f"cannot push the image to the registry {self.registry}:"
                        f" {str(event['error']).strip()}",
                        "check --registry, and that the manager's dockerd lists it in"
                        " --insecure-registry if it serves plain HTTP",
                    )
        self._pushed[image_id] = reference
        return reference
