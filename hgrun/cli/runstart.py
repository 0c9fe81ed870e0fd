"""What ``hgrun run`` does once its arguments are read: the run made and attached, or detached.

Both readers of the arguments land here with a :class:`RunArgs`: click's (``hgrun run --help``,
errors with their hints, everything unusual) in :mod:`hgrun.cli.commands.runs`, and the quick
one of :mod:`hgrun.cli.runfast`, which starts without importing click. An attached run without
uploads creates its run on the attach handshake itself (``/v1/apps/{app}/runs/attach``): one
connection, one round trip.
"""

from __future__ import annotations

import contextlib
import os
import stat

from hgrun.cli import appdir, runargs, trace
from hgrun.cli.client import Settings, cli_hint, unreachable
from hgrun.cli.invocation import Context, app_name_or_here, duration_flag, env_pair
from hgrun.cli.output import duration
from hgrun.errors import AuthError, ForbiddenError, HgrunError, InputError, UnreachableError
from hgrun.record import Record

# This module is on the start path of `hgrun run`: what only the type checker needs, or only
# some runs, is imported where it is used (tests/test_cli_imports.py holds the list).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from typing import Any

    from hgrun.cli import foldercache, slotwait, uploads, wsclient
    from hgrun.cli.terminal import Terminal

NO_COMMAND = "give a command, e.g. `hgrun run bash`, or a process type (--type)"


class RunArgs(Record):
    """``hgrun run``'s arguments as read (the options before the command; those after it are
    taken by :func:`start`). ``raw``: the words after ``run``, as typed."""

    __slots__ = (
        "command", "raw", "app_name", "env_pairs", "size", "process_type", "detached", "files",
        "timeout", "no_stdin", "build", "tty", "exit_code", "no_build", "as_json",
    )  # fmt: skip

    def __init__(
        self,
        command: tuple[str, ...],
        raw: tuple[str, ...],
        app_name: str | None = None,
        env_pairs: tuple[str, ...] = (),
        size: str | None = None,
        process_type: str | None = None,
        detached: bool = False,
        files: tuple[str, ...] = (),
        timeout: str | None = None,
        no_stdin: bool = False,
        build: bool = False,
        tty: bool | None = None,
        exit_code: bool = False,
        no_build: bool = False,
        as_json: bool = False,
    ) -> None:
        self.command = command
        self.raw = raw
        self.app_name = app_name
        self.env_pairs = env_pairs
        self.size = size
        self.process_type = process_type
        self.detached = detached
        self.files = files
        self.timeout = timeout
        self.no_stdin = no_stdin
        self.build = build
        self.tty = tty
        self.exit_code = exit_code
        self.no_build = no_build
        self.as_json = as_json


