"""What every hgrun benchmark shares: its own server, the docker CLI, the machine, clean-up.

A benchmark (bench/run.py, bench/scripts.py) starts a private ``hgrun server`` on a free
127.0.0.1 port with a temp data dir (:class:`Server`), talks to the engine through the ``docker``
CLI, and at the end removes what it made: the server's containers (by its instance label), its
own (by a label it chose), the app's image tags and the temp dir (:func:`remove_leftovers`,
:func:`remove_app_images`, :func:`session`). It never asserts on timings.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

DEFAULT_DOCKER_HOST = "unix:///tmp/dk/docker.sock"
DEFAULT_BASE_IMAGE = "hgrun-test/busybox:latest"
ADMIN_TOKEN = re.compile(r"admin token saved in (\S+) ")


def say(text: str) -> None:
    """Progress goes to stderr, so `--json` keeps stdout clean."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def default_cli() -> list[str]:
    """How to invoke hgrun: $HGRUN_BENCH_CLI, the console script next to this Python, or -m."""
    given = os.environ.get("HGRUN_BENCH_CLI")
    if given:
        return shlex.split(given)
    script = Path(sysconfig.get_path("scripts")) / "hgrun"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "hgrun.cli.main"]


REPO = Path(__file__).resolve().parent.parent


def venv_cli(tmp: Path) -> list[str]:
    """hgrun as a user installs it: a fresh virtualenv in ``tmp`` (none of this Python's
    site-packages and their ``.pth`` files, which can cost a process start tens of ms), with
    this checkout installed by pip (not editable: bytecode compiled at install time)."""
    venv = tmp / "venv"
    say(f"installing this checkout into a fresh virtualenv ({venv}) ...")
    for argv in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(REPO)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            raise BenchError(f"{shlex.join(argv)} failed: {' '.join(last) or done.returncode}")
    return [str(venv / "bin" / "hgrun")]


def wait_exact(proc: subprocess.Popen[Any], timeout: float) -> int:
    """``proc``'s exit status, seen the moment it exits: a blocking ``waitpid``, and a timer
    that kills it past ``timeout`` (then :class:`subprocess.TimeoutExpired`).

    ``Popen.wait(timeout)`` polls, sleeping up to 50 ms between looks: every start-to-exit
    sample of both sides landed on a 50 ms grid (266, 316, 366, 417 ms) and the ratio moved by
    whole steps of it."""
    fired = threading.Event()  # the timer's own `finished` is set by cancel() too

    def kill() -> None:
        fired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    if fired.is_set():
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return code


def docker_cli() -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise BenchError("the docker CLI is not on PATH")
    return docker


