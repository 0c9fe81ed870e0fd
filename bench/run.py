#!/usr/bin/env python3
"""hgrun against the docker CLI, side by side in one run, on one image. Prints ratios.

    python3 bench/run.py            # the full run: N=20, 100 MB of output, a 1 GB upload
    python3 bench/run.py --quick    # N=5, 20 MB, 100 MB
    python3 bench/run.py --json     # the same measurements as one JSON document on stdout

This is a benchmark, not a test: it never asserts on timings. It exits 0 when every measurement
ran (whether or not a target was met), 1 when something failed to run. See bench/README.md for
what is measured, how, and the latest figures.

It starts its own ``hgrun server`` on a free 127.0.0.1 port with a temp data dir, creates and
deploys an app whose Dockerfile is ``FROM $HGRUN_BENCH_BASE_IMAGE``, and runs the deployed
release's image with both hgrun and ``docker run`` (by image id, ``--pull never``, network none).
At the end it stops the server, removes every container it made (the server's, by its instance
label; its own, by a ``hgrun.bench`` label), the app's image tag and the temp dir.

Environment:
  DOCKER_HOST             the engine (default unix:///tmp/dk/docker.sock)
  HGRUN_BENCH_BASE_IMAGE  the app's base image (default hgrun-test/busybox:latest); must exist
                          locally and have sh, head, ls and true: nothing is pulled
  HGRUN_BENCH_CLI         how to invoke hgrun, shell-split (default: the `hgrun` console script
                          next to this Python, else `python -m hgrun.cli.main`)
  HGRUN_BENCH_TMPDIR      where the temp dir (data dir, app, the upload file, the bytecode
                          cache of the hgrun processes) goes (default: $TMPDIR or /tmp)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import BenchError, say

MIB = 1024 * 1024
SAMPLE_EVERY = 0.05  # seconds between RSS samples
CMD_TIMEOUT = 900.0  # no single command of the benchmark may take longer
SETTLE = 0.25  # seconds of pause before each timed command (after the engine is quiet)
# hgrun's warm pool asks for its next container as a run takes one: looked at once the
# engine has heard of it.
WARM_REFILL = 0.3
QUIESCE_MAX = 60.0  # at most this long waiting for the previous sample's containers to go


# The phases of one traced run, in order: the client's own marks (hgrun's, HGRUN_TRACE), the
# engine's events of the run's container, and what the bench itself sees.
TRACE_PHASES = (
    "client spawn", "imports", "command parsed", "request sent", "create (engine)",
    "attach (engine)", "create answered", "attach answered", "start (engine)", "first byte",
    "exit (engine)", "exit reported", "client exit", "removed (engine)",
)  # fmt: skip
CLI_PHASES = {
    "imports": "imports", "parsed": "command parsed", "request": "request sent",
    "created": "create answered", "attached": "attach answered", "exit_reported": "exit reported",
}  # fmt: skip
ENGINE_PHASES = {
    "create": "create (engine)", "attach": "attach (engine)", "start": "start (engine)",
    "die": "exit (engine)", "destroy": "removed (engine)",
}  # fmt: skip


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    n: int  # start-to-exit samples per side
    warmup: int  # start-to-exit warmups per side
    output_bytes: int
    output_reps: int
    upload_bytes: int
    upload_reps: int
    upload_content: str  # random | sparse
    startup_n: int  # `--version` samples per side (CLI start-up alone, informational)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(5, 1, 20 * MIB, 3, 100 * MIB, 2, "random", 5)
    else:
        plan = Plan(20, 2, 100 * MIB, 5, 1024 * MIB, 3, "random", 10)
    changes: dict[str, Any] = {}
    if args.n is not None:
        changes["n"] = args.n
    if args.output_mb is not None:
        changes["output_bytes"] = args.output_mb * MIB
    if args.upload_mb is not None:
        changes["upload_bytes"] = args.upload_mb * MIB
    if args.sparse:
        changes["upload_content"] = "sparse"
    return Plan(**{**plan.__dict__, **changes})


# -- processes and their memory ------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (from the ppid field of /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces and parens: the fields after the last ')' are fixed.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, ()))
    return found


class RssSampler:
    """Samples VmRSS of a process tree every 50 ms in a thread; keeps the peak.

    Also keeps the root process's own VmHWM (the kernel's exact peak RSS, reset with
    /proc/PID/clear_refs for a long-lived process), so a spike between two samples is not missed.
    """

    def __init__(self, pid: int, *, reset_hwm: bool = False) -> None:
        self.pid = pid
        self.peak_tree_kb = 0
        self.hwm_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        if reset_hwm:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_EVERY):
                return

    def sample(self) -> None:
        hwm = _status_kb(self.pid, "VmHWM")
        if hwm == 0:  # gone (or a zombie): nothing more to learn
            return
        self.hwm_kb = max(self.hwm_kb, hwm)
        tree = sum(_status_kb(p, "VmRSS") for p in _descendants(self.pid))
        self.peak_tree_kb = max(self.peak_tree_kb, tree)
        self.samples += 1

    @property
    def peak_mb(self) -> float:
        return max(self.peak_tree_kb, self.hwm_kb) / 1024


@dataclass
class Done:
    seconds: float
    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_bytes: int = 0


def run_timed(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    stdout: str = "devnull",  # devnull | capture | count
    watch: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
    check: bool = True,
) -> Done:
    """Run argv with stdin at EOF; wall time from spawn to exit."""
    out_target = subprocess.DEVNULL if stdout == "devnull" else subprocess.PIPE
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=out_target, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    watcher = watch(proc.pid) if watch else contextlib.nullcontext()
    err_chunks: list[bytes] = []
    err_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    err_thread.start()
    out = b""
    counted = 0
    with watcher:
        try:
            if stdout == "capture":
                out = proc.stdout.read()  # type: ignore[union-attr]
            elif stdout == "count":
                fd = proc.stdout.fileno()  # type: ignore[union-attr]
                while chunk := os.read(fd, MIB):
                    counted += len(chunk)
            harness.wait_exact(proc, CMD_TIMEOUT)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - t0
    err_thread.join(10)
    if proc.stdout:
        proc.stdout.close()
    done = Done(seconds, proc.returncode, out, b"".join(err_chunks), counted)
    if check and done.returncode != 0:
        raise BenchError(
            f"{shlex.join(argv)} exited {done.returncode}:\n"
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    return done


# -- statistics ----------------------------------------------------------------------------


def p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": p90(values),
        "min": min(values),
        "max": max(values),
        "samples": [round(v, 4) for v in values],
    }


# -- the benchmark -------------------------------------------------------------------------


class Bench(harness.Workspace):
    def __init__(
        self,
        plan: Plan,
        tmp: Path,
        docker_host: str,
        base_image: str,
        *,
        pyc: bool = True,
        cli: list[str] | None = None,
        server_args: Sequence[str] = (),
    ) -> None:
        super().__init__(tmp, docker_host, base_image, cli)
        self.plan = plan
        self.bench_id = uuid.uuid4().hex[:10]  # labels the containers it runs with docker
        self.pyc = pyc
        if pyc:
            # As installed: pip compiles bytecode at install time. A dev environment with
            # PYTHONDONTWRITEBYTECODE=1 and an editable install would otherwise compile every
            # hgrun module from source on every command. The cache goes to the temp dir, never
            # into the source tree.
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        self.server = harness.Server(
            self.cli, tmp / "data", docker_host, self.env, args=tuple(server_args), stop_timeout=20
        )
        self.image = ""  # the deployed release's image id: what both sides run
        self.results: dict[str, Any] = {}
        self.retries: list[str] = []
        self.instance: str | None = None  # the server's instance label, once it runs
        self.warm_seen = 0  # the most warm containers idle at once (see quiesce)

    def attempt(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One sample; on a failure, note it and try again (twice at most).

        The engine may be shared: another hgrun server, or a test session's cleanup removing
        every container labelled hgrun.run, can take a run's container away mid-sample. A retry
        is printed and kept in the results, never hidden.
        """
        for tries in range(3):
            try:
                return fn(*args)
            except BenchError as e:
                if tries == 2:
                    raise
                first = str(e).strip().splitlines()
                reason = f"{what}: {first[-1] if first else e}"
                say(f"retrying after a failure: {reason}")
                self.retries.append(reason)

    # -- helpers -------------------------------------------------------------------------

    def hgrun(self, *args: str) -> list[str]:
        return [*self.cli, *args]

    def docker_cmd(self, *args: str) -> list[str]:
        return [self.docker, *args]

    def run_hgrun(self, *args: str) -> list[str]:
        # --no-build: the live release, no build check (that is measured apart, as info).
        return self.hgrun("run", "--no-tty", "--no-build", *args)

    def docker_run(self, *args: str, flags_first: bool = False) -> list[str]:
        """`docker run --rm` of the deployed image; with ``flags_first`` the first args are
        extra `docker run` flags up to the command (whose first word is the last flag's end)."""
        base = [
            "run", "--rm", "--pull", "never", "--network", "none",
            "--label", f"hgrun.bench={self.bench_id}",
        ]  # fmt: skip
        if flags_first:
            *flags, command = args
            return self.docker_cmd(*base, *flags, self.image, command)
        return self.docker_cmd(*base, self.image, *args)

    def check_output(self, argv: Sequence[str], cwd: Path | None = None) -> str:
        done = run_timed(argv, env=self.env, cwd=cwd, stdout="capture")
        return done.stdout.decode()

    # -- setup and teardown --------------------------------------------------------------

    def setup(self) -> None:
        harness.check_base_image(self.docker, self.env, self.base_image)
        (self.tmp / "data").mkdir()
        self.app_dir.mkdir()
        (self.app_dir / "hgrun.yaml").write_text(
            f"name: {self.app}\nbuild:\n  dockerfile: Dockerfile\n"
        )
        (self.app_dir / "Dockerfile").write_text(f"FROM {self.base_image}\n")
        say(f"starting hgrun server ({shlex.join(self.cli)} server) ...")
        self.server.start()
        self.env["HGRUN_URL"] = self.server.url
        self.env["HGRUN_TOKEN"] = self.server.token
        say(f"server on {self.server.url} (pid {self.server.pid}); deploying app {self.app}")
        self.check_output(self.hgrun("apps:create", self.app), cwd=self.app_dir)
        self.check_output(self.hgrun("deploy"), cwd=self.app_dir)
        releases = json.loads(self.check_output(self.hgrun("releases", "--json"), self.app_dir))
        self.image = releases[0]["image"]
        self.results["server_rss_fresh_mb"] = _status_kb(self.server.pid, "VmRSS") / 1024
        self.instance = self.server.instance()
        say(f"deployed: image {self.image[:19]} (FROM {self.base_image}); docker runs the same id")

    def cleanup(self) -> None:
        instance = None
        with contextlib.suppress(Exception):
            instance = self.server.instance()
        with contextlib.suppress(Exception):
            self.server.stop()
        labels = [f"hgrun.bench={self.bench_id}"]
        if instance:
            labels.append(f"hgrun.instance={instance}")
        harness.remove_leftovers(self.docker, self.env, labels)
        harness.remove_app_images(self.docker, self.env, self.app)

    # -- 0. what a process start costs (info) --------------------------------------------

    def cli_startup(self) -> None:
        n = self.plan.startup_n
        say(f"CLI start-up: `hgrun --version` vs `docker --version`, {n} each")
        h: list[float] = []
        d: list[float] = []
        for i in range(n + 1):
            pair = [("h", self.hgrun("--version")), ("d", self.docker_cmd("--version"))]
            for side, argv in pair if i % 2 == 0 else pair[::-1]:
                time.sleep(SETTLE)
                t = run_timed(argv, env=self.env).seconds
                if i:  # the first round is a warmup
                    (h if side == "h" else d).append(t)
        self.results["cli_startup"] = {"hgrun": summary(h), "docker": summary(d)}

    # -- 1. start-to-exit ----------------------------------------------------------------

    def start_to_exit(self) -> None:
        p = self.plan
        hardened = hardened_docker_flags()
        say(
            f"start-to-exit: `hgrun run --no-tty --no-build true` vs `docker run --rm true`; as"
            f" info, hgrun with its build check and docker with hgrun's container settings;"
            f" {p.warmup} warmups + {p.n} each, interleaved"
        )
        sides = [
            ("h", self.run_hgrun("true")),
            ("d", self.docker_run("true")),
            ("b", self.hgrun("run", "--no-tty", "true")),  # no --no-build: the build check
        ]
        if hardened:
            sides.append(("k", self.docker_run(*hardened, "true", flags_first=True)))
        samples: dict[str, list[float]] = {side: [] for side, _ in sides}
        for i in range(p.warmup + p.n):
            # Rotate the order each round, so no side always goes first (or right after hgrun).
            k = i % len(sides)
            for side, argv in sides[k:] + sides[:k]:
                t = self.attempt(f"start-to-exit ({side})", self._seconds, argv)
                if i >= p.warmup:
                    samples[side].append(t)
        self.results["start_to_exit"] = {
            "hgrun": summary(samples["h"]),
            "docker": summary(samples["d"]),
        }
        self.results["start_to_exit_build_check"] = {"hgrun": summary(samples["b"])}
        if hardened:
            self.results["start_to_exit_docker_hardened"] = {
                "flags": hardened,
                "docker": summary(samples["k"]),
            }

    # -- 2. output throughput ------------------------------------------------------------

    def output(self) -> None:
        self._output(tty=False)

    def output_tty(self) -> None:
        self._output(tty=True)

    def _output(self, *, tty: bool) -> None:
        p = self.plan
        size = p.output_bytes
        script = f"head -c {size} /dev/zero"
        key = "output_tty" if tty else "output"
        say(
            f"output{' on a TTY' if tty else ''}: {size // MIB} MB through `hgrun run` and"
            f" `docker run` into /dev/null, 1 counted warmup + {p.output_reps} each, interleaved;"
            " the store must hold every byte of hgrun's run"
        )
        if tty:
            hgrun = self.hgrun("run", "--tty", "--no-build", "sh", "-c", script)
            docker = self.docker_cmd(
                "run", "--rm", "-t", "--pull", "never", "--network", "none",
                "--label", f"hgrun.bench={self.bench_id}", self.image, "sh", "-c", script,
            )  # fmt: skip
        else:
            hgrun = self.run_hgrun("sh", "-c", script)
            docker = self.docker_run("sh", "-c", script)
        h: list[float] = []
        d: list[float] = []
        stored = None
        for i in range(p.output_reps + 1):
            pair = [("h", hgrun), ("d", docker)]
            for side, argv in pair if i % 2 == 0 else pair[::-1]:
                if i == 0:  # the warmup reads the bytes and counts them: nothing lost
                    self.attempt(f"{key} count ({side})", self._count, argv, size, side)
                    if side == "h":
                        stored = self._stored_output()
                else:
                    t = self.attempt(f"{key} ({side})", self._seconds, argv)
                    (h if side == "h" else d).append(t)
        self.results[key] = {
            "bytes": size,
            "hgrun": summary(h),
            "docker": summary(d),
            "hgrun_mb_s": size / MIB / statistics.median(h),
            "docker_mb_s": size / MIB / statistics.median(d),
            "stored": stored,
        }

    def _stored_output(self) -> dict[str, int] | None:
        """What the store holds of the server's newest run: bytes kept and dropped by its cap."""
        db = self.server.data_dir / "hgrun.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute(
                    "SELECT output_bytes, output_dropped FROM runs ORDER BY id DESC LIMIT 1"
                ).fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return None
        return {"kept": int(row[0]), "dropped": int(row[1])} if row else None

    def quiesce(self) -> None:
        """Before each timed sample: wait until no container of the previous one is left, then
        pause a little, as between a user's commands. hgrun reports the exit before it removes
        the container (a removal of a container holding 1 GB takes a while): that work must
        not land on the next sample, which may be docker's.

        hgrun's warm containers (``hgrun server --warm``) stay, started and idle, between
        samples: that is their point. But the pool makes the next one a moment after a run
        takes one, and that work must not land on the next sample either: the wait goes on
        until as many are started and idle as ever were, and none is being made."""
        deadline = time.monotonic() + QUIESCE_MAX
        labels = [f"hgrun.bench={self.bench_id}"]
        if self.instance:
            labels.append(f"hgrun.instance={self.instance}")
        time.sleep(WARM_REFILL)
        while time.monotonic() < deadline:
            busy, warm = False, 0
            for label in labels:
                listed = subprocess.run(
                    self.docker_cmd(
                        "ps", "-a", "--filter", f"label={label}",
                        "--format", '{{.Label "hgrun.run"}} {{.State}}',
                    ),
                    env=self.env,
                    capture_output=True,
                    text=True,
                )  # fmt: skip
                for line in listed.stdout.splitlines():
                    if line.strip() == "warm running":
                        warm += 1
                    else:
                        busy = True
            if not busy and warm >= self.warm_seen:
                break
            time.sleep(0.05)
        self.warm_seen = warm  # fewer after a timeout: one was let go, not to be waited for
        time.sleep(SETTLE)

    def _seconds(self, argv: Sequence[str]) -> float:
        self.quiesce()
        return run_timed(argv, env=self.env, cwd=self.app_dir).seconds

    def _count(self, argv: Sequence[str], size: int, side: str) -> None:
        self.quiesce()
        done = run_timed(argv, env=self.env, cwd=self.app_dir, stdout="count")
        if done.stdout_bytes != size:
            raise BenchError(f"{side}: {done.stdout_bytes} bytes of output, expected {size}")

    # -- the trace: where one run's time goes ---------------------------------------------

    def trace(self, n: int) -> None:
        """``n`` runs of `echo` per side (after one warmup each), interleaved: the instant of
        each phase after the spawn, from the client (hgrun's own marks, HGRUN_TRACE; the first
        byte and the exit as this bench sees them) and from the engine's events (create,
        attach, start, die, destroy of the run's container), median per phase."""
        say(
            f"trace: `hgrun run --no-tty --no-build echo` vs `docker run --rm echo`, 1 warmup"
            f" + {n} each, interleaved; phases from client marks and the engine's events"
        )
        samples: dict[str, list[dict[str, float]]] = {"h": [], "d": []}
        for i in range(n + 1):
            for side in ("h", "d") if i % 2 == 0 else ("d", "h"):
                phases = self.attempt(f"trace ({side})", self._trace_one, side)
                if i:
                    samples[side].append(phases)
        self.results["trace"] = {
            side: {
                phase: statistics.median(s[phase] for s in runs if phase in s)
                for phase in TRACE_PHASES
                if any(phase in s for s in runs)
            }
            for side, runs in samples.items()
        }
        self.results["trace_samples"] = samples

    def _trace_one(self, side: str) -> dict[str, float]:
        """One traced run: each phase's milliseconds after the client was spawned."""
        self.quiesce()
        marks_file = self.tmp / "trace.jsonl"
        marks_file.unlink(missing_ok=True)
        env = dict(self.env)
        if side == "h":
            argv = self.run_hgrun("echo", "traced")
            env["HGRUN_TRACE"] = str(marks_file)
            label = f"hgrun.instance={self.instance}"
        else:
            argv = self.docker_run("echo", "traced")
            label = f"hgrun.bench={self.bench_id}"
        since = time.time() - 1
        spawn = time.time_ns()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=self.app_dir,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 - PIPEs
        first = os.read(proc.stdout.fileno(), 65536)
        first_ns = time.time_ns()
        rest = proc.stdout.read()
        err = proc.stderr.read()
        code = harness.wait_exact(proc, CMD_TIMEOUT)
        exit_ns = time.time_ns()
        if code != 0 or (first + rest).strip() != b"traced":
            raise BenchError(f"{side}: exited {code}, output {first + rest!r}, {err[-500:]!r}")
        self.quiesce()  # the container is gone: every event of it is in the engine's log
        phases: dict[str, float] = {"first byte": first_ns, "client exit": exit_ns}
        for action, ns in self._events(label, since, spawn).items():
            phases[ENGINE_PHASES[action]] = ns
        if side == "h":
            for line in marks_file.read_text().splitlines():
                mark = json.loads(line)
                if mark["mark"] in CLI_PHASES:
                    phases[CLI_PHASES[mark["mark"]]] = mark["ns"]
        out = {"client spawn": 0.0}
        out.update({phase: (ns - spawn) / 1e6 for phase, ns in phases.items()})
        return out

    def _events(self, label: str, since: float, after_ns: int) -> dict[str, int]:
        """The first create, attach, start, die and destroy after ``after_ns`` of the one
        container labelled ``label`` that ended then, in epoch nanoseconds (``since``: where
        the engine's log is read from, in epoch seconds)."""
        listed = subprocess.run(
            self.docker_cmd(
                "events", "--since", f"{since:.6f}", "--until", f"{time.time():.6f}",
                "--filter", "type=container", "--filter", f"label={label}",
                "--format", "{{json .}}",
            ),
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        by_container: dict[str, dict[str, int]] = {}
        for line in listed.stdout.splitlines():
            event = json.loads(line)
            if int(event["timeNano"]) < after_ns:
                continue  # the previous sample's container, going away
            action = str(event.get("Action", "")).split(":")[0]
            found = by_container.setdefault(str(event.get("id")), {})
            if action in ENGINE_PHASES and action not in found:
                found[action] = int(event["timeNano"])
        # The run's container is the one that ended. hgrun's warm pool makes its next
        # container during the sample (it does not end); and a run that took a warm one
        # created and started it before the spawn, so it has no create or start here.
        ended = [found for found in by_container.values() if "die" in found]
        if len(ended) != 1:
            raise BenchError(f"{len(ended)} containers labelled {label} ended in one sample")
        return ended[0]

    # -- 3 and 4. upload, and memory during it --------------------------------------------

    def make_upload_file(self) -> Path:
        p = self.plan
        path = self.tmp / "big.bin"
        t0 = time.perf_counter()
        if p.upload_content == "sparse":
            with open(path, "wb") as f:
                f.truncate(p.upload_bytes)
        else:
            block = os.urandom(MIB)
            with open(path, "wb") as f:
                for i in range(p.upload_bytes // MIB):
                    # A fresh random block every 64 MB, the rest varied cheaply: incompressible
                    # enough (nothing on either path compresses anyway), quick to write.
                    if i % 64 == 0:
                        block = os.urandom(MIB)
                    f.write(block[i % 4096 :] + block[: i % 4096])
                f.write(os.urandom(p.upload_bytes % MIB))
        say(
            f"made {path.name}: {p.upload_bytes // MIB} MB, {p.upload_content} "
            f"({time.perf_counter() - t0:.1f}s; it sits in the page cache for both sides)"
        )
        return path

    def upload(self) -> None:
        p = self.plan
        big = self.make_upload_file()
        size = p.upload_bytes
        say(
            f"upload: `hgrun run --file` vs docker create --rm + cp + start -a, "
            f"1 warmup + {p.upload_reps} each, interleaved; RSS sampled every 50 ms"
        )
        h: list[float] = []
        d: list[float] = []
        d_cp: list[float] = []
        cli_peaks: list[float] = []
        server_peaks: list[float] = []
        docker_cli_peaks: list[float] = []
        server_before = _status_kb(self.server.pid, "VmRSS") / 1024
        for i in range(p.upload_reps + 1):
            order = ["h", "d"] if i % 2 == 0 else ["d", "h"]
            for side in order:
                if side == "h":
                    t, cli_mb, srv_mb = self.attempt("upload (h)", self._upload_hgrun, big, size)
                    if i:
                        h.append(t)
                    cli_peaks.append(cli_mb)
                    server_peaks.append(srv_mb)
                else:
                    t, cp_t, cp_mb = self.attempt("upload (d)", self._upload_docker, big, size)
                    if i:
                        d.append(t)
                        d_cp.append(cp_t)
                    docker_cli_peaks.append(cp_mb)
        self.results["upload"] = {
            "bytes": size,
            "content": p.upload_content,
            "hgrun": summary(h),
            "docker": summary(d),
            "docker_cp_only": summary(d_cp),
        }
        self.results["memory"] = {
            "cli_peak_mb": max(cli_peaks),
            "server_peak_mb": max(server_peaks),
            "server_rss_before_mb": server_before,
            "docker_cli_peak_mb": max(docker_cli_peaks),
            "cli_peaks_mb": [round(x, 1) for x in cli_peaks],
            "server_peaks_mb": [round(x, 1) for x in server_peaks],
        }
        big.unlink()

    def _upload_hgrun(self, big: Path, size: int) -> tuple[float, float, float]:
        self.quiesce()
        argv = self.run_hgrun("--file", str(big), "sh", "-c", "ls -l /tmp/uploads")
        cli: list[RssSampler] = []
        with RssSampler(self.server.pid, reset_hwm=True) as server:

            @contextlib.contextmanager
            def watch(pid: int) -> Any:
                with RssSampler(pid) as s:
                    cli.append(s)
                    yield s

            done = run_timed(argv, env=self.env, cwd=self.app_dir, stdout="capture", watch=watch)
        _expect_size(done.stdout, big.name, size, "hgrun")
        return done.seconds, cli[0].peak_mb, server.peak_mb

    def _upload_docker(self, big: Path, size: int) -> tuple[float, float, float]:
        """`docker create --rm` + `docker cp` + `docker start -a`: until the exit is reported,
        like `hgrun run --file` (both remove the container afterwards, in the background; the
        next sample waits for that)."""
        self.quiesce()
        t0 = time.perf_counter()
        create = self.docker_cmd(
            "create", "--rm", "--pull", "never", "--network", "none",
            "--label", f"hgrun.bench={self.bench_id}",
            self.image, "sh", "-c", f"ls -l /tmp/{big.name}",
        )  # fmt: skip
        ctr = self.check_output(create).strip()
        samplers: list[RssSampler] = []

        @contextlib.contextmanager
        def watch(pid: int) -> Any:
            with RssSampler(pid) as s:
                samplers.append(s)
                yield s

        try:
            cp_argv = self.docker_cmd("cp", str(big), f"{ctr}:/tmp/")
            cp = run_timed(cp_argv, env=self.env, watch=watch)
            out = self.check_output(self.docker_cmd("start", "-a", ctr))
            total = time.perf_counter() - t0
        except BaseException:
            subprocess.run(self.docker_cmd("rm", "-f", ctr), env=self.env, capture_output=True)
            raise
        _expect_size(out.encode(), big.name, size, "docker")
        return total, cp.seconds, samplers[0].peak_mb


def hardened_docker_flags() -> list[str] | None:
    """`docker run` flags for the container settings hgrun gives a run of the default size
    (init, capabilities, no-new-privileges, pids, memory and CPU limits, ulimits), read from
    hgrun's own code; None when that cannot be read (then the row is left out)."""
    try:
        from hgrun.engine import ContainerSpec
        from hgrun.engine.dockerspec import create_args
        from hgrun.models import DEFAULT_SIZE, SIZES

        spec = ContainerSpec(
            image="x", command=["true"], env={}, labels={}, size=SIZES[DEFAULT_SIZE]
        )
        _create, host = create_args(spec)
    except Exception:  # noqa: BLE001 - any change in hgrun's internals just drops the row
        return None
    flags: list[str] = []
    if host.get("init"):
        flags.append("--init")
    for cap in host.get("cap_drop") or ():
        flags += ["--cap-drop", cap]
    for cap in host.get("cap_add") or ():
        flags += ["--cap-add", cap]
    for opt in host.get("security_opt") or ():
        flags += ["--security-opt", opt]
    if host.get("pids_limit"):
        flags += ["--pids-limit", str(host["pids_limit"])]
    if host.get("mem_limit"):
        flags += ["--memory", str(host["mem_limit"])]
    if host.get("memswap_limit"):
        flags += ["--memory-swap", str(host["memswap_limit"])]
    if host.get("nano_cpus"):
        flags += ["--cpus", f"{host['nano_cpus'] / 1e9:g}"]
    for u in host.get("ulimits") or ():
        flags += ["--ulimit", f"{u['Name'].lower()}={u['Soft']}:{u['Hard']}"]
    return flags


def _expect_size(listing: bytes, name: str, size: int, side: str) -> None:
    for line in listing.decode(errors="replace").splitlines():
        if line.rstrip().endswith(name) and str(size) in line.split():
            return
    raise BenchError(f"{side}: {name} of {size} bytes not found in the container: {listing!r}")


# -- the report ----------------------------------------------------------------------------


def rows(r: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """One dict per line of the table: metric, hgrun, docker, ratio, target, ok."""
    out: list[dict[str, Any]] = []

    def add(metric: str, hg: str, dk: str, ratio: float | None, target: str, ok: bool | None,
            key: str) -> None:  # fmt: skip
        out.append(
            {"key": key, "metric": metric, "hgrun": hg, "docker": dk,
             "ratio": None if ratio is None else round(ratio, 3), "target": target, "ok": ok}
        )  # fmt: skip

    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    if "cli_startup" in r:
        c = r["cli_startup"]
        hm, dm = c["hgrun"]["median"], c["docker"]["median"]
        add("CLI start-up (--version), median", ms(hm), ms(dm), hm / dm, "info", None, "cli")
    if "start_to_exit" in r:
        s = r["start_to_exit"]
        hm, dm = s["hgrun"]["median"], s["docker"]["median"]
        add(f"start-to-exit `true`, median (N={s['hgrun']['n']})", ms(hm), ms(dm), hm / dm,
            "<= 1.0", hm / dm <= 1.0, "start_median")  # fmt: skip
        hp, dp = s["hgrun"]["p90"], s["docker"]["p90"]
        add("start-to-exit `true`, p90", ms(hp), ms(dp), hp / dp, "info", None, "start_p90")
    if "start_to_exit_docker_hardened" in r:
        k = r["start_to_exit_docker_hardened"]["docker"]["median"]
        hm = r["start_to_exit"]["hgrun"]["median"]
        add("  docker run with hgrun's container settings", "", ms(k), hm / k, "info", None,
            "start_docker_hardened")  # fmt: skip
    if "start_to_exit_build_check" in r:
        b = r["start_to_exit_build_check"]["hgrun"]["median"]
        dm = r["start_to_exit"]["docker"]["median"]
        add("  same, with the build check (no --no-build)", ms(b), ms(dm), b / dm, "info", None,
            "start_build_check")  # fmt: skip
    for key, what, goal in (("output", "", 1.2), ("output_tty", " on a TTY", 1.1)):
        if key not in r:
            continue
        o = r[key]
        hs, ds = o["hgrun_mb_s"], o["docker_mb_s"]
        add(f"output {o['bytes'] // MIB} MB{what}, throughput (median)", f"{hs:.0f} MB/s",
            f"{ds:.0f} MB/s", hs / ds, f">= {goal}", hs / ds >= goal, key)  # fmt: skip
        kept = o.get("stored")
        if kept is not None:
            whole = kept["kept"] + kept["dropped"] == o["bytes"]
            add("  stored of hgrun's run (kept + dropped by the cap)",
                f"{kept['kept'] // MIB} + {kept['dropped'] // MIB} MB", "", None,
                "every byte", whole, f"{key}_stored")  # fmt: skip
    if "upload" in r:
        u = r["upload"]
        hm, dm = u["hgrun"]["median"], u["docker"]["median"]
        add(f"upload {u['bytes'] // MIB} MB ({u['content']}), duration (median)",
            f"{hm:.2f} s", f"{dm:.2f} s", hm / dm, "<= 1.1", hm / dm <= 1.1, "upload")  # fmt: skip
        cp = u["docker_cp_only"]["median"]
        add("  docker cp alone (median)", "", f"{cp:.2f} s", hm / cp, "info", None, "upload_cp")
    if "memory" in r:
        m = r["memory"]
        what = f"{plan.upload_bytes // MIB} MB upload"
        add(f"peak RSS, CLI, during the {what}", f"{m['cli_peak_mb']:.0f} MB",
            f"{m['docker_cli_peak_mb']:.0f} MB (docker cp)", None, "< 150 MB",
            m["cli_peak_mb"] < 150, "rss_cli")  # fmt: skip
        add(f"peak RSS, server, during the {what}",
            f"{m['server_peak_mb']:.0f} MB (before {m['server_rss_before_mb']:.0f},"
            f" fresh {r.get('server_rss_fresh_mb', 0):.0f})", "-", None,
            "< 150 MB", m["server_peak_mb"] < 150, "rss_server")  # fmt: skip
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    harness.print_table(
        ["metric", "hgrun", "docker", "ratio", "target", "ok?"],
        [
            [
                t["metric"],
                t["hgrun"],
                t["docker"],
                "" if t["ratio"] is None else f"{t['ratio']:.2f}",
                t["target"],
                harness.ok_mark(t["ok"]),
            ]
            for t in table
        ],
    )


def print_trace(trace: dict[str, dict[str, float]]) -> None:
    """The phases of one run, side by side: ms after the spawn, and the step from the phase
    before it on the same side (blank where a side has no such phase)."""
    h, d = trace.get("h", {}), trace.get("d", {})

    def cells(side: dict[str, float], phase: str, before: list[float]) -> list[str]:
        if phase not in side:
            return ["", ""]
        at = side[phase]
        step = f"+{at - before[0]:.0f}" if before else ""
        before[:] = [at]
        return [f"{at:.0f}", step]

    lines = []
    hb: list[float] = []
    db: list[float] = []
    for phase in TRACE_PHASES:
        if phase in h or phase in d:
            lines.append([phase, *cells(h, phase, hb), *cells(d, phase, db)])
    harness.print_table(["phase (median)", "hgrun ms", "step", "docker ms", "step"], lines)
    if "client exit" in h and "client exit" in d:
        ratio = h["client exit"] / d["client exit"]
        print(f"start-to-exit ratio (client exit): {ratio:.2f} (target <= 1.0)")


STEPS = {
    "startup": "cli_startup",
    "start": "start_to_exit",
    "output": "output",
    "output_tty": "output_tty",
    "upload": "upload",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=5, 20 MB output, 100 MB upload")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--n", type=int, help="start-to-exit samples per side")
    parser.add_argument("--output-mb", type=int, help="MB (MiB) of output")
    parser.add_argument("--upload-mb", type=int, help="MB (MiB) to upload")
    parser.add_argument("--sparse", action="store_true", help="upload a sparse file (zeros)")
    parser.add_argument(
        "--no-pyc",
        action="store_true",
        help="no bytecode cache for hgrun (keep PYTHONDONTWRITEBYTECODE as the environment has it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    parser.add_argument(
        "--venv",
        action="store_true",
        help="hgrun installed by pip into a fresh virtualenv in the temp dir, as users install it",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated steps to run, of: {', '.join(STEPS)} (default: all)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="only the trace: where one run's time goes, phase by phase (N=--n, default 5)",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="more `hgrun server` flags, shell-split (`--warm 0`: no warm containers)",
    )
    args = parser.parse_args(argv)
    only = list(STEPS) if not args.only else [x.strip() for x in args.only.split(",")]
    unknown = [x for x in only if x not in STEPS]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: unknown step; steps: {', '.join(STEPS)}")
    plan = make_plan(args)
    start = harness.Start.now()
    docker_host, base_image, load_before = start.docker_host, start.base_image, start.load_before
    if load_before[0] > (os.cpu_count() or 1):
        say(
            f"warning: load average {load_before[0]:.1f} on {os.cpu_count()} CPUs: other work"
            " competes for the machine, so the figures will be noisy (the ratios less so:"
            " both sides are interleaved)"
        )

    def make(tmp: Path) -> Bench:
        cli = harness.venv_cli(tmp) if args.venv else None
        return Bench(
            plan,
            tmp,
            docker_host,
            base_image,
            pyc=not args.no_pyc,
            cli=cli,
            server_args=shlex.split(args.server_args),
        )

    def steps(bench: Bench) -> int:
        bench.setup()
        if args.trace:
            bench.trace(args.n or 5)
            return 0
        for step in only:
            getattr(bench, STEPS[step])()
        return 0

    outcome = harness.measure(args.keep, make, steps)
    bench, status = outcome.bench, outcome.status
    if bench is None or not bench.results:
        return status or 1
    table = rows(bench.results, plan)
    doc = harness.document(
        start,
        mode="trace" if args.trace else "quick" if args.quick else "full",
        plan=plan.__dict__,
        status=status,
        table=table,
        results=bench.results,
        image=bench.image,
        hgrun_cli=bench.cli,
        bytecode_cache=bench.pyc,
        retries=bench.retries,
    )
    if args.json:
        harness.print_json(doc)
    else:
        m = doc["machine"]
        print(
            f"hgrun vs docker, {doc['date']}, {doc['mode']} run, {m['cpus']} CPUs ({m['cpu']}), "
            f"load {doc['loadavg_before'][0]} -> {doc['loadavg_after'][0]}, image "
            f"{bench.image[7:19]} (FROM {base_image}), hgrun at {start.source['commit']}"
            f"{' + uncommitted changes' if start.source['hgrun_dirty'] else ''}, bytecode cache "
            f"{'on' if bench.pyc else 'off'}, hgrun "
            f"{'from a fresh virtualenv' if args.venv else 'as ' + shlex.join(bench.cli)}"
            f"{', server flags ' + args.server_args if args.server_args else ''}"
        )
        if table:
            print_table(table)
        if "trace" in bench.results:
            print_trace(bench.results["trace"])
        missed = [t["metric"].strip() for t in table if t["ok"] is False]
        if missed:
            print(f"\nmissed targets: {'; '.join(missed)}")
        if bench.retries:
            print(f"\nretried samples ({len(bench.retries)}):")
            for reason in bench.retries:
                print(f"  {reason}")
        if status:
            why = "interrupted" if status == 130 else "a step failed, see above"
            print(f"\n(incomplete: {why})")
    return status


if __name__ == "__main__":
    sys.exit(main())