def start(ctx: Context, args: RunArgs) -> int:
    """Run ``args``; the exit status (the command's, attached; 0 once detached)."""
    trace.mark("parsed")
    command, app_name, env_pairs = args.command, args.app_name, args.env_pairs
    size, process_type, timeout = args.size, args.process_type, args.timeout
    detached, as_json = args.detached, args.as_json
    if command and args.raw.count("--") == command.count("--"):
        # No `--` before the command: hgrun's options after it are hgrun's.
        split = runargs.split_after_command(command)
        command = split.command
        app_name = _once("--app", app_name, split.app)
        size = _once("--size", size, split.size)
        process_type = _once("--type", process_type, split.type)
        env_pairs = env_pairs + split.env
        noticed = [w for w in split.taken if not w.startswith(("-a ", "--app"))]
        if noticed:
            ctx.output.info(
                f"hgrun: took {', '.join(noticed)} after the command as hgrun's option(s);"
                " to give them to the command, put the command after --"
            )
    if not command and not process_type:  # the parsers refuse it first; never reached
        raise InputError(NO_COMMAND)
    env = dict(env_pair(p, "--env") for p in env_pairs)
    runargs.check_text(command, env_pairs)
    if size is not None:
        runargs.check_size(size)
    asked_timeout = duration_flag("--timeout", timeout) if timeout is not None else None
    entries: list[uploads.Upload] = []
    if args.files:
        from hgrun.cli import uploads

        entries = uploads.plan(args.files)
    name, built, folder_note = _prepare_app(
        ctx, app_name, args.build, check_folder=not args.no_build
    )
    terminal = ctx.terminal
    if args.no_stdin:
        terminal = terminal.without_stdin()
    elif not detached:
        _hint_stdin_loop(ctx)
    tty = args.tty
    use_tty = (terminal.stdin_isatty and terminal.stdout_isatty) if tty is None else tty
    if use_tty and not detached and "TERM" not in env and ctx.environ.get("TERM"):
        # The remote shell draws for the local terminal (as Scalingo's and Heroku's CLIs do).
        env["TERM"] = ctx.environ["TERM"]
    body: dict[str, Any] = {
        "command": list(command),
        "env": env,
        "size": size,
        "timeout": timeout,
        "detached": detached,
        "tty": use_tty and not detached,
        "uploads": bool(entries),
    }
    if process_type:
        body["type"] = process_type
    if built is not None:
        body["build"], body["procfile"] = built.context_hash, built.procfile_text
    opened: wsclient.WebSocket | None = None
    try:
        # The "request" mark: as the attach handshake leaves (wsclient), or as the POST does.
        created = None if detached or entries else _create_attached(ctx, name, body, folder_note)
        if created is not None:
            opened, run_info = created
        else:
            if folder_note is not None:
                folder_note.start()
            trace.mark("request")
            run_info = ctx.api.post(f"/v1/apps/{name}/runs", body)
    finally:  # said also when the create fails: the folder may be why
        if folder_note is not None and (note := folder_note.result()):
            ctx.output.info(note)
    trace.mark("created")
    run_id = run_info["id"]
    if (
        asked_timeout is not None
        and run_info.get("timeout")
        and run_info["timeout"] < asked_timeout
    ):
        ctx.output.info(
            f"hgrun: --timeout {timeout} is over the server's limit: {run_info['label']} stops"
            f" after {duration(run_info['timeout'])} (the server's --max-timeout)"
        )
    queued = run_info["status"] == "queued"
    if entries and queued:
        # The files go into the run's container, made once the run has a slot: wait for it.
        _wait_for_slot(ctx, run_id)
        queued = False
    if entries:
        _upload(ctx, run_id, entries)
    if detached:
        if as_json:
            ctx.output.json(run_info)
        else:
            ctx.output.line(run_info["label"])
            if ctx.terminal.stderr_isatty and queued:
                from hgrun.cli.views import waiting_line

                ctx.output.info(waiting_line(run_info).replace("waiting for", "queued for"))
            if ctx.terminal.stderr_isatty:
                ctx.output.info(
                    f"Follow it with `hgrun logs -t --run {run_id}`;"
                    f" stop it with `hgrun stop {run_id}`."
                )
        return 0
    return attach_run(ctx, run_id, use_tty, terminal, opened, queued=queued)


def _waiting(ctx: Context, run_id: int) -> slotwait.Waiting:
    """Whether the run still waits for a slot of the server, shown on a terminal's stderr."""
    from hgrun.cli import slotwait

    return slotwait.Waiting(
        lambda: dict(ctx.api.get(f"/v1/runs/{run_id}")),
        ctx.terminal.stderr if ctx.terminal.stderr_isatty else None,
    )


def _wait_for_slot(ctx: Context, run_id: int) -> None:
    """Wait (showing it) until the run has a slot of the server; Ctrl-C stops the run."""
    from hgrun.cli import slotwait

    waiting = _waiting(ctx, run_id)
    try:
        slotwait.wait_out(waiting)
    except KeyboardInterrupt:
        waiting.clear()
        with contextlib.suppress(HgrunError):
            ctx.api.close()  # the interrupt may have cut a request short: a fresh connection
            ctx.api.post(f"/v1/runs/{run_id}/stop")
        raise


def _create_attached(
    ctx: Context, app: str, body: dict[str, Any], alongside: _Background | None = None
) -> tuple[wsclient.WebSocket, dict[str, Any]] | None:
    """Create the run and attach to it in one handshake (``/v1/apps/{app}/runs/attach``): the
    WebSocket and the run made. None when the request is too long for a header, or the server
    predates that endpoint: then it is a POST and an attach. ``alongside`` is started once the
    request has left (the folder check: it then takes no CPU from the request's making)."""
    from hgrun.cli import wsclient
    from hgrun.relay import runheader

    request = runheader.encode(body)
    if len(request) > runheader.MAX_REQUEST:
        return None
    settings = ctx.settings
    try:
        ws = wsclient.create_and_connect(
            settings.ws_url(f"/v1/apps/{app}/runs/attach"),
            {**settings.headers(), runheader.HEADER: request},
            f"a new run of {app}",
            settings.ssl_context(),
            sent=None if alongside is None else alongside.start,
        )
    except (AuthError, ForbiddenError) as e:
        raise cli_hint(e, settings) from None
    except UnreachableError as e:
        if isinstance(e.__cause__, OSError) and "certificate" not in e.message:
            # Said as a POST would say it: the server is not there.
            raise unreachable(settings.url, e.__cause__) from e.__cause__
        raise
    if ws is None:
        return None
    try:
        run_info = runheader.decode(ws.headers.get(runheader.HEADER.lower(), ""))
        if not isinstance(run_info, dict) or not isinstance(run_info.get("id"), int):
            raise InputError(f"the server's {runheader.HEADER} answer holds no run")
    except BaseException:
        ws.close()
        raise
    return ws, run_info


