#!/usr/bin/env python3
"""hgrun scripts at scale: a cron fan-out, a trigger storm, listing runs among many. Prints figures.

    python3 bench/scripts.py            # full: 1,000 cron scripts, 1,000 triggers, 10,000,000 runs
    python3 bench/scripts.py --quick    # 100 cron scripts, 200 triggers, 100,000 runs
    python3 bench/scripts.py --json     # the same measurements as one JSON document on stdout

This is a benchmark, not a test: it never asserts. It exits 0 when every measurement ran (whether
or not a target was met), 1 when one could not run. bench/SCRIPTS.md says what is measured, how,
and holds the latest figures. Each figure is printed with its target (issue 11).

1. Cron fan-out: N scripts with a cron whose only slot is the next minute boundary (minute, hour,
   day and month given, UTC), command ``sleep 1500`` (so every run is in flight at once at the
   end), concurrency ``allow``, are deployed; at the slot all N are due, and nothing is
   released while they start. The server's CPU and the host's from the slot until all N run
   are reported. Once all N run, the server's RSS is read (target under 300 MB with N runs in
   flight), then every run is stopped. Each script's run of the slot
   is read back: dispatch lag = ``created - slot`` (the run is recorded; target p99 < 0.1 s),
   start lag = ``started - slot`` (its container really started), and the last start.
1b. Docker side by side: N ``docker run -d --network none IMAGE sleep 1500``, 32 at a time; the
   time until the last one returned (its container started), against hgrun's last start after
   the slot (target: no later than docker). Measured twice, right before the fan-out and last
   (A-B-A: the same machine's docker figure moved by 20% between runs of one bench), against
   the mean of the two; both are shown. The first side's containers are removed before the
   fan-out, the last one's left to the clean-up, after the figures are shown (on stderr).
2. Trigger storm, once the server has removed the fan-out's containers (it removes a run's
   container after reporting its end; in a full run at e3c002c the storm came right after the
   fan-out's runs ended: 1,414/s, against 2,247/s for the storm alone): M concurrent
   ``POST /v1/scripts/{id}/runs`` over 50 keep-alive connections
   (asyncio and a hand-written HTTP/1.1 client, ~0.1 ms of CPU a request: httpx.AsyncClient,
   ``--client httpx``, needs ~5 ms and on 2 cores becomes the limit) on one ``queue`` script
   whose command is ``true``. Intake = 201s / (first request sent .. last 201 received), with
   the server's CPU per trigger (target >= 1,500/s). Then the queue drains (one container at a
   time) and the script's runs are read back: all accepted, none lost, never two running at once
   (started/finished intervals), started in id order. Runs that stop ending for 60 s are a
   stall: reported with the server's error lines, and the server restarted to finish.
3. Listing: a copy of the server's store with R runs written into it by one SQL statement
   (interleaved across 100 scripts; the columns are read from the real ``runs`` table and a real
   run is the template, so the seed follows the schema), made once and kept under
   ``HGRUN_BENCH_CACHE`` (default ~/.cache/hgrun/bench; 10,000,000 runs are about 4 GB), a
   server started on it, and ``GET /v1/scripts/{id}/runs?limit=50`` timed 500 times (then 500
   more with ``before=`` in the middle of the script's runs), one request at a time over
   loopback, on a keep-alive socket written by hand, as curl would see it (target p95 < 5 ms);
   each sample again through httpx, reported beside (a Python client's own parsing included).
   The same SQL alone, and ``EXPLAIN QUERY PLAN``, are reported.

It starts its own ``hgrun server`` (free 127.0.0.1 port, temp data dir, ``--docker-host``), and at
the end stops it, removes every container it made (by the server's instance label and its own
``hgrun.bench`` label), the app's image tag and the temp dir.

Environment:
  DOCKER_HOST             the engine (default unix:///tmp/dk/docker.sock)
  HGRUN_BENCH_BASE_IMAGE  the app's base image (default hgrun-test/busybox:latest); must exist
                          locally and have sh and true: nothing is pulled
  HGRUN_BENCH_CLI         how to invoke hgrun, shell-split (default: the `hgrun` console script
                          next to this Python, else `python -m hgrun.cli.main`)
  HGRUN_BENCH_TMPDIR      where the temp dir goes (default /tmp)
  HGRUN_BENCH_CACHE       where the listing's seeded stores are kept (default ~/.cache/hgrun/bench)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import random
import re
import resource
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
import httpx
from harness import BenchError, say

# The seeding SQL is the test suite's (tests/support/seed.py), shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.seed import seed_runs  # noqa: E402

ACTIVE = ("queued", "starting", "running")
MAX_TIMEOUT = "30m"  # the server's --max-timeout: no bench run can hang for an hour
HOLD = "sleep 1500"  # the cron runs' command: every run stays in flight until stopped
DOCKER_AT_ONCE = 32  # `docker run -d` processes at a time on the docker side
STALL = 60.0  # seconds with runs in flight and none ending before it counts as stalled
CMD_TIMEOUT = 600.0


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    cron_scripts: int  # 1. scripts due in the same minute
    triggers: int  # 2. concurrent API triggers on one queue script
    connections: int  # 2. client connections for the storm
    rows: int  # 3. runs in the store
    list_scripts: int  # 3. scripts the rows are spread across
    list_samples: int  # 3. timed requests per variant


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(100, 200, 50, 100_000, 100, 500)
    else:
        plan = Plan(1000, 1000, 50, 10_000_000, 100, 500)
    changes = {
        k: v
        for k, v in (
            ("cron_scripts", args.cron_scripts),
            ("triggers", args.triggers),
            ("rows", args.rows),
        )
        if v is not None
    }
    return Plan(**{**asdict(plan), **changes})


# -- figures -------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile, nearest rank (p99 of 1,000 is the 990th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = [x * scale for x in values]
    return {
        "n": len(v),
        "min": round(min(v), digits),
        "p50": round(pct(v, 50), digits),
        "p95": round(pct(v, 95), digits),
        "p99": round(pct(v, 99), digits),
        "max": round(max(v), digits),
    }


def top(counts: dict[str, int], n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` most frequent messages, as {"count", "message"} (messages cut at 300)."""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [{"count": c, "message": m[:300]} for m, c in ranked]


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def minute_stamp(slot: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))


# -- the server ----------------------------------------------------------------------------


@dataclass
class Server(harness.Server):
    """The harness's server with a cap on run time, noting which hgrun each start ran."""

    args: tuple[str, ...] = ("--max-timeout", MAX_TIMEOUT)
    sources: list[dict[str, Any]] = field(default_factory=list)

    def start(self, timeout: float = 60.0) -> None:
        self.sources.append(hgrun_source(self.env))
        super().start(timeout)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far, all threads."""
        if self.process is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def errors(self, n: int = 12) -> list[str]:
        """The server's distinct error lines (log lines and exception summaries), newest last."""
        seen: dict[str, None] = {}
        for line in self.output:
            text = line.strip()
            if re.search(
                r"Error:|Exception|failed|destroyed|Traceback", text
            ) and not text.startswith(("File ", "Traceback", "^")):
                seen[text[:300]] = None
        return list(seen)[-n:]

    def memory_mb(self) -> dict[str, float]:
        """The server's resident memory now and at its peak (VmRSS, VmHWM), in MB."""
        out: dict[str, float] = {}
        if self.process is None:
            return out
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key.lower()] = round(int(value.split()[0]) / 1024, 1)
        return out


