"""Apps and what makes a release of one: the app itself, its config, builds and releases."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hgrun.errors import (
    ConflictError,
    HgrunError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
)
from hgrun.manifest import parse_manifest
from hgrun.models import APP_NAME, ENV_NAME, App, Manifest, Release, RunStatus, manifest_to_json
from hgrun.procfile import parse_procfile
from hgrun.server.api.requests import field, json_body, path_app, principal
from hgrun.server.api.responses import JSONResponse
from hgrun.server.api.views import app_json, release_json
from hgrun.server.networks import check_network
from hgrun.server.workers import run_in

if TYPE_CHECKING:
    from hgrun.server.api import Server

log = logging.getLogger("hgrun.api")

MAX_BUILD_CONTEXT = 2 * 1024**3


async def list_apps(server: Server, request: Request) -> Response:
    caller = principal(server, request, "read")
    return JSONResponse([app_json(a) for a in server.store.apps(caller.workspace)])


async def create_app(server: Server, request: Request) -> Response:
    caller = principal(server, request, "deploy")
    body = await json_body(request)
    name = field(body, "name", str)
    if not name or not APP_NAME.match(name):
        raise InputError(
            f"invalid app name {name!r}",
            "use lowercase letters, digits and dashes, starting with a letter",
        )
    app = server.store.create_app(caller.workspace, name)
    return JSONResponse(app_json(app), status_code=201)


async def get_app(server: Server, request: Request) -> Response:
    caller = principal(server, request, "read")
    app = path_app(server, caller, request)
    release = server.store.latest_release(app.id)
    return JSONResponse({**app_json(app), "release": release_json(release) if release else None})


async def get_config(server: Server, request: Request) -> Response:
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    return JSONResponse(server.store.config(app.id))


async def patch_config(server: Server, request: Request) -> Response:
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    body = await json_body(request)
    changes: dict[str, str | None] = {}
    for key, value in body.items():
        if not ENV_NAME.match(key):
            raise InputError(
                f"invalid config name {key!r}",
                "names are letters, digits and underscores, not starting with a digit",
            )
        if value is not None and not isinstance(value, str):
            raise InputError(f"config value of {key} must be a string or null")
        changes[key] = value
    unknown = sorted(
        k for k, v in changes.items() if v is None and k not in server.store.config(app.id)
    )
    if unknown:
        # Nothing changes and no release is made: a typo must not pass for an unset.
        raise NotFoundError(
            f"app {app.name} has no config var {', '.join(unknown)}",
            "`hgrun config` lists the app's config vars",
        )
    config = server.store.update_config(app.id, changes)
    latest = server.store.latest_release(app.id)
    if latest is not None:
        set_keys = sorted(k for k, v in changes.items() if v is not None)
        unset = sorted(k for k, v in changes.items() if v is None)
        words = ([f"Set {', '.join(set_keys)}"] if set_keys else []) + (
            [f"Unset {', '.join(unset)}"] if unset else []
        )
        _new_release(
            server,
            app,
            latest.image,
            latest.context_hash,
            latest.procfile,
            latest.manifest,
            "; ".join(words) or "Config change",
            caller.name,
        )
    # Values stay out of the server's own log: only the keys are logged.
    log.info("app %s: config keys changed: %s", app.name, ", ".join(sorted(changes)))
    return JSONResponse(config)


async def get_build(server: Server, request: Request) -> Response:
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    image = server.store.built_image(app.id, request.path_params["hash"])
    if image is None or await asyncio.to_thread(server.engine.image_id, image) is None:
        raise NotFoundError("no image built from this context")
    return JSONResponse({"context_hash": request.path_params["hash"], "image": image})


async def create_build(server: Server, request: Request) -> Response:
    """Spool the tar (streamed to disk, capped), build it, stream the output as NDJSON."""
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    context_hash = request.headers.get("x-context-hash", "")
    if len(context_hash) != 64 or any(c not in "0123456789abcdef" for c in context_hash):
        raise InputError("missing or malformed X-Context-Hash header (64 hex digits)")
    network = request.query_params.get("network", "none")
    check_network(network, server.allowed_networks, "the build")
    dockerfile = request.query_params.get("dockerfile", "Dockerfile")
    spool = tempfile.TemporaryFile(prefix="hgrun-context-")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BUILD_CONTEXT:
            spool.close()
            raise PayloadTooLargeError(
                f"build context over {MAX_BUILD_CONTEXT // 1024**2} MB",
                "add large files to .dockerignore",
            )
        spool.write(chunk)
    spool.seek(0)
    tag = f"hgrun/{caller.workspace}-{app.name}:{context_hash[:12]}"
    labels = {"hgrun.app": app.name, "hgrun.workspace": caller.workspace}

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def build() -> None:
            try:
                for line in server.engine.build(
                    spool,
                    tag=tag,
                    labels=labels,
                    network=network,
                    dockerfile=dockerfile,
                    limits=server.build_limits,
                ):
                    loop.call_soon_threadsafe(queue.put_nowait, {"stream": line})
                image = server.engine.image_id(tag)
                if image is None:
                    raise HgrunError("the build finished but left no image")
                server.store.record_image(app.id, context_hash, image)
                loop.call_soon_threadsafe(queue.put_nowait, {"image": image})
            except HgrunError as e:
                loop.call_soon_threadsafe(queue.put_nowait, {"error": e.to_json()})
            except Exception as e:
                log.exception("build of %s failed", app.name)
                loop.call_soon_threadsafe(
                    queue.put_nowait, {"error": {"error": "build_failed", "message": str(e)}}
                )
            finally:
                spool.close()
                loop.call_soon_threadsafe(queue.put_nowait, None)

        # On the build workers: a burst of builds never holds the threads that store output.
        task = asyncio.create_task(run_in(server.workers.builds, build))
        while (event := await queue.get()) is not None:
            yield json.dumps(event).encode() + b"\n"
        await task

    return StreamingResponse(events(), media_type="application/x-ndjson")


async def list_releases(server: Server, request: Request) -> Response:
    caller = principal(server, request, "read")
    app = path_app(server, caller, request)
    return JSONResponse([release_json(r) for r in server.store.releases(app.id)])


async def create_release(server: Server, request: Request) -> Response:
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    body = await json_body(request)
    context_hash = field(body, "context_hash", str) or ""
    procfile_text = field(body, "procfile", str, "") or ""
    manifest_text = field(body, "manifest", str)
    if manifest_text is None:
        raise InputError("field 'manifest' (the text of hgrun.yaml) is required")
    image = server.store.built_image(app.id, context_hash)
    if image is None:
        raise NotFoundError(
            f"no image built from context {context_hash[:12]}", "upload the build context first"
        )
    procfile = parse_procfile(procfile_text) if procfile_text.strip() else {}
    manifest = parse_manifest(manifest_text, procfile=procfile)
    check_network(manifest.network, server.allowed_networks, "hgrun.yaml")
    await server.launcher.users.check(manifest.user, image, "the app")
    if manifest.name != app.name:
        raise InputError(
            f"hgrun.yaml names app {manifest.name!r}, not {app.name!r}",
            "deploy from the app's own folder, or pass --app",
        )
    latest = server.store.latest_release(app.id)
    env = _release_env(server, app, manifest)
    if (
        latest is not None
        and latest.image == image
        and latest.procfile == procfile
        and manifest_to_json(latest.manifest) == manifest_to_json(manifest)
        and latest.env == env
    ):
        # Nothing changed: the live release stands, as `git push` of the same commit does.
        server.store.sync_scripts(caller.workspace, app.id, manifest.scripts)
        server.scheduler_wake()  # a new schedule may fire before the one it sleeps for
        return JSONResponse({**release_json(latest), "unchanged": True})
    release = _new_release(
        server, app, image, context_hash, procfile, manifest, "Deploy", caller.name
    )
    server.store.sync_scripts(caller.workspace, app.id, manifest.scripts)
    server.scheduler_wake()  # a new schedule may fire before the one it sleeps for
    return JSONResponse(release_json(release), status_code=201)


def _new_release(
    server: Server,
    app: App,
    image: str,
    context_hash: str,
    procfile: Any,
    manifest: Manifest,
    description: str,
    actor: str,
) -> Release:
    return server.store.create_release(
        app.id,
        image=image,
        context_hash=context_hash,
        procfile=procfile,
        manifest=manifest,
        env=_release_env(server, app, manifest),
        description=description,
        actor=actor,
    )


async def rollback(server: Server, request: Request) -> Response:
    """A new release that is a copy of an earlier one: its image, Procfile, manifest (so its
    scripts) and env, the app's config vars set back to what that release had (as Heroku's
    rollback). ``{"version": N}``, default: the one before the live release."""
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    body = await json_body(request)
    live = server.store.latest_release(app.id)
    if live is None:
        raise NotFoundError(f"app {app.name} has no release yet", "run `hgrun deploy` first")
    version = field(body, "version", int)
    if version is None:
        version = live.version - 1
        if version < 1:
            raise ConflictError(f"{app.name} has only v{live.version}: nothing to roll back to")
    target = next(
        (r for r in server.store.releases(app.id, limit=10**6) if r.version == version), None
    )
    if target is None:
        raise NotFoundError(
            f"app {app.name} has no release v{version}", "`hgrun releases` lists them"
        )
    if target.version == live.version:
        raise ConflictError(f"v{version} is the live release of {app.name} already")
    # The config vars the release had: its env minus what the manifest gave as defaults.
    config = {k: v for k, v in target.env.items() if target.manifest.env.get(k) != v}
    current = server.store.config(app.id)
    changes: dict[str, str | None] = {k: None for k in current if k not in config}
    changes.update({k: v for k, v in config.items() if current.get(k) != v})
    if changes:
        server.store.update_config(app.id, changes)
    release = server.store.create_release(
        app.id,
        image=target.image,
        context_hash=target.context_hash,
        procfile=target.procfile,
        manifest=target.manifest,
        env=target.env,
        description=f"Rollback to v{target.version}",
        actor=caller.name,
    )
    server.store.sync_scripts(caller.workspace, app.id, target.manifest.scripts)
    server.scheduler_wake()  # a new schedule may fire before the one it sleeps for
    log.info("app %s: rolled back to v%s as v%s", app.name, target.version, release.version)
    return JSONResponse(release_json(release), status_code=201)


async def destroy_app(server: Server, request: Request) -> Response:
    """Delete an app with its releases, config, scripts, runs and their output. Refused while
    a run of it is in flight (stop those first)."""
    caller = principal(server, request, "deploy")
    app = path_app(server, caller, request)
    active = [status for status in RunStatus if status.active]
    running = server.store.runs(caller.workspace, app_id=app.id, statuses=active, limit=5)
    if running:
        labels = ", ".join(r.label for r in running)
        raise ConflictError(
            f"app {app.name} has runs in flight ({labels})",
            f"stop them first: `hgrun stop {running[0].id}`",
        )
    server.store.delete_app(app.id)
    log.info("app %s destroyed by %s", app.name, caller.name)
    return JSONResponse({"name": app.name, "destroyed": True})


def _release_env(server: Server, app: App, manifest: Manifest) -> dict[str, str]:
    """Manifest defaults overridden by the app's config: the env a release snapshots."""
    return {**manifest.env, **server.store.config(app.id)}
