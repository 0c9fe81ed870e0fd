"""``hgrun server``: the server in the foreground (its modules are imported only here)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from hgrun.cli.options import Context, Duration, pass_ctx
from hgrun.errors import InputError

MAX_BUILD_TIMEOUT = 7 * 24 * 3600.0
DURATION = Duration()


@click.command(context_settings={"show_default": True})
@click.option("--host", default="127.0.0.1", help="Address to bind.")
@click.option("--port", default=8765, type=click.IntRange(0, 65535))
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the store lives.")
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="A PostgreSQL store shared by several servers: postgresql://USER@HOST:PORT/DB"
    " (or HGRUN_STORE; default: SQLite in the data dir).",
)
@click.option("--docker-host", help="The Docker engine (default: DOCKER_HOST or the socket).")
@click.option(
    "--engine",
    "engine_kind",
    type=click.Choice(["docker", "swarm"]),
    default="docker",
    help="One Docker engine, or a Docker Swarm (--docker-host is then its manager).",
)
@click.option(
    "--placement",
    multiple=True,
    help="Swarm placement constraint for every run, e.g. node.labels.pool==batch (repeatable).",
)
@click.option(
    "--placement-timeout",
    default="60s",
    type=DURATION,
    help="How long a swarm run may wait for a node with room before it fails.",
)
@click.option(
    "--registry",
    help="Swarm: push each release's image to this registry (HOST:PORT) for the nodes to pull"
    " (default: stream it to each node).",
)
@click.option(
    "--engine-tls",
    type=click.Path(file_okay=False),
    help="TLS to tcp:// engine endpoints (the swarm's nodes, the manager): a folder with ca.pem,"
    " cert.pem and key.pem, as DOCKER_CERT_PATH.",
)
@click.option(
    "--node-lost-after",
    default="30s",
    type=DURATION,
    help="Swarm: a node away this long loses its runs (back sooner: they are taken up again).",
)
@click.option("--grace", default="60s", type=DURATION, help="Attached run kept after a drop.")
@click.option("--idle-timeout", default="30m", type=DURATION, help="Idle attached session.")
@click.option("--max-timeout", default="1h", type=DURATION, help="Cap on every run.")
@click.option("--max-upload", default=2048, help="Upload cap, in MB.")
@click.option(
    "--max-output",
    default=100,
    type=click.IntRange(1),
    help="Output kept per run, in MB: the newest, with a note of what was dropped.",
)
@click.option(
    "--keep-runs",
    default=1000,
    type=click.IntRange(0),
    help="Finished one-off runs kept per app (scripts keep their own history:).",
)
@click.option(
    "--keep-days",
    default=30,
    type=click.IntRange(0),
    help="Finished one-off runs older than this many days are deleted.",
)
@click.option(
    "--max-connections",
    default=1000,
    type=click.IntRange(1),
    help="Connections open at once; beyond it requests get 503 with Retry-After.",
)
@click.option(
    "--max-runs",
    default=1000,
    type=click.IntRange(0),
    help="Runs in flight at once, every kind (0: no cap); beyond it runs wait, queued, first in"
    " first out. Set it to what the host can run.",
)
@click.option(
    "--max-queue",
    default=1000,
    type=click.IntRange(0),
    help="Runs that may wait for --max-runs; beyond it new runs get 503 with Retry-After.",
)
@click.option(
    "--warm",
    default=4,
    type=click.IntRange(0),
    help="Containers kept started ahead of attached runs (`hgrun run`), one per kind of run"
    " (image, size, TTY...), each gone after 10 min idle; 0: none. Docker engine only.",
)
@click.option("--notify-webhook", help="Also POST every script notification here.")
@click.option("--notify-email", multiple=True, help="Also mail every notification here.")
@click.option("--smtp-url", help="SMTP server for email, e.g. smtp://127.0.0.1:25.")
@click.option("--mail-from", default="hgrun@localhost")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve HTTPS and WSS with this certificate (PEM; with --tls-key).",
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's key."
)
@click.option(
    "--allow-network",
    multiple=True,
    help="Let apps and builds use this network: host, or a named Docker network (repeatable);"
    " none and bridge need no permission.",
)
@click.option(
    "--build-memory",
    default=2048,
    type=click.IntRange(6),
    help="Memory of each image build's steps, in MB (no swap).",
)
@click.option(
    "--build-cpus",
    default=2.0,
    type=click.FloatRange(0.01, 1024),
    help="CPUs of each image build's steps.",
)
@click.option(
    "--build-timeout",
    default="30m",
    type=Duration(bounds=(1.0, MAX_BUILD_TIMEOUT)),
    help="An image build taking longer is stopped.",
)
@click.option(
    "--require-non-root",
    is_flag=True,
    help="Refuse runs that would be root: an app needs a non-root user: in hgrun.yaml, or an"
    " image whose USER is not root.",
)
@click.option(
    "--rotate-key",
    is_flag=True,
    help="Re-encrypt the store's secrets and the audit log under a new key, then exit"
    " (stop the server first).",
)
@pass_ctx
def server(
    ctx: Context,
    host: str,
    port: int,
    data_dir: Path | None,
    store_url: str | None,
    docker_host: str | None,
    engine_kind: str,
    placement: tuple[str, ...],
    placement_timeout: float,
    registry: str | None,
    engine_tls: str | None,
    node_lost_after: float,
    grace: float,
    idle_timeout: float,
    max_timeout: float,
    max_upload: int,
    max_output: int,
    keep_runs: int,
    keep_days: int,
    max_connections: int,
    max_runs: int,
    max_queue: int,
    warm: int,
    notify_webhook: str | None,
    notify_email: tuple[str, ...],
    smtp_url: str | None,
    mail_from: str,
    tls_cert: str | None,
    tls_key: str | None,
    allow_network: tuple[str, ...],
    build_memory: int,
    build_cpus: float,
    build_timeout: float,
    require_non_root: bool,
    rotate_key: bool,
) -> None:
    """Run the hgrun server (REST API, attach relay, supervisor) in the foreground."""
    from hgrun.engine import BuildLimits
    from hgrun.server.main import rotate_key as rotate
    from hgrun.server.main import serve
    from hgrun.server.notifier import Targets
    from hgrun.server.retention import Retention
    from hgrun.server.supervisor import Limits

    if data_dir is None:
        base = ctx.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        data_dir = Path(base) / "hgrun"
    store = store_target(store_url or ctx.environ.get("HGRUN_STORE") or None)
    if rotate_key:
        rows, records = rotate(data_dir, ctx.environ, store)
        ctx.output.success(
            f"Rotated the key of {data_dir}: {rows} secret(s) and {records} audit record(s)"
            " re-encrypted"
        )
        return
    if bool(tls_cert) != bool(tls_key):
        raise InputError("--tls-cert and --tls-key go together", "pass both, or neither")
    limits = Limits(
        grace=grace,
        idle_timeout=idle_timeout,
        max_timeout=max_timeout,
        max_upload=max_upload * 1024 * 1024,
    )

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    def show_secret(text: str) -> None:
        # A secret goes to a person at a terminal, never to a log: stderr when it is a tty.
        if sys.stderr.isatty():
            click.echo(text, err=True)

    if not math.isfinite(build_cpus):  # click's FloatRange lets nan through
        raise InputError(f"--build-cpus {build_cpus}: expected a number of CPUs", "e.g. 2")
    if smtp_url and not smtp_url.startswith("smtp://"):
        raise InputError(f"--smtp-url {smtp_url!r}: expected smtp://HOST:PORT")
    targets = Targets(
        webhook=notify_webhook, email=notify_email, smtp_url=smtp_url, mail_from=mail_from
    )
    serve(
        host=host,
        port=port,
        data_dir=data_dir,
        store_url=store,
        docker_host=docker_host,
        limits=limits,
        targets=targets,
        environ=ctx.environ,
        say=say,
        show_secret=show_secret,
        allowed_networks=frozenset(allow_network),
        tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
        engine_kind=engine_kind,
        placement=placement,
        placement_timeout=placement_timeout,
        retention=Retention(
            max_output=max_output * 1024 * 1024, keep_runs=keep_runs, keep_days=keep_days
        ),
        registry=registry,
        max_connections=max_connections,
        max_runs=max_runs,
        max_queue=max_queue,
        warm=warm,
        require_non_root=require_non_root,
        build_limits=BuildLimits(
            memory=build_memory * 1024 * 1024, cpus=build_cpus, timeout=build_timeout
        ),
        engine_tls=engine_tls,
        lost_after=node_lost_after,
    )


def store_target(url: str | None) -> str | None:
    """The ``--store`` URL, checked: a PostgreSQL URL, or None for SQLite in the data dir."""
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        shown = url.split("://", 1)[0] + "://..." if "://" in url else url
        raise InputError(
            f"--store {shown!r}: expected a postgresql:// URL",
            "e.g. --store postgresql://hgrun@127.0.0.1:5432/hgrun; leave it out for SQLite"
            " in the data dir",
        )
    return url


COMMANDS = (server,)