def hgrun_source(env: dict[str, str]) -> dict[str, Any]:
    """Where the hgrun a server started now imports comes from (the editable install may be
    re-pointed while a bench runs), and that tree's commit."""
    try:
        where = subprocess.run(
            [sys.executable, "-c", "import hgrun, os; print(os.path.dirname(hgrun.__file__))"],
            env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        head = subprocess.run(
            ["git", "-C", where, "log", "-1", "--format=%h %s"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()[:100]  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"at": time.strftime("%H:%M:%S"), "path": where, "commit": head, "dirty": bool(dirty)}


# -- the app -------------------------------------------------------------------------------


def cron_name(i: int) -> str:
    return f"cron-{i:04d}"


def list_name(i: int) -> str:
    return f"list-{i:03d}"


STORM = "storm"


def once_at(slot: float) -> str:
    """A cron expression (UTC) whose only slot in the coming year is ``slot``, a minute
    boundary: minute, hour, day and month given."""
    t = time.gmtime(slot)
    return f"{t.tm_min} {t.tm_hour} {t.tm_mday} {t.tm_mon} *"


def manifest(app: str, plan: Plan, *, cron_scripts: bool, cron: str | None = None) -> str:
    """hgrun.yaml: the cron scripts (with schedule ``cron``, else none), the storm's queue
    script and the scripts the listing's rows belong to."""
    out = [f"name: {app}", "build:", "  dockerfile: Dockerfile", "network: none", "scripts:"]
    if cron_scripts:
        for i in range(plan.cron_scripts):
            out += [
                f"  {cron_name(i)}:",
                f"    command: {HOLD}",
                "    concurrency: allow",
                "    timeout: 28m",
                "    history: 5",
            ]
            if cron:
                out += [f'    cron: "{cron}"', "    timezone: UTC"]
    out += [
        f"  {STORM}:",
        '    command: "true"',
        "    concurrency: queue",
        "    timeout: 5m",
        f"    history: {plan.triggers + 100}",  # keep every run of the storm to count them
    ]
    for i in range(plan.list_scripts):
        out += [f"  {list_name(i)}:", '    command: "true"', "    concurrency: allow"]
    return "\n".join(out) + "\n"


# -- the benchmark -------------------------------------------------------------------------


@dataclass
class Conn:
    """One keep-alive connection of the storm's client."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the server closes) of an HTTP/1.1 answer's head, as
    the bench's hand-written clients read it: Content-Length only, never chunked."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    length, close = 0, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            raise BenchError("a chunked answer: the bench's clients read Content-Length only")
        elif key == b"connection" and b"close" in value.lower():
            close = True
    return int(lines[0].split(b" ", 2)[1]), length, close


class RawGet:
    """GETs on one keep-alive HTTP/1.1 connection, written by hand, timed from the request's
    first byte to the body's last: what the server takes as a client like curl sees it. A
    Python client's own work is not the server's (httpx's parsing of a 25 KB page costs some
    2-3 ms on a slow machine); the listing reports it beside, as httpx sees it."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str, params: dict[str, Any]) -> tuple[float, int, bytes]:
        """(seconds, status, body)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        request = (
            f"GET {path}?{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n"
        ).encode()
        t = time.perf_counter()
        self.sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self._recv()
        head, _, body = buf.partition(b"\r\n\r\n")
        code, length, _close = parse_head(head)
        if b"content-length:" not in head.lower():
            raise BenchError(f"GET {path}: an answer without Content-Length")
        while len(body) < length:
            body += self._recv()
        return time.perf_counter() - t, code, body

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 16)
        if not data:
            raise BenchError("the server closed the listing's connection")
        return data

    def close(self) -> None:
        self.sock.close()


class Bench(harness.Workspace):
    def __init__(self, plan: Plan, tmp: Path, docker_host: str, base_image: str) -> None:
        super().__init__(tmp, docker_host, base_image)
        self.plan = plan
        self.server = Server(self.cli, tmp / "data", docker_host, self.env)
        self.servers: list[Server] = [self.server]
        self.instances: set[str] = set()
        self.context_hash = ""
        self.http: httpx.Client | None = None
        self.results: dict[str, Any] = {}
        self.failures: list[str] = []
        self.client_kind = "raw"
        self.stalls: list[dict[str, Any]] = []

    # -- helpers -------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        if self.http is None:
            self.http = httpx.Client(
                base_url=self.server.url,
                headers={"Authorization": f"Bearer {self.server.token}"},
                timeout=120,
            )
        return self.http

    def reconnect(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None

    def get(self, path: str, **params: Any) -> Any:
        r = self.client().get(path, params=params or None)
        if r.status_code != 200:
            raise BenchError(f"GET {path} -> {r.status_code}: {r.text[:300]}")
        return r.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.client().post(path, json=body)
        if r.status_code not in (200, 201):
            raise BenchError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
        return r.json()

    def hgrun(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            [*self.cli, *args],
            env={**self.env, "HGRUN_URL": self.server.url, "HGRUN_TOKEN": self.server.token},
            cwd=cwd,
            capture_output=True,
            timeout=CMD_TIMEOUT,
        )
        if done.returncode != 0:
            raise BenchError(
                f"hgrun {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stderr.decode(errors='replace')[-2000:]}"
            )
        return done.stdout.decode(errors="replace")

    def docker_cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.docker, *args], env=self.env, capture_output=True, text=True, timeout=CMD_TIMEOUT
        )

    def release(self, text: str) -> None:
        """A new release of the app with this hgrun.yaml, on the image already built (what
        `hgrun deploy` posts when the context is unchanged; no build)."""
        (self.app_dir / "hgrun.yaml").write_text(text)
        self.post(
            f"/v1/apps/{self.app}/releases",
            {"context_hash": self.context_hash, "procfile": "", "manifest": text},
        )

    def scripts(self) -> dict[str, int]:
        return {s["name"]: s["id"] for s in self.get(f"/v1/apps/{self.app}/scripts")}

    def active_runs(self) -> int:
        return len(self.get(f"/v1/apps/{self.app}/runs", active=1, limit=10_000))

    def wait_idle(
        self, timeout: float, what: str, every: float = 1.0, stall: float = STALL
    ) -> float:
        """Wait until the app has no run in flight; the wall-clock time it happened.

        Runs that stop moving (none of the app's runs ends for ``stall`` seconds, while each
        is a `true`) are a lost hand-off in the server: recorded in ``self.stalls`` with their
        statuses and the server's error lines; then the server is restarted, which takes the
        runs up again and resumes the queues.
        """
        deadline = time.monotonic() + timeout
        last_say = 0.0
        last_n, changed = -1, time.monotonic()
        while True:
            runs = self.get(f"/v1/apps/{self.app}/runs", active=1, limit=10_000)
            n, now = len(runs), time.time()
            if n == 0:
                return now
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: {n} runs still in flight after {timeout:.0f} s")
            if n != last_n:
                last_n, changed = n, time.monotonic()
            elif time.monotonic() - changed > stall:
                say(
                    f"  {what}: {n} runs in flight and none ended for {stall:.0f} s: stalled;"
                    " restarting the server, which takes them up"
                )
                self.stalls.append({
                    "what": what,
                    "in_flight": n,
                    "statuses": {st: sum(r["status"] == st for r in runs) for st in ACTIVE},
                    "stalled_s": round(time.monotonic() - changed, 1),
                    "server_errors": self.server.errors(),
                })  # fmt: skip
                self.restart()
                changed = time.monotonic()
            if time.monotonic() - last_say > 15:
                say(f"  {what}: {n} runs in flight")
                last_say = time.monotonic()
            time.sleep(every)

    def restart(self) -> None:
        self.reconnect()
        self.server.stop()
        self.server.start()

    def script_runs(self, script_id: int) -> list[dict[str, Any]]:
        """Every run of a script, newest first (paged with before=)."""
        out: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if before is not None:
                params["before"] = before
            page = self.get(f"/v1/scripts/{script_id}/runs", **params)
            out += page
            if len(page) < 1000:
                return out
            before = page[-1]["id"]

    def health_latency(self, seconds: float) -> list[float]:
        """Sequential GET /v1/health for ``seconds``: how long the event loop keeps a request."""
        samples: list[float] = []
        end = time.monotonic() + seconds
        c = self.client()
        while time.monotonic() < end:
            t = time.perf_counter()
            c.get("/v1/health")
            samples.append(time.perf_counter() - t)
            time.sleep(0.02)
        return samples

    # -- setup and teardown --------------------------------------------------------------

    def setup(self) -> None:
        harness.check_base_image(self.docker, self.env, self.base_image)
        (self.tmp / "data").mkdir()
        self.app_dir.mkdir()
        (self.app_dir / "Dockerfile").write_text(f"FROM {self.base_image}\n")
        # The app's first release: every script registered, no cron yet.
        text = manifest(self.app, self.plan, cron_scripts=True)
        (self.app_dir / "hgrun.yaml").write_text(text)
        say(f"starting hgrun server ({shlex.join(self.cli)} server) ...")
        self.server.start()
        if inst := self.server.instance():
            self.instances.add(inst)
        say(f"server on {self.server.url}; deploying app {self.app}")
        self.hgrun("apps:create", self.app, cwd=self.app_dir)
        self.hgrun("deploy", cwd=self.app_dir)
        releases = self.get(f"/v1/apps/{self.app}/releases")
        self.context_hash = releases[0]["context_hash"]
        self.results["release_manifest_kb"] = round(len(text) / 1024, 1)

    def cleanup(self) -> dict[str, Any]:
        instances = set(self.instances)
        for server in self.servers:
            with contextlib.suppress(Exception):
                if inst := server.instance():
                    instances.add(inst)
        self.reconnect()
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        removed = harness.remove_leftovers(
            self.docker,
            self.env,
            [f"hgrun.instance={inst}" for inst in sorted(instances)] + [f"hgrun.bench={self.app}"],
        )
        harness.remove_app_images(self.docker, self.env, self.app)
        left = sum(
            len(harness.containers(self.docker, self.env, "hgrun.run", f"hgrun.instance={inst}"))
            for inst in sorted(instances)
        )
        return {"leftover_removed": removed, "containers_left": left}

    # -- 1. cron fan-out -----------------------------------------------------------------

    def in_flight(self) -> dict[str, int]:
        """The app's runs in flight by status, read from the server's store (read-only): the
        HTTP listing of a thousand runs would cost the server what is being measured."""
        db = self.server.data_dir / "hgrun.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return {
                str(r[0]): int(r[1])
                for r in con.execute(
                    "SELECT runs.status, COUNT(*) FROM runs JOIN apps ON apps.id = runs.app_id"
                    " WHERE apps.name = ? AND runs.status IN ('queued', 'starting', 'running')"
                    " GROUP BY runs.status",
                    (self.app,),
                )
            }
        finally:
            con.close()

    def cron_fanout(self) -> None:
        n = self.plan.cron_scripts
        say(f"1. cron fan-out: {n} scripts, one cron slot, `{HOLD}`, concurrency allow")
        baseline = self.health_latency(2.0)  # the event loop with no cron script
        rss_before = self.server.memory_mb().get("vmrss")
        # The slot is the next minute boundary. Release between 12 s after a boundary (the
        # scheduler runs a slot up to TICK_GRACE = 10 s old when it first sees a script) and
        # 8 s before the next (so it has seen every script first): every minute fires, and no
        # other slot may be run.
        into = time.time() % 60
        if into < 12 or into > 52:
            time.sleep((12 - into) % 60)
        now = time.time()
        slot = (math.floor(now / 60) + 1) * 60.0
        # The scripts' cron fires at this slot only (minute, hour, day and month given), so
        # nothing has to switch it off while the runs start.
        self.release(manifest(self.app, self.plan, cron_scripts=True, cron=once_at(slot)))
        released = time.time()
        say(
            f"  released with cron {once_at(slot)!r} at +{released - now:.1f} s;"
            f" slot {minute_stamp(slot)}, in {slot - released:.0f} s"
        )
        # While waiting: the same probe with N cron scripts registered (the scheduler sleeps).
        loaded: list[float] = []
        if slot - time.time() > 4:
            time.sleep(1.5)
            loaded = self.health_latency(min(10.0, slot - time.time() - 1.5))
        time.sleep(max(0.0, slot - 0.5 - time.time()))
        cpu = (self.server.cpu_seconds(), harness.host_cpu_seconds())
        say(f"  waiting until all {n} runs are running")
        # Every run holds its container (`sleep`) until stopped: at the end all N are in flight
        # at once, and the server's memory is read then.
        peak = {"in_flight": 0, "running": 0, "rss_mb": 0.0, "rss_all_running_mb": None}
        deadline = time.monotonic() + 30 * 60
        last_change, last_running, last_say = time.monotonic(), -1, 0.0
        while True:
            counts = self.in_flight()
            running = counts.get("running", 0)
            peak["in_flight"] = max(peak["in_flight"], sum(counts.values()))
            peak["running"] = max(peak["running"], running)
            peak["rss_mb"] = max(peak["rss_mb"], self.server.memory_mb().get("vmrss", 0.0))
            if running >= n:
                peak["rss_all_running_mb"] = self.server.memory_mb().get("vmrss")
                break
            if running != last_running:
                last_running, last_change = running, time.monotonic()
            made = peak["in_flight"] > 0 or time.time() > slot + 10  # the slot's runs exist
            if made and sum(counts.values()) < n and counts.get("starting", 0) == 0:
                break  # some ended (failed) already: they will never all run
            if time.monotonic() > deadline or time.monotonic() - last_change > STALL * 5:
                say(f"  not all running: {counts}")
                break
            if time.monotonic() - last_say > 15:
                say(f"  {counts}")
                last_say = time.monotonic()
            time.sleep(0.5)
        all_running = time.time()
        cpu_all_running = (self.server.cpu_seconds(), harness.host_cpu_seconds())
        memory = self.server.memory_mb()
        say(
            f"  {peak['running']} running at slot+{all_running - slot:.1f} s; server RSS"
            f" {memory.get('vmrss')} MB (peak {memory.get('vmhwm')} MB); stopping them"
        )
        self.stop_runs(self.active_ids())
        idle = self.wait_idle(20 * 60, "cron runs", every=3.0, stall=600.0)
        say(f"  all ended at slot+{idle - slot:.1f} s; reading each script's runs")
        ids = self.scripts()
        stamp = minute_stamp(slot)
        by_slot: dict[str, int] = {}  # every cron run of the app, by slot: only ours expected
        for run in self.get(f"/v1/apps/{self.app}/runs", trigger="cron", limit=10_000):
            by_slot[run["trigger"]["name"]] = by_slot.get(run["trigger"]["name"], 0) + 1
        dispatch, start, missing, wrong = [], [], [], 0
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        for i in range(n):
            name = cron_name(i)
            runs = self.get(f"/v1/scripts/{ids[name]}/runs", limit=1)
            if runs and runs[0]["trigger"]["name"] != stamp:
                # A later slot ran too (the cron went off late): look further back.
                wrong += 1
                runs = [
                    r
                    for r in self.get(f"/v1/scripts/{ids[name]}/runs", limit=10)
                    if r["trigger"]["name"] == stamp
                ]
            if not runs or runs[0]["trigger"]["kind"] != "cron":
                missing.append(name)
                continue
            run = runs[0]
            statuses[run["status"]] = statuses.get(run["status"], 0) + 1
            if run["error"] and run["status"] != "canceled":
                errors[run["error"]] = errors.get(run["error"], 0) + 1
            dispatch.append(run["created"] - slot)
            if run["started"] is not None:
                start.append(run["started"] - slot)
        self.results["cron"] = {
            "scripts": n,
            "command": HOLD,
            "slot": stamp,
            "runs_for_slot": len(dispatch),
            "started": len(start),
            "missing": len(missing),
            "missing_first": missing[:5],
            "later_slot_ran": wrong,
            "cron_runs_by_slot": by_slot,
            "statuses": statuses,
            "errors": top(errors),
            "dispatch_lag_s": spread(dispatch),
            "start_lag_s": spread(start),
            "all_started_after_slot_s": round(max(start), 3) if len(start) == n else None,
            "dispatch_window_s": round(max(dispatch) - min(dispatch), 3) if dispatch else None,
            "all_running_after_slot_s": round(all_running - slot, 1),
            "all_ended_after_slot_s": round(idle - slot, 1),
            "server_cpu_s_to_all_running": round(cpu_all_running[0] - cpu[0], 2),
            "host_cpu_s_to_all_running": round(cpu_all_running[1] - cpu[1], 1),
            "health_ms_no_cron": spread(baseline, 1000, 1),
            "health_ms_with_cron": spread(loaded, 1000, 1),
            "most_in_flight": peak["in_flight"],
            "most_running": peak["running"],
            "server_rss_before_mb": rss_before,
            "server_rss_peak_sampled_mb": peak["rss_mb"],
            "server_rss_all_running_mb": peak["rss_all_running_mb"],
            "server_memory_mb": memory,
            "stalls": [x for x in self.stalls if x["what"] == "cron runs"],
        }
        c = self.results["cron"]
        say(
            f"  dispatch lag p50 {c['dispatch_lag_s'].get('p50')} s,"
            f" p99 {c['dispatch_lag_s'].get('p99')} s; start lag p99"
            f" {c['start_lag_s'].get('p99')} s; {len(dispatch)}/{n} runs"
        )
        # The cron scripts have served: release without them (smaller manifest for the rest).
        self.release(manifest(self.app, self.plan, cron_scripts=False))

    def active_ids(self) -> list[int]:
        return [r["id"] for r in self.get(f"/v1/apps/{self.app}/runs", active=1, limit=10_000)]

    def stop_runs(self, ids: Sequence[int]) -> None:
        """`POST /v1/runs/{id}/stop` for each, 16 at a time (each answers once its run ended)."""
        headers = {"Authorization": f"Bearer {self.server.token}"}
        with (
            httpx.Client(base_url=self.server.url, headers=headers, timeout=300) as c,
            concurrent.futures.ThreadPoolExecutor(16) as pool,
        ):
            list(pool.map(lambda i: c.post(f"/v1/runs/{i}/stop"), ids))

    def removed(self, then: str) -> None:
        """Wait until the server has removed its runs' containers, then 5 s more. hgrun
        reports a run's end before it removes the container: the removals of the step before
        (1,000 after the fan-out) must not land on the next one's figures, nor their kernel
        clean-up, hence the pause."""
        t = time.monotonic()
        while time.monotonic() - t < 600 and any(
            harness.containers(self.docker, self.env, "hgrun.run", f"hgrun.instance={inst}")
            for inst in sorted(self.instances)
        ):
            time.sleep(1.0)
        time.sleep(5.0)
        say(f"  hgrun's containers removed after {time.monotonic() - t - 5:.0f} s; {then}")

    # -- 1b. the same fan-out through the docker CLI -------------------------------------

    def docker_before(self) -> None:
        """The docker side before the fan-out, its containers removed after (see 1b)."""
        self.docker_side("docker_before")
        t = time.monotonic()
        harness.remove_leftovers(self.docker, self.env, [f"hgrun.bench={self.app}"])
        time.sleep(5.0)  # the kernel's clean-up of the containers, as on the other side
        say(f"  its containers removed in {time.monotonic() - t - 5:.0f} s")

    def docker_side(self, key: str = "docker") -> None:
        """`docker run -d` of as many containers as the fan-out had scripts, DOCKER_AT_ONCE at a
        time, same image and command: how fast the engine starts them without hgrun."""
        n = self.plan.cron_scripts
        when = "before the fan-out" if key == "docker_before" else "last"
        say(f"1b. docker side, {when}: {n} x `docker run -d ... {HOLD}`, {DOCKER_AT_ONCE} at once")
        self.removed("starting")
        label = f"hgrun.bench={self.app}"
        argv = [self.docker, "run", "-d", "--network", "none", "--label", label]
        argv += [self.base_image, *HOLD.split()]
        failures: dict[str, int] = {}

        def one(_i: int) -> float | None:
            done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                message = done.stderr.strip()[-200:]
                failures[message] = failures.get(message, 0) + 1
                return None
            return time.perf_counter()

        t0, cpu = time.perf_counter(), harness.host_cpu_seconds()
        with concurrent.futures.ThreadPoolExecutor(DOCKER_AT_ONCE) as pool:
            ends = [t for t in pool.map(one, range(n)) if t is not None]
        cpu = harness.host_cpu_seconds() - cpu
        started = len(ends)
        # The last side's containers are removed by the clean-up, after the figures are shown
        # (the first side's by docker_before).
        self.results[key] = d = {
            "containers": n,
            "at_once": DOCKER_AT_ONCE,
            "started": started,
            "all_started_s": round(max(ends) - t0, 3) if started == n else None,
            "per_s": round(started / (max(ends) - t0), 2) if ends else None,
            "host_cpu_s": round(cpu, 1),
            "failures": top(failures),
        }
        say(f"  {started}/{n} started, all after {d['all_started_s']} s ({d['per_s']}/s)")

    # -- 2. trigger storm ----------------------------------------------------------------

    def storm(self) -> None:
        m, conns = self.plan.triggers, self.plan.connections
        say(f"2. trigger storm: {m} concurrent POSTs on one queue script, {conns} connections")
        self.removed("sending")
        sid = self.scripts()[STORM]
        before = {r["id"] for r in self.script_runs(sid)}
        sent_wall = time.time()
        server_cpu, client_cpu = self.server.cpu_seconds(), own_cpu_seconds()
        answers, t_first, elapsed = asyncio.run(self._storm(sid, m, conns))
        server_cpu = self.server.cpu_seconds() - server_cpu
        client_cpu = own_cpu_seconds() - client_cpu
        codes: dict[str, int] = {}
        for a in answers:
            codes[str(a["code"])] = codes.get(str(a["code"]), 0) + 1
        ok = [a for a in answers if a["code"] == 201]
        last_201 = max((a["recv"] for a in ok), default=math.nan)
        intake_s = last_201 - t_first
        intake = len(ok) / intake_s if ok else 0.0
        say(
            f"  {len(ok)}/{m} accepted (201) in {intake_s:.2f} s: {intake:.0f} triggers/s;"
            " draining the queue (one container at a time)"
        )
        accepted_at = time.time()
        idle = self.wait_idle(max(600.0, m * 5.0), "storm queue", every=2.0)
        runs = [r for r in self.script_runs(sid) if r["id"] not in before]
        accepted_ids = {a["id"] for a in ok}
        listed = {r["id"] for r in runs}
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        for r in runs:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            if r["error"]:
                errors[r["error"]] = errors.get(r["error"], 0) + 1
        ran = sorted((r for r in runs if r["started"] is not None), key=lambda r: r["started"])
        overlaps, most, order_breaks = 0, 0, 0
        events: list[tuple[float, int]] = []
        for prev, nxt in zip(ran, ran[1:], strict=False):
            if prev["finished"] is None or nxt["started"] < prev["finished"]:
                overlaps += 1
            if nxt["id"] < prev["id"]:
                order_breaks += 1
        for r in ran:
            events.append((r["started"], 1))
            events.append((r["finished"] if r["finished"] is not None else math.inf, -1))
        live = 0
        for _t, d in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts on ties
            live += d
            most = max(most, live)
        finished = [r["finished"] for r in runs if r["finished"] is not None]
        per_run = [r["finished"] - r["started"] for r in ran if r["finished"] is not None]
        gaps = [
            b["started"] - a["finished"]
            for a, b in zip(ran, ran[1:], strict=False)
            if a["finished"] is not None
        ]
        self.results["storm"] = {
            "triggers": m,
            "connections": conns,
            "http_codes": codes,
            "accepted": len(ok),
            "intake_s": round(intake_s, 3),
            "intake_per_s": round(intake, 1),
            "client": self.client_kind,
            "client_wall_s": round(elapsed, 3),
            "client_cpu_s": round(client_cpu, 2),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_ms_per_trigger": round(server_cpu / max(len(ok), 1) * 1000, 2),
            "request_latency_ms": spread([a["recv"] - a["sent"] for a in answers], 1000, 1),
            "runs_listed": len(runs),
            "lost": len(accepted_ids - listed),
            "unexpected": len(listed - accepted_ids),
            "statuses": statuses,
            "errors": top(errors),
            "overlapping_pairs": overlaps,
            "max_running_at_once": most,
            "started_out_of_id_order": order_breaks,
            "drain_after_last_201_s": round(idle - accepted_at, 1),
            "drain_total_s": round((max(finished) if finished else idle) - sent_wall, 1),
            "run_seconds": spread(per_run, 1, 3),
            "handoff_gap_s": spread(gaps, 1, 3),
            "queue_stalls": [x for x in self.stalls if x["what"] == "storm queue"],
            "server_memory_mb": self.server.memory_mb(),
        }
        s = self.results["storm"]
        say(
            f"  drained in {s['drain_total_s']} s; {len(runs)} runs, lost {s['lost']},"
            f" max at once {most}, out of order {order_breaks}"
        )

    async def _storm(self, sid: int, m: int, conns: int) -> tuple[list[dict], float, float]:
        if self.client_kind == "httpx":
            return await self._storm_httpx(sid, m, conns)
        return await self._storm_raw(sid, m, conns)

    async def _storm_raw(self, sid: int, m: int, conns: int) -> tuple[list[dict], float, float]:
        """The storm from keep-alive HTTP/1.1 connections written by hand: a load generator that
        costs ~0.1 ms of CPU a request, so on 2 cores the client does not set the pace."""
        host, port = "127.0.0.1", self.server.port
        auth = f"Authorization: Bearer {self.server.token}\r\n"
        post = (
            f"POST /v1/scripts/{sid}/runs HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        health = f"GET /v1/health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

        async def connect() -> Conn:
            return Conn(*await asyncio.open_connection(host, port))

        async def roundtrip(conn: Conn, request: bytes) -> tuple[int, bytes]:
            conn.writer.write(request)
            await conn.writer.drain()
            code, length, close = parse_head(await conn.reader.readuntil(b"\r\n\r\n"))
            body = await conn.reader.readexactly(length)
            if close:  # the server ends this connection: open another
                conn.writer.close()
                fresh = await connect()
                conn.reader, conn.writer = fresh.reader, fresh.writer
            return code, body

        pool = [await connect() for _ in range(conns)]
        await asyncio.gather(*(roundtrip(c, health) for c in pool))  # every connection warm
        answers: list[dict[str, Any]] = []
        todo = iter(range(m))

        async def worker(conn: Conn) -> None:
            for _ in todo:
                sent = time.perf_counter()
                code, body = await roundtrip(conn, post)
                recv = time.perf_counter()
                rid = json.loads(body).get("id") if code == 201 else None
                answers.append({"sent": sent, "recv": recv, "code": code, "id": rid})

        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(worker(c) for c in pool))
        finally:
            for conn in pool:
                conn.writer.close()
        return answers, t0, time.perf_counter() - t0

    async def _storm_httpx(self, sid: int, m: int, conns: int) -> tuple[list[dict], float, float]:
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        headers = {"Authorization": f"Bearer {self.server.token}"}
        async with httpx.AsyncClient(
            base_url=self.server.url, headers=headers, limits=limits, timeout=300
        ) as client:
            # Open the connections first: the storm measures intake, not TCP handshakes.
            await asyncio.gather(*(client.get("/v1/health") for _ in range(conns)))
            answers: list[dict[str, Any]] = []
            todo = iter(range(m))

            async def worker() -> None:
                for _ in todo:
                    sent = time.perf_counter()
                    r = await client.post(f"/v1/scripts/{sid}/runs", content=b"")
                    recv = time.perf_counter()
                    body = (
                        r.json()
                        if r.headers.get("content-type", "").startswith("application/json")
                        else {}
                    )
                    answers.append(
                        {"sent": sent, "recv": recv, "code": r.status_code, "id": body.get("id")}
                    )

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conns)))
            return answers, t0, time.perf_counter() - t0

    # -- 3. listing among many runs ------------------------------------------------------

    def listing_fixture(self) -> tuple[Path, str, dict[int, tuple[int, int]], float | None]:
        """A stopped server's data dir holding ``rows`` runs of the ``list-`` scripts, its admin
        token, each script's (min id, max id), and the seconds seeding took (None: reused).

        Made once per (rows, scripts, schema version) under the cache (``HGRUN_BENCH_CACHE``,
        else ~/.cache/hgrun/bench) from a copy of this bench's own store, then reused by later
        runs: 10,000,000 runs take a while to write. The bench's server is stopped either way,
        so it is idle while the listing is timed."""
        p = self.plan
        scripts = self.scripts()
        if not self.script_runs(scripts[STORM]):  # the seed copies a real run: make one
            self.post(f"/v1/scripts/{scripts[STORM]}/runs", {})
            self.wait_idle(120, "template run")
        self.reconnect()
        self.server.stop()
        db = self.server.data_dir / "hgrun.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()
        root = fixture_cache() / f"listing-{p.rows}-{p.list_scripts}-schema{version}"
        meta = root / "fixture.json"
        if meta.is_file():
            doc = json.loads(meta.read_text())
            say(f"  reusing the fixture made {doc['made']} ({root})")
            ranges = {int(k): (int(v[0]), int(v[1])) for k, v in doc["ranges"].items()}
            return root / "data", str(doc["token"]), ranges, None
        say(f"  making the fixture (once): a copy of this store, seeded, in {root}")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        shutil.copytree(self.server.data_dir, root / "data")
        t = time.monotonic()
        ranges = seed(
            root / "data" / "hgrun.db",
            self.app,
            [scripts[list_name(i)] for i in range(p.list_scripts)],
            template_script=scripts[STORM],
            rows=p.rows,
        )
        seed_s = time.monotonic() - t
        say(f"  seeded {p.rows:,} runs in {seed_s:.1f} s")
        made = time.strftime("%Y-%m-%d %H:%M:%S")
        doc = {"made": made, "rows": p.rows, "token": self.server.token, "ranges": ranges}
        meta.write_text(json.dumps(doc))  # last: a fixture cut short is made again
        return root / "data", self.server.token, ranges, seed_s

    def listing(self) -> None:
        p = self.plan
        say(f"3. listing: {p.rows:,} runs across {p.list_scripts} scripts")
        data, token, ranges, seed_s = self.listing_fixture()
        say(f"  starting a server on {data}")
        server = Server(self.cli, data, self.docker_host, self.env, token=token)
        self.servers.append(server)
        self.server = server
        server.start(timeout=300)
        rng = random.Random(7)
        c = self.client()
        raw = RawGet("127.0.0.1", server.port, token)

        def timed(path: str, params: dict[str, Any], before: int | None, via: str) -> float:
            if via == "raw":
                took, code, body = raw.get(path, params)
            else:
                t = time.perf_counter()
                r = c.get(path, params=params)
                took, code, body = time.perf_counter() - t, r.status_code, r.content
            if code != 200:
                raise BenchError(f"GET {path} -> {code}: {body[:200]!r}")
            page = json.loads(body)
            want = min(50, p.rows // p.list_scripts // (1 if before is None else 3))
            if len(page) < want or (before is not None and page[0]["id"] >= before):
                raise BenchError(f"GET {path} {params}: a wrong page ({len(page)} runs)")
            return took

        ids = list(ranges)
        samples: dict[str, list[float]] = {}
        for _ in range(20):  # warm-up: connections, page cache
            for via in ("raw", "httpx"):
                timed(f"/v1/scripts/{rng.choice(ids)}/runs", {"limit": 50}, None, via)
        # Each sample through both clients, in turn, so both meet the same moments of the machine.
        for _ in range(p.list_samples):
            sid = rng.choice(ids)
            for via in ("raw", "httpx"):
                took = timed(f"/v1/scripts/{sid}/runs", {"limit": 50}, None, via)
                samples.setdefault(f"{via}_newest", []).append(took)
        for _ in range(p.list_samples):
            sid = rng.choice(ids)
            lo, hi = ranges[sid]
            mid = (lo + hi) // 2
            for via in ("raw", "httpx"):
                took = timed(f"/v1/scripts/{sid}/runs", {"limit": 50, "before": mid}, mid, via)
                samples.setdefault(f"{via}_before", []).append(took)
        raw.close()
        sql = sql_alone(data / "hgrun.db", ranges, p.list_samples, rng)
        self.results["listing"] = {
            "rows": p.rows,
            "scripts": p.list_scripts,
            "runs_per_script": p.rows // p.list_scripts,
            "fixture": str(data),
            "seed_s": None if seed_s is None else round(seed_s, 1),
            "db_mb": round(sum(f.stat().st_size for f in data.glob("hgrun.db*")) / 2**20, 1),
            "client": "raw",
            "http_newest_ms": spread(samples["raw_newest"], 1000, 2),
            "http_before_ms": spread(samples["raw_before"], 1000, 2),
            "httpx_newest_ms": spread(samples["httpx_newest"], 1000, 2),
            "httpx_before_ms": spread(samples["httpx_before"], 1000, 2),
            **sql,
        }
        r = self.results["listing"]
        say(
            f"  limit=50 p95 {r['http_newest_ms']['p95']} ms; with before= p95"
            f" {r['http_before_ms']['p95']} ms; the SQL alone p95 {r['sql_newest_ms']['p95']} ms"
        )


# -- seeding and the SQL alone -------------------------------------------------------------


def fixture_cache() -> Path:
    """Where the listing's seeded stores are kept between runs."""
    given = os.environ.get("HGRUN_BENCH_CACHE")
    return Path(given) if given else Path.home() / ".cache" / "hgrun" / "bench"


SCRIPT_RUNS_SQL = "SELECT * FROM runs WHERE script_id = ? AND id < ? ORDER BY id DESC LIMIT ?"


def seed(
    db: Path, app: str, script_ids: Sequence[int], *, template_script: int, rows: int
) -> dict[int, tuple[int, int]]:
    """Write ``rows`` finished runs into a stopped server's store, interleaved across the
    scripts (as runs of many scripts land in one table). Every column of the real ``runs``
    table is filled, from a real run of the server, so the seed follows the schema; the
    (min id, max id) of each script's runs.

    One SQL statement makes every row (a recursive counter joined to the scripts, all inside
    SQLite: 10,000,000 rows in tens of seconds, where Python's executemany takes minutes),
    in one transaction without a journal; the ``runs`` indexes are dropped first and made
    again after (a sort each, instead of 10,000,000 scattered B-tree inserts)."""
    con = sqlite3.connect(db, isolation_level=None)
    con.row_factory = sqlite3.Row
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-262144")  # 256 MB of page cache for the index sorts
        columns = [r["name"] for r in con.execute("PRAGMA table_info(runs)")]
        template = (
            con.execute(
                "SELECT * FROM runs WHERE script_id = ? AND status = 'succeeded'"
                " ORDER BY id LIMIT 1",
                (template_script,),
            ).fetchone()
            or con.execute("SELECT * FROM runs ORDER BY id LIMIT 1").fetchone()
        )
        if template is None:
            raise BenchError("the store holds no run to copy as the seed's template")
        base = dict(template)
        overrides = {
            "trigger_kind": "api",
            "trigger_name": "bench-seed",
            "slot": None,
            "parent_run": None,
            "status": "succeeded",
            "exit_code": 0,
            "oom": 0,
            "container_id": None,
            "error": None,
        }
        base.update({k: v for k, v in overrides.items() if k in base})
        con.execute("CREATE TEMP TABLE seed_scripts (k INTEGER PRIMARY KEY, id INTEGER, name TEXT)")
        con.executemany(
            "INSERT INTO seed_scripts (k, id, name) SELECT ?, id, name FROM scripts WHERE id = ?",
            list(enumerate(script_ids)),
        )
        n_scripts = len(script_ids)
        if con.execute("SELECT COUNT(*) FROM seed_scripts").fetchone()[0] != n_scripts:
            raise BenchError("a script of the listing is not in the store")
        per_row = {
            "script_id": "s.id",
            "script": "s.name",
            "created": ":t0 + n.i",
            "started": ":t0 + n.i + 0.2",
            "finished": ":t0 + n.i + 0.5",
        }
        cols = [c for c in columns if c != "id"]
        params: dict[str, Any] = {f"c_{c}": base[c] for c in cols if c not in per_row}
        params.update(rows=rows, k=n_scripts, t0=time.time() - rows)  # one run a second
        exprs = [per_row.get(c, f":c_{c}") for c in cols]
        took = seed_runs(
            con, rows, dict(zip(cols, exprs, strict=True)), params,
            join="JOIN seed_scripts s ON s.k = n.i % :k",
        )  # fmt: skip
        say(f"  {rows:,} rows and the indexes written in {took:.1f} s")
        con.execute("PRAGMA journal_mode=WAL")  # as the server keeps it
        return {
            r[0]: (r[1], r[2])
            for r in con.execute(
                f"SELECT script_id, MIN(id), MAX(id) FROM runs WHERE script_id IN"
                f" ({','.join('?' * n_scripts)}) GROUP BY script_id",
                list(script_ids),
            )
        }
    finally:
        con.close()


def sql_alone(
    db: Path, ranges: dict[int, tuple[int, int]], n: int, rng: random.Random
) -> dict[str, Any]:
    """Store.script_runs' query on its own (read-only connection), and its query plan."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        plan = {
            variant: [
                r[3]
                for r in con.execute(f"EXPLAIN QUERY PLAN {SCRIPT_RUNS_SQL}", (sid, before, 50))
            ]
            for variant, sid, before in (
                ("newest", next(iter(ranges)), 2**62),
                ("before", next(iter(ranges)), sum(next(iter(ranges.values()))) // 2),
            )
        }
        ids = list(ranges)
        out: dict[str, list[float]] = {"newest": [], "before": []}
        for variant in out:
            for _ in range(n):
                sid = rng.choice(ids)
                before = 2**62 if variant == "newest" else sum(ranges[sid]) // 2
                t = time.perf_counter()
                con.execute(SCRIPT_RUNS_SQL, (sid, before, 50)).fetchall()
                out[variant].append(time.perf_counter() - t)
        indexes = [
            r[0]
            for r in con.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'"
                " AND sql IS NOT NULL"
            )
        ]
        analyzed = bool(
            con.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()
        )
    finally:
        con.close()
    return {
        "sql_newest_ms": spread(out["newest"], 1000, 3),
        "sql_before_ms": spread(out["before"], 1000, 3),
        "query_plan": plan,
        "runs_indexes": indexes,
        "analyzed": analyzed,
    }


# -- the report ----------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per line of the table: metric, figure, target, ok."""
    out: list[dict[str, Any]] = []

    def add(key: str, metric: str, figure: str, target: str, ok: bool | None) -> None:
        out.append({"key": key, "metric": metric, "figure": figure, "target": target, "ok": ok})

    def three(s: dict[str, Any], unit: str, keys: Sequence[str] = ("p50", "p99", "max")) -> str:
        if not s.get("n"):
            return "-"
        return " / ".join(f"{s[k]}" for k in keys) + f" {unit}"

    if "cron" in r:
        c = r["cron"]
        d, st = c["dispatch_lag_s"], c["start_lag_s"]
        add(
            "cron_runs",
            f"1. cron: runs for the slot ({c['scripts']} scripts due)",
            f"{c['runs_for_slot']}/{c['scripts']} ({c['started']} started)",
            "all",
            c["runs_for_slot"] == c["scripts"] and c["started"] == c["scripts"],
        )
        others = sum(n for name, n in c["cron_runs_by_slot"].items() if name != c["slot"])
        add(
            "cron_others",
            "   cron runs of other slots (must not fire)",
            str(others),
            "0",
            others == 0,
        )
        add(
            "cron_dispatch",
            "   dispatch lag, created - slot, p50 / p99 / max",
            three(d, "s"),
            "p99 < 0.1 s",
            bool(d.get("n")) and d["p99"] < 0.1,
        )
        add(
            "cron_start",
            "   start lag, started - slot, p50 / p99 / max",
            three(st, "s"),
            "info (dockerd)",
            None,
        )
        # The docker side before and after hgrun's (A-B-A): hgrun against their mean.
        named = [(w, r[k]) for w, k in (("before", "docker_before"), ("after", "docker")) if k in r]
        sides = [s for _, s in named]
        dk = sides[-1] if sides else {}
        times = [s.get("all_started_s") for s in sides]
        hg = c.get("all_started_after_slot_s")
        dock = round(sum(times) / len(times), 1) if times and None not in times else None
        each = ", ".join(f"{w} {s.get('all_started_s') or '-'}" for w, s in named)
        add(
            "cron_vs_docker",
            f"   all {c['scripts']} started: hgrun (after the slot) vs `docker run -d`"
            f" ({dk.get('at_once', '?')} at once)",
            f"{hg if hg is not None else '-'} s vs {dock if dock is not None else '-'} s"
            + (f" ({each})" if len(sides) > 1 else "")
            + (f" ({hg / dock:.2f}x)" if hg and dock else ""),
            "<= docker",
            None if hg is None or dock is None else hg <= dock,
        )
        server_cpu = c["server_cpu_s_to_all_running"]
        add(
            "cron_cpu",
            "   CPU until all ran: hgrun server (per run), host vs host for `docker run -d`",
            f"{server_cpu} s ({1000 * server_cpu / c['scripts']:.1f} ms),"
            f" {c['host_cpu_s_to_all_running']} s vs "
            + " and ".join(f"{s.get('host_cpu_s', '-')}" for s in sides)
            + " s",
            "info",
            None,
        )
        rss = c.get("server_rss_all_running_mb")
        mem = c.get("server_memory_mb", {})
        add(
            "cron_memory",
            f"   server RSS with {c['most_running']} runs running (peak, VmHWM)",
            f"{rss if rss is not None else '-'} MB ({mem.get('vmhwm', '-')} MB)",
            "< 300 MB",
            None if rss is None else (rss < 300 and mem.get("vmhwm", 0) < 300),
        )
        stalls = c.get("stalls", [])
        add(
            "cron_stalls",
            "   stalls (runs in flight, none ending for 600 s)",
            f"{len(stalls)}" + (f" ({stall_text(stalls)}; server restarted)" if stalls else ""),
            "0",
            not stalls,
        )
        h0, h1 = c["health_ms_no_cron"], c["health_ms_with_cron"]
        if h1.get("n"):
            add(
                "cron_loop",
                "   GET /v1/health p50 / max, idle: no cron vs cron scripts",
                f"{h0['p50']}/{h0['max']} vs {h1['p50']}/{h1['max']} ms",
                "info",
                None,
            )
    if "storm" in r:
        s = r["storm"]
        add(
            "storm_intake",
            f"2. storm: intake, {s['triggers']} triggers",
            f"{s['intake_per_s']:.0f}/s ({s['intake_s']:.2f} s)",
            ">= 1,500/s",
            s["intake_per_s"] >= 1500,
        )
        add(
            "storm_cpu",
            f"   CPU during intake: server per trigger / {s['client']} client in all",
            f"{s['server_cpu_ms_per_trigger']} ms / {s['client_cpu_s']} s",
            "info",
            None,
        )
        add(
            "storm_accepted",
            "   accepted (201)",
            f"{s['accepted']}/{s['triggers']}",
            "all",
            s["accepted"] == s["triggers"],
        )
        add(
            "storm_lost",
            "   runs listed once drained / lost",
            f"{s['runs_listed']} / {s['lost']}",
            f"{s['triggers']} / 0",
            s["runs_listed"] == s["triggers"] and s["lost"] == 0,
        )
        add(
            "storm_once",
            "   most running at once",
            str(s["max_running_at_once"]),
            "1",
            s["max_running_at_once"] == 1 and s["overlapping_pairs"] == 0,
        )
        add(
            "storm_order",
            "   started out of id order",
            str(s["started_out_of_id_order"]),
            "0",
            s["started_out_of_id_order"] == 0,
        )
        add(
            "storm_latency",
            "   request latency p50 / p99 / max",
            three(s["request_latency_ms"], "ms"),
            "info",
            None,
        )
        add(
            "storm_drain",
            "   drain (first trigger .. last run finished)",
            f"{s['drain_total_s']} s ({s['runs_listed'] / max(s['drain_total_s'], 1e-9):.1f}"
            " runs/s)",
            "info",
            None,
        )
        stalls = s["queue_stalls"]
        add(
            "storm_stalls",
            "   stalls (runs in flight, none ending for 60 s)",
            f"{len(stalls)}" + (f" ({stall_text(stalls)}; server restarted)" if stalls else ""),
            "0",
            not stalls,
        )
    if "listing" in r:
        li = r["listing"]
        keys = ("p50", "p95", "p99")
        add(
            "list_newest",
            f"3. listing among {li['rows']:,}: limit=50, p50 / p95 / p99 (plain socket)",
            three(li["http_newest_ms"], "ms", keys),
            "p95 < 5 ms",
            li["http_newest_ms"]["p95"] < 5,
        )
        add(
            "list_before",
            "   limit=50&before=<middle>, p50 / p95 / p99",
            three(li["http_before_ms"], "ms", keys),
            "p95 < 5 ms",
            li["http_before_ms"]["p95"] < 5,
        )
        if "httpx_newest_ms" in li:
            add(
                "list_httpx",
                "   the same through httpx (its own parsing included), p95 newest / before=",
                f"{li['httpx_newest_ms']['p95']} / {li['httpx_before_ms']['p95']} ms",
                "info",
                None,
            )
        add(
            "list_sql",
            "   the SQL alone (newest / before=), p95",
            f"{li['sql_newest_ms']['p95']} / {li['sql_before_ms']['p95']} ms",
            "info",
            None,
        )
    return out


def stall_text(stalls: Sequence[dict[str, Any]]) -> str:
    """What was stuck, e.g. "1 starting; 91 queued"."""
    return "; ".join(
        ", ".join(f"{n} {status}" for status, n in x.get("statuses", {}).items() if n)
        for x in stalls
    )


def print_table(table: list[dict[str, Any]]) -> None:
    harness.print_table(
        ["metric", "figure", "target", "ok?"],
        [[t["metric"], t["figure"], t["target"], harness.ok_mark(t["ok"])] for t in table],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="100 cron scripts, 200 triggers, 100,000 runs"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--only", help="comma-separated: cron,docker,storm,listing (default: all)")
    parser.add_argument("--cron-scripts", type=int, help="scripts due in the same minute")
    parser.add_argument("--triggers", type=int, help="triggers in the storm (at most 1001)")
    parser.add_argument("--rows", type=int, help="runs seeded for the listing")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw",
        help="the storm's client: hand-written keep-alive HTTP/1.1 (default) or httpx.AsyncClient",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    only = set((args.only or "cron,docker,storm,listing").split(","))
    if {"cron", "docker"} <= only:
        only.add("docker_before")  # the docker side before hgrun's too (A-B-A, see 1b)
    start = harness.Start.now()  # the source at the start: the tree may change meanwhile
    docker_host, base_image = start.docker_host, start.base_image

    def make(tmp: Path) -> Bench:
        bench = Bench(plan, tmp, docker_host, base_image)
        bench.client_kind = args.client
        return bench

    def steps(bench: Bench) -> int:
        bench.setup()
        status = 0
        for name, step in (
            ("docker_before", bench.docker_before),
            ("cron", bench.cron_fanout),
            ("storm", bench.storm),
            ("listing", bench.listing),
            # Last: removing its ~1,000 containers has stalled a dockerd 20.10 (twice, even in
            # batches), which must not cost the other steps their figures.
            ("docker", bench.docker_side),
        ):
            if name not in only:
                continue
            try:
                step()
            except (BenchError, httpx.HTTPError, sqlite3.Error) as e:
                say(f"{name} failed: {e}")
                bench.failures.append(f"{name}: {e}")
                status = 1
                if not bench.server.running:
                    break
        if bench.results and not args.json:
            # The clean-up may take minutes (the docker side's ~1,000 containers): the figures
            # first, on stderr; the report on stdout follows the clean-up.
            say("the figures, before the clean-up:")
            with contextlib.redirect_stdout(sys.stderr):
                print_table(rows(bench.results))
        return status

    outcome = harness.measure(args.keep, make, steps, (BenchError, httpx.HTTPError))
    bench, status = outcome.bench, outcome.status
    if bench is None or not bench.results:
        return status or 1
    clean: dict[str, Any] = outcome.cleanup
    clean["temp_dir_removed"] = not outcome.tmp.exists()
    table = rows(bench.results)
    custom = (args.cron_scripts, args.triggers, args.rows) != (None,) * 3
    doc = harness.document(
        start,
        mode=("quick" if args.quick else "full") + (" (custom sizes)" if custom else ""),
        plan=asdict(plan),
        status=status,
        table=table,
        results=bench.results,
        failures=bench.failures,
        cleanup=clean,
        stalls=bench.stalls,
        hgrun_sources=[src for server in bench.servers for src in server.sources],
    )
    if args.json:
        harness.print_json(doc)
    else:
        m = doc["machine"]
        print(
            f"hgrun scripts, {doc['date']}, {doc['mode']} run, {m['cpus']} CPUs ({m['cpu']}), "
            f"Python {m['python']}, SQLite {m['sqlite']}, commit {doc['source']['commit']}"
            f"{' (hgrun/ modified)' if doc['source']['hgrun_dirty'] else ''}, "
            f"load {doc['loadavg_before'][0]} -> {doc['loadavg_after'][0]}, {doc['seconds']} s"
        )
        for src in {(x.get("path"), x.get("commit"), x.get("dirty")) for x in doc["hgrun_sources"]}:
            print(f"server ran hgrun from {src[0]} ({src[1]}{', modified' if src[2] else ''})")
        print()
        print_table(table)
        if "listing" in bench.results:
            li = bench.results["listing"]
            print()
            for variant, lines in li["query_plan"].items():
                print(f"query plan ({variant}): {'; '.join(lines)}")
        print()
        print(
            f"cleanup: {clean.get('containers_left', '?')} container(s) of this server left,"
            f" temp dir removed: {clean.get('temp_dir_removed')}"
        )
        for stall in bench.stalls:
            print(f"stall: {stall['what']}, {stall['in_flight']} in flight {stall['statuses']},"
                  " still for"
                  f" {stall['stalled_s']} s; the server said:")  # fmt: skip
            for line in stall["server_errors"]:
                print(f"    {line}")
        if bench.failures:
            print("not measured: " + "; ".join(bench.failures))
    return status


if __name__ == "__main__":
    sys.exit(main())
