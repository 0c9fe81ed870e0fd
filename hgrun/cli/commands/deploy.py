"""``hgrun deploy`` and ``hgrun releases``; :func:`deploy_app` is also what ``hgrun run`` uses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from hgrun import errors
from hgrun.cli import appdir, views
from hgrun.cli.buildview import BuildView
from hgrun.cli.options import (
    Context,
    app_name_or_here,
    app_option,
    json_option,
    pass_ctx,
    show_rows,
)
from hgrun.errors import HgrunError, InputError


@click.command()
@click.option(
    "--path",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="The app folder (default: the one holding ./hgrun.yaml).",
)
@click.option(
    "--show-dockerfile",
    is_flag=True,
    help="Print the Dockerfile the build would use (generated for the stack, or yours); exit.",
)
@json_option
@pass_ctx
def deploy(ctx: Context, folder: Path | None, show_dockerfile: bool, as_json: bool) -> None:
    """Build the app in this folder (reusing an identical build) and release it.

    With no Dockerfile, one is generated for the app's stack (go, rust, java, ruby, php,
    python, node; see docs/stacks.md).
    """
    app = _load_app(folder)
    if show_dockerfile:
        _show_dockerfile(ctx, app)
        return
    release = deploy_app(ctx, app, quiet=as_json)
    if as_json:
        ctx.output.json(release)


def _show_dockerfile(ctx: Context, app: appdir.AppDir) -> None:
    """The Dockerfile on stdout (data), where it comes from on stderr."""
    if app.plan is not None:
        ctx.output.info(app.plan.reason)
        text = app.generated[app.dockerfile].decode()
    else:
        ctx.output.info(f"the app's own {app.dockerfile}")
        try:
            text = (app.root / app.dockerfile).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{app.dockerfile}: cannot read it ({e})") from e
    ctx.output.line(text.rstrip("\n"))


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
    digest, cached, total = build(ctx, app, quiet=quiet)
    release = ctx.api.post(
        f"{base}/releases",
        {"context_hash": digest, "procfile": app.procfile_text, "manifest": app.manifest_text},
    )
    if not quiet:
        took = time.monotonic() - started
        what = "Unchanged:" if release.get("unchanged") else "Released"
        image = release["image"][7:19]
        reused = f"; {cached} of {total} build steps from cache" if total else ""
        out.success(f"{what} {app.name} v{release['version']} ({image}) in {took:.1f}s{reused}")
    return release


def build_context(ctx: Context, app: appdir.AppDir, *, quiet: bool = False) -> str:
    """Build ``app``'s context unless the server has it already (no release); its hash."""
    return build(ctx, app, quiet=quiet)[0]


def build(ctx: Context, app: appdir.AppDir, *, quiet: bool = False) -> tuple[str, int, int]:
    """Build ``app``'s context unless the server has it already: its hash, and how many of
    the build's steps came from the cache, of how many (0, 0 when nothing was built)."""
    out = ctx.output
    base = f"/v1/apps/{app.name}"
    ctx.api.get(base)  # an app that does not exist fails here, before any upload
    digest = app.context_hash()
    if app.plan is not None and not quiet:
        out.info(app.plan.reason)  # "detected go (go.mod)"
    cached = total = 0
    if ctx.api.exists(f"{base}/builds/{digest}"):
        if not quiet:
            out.info(f"Context {digest[:12]} is already built: reusing it, nothing to upload.")
    else:
        if not quiet:
            out.info(f"Building {app.name} (context {digest[:12]}) ...")
        image = None
        # Installing dependencies may need a network that runs should not have.
        build_network = app.manifest.build.network or app.manifest.network
        live = ctx.terminal.stderr_isatty
        with BuildView(out, live=live, quiet=quiet, plan=app.plan) as view:
            for event in ctx.api.stream_lines(
                "POST",
                f"{base}/builds",
                params={"network": build_network, "dockerfile": app.dockerfile},
                content=app.tar_chunks(),
                headers={"X-Context-Hash": digest, "Content-Type": "application/x-tar"},
            ):
                if "stream" in event:
                    view.line(event["stream"])
                elif "error" in event:
                    raise view.failure(errors.from_json(event["error"], 400))
                elif "image" in event:
                    image = event["image"]
        if image is None:
            raise HgrunError("the build ended without an image", "try `hgrun deploy` again")
        cached, total = len(view.cached()), len(view.log.steps)
    return digest, cached, total


@click.command()
@app_option
@json_option
@pass_ctx
def releases(ctx: Context, app_name: str | None, as_json: bool) -> None:
    """List the app's releases, newest first."""
    items = ctx.api.get(f"/v1/apps/{app_name_or_here(app_name)}/releases")
    show_rows(ctx, items, as_json, views.RELEASE_COLUMNS, views.release_row)


@click.command("releases:rollback")
@click.argument("version", required=False)
@app_option
@json_option
@pass_ctx
def releases_rollback(
    ctx: Context, version: str | None, app_name: str | None, as_json: bool
) -> None:
    """Make a new release that copies VERSION (default: the one before the live release):
    its image, Procfile, scripts and config vars. Runs and cron use it from now on."""
    body = {}
    if version is not None:
        digits = version.removeprefix("v")
        if not digits.isdigit():
            raise InputError(f"invalid version {version!r}", "a version looks like v3 or 3")
        body["version"] = int(digits)
    name = app_name_or_here(app_name)
    release = ctx.api.post(f"/v1/apps/{name}/releases/rollback", body)
    if as_json:
        ctx.output.json(release)
    else:
        ctx.output.success(f"{release['description']}: {name} v{release['version']} is live")


COMMANDS = (deploy, releases, releases_rollback)