def _once(flag: str, before: str | None, after: str | None) -> str | None:
    if before is not None and after is not None and before != after:
        raise InputError(f"{flag} given twice ({before!r} and {after!r})")
    return after if after is not None else before


def _hint_stdin_loop(ctx: Context) -> None:
    """Say so when stdin is a file something already read part of: a `while read` loop's.

    A shell's `read` on a regular file reads a line and leaves the offset after it; `hgrun run`
    would then send the rest of the file to the command, and the loop ends after one turn.
    """
    stdin = ctx.terminal.stdin
    if stdin is None or ctx.terminal.stdin_isatty:
        return
    with contextlib.suppress(OSError, ValueError):
        fd = stdin.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.lseek(fd, 0, os.SEEK_CUR) > 0:
            ctx.output.info(
                "hgrun: stdin is a file already partly read (a `while read` loop?); the run"
                " reads the rest of it. Pass -n/--no-stdin to leave stdin to the loop."
            )


class _Built(Record):
    """What `--build` made: the folder's context (built) and its Procfile."""

    __slots__ = ("context_hash", "procfile_text")

    def __init__(self, context_hash: str, procfile_text: str) -> None:
        self.context_hash = context_hash
        self.procfile_text = procfile_text


class _Background:
    """``fn()`` in a daemon thread, started by :meth:`start` (at the latest by :meth:`result`);
    :meth:`result` waits for its value (or raises what it raised). A CLI that exits meanwhile
    does not wait for it."""

    def __init__(self, fn: Callable[[], str | None]) -> None:
        self._fn = fn
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        """Start ``fn()``, unless it is started already; its thread."""
        if self._thread is None:
            import threading  # only a run with the folder check starts a thread

            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self._thread

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller of result()
            self._error = e

    def result(self) -> str | None:
        self.start().join()
        if self._error is not None:
            raise self._error
        return self._value


def _prepare_app(
    ctx: Context, app_name: str | None, build: bool, *, check_folder: bool = True
) -> tuple[str, _Built | None, _Background | None]:
    """The app to run, with --build what this folder's build is, and the folder check.

    Never deploys. From the folder of the app being run, when the folder differs from the live
    release, one line on stderr says so and how to act on it: that check (the folder's answers
    from the cache or the folder loaded and hashed, the live release asked for) runs in a
    thread alongside the run's create, started (by the caller) once the create's request has
    left; its note is the returned result. ``check_folder`` False (``--no-build``) skips it.
    """
    root = appdir.find_app_folder(os.getcwd())
    name = app_name or (appdir.quick_name(root) if root is not None else None)
    if build:
        if root is None:
            raise InputError("--build needs an app folder", "run from your app's folder")
        app = appdir.load(appdir.as_path(root))
        if app_name and app_name != app.name:
            raise InputError(
                f"--build builds this folder, which is app {app.name}, not {app_name}",
                "drop --app, or run from that app's folder",
            )
        # Only now: the build view is not loaded for a run of the live release.
        from hgrun.cli.commands.deploy import build_context

        digest = build_context(ctx, app, quiet=not ctx.terminal.stderr_isatty)
        return app.name, _Built(digest, app.procfile_text), None
    if name is None:
        name = app_name_or_here(app_name)  # the manifest parsed whole (its errors are shown)
    note = None
    if check_folder and root is not None and appdir.quick_name(root) in (None, name):
        settings, folder = ctx.settings, root
        note = _Background(lambda: _folder_differs(settings, folder, name))
    return name, None, note


