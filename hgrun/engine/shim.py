"""The swarm engine's shim (``shim.c``): built once per version, its stdin frames, its config.

See ``shim.c`` for why it exists: a swarm task starts the moment it is placed, and a service
cannot set ``StdinOnce``, so stdin would never reach EOF.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker
import docker.errors

from hgrun.engine import AttachStream
from hgrun.engine.docker import _translate
from hgrun.engine.swarmspec import frame
from hgrun.errors import EngineError

SHIM_SOURCE = Path(__file__).with_name("shim.c")


class FramedAttach:
    """The node's attach stream, with stdin written as the shim's frames."""

    def __init__(self, inner: AttachStream) -> None:
        self._inner = inner

    async def read(self) -> tuple[int, bytes] | None:
        return await self._inner.read()

    async def write(self, data: bytes) -> None:
        if data:
            await self._inner.write(frame(data))

    async def close_stdin(self) -> None:
        # The EOF frame: the shim closes the command's stdin. A half-close here would close
        # the container's output streams instead (no StdinOnce in a service).
        with contextlib.suppress(EngineError):
            await self._inner.write(frame(b""))

    async def close(self) -> None:
        await self._inner.close()


def build_shim(cache: Path | None = None) -> Path:
    """The shim compiled (static, stripped) once per source version into the cache dir."""
    source = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hgrun"
    target = base / f"shim-{digest}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise EngineError(
            "the swarm engine needs a C compiler to build its shim (engine/shim.c)",
            "install gcc and libc6-dev (scripts/setup does)",
        )
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        out = Path(tmp) / "shim"
        done = subprocess.run(
            [compiler, "-static", "-Os", "-s", "-o", str(out), str(SHIM_SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise EngineError(f"cannot build the swarm shim: {done.stderr.strip()[:300]}")
        out.replace(target)
    return target


def swarm_config(api: docker.APIClient) -> tuple[str, str]:
    """The swarm config (id, name) holding the shim, made if missing: configs are immutable,
    so it is named by the binary's hash, and a config another server made meanwhile is used."""
    binary = build_shim()
    name = f"hgrun-{binary.name}"
    with _translate("cannot make the swarm config of hgrun's shim"):
        exact = [c for c in api.configs(filters={"name": name}) if c["Spec"]["Name"] == name]
        if exact:
            return str(exact[0]["ID"]), name
        try:
            created = api.create_config(name, binary.read_bytes(), labels={"hgrun": "shim"})
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise
            return str(api.configs(filters={"name": name})[0]["ID"]), name
    return str(created["ID"]), name
