"""App folders on the busybox test image, created and deployed through the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from support.cli import Cli, check
from support.server import HgrunServer

BUSYBOX_IMAGE = "hgrun-test/busybox:latest"
"""FROM scratch, a static busybox, CMD ["sh"]: made by scripts/images, never pulled."""
BUSYBOX_DOCKERFILE = f"FROM {BUSYBOX_IMAGE}\nCOPY . /app\nWORKDIR /app\n"


def unique(prefix: str) -> str:
    """A name no other test (or xdist worker) uses: ``prefix-<8 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_busybox_app(
    root: Path,
    name: str,
    procfile: str = "hello: echo hello\n",
    manifest_extra: str = "",
    *,
    dockerfile: str = BUSYBOX_DOCKERFILE,
) -> Path:
    """An app folder on the busybox test image: Dockerfile, hgrun.yaml and Procfile."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    (root / "hgrun.yaml").write_text(
        f"name: {name}\nbuild:\n  dockerfile: Dockerfile\n{manifest_extra}"
    )
    (root / "Procfile").write_text(procfile)
    return root


def write_script_app(root: Path, name: str, scripts: str, *, top: str = "") -> Path:
    """An app folder whose hgrun.yaml declares ``scripts`` (YAML text, indented two spaces under
    ``scripts:``); ``top`` adds top-level keys (``network: host``). The image is the busybox
    one as is: the scripts run in ``/``."""
    return write_busybox_app(
        root, name, manifest_extra=f"{top}scripts:\n{scripts}", dockerfile=f"FROM {BUSYBOX_IMAGE}\n"
    )


def create_and_deploy(cli: Cli, root: Path, name: str, server: HgrunServer | None = None) -> str:
    """``hgrun apps:create NAME`` then ``hgrun deploy`` in ``root``; the name."""
    check(cli("apps:create", name, server=server))
    check(cli("deploy", cwd=root, server=server))
    return name


def deploy_busybox_app(
    cli: Cli,
    root: Path,
    name: str | None = None,
    *,
    server: HgrunServer | None = None,
    procfile: str = "hello: echo hello\n",
) -> str:
    """Create and deploy a busybox app in ``root``; return its name."""
    name = name or unique("bb")
    write_busybox_app(root, name, procfile)
    return create_and_deploy(cli, root, name, server)


def own_server_app(
    hgrun_server: Callable[..., HgrunServer], cli: Cli, tmp_path: Path, prefix: str, *args: str
) -> tuple[HgrunServer, Path, str]:
    """A server of the test's own (started with ``args``) and a busybox app deployed on it in
    ``tmp_path / "app"``: (server, app folder, app name)."""
    server = hgrun_server(*args)
    root = tmp_path / "app"
    return server, root, deploy_busybox_app(cli, root, unique(prefix), server=server)


def deploy_script_app(
    cli: Cli,
    root: Path,
    name: str,
    scripts: str,
    *,
    top: str = "",
    server: HgrunServer | None = None,
) -> str:
    """Create ``name``, write its folder declaring ``scripts`` and deploy it; return the name."""
    write_script_app(root, name, scripts, top=top)
    return create_and_deploy(cli, root, name, server)
