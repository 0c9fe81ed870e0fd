"""The engine's listing, which every recovery pass reads: one call to dockerd, whatever the
number of containers, and each container's status right (its exit code is left to inspect)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from support.calls import counted

from hgrun.engine import ContainerSpec, ContainerStatus
from hgrun.engine.docker import DockerEngine
from hgrun.models import SIZES


def test_the_listing_is_one_call_with_each_status_and_inspect_tells_the_rest(
    docker_host: str, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = DockerEngine(docker_host)
    mark = {"hgrun.test-list": uuid.uuid4().hex}

    def made(script: str, name: str) -> str:
        spec = ContainerSpec(
            image=busybox_image,
            command=["sh", "-c", script],
            env={},
            labels={**mark, "hgrun.test-name": name},
            size=SIZES["starter"],
        )
        return engine.create(spec)

    ids = {name: made(script, name) for name, script in _SCRIPTS.items()}
    try:
        engine.start(ids["running"])
        engine.start(ids["exited"])
        assert engine.wait(ids["exited"]) == 5
        calls: list[str] = []
        for method in ("inspect_container", "containers"):
            monkeypatch.setattr(engine._api, method, counted(getattr(engine._api, method), calls))
        listed = {s.labels["hgrun.test-name"]: s for s in engine.list(mark)}
        assert calls == ["containers"], "one listing, no call per container"
        assert {name: s.status for name, s in listed.items()} == {
            "created": ContainerStatus.CREATED,
            "running": ContainerStatus.RUNNING,
            "exited": ContainerStatus.EXITED,
        }
        assert {name: s.id for name, s in listed.items()} == ids
        assert all(s.partial and s.exit_code is None for s in listed.values())
        full = engine.inspect(ids["exited"])
        assert (full.exit_code, full.partial) == (5, False)
        assert full.started_at is not None and full.finished_at is not None
    finally:
        for container in ids.values():
            engine.remove(container)
        asyncio.run(engine.aclose())
    assert engine.list(mark) == []


_SCRIPTS = {"created": "true", "running": "sleep 60", "exited": "exit 5"}
