"""``hgrun deploy`` and ``hgrun releases``; :func:`deploy_app` is also what ``hgrun run`` uses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from hgrun import errors
from hgrun.cli import appdir, views
from hgrun.cli.options import Context, app_name_or_here, app_option, json_option, pass_ctx
from hgrun.errors import HgrunError, InputError


@click.command()
@click.option(
    "--path",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="The app folder (default: the one holding ./hgrun.yaml).",
)
@json_option
@pass_ctx
def deploy(ctx: Context, folder: Path | None, as_json: bool) -> None:
    """Build the app in this folder (reusing an identical build) and release it."""
    app = _load_app(folder)
    release = deploy_app(ctx, app, quiet=as_json)
    if as_json:
        ctx.output.json(release)


def _load_app(folder: Path | None) -> appdir.AppDir:
    root = folder or appdir.find_app_dir(Path.cwd())
    if root is None:
        raise InputError(
            "no hgrun.yaml in this folder or above", "run from your app's folder, or pass --path"
        )
    return appdir.load(root)


def deploy_app(ctx: Context, app: appdir.AppDir, *, quiet: bool = False) -> dict[str, Any]:
    """Build ``app``'s context unless the server has it already, then release it."""
    out = ctx.output
    started = time.monotonic()
    base = f"/v1/apps/{app.name}"
    ctx.api.get(base)  # an app that does not exist fails here, before any upload
    digest = app.context_hash()
    if ctx.api.exists(f"{base}/builds/{digest}"):
        if not quiet:
            out.info(f"Context {digest[:12]} is already built: reusing it, nothing to upload.")
    else:
        if not quiet:
            out.info(f"Building {app.name} (context {digest[:12]}) ...")
        image = None
        for event in ctx.api.stream_lines(
            "POST",
            f"{base}/builds",
            params={"network": app.manifest.network, "dockerfile": app.dockerfile},
            content=app.tar_chunks(),
            headers={"X-Context-Hash": digest, "Content-Type": "application/x-tar"},
        ):
            if "stream" in event and not quiet:
                out.info("  " + event["stream"])
            elif "error" in event:
                raise errors.from_json(event["error"], 400)
            elif "image" in event:
                image = event["image"]
        if image is None:
            raise HgrunError("the build ended without an image", "try `hgrun deploy` again")
    release = ctx.api.post(
        f"{base}/releases",
        {"context_hash": digest, "procfile": app.procfile_text, "manifest": app.manifest_text},
    )
    if not quiet:
        took = time.monotonic() - started
        what = "Unchanged:" if release.get("unchanged") else "Released"
        image = release["image"][7:19]
        out.success(f"{what} {app.name} v{release['version']} ({image}) in {took:.1f}s")
    return release


@click.command()
@app_option
@json_option
@pass_ctx
def releases(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """List the app's releases, newest first."""
    items = ctx.api.get(f"/v1/apps/{app_name_or_here(app_name)}/releases")
    if as_json:
        ctx.output.json(items)
        return
    ctx.output.table(views.RELEASE_COLUMNS, [views.release_row(r) for r in items])


COMMANDS = (deploy, releases)