def _folder_differs(settings: Settings, root: str, name: str) -> str | None:
    """The note to show when the folder differs from ``name``'s live release (or does not
    load); None when it is the live release. The folder's answers come from the cache while it
    is unchanged (:mod:`hgrun.cli.foldercache`); the live release is asked on its own API
    connection: this runs in a thread. An API error is left to the run's create, which meets it
    too."""
    import time

    from hgrun.cli import foldercache

    check = foldercache.FolderCheck(
        root, foldercache.directory(os.environ), cwd=os.getcwd(), clock=time.time_ns
    )
    try:
        return folder_note(check, root, name, lambda: _live_release(settings, name))
    finally:
        check.save()


def folder_note(
    check: foldercache.FolderCheck,
    root: str,
    name: str,
    live_release: Callable[[], dict[str, Any] | None],
) -> str | None:
    """:func:`_folder_differs`'s decision: ``live_release()`` is ``name``'s live release as the
    server tells it (None: none, or the server could not say)."""
    found, error = check.manifest()
    if error is not None:
        if appdir.quick_name(root) == name:
            return (
                f"hgrun: running the live release of {name}; this folder does not load"
                f" ({error}), so `hgrun deploy` would fail"
            )
        return None
    if found != name:
        return None
    live = live_release()
    if live is None:
        return None  # the server says "no release yet, run `hgrun deploy`"
    if live["context_hash"] != check.context_hash():
        return (
            f"hgrun: this folder differs from {name}'s live release v{live['version']}, which"
            " is what runs; `hgrun deploy` releases the folder, `hgrun run --build` runs it"
            " this once"
        )
    return None


def _live_release(settings: Settings, name: str) -> dict[str, Any] | None:
    """``name``'s live release, or None (none yet, or the server could not say): one GET on
    a bare socket (:mod:`hgrun.cli.quickget`: http.client's imports would cost the run's
    create ~25 ms of CPU)."""
    from hgrun.cli import quickget

    app = quickget.get_json(settings, f"/v1/apps/{name}")
    release = app.get("release") if isinstance(app, dict) else None
    return release if isinstance(release, dict) else None


def _upload(ctx: Context, run_id: int, entries: list[uploads.Upload]) -> None:
    from hgrun.cli import uploads

    total = uploads.total_bytes(entries)
    path = f"/v1/runs/{run_id}/files"
    pieces, length = uploads.tar_pieces(entries), uploads.tar_size(entries)
    if not ctx.terminal.stderr_isatty:
        ctx.api.put_file_pieces(path, pieces, length)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=ctx.output.err,
        transient=True,
    ) as progress:
        task = progress.add_task("Uploading", total=total)
        ctx.api.put_file_pieces(path, pieces, length, lambda n: progress.advance(task, n))
    ctx.output.info(f"Uploaded {len(entries)} file(s), {total / 1024**2:.1f} MB to /tmp/uploads")


def attach_run(
    ctx: Context,
    run_id: int,
    tty: bool,
    terminal: Terminal | None = None,
    opened: wsclient.WebSocket | None = None,
    *,
    queued: bool = False,
) -> int:
    """Attach the terminal to run ``run_id`` until it ends (``opened``: a WebSocket already
    open on it); its exit code. ``queued``: the run waits for a slot of the server; the wait
    is shown before the session goes raw, and Ctrl-C meanwhile stops the run."""
    from hgrun.cli.attach import RECONNECT_WINDOW, attach_blocking

    settings = ctx.settings
    url = settings.ws_url(f"/v1/runs/{run_id}/attach")
    waiting = _waiting(ctx, run_id) if queued else None
    try:
        return attach_blocking(
            url,
            settings.headers(),
            terminal or ctx.terminal,
            tty=tty,
            run_id=run_id,
            ssl=settings.ssl_context(),
            reconnect=RECONNECT_WINDOW,
            opened=opened,
            wait=waiting,
        )
    except (AuthError, ForbiddenError) as e:
        raise cli_hint(e, settings) from None
    except KeyboardInterrupt:
        # Without a TTY, or while the run waits for a slot, Ctrl-C is ours: stop the remote
        # command too, as `docker run` does.
        if waiting is not None:
            waiting.clear()
        with contextlib.suppress(HgrunError):
            ctx.api.close()  # the interrupt may have cut a request short: a fresh connection
            stopped = ctx.api.post(f"/v1/runs/{run_id}/stop")
            if waiting is not None and waiting.info.get("status", "queued") == "queued":
                ctx.output.info(f"hgrun: stopped {stopped['label']}, which waited for a slot")
        raise