def engine() -> tuple[str, str]:
    """The engine and the app's base image: $DOCKER_HOST and $HGRUN_BENCH_BASE_IMAGE."""
    docker_host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    base_image = os.environ.get("HGRUN_BENCH_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    return docker_host, base_image


def host_cpu_seconds() -> float:
    """CPU time every process on the host has used since boot: user, nice, system, irq and
    softirq (not idle, iowait, or the time a hypervisor stole)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields[:3]) + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def bench_env(tmp: Path, docker_host: str) -> dict[str, str]:
    """The environment of every hgrun and docker command: this engine, a config dir of its own."""
    return {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "NO_COLOR": "1",
    }


def check_base_image(docker: str, env: dict[str, str], image: str) -> None:
    """Fail unless ``image`` is on the engine already: a benchmark never pulls."""
    probe = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", image],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if probe.returncode != 0:
        raise BenchError(
            f"image {image} is not on the engine at {env.get('DOCKER_HOST')}"
            " (nothing is pulled): make it with scripts/images --busybox"
        )


class Workspace:
    """What every benchmark works with: its temp dir, the engine and base image, the hgrun and
    docker commands, their environment, and an app of a name no other bench uses."""

    def __init__(
        self, tmp: Path, docker_host: str, base_image: str, cli: list[str] | None = None
    ) -> None:
        self.tmp = tmp
        self.docker_host = docker_host
        self.base_image = base_image
        self.cli = cli or default_cli()
        self.docker = docker_cli()
        self.app = f"bench-{uuid.uuid4().hex[:8]}"
        self.app_dir = tmp / "app"
        self.env = bench_env(tmp, docker_host)


# -- the hgrun server ----------------------------------------------------------------------


@dataclass
class Server:
    """An ``hgrun server`` subprocess; its output is read by a thread into ``output``."""

    cli: list[str]
    data_dir: Path
    docker_host: str
    env: dict[str, str]
    args: tuple[str, ...] = ()  # more `hgrun server` flags
    stop_timeout: float = 30.0  # SIGTERM, then SIGKILL after this
    token: str = ""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait for /v1/health (and, on a first start, the admin token line)."""
        argv = [
            *self.cli, "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--docker-host", self.docker_host, *self.args,
        ]  # fmt: skip
        self.output = []
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.data_dir,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.token and self._healthy():
                return
            time.sleep(0.1)
        log = "".join(self.output[-40:])
        raise BenchError(f"hgrun server did not come up (or printed no admin token):\n{log}")

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        for raw in process.stdout or ():
            line = raw.decode(errors="replace")
            self.output.append(line)
            if m := ADMIN_TOKEN.search(line):
                self.token = Path(m.group(1)).read_text().strip()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError("the server is not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def instance(self) -> str | None:
        """The server's instance id (the label on every container it makes)."""
        db = self.data_dir / "hgrun.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None

    def stop(self) -> None:
        if self.process is None or not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- clean-up ------------------------------------------------------------------------------


def containers(docker: str, env: dict[str, str], *labels: str) -> list[str]:
    """Ids of the containers (running or not) carrying every one of ``labels``."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    return subprocess.run(
        [docker, "ps", "-aq", *filters], env=env, capture_output=True, text=True, timeout=600
    ).stdout.split()


RM_AT_ONCE = 1  # `docker rm -f` of one container each, this many at a time


def remove_leftovers(docker: str, env: dict[str, str], labels: Sequence[str]) -> int:
    """Remove every container carrying one of ``labels``; how many there were.

    One container per `docker rm -f`, one at a time: the CLI removes the ids it is given all
    at once, and running containers exiting together deadlock dockerd 20.10 (two libnetwork
    locks taken in opposite orders by the exit handler's sandbox delete and the endpoint watch
    loop; seen with 50 per call, its goroutine dump in bench/README.md, and again with 4 calls
    at a time after 857 of 1,000 docker-side containers). hgrun's own runs on network none no
    longer go through libnetwork."""
    removed = 0
    for label in labels:
        ids = containers(docker, env, label)
        if not ids:
            continue
        say(f"removing {len(ids)} leftover container(s) labelled {label}")

        def rm(cid: str) -> bool:
            try:
                argv = [docker, "rm", "-f", cid]
                subprocess.run(argv, env=env, capture_output=True, timeout=120)
            except subprocess.TimeoutExpired:
                return False
            return True

        with concurrent.futures.ThreadPoolExecutor(RM_AT_ONCE) as pool:
            done = list(pool.map(rm, ids))
        if not all(done):
            say(f"`docker rm -f` took over 120 s for {done.count(False)} of {len(ids)}:"
                " the engine stalls")  # fmt: skip
            return removed + done.count(True)
        removed += len(ids)
    return removed


def remove_app_images(docker: str, env: dict[str, str], app: str) -> None:
    """Untag every image hgrun built for ``app`` (``hgrun/<workspace>-<app>:<hash>``)."""
    tags = subprocess.run(
        [docker, "images", "--format", "{{.Repository}}:{{.Tag}}", f"hgrun/*-{app}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.split()
    if tags:
        subprocess.run([docker, "rmi", *tags], env=env, capture_output=True, timeout=600)


@contextlib.contextmanager
def session(keep: bool) -> Iterator[Path]:
    """A temp dir for one benchmark, removed at the end unless ``keep``; SIGTERM interrupts."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="hgrun-bench-", dir=os.environ.get("HGRUN_BENCH_TMPDIR")))
    try:
        yield tmp
    finally:
        if keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


class Measured(Protocol):
    """What :func:`measure` needs of a benchmark: its server and its clean-up."""

    server: Server

    def cleanup(self) -> Any: ...


B = TypeVar("B", bound=Measured)


@dataclass
class Outcome(Generic[B]):
    """How a benchmark went: the bench (None if it could not be made), the exit status (0, 1 a
    step failed, 130 interrupted), what its clean-up returned, and the temp dir (now removed
    unless kept)."""

    bench: B | None
    status: int
    cleanup: Any
    tmp: Path


def measure(
    keep: bool,
    make: Callable[[Path], B],
    steps: Callable[[B], int],
    failures: tuple[type[BaseException], ...] = (BenchError,),
) -> Outcome[B]:
    """Make the bench in a temp dir, run ``steps`` (its status), and always clean up.

    An exception in ``failures`` or an interrupt (SIGTERM too) ends the steps with status 1 or
    130; after a failure the server's last lines are shown.
    """
    bench: B | None = None
    status = 0
    cleaned: Any = None
    with session(keep) as tmp:
        try:
            bench = make(tmp)
            status = steps(bench)
        except failures as e:
            say(f"failed: {e}")
            status = 1
        except KeyboardInterrupt:
            say("interrupted")
            status = 130
        finally:
            if bench is not None:
                say("cleaning up (server, containers, image tag, temp dir)")
                cleaned = bench.cleanup()
                if status and bench.server.output:
                    say("server output (last lines):\n" + "".join(bench.server.output[-30:]))
    return Outcome(bench, status, cleaned, tmp)


# -- what was measured, where ---------------------------------------------------------------


def source_state() -> dict[str, Any]:
    """The commit the measured hgrun is (an editable install measures the work tree)."""
    repo = REPO

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "hgrun_dirty": bool(git("status", "--porcelain", "--", "hgrun")),
    }


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


@dataclass(frozen=True)
class Start:
    """What a benchmark notes as it starts: the time, the load, the source it measures (the tree
    may change while it runs), the engine and the base image."""

    started: float
    load_before: tuple[float, float, float]
    source: dict[str, Any]
    docker_host: str
    base_image: str

    @classmethod
    def now(cls) -> Start:
        docker_host, base_image = engine()
        return cls(time.time(), os.getloadavg(), source_state(), docker_host, base_image)


def document(
    start: Start,
    *,
    mode: str,
    plan: dict[str, Any],
    status: int,
    table: list[dict[str, Any]],
    results: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The JSON document of a benchmark: when, what, where, how it went, then ``extra``, the
    table and the raw results."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start.started)),
        "seconds": round(time.time() - start.started, 1),
        "mode": mode,
        "plan": plan,
        "machine": machine(),
        "source": start.source,
        "loadavg_before": [round(x, 2) for x in start.load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "docker_host": start.docker_host,
        "base_image": start.base_image,
        "complete": status == 0,
        **extra,
        "table": table,
        "results": results,
    }


def print_json(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2)
    print()


def print_table(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell, ``|`` between them."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]

    def fmt(row: Sequence[Any]) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    print(fmt(header))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))


def ok_mark(ok: bool | None) -> str:
    return {True: "ok", False: "MISSED", None: ""}[ok]
