#!/usr/bin/env python3
"""Scripts due in one minute on a Docker Swarm: three nodes against one node, side by side.

    python3 bench/swarm.py                  # full: 1,000 cron scripts, each side (about 15 min)
    python3 bench/swarm.py --scripts 20     # a smoke run
    python3 bench/swarm.py --json           # one JSON document on stdout, progress on stderr

A benchmark, not a test: it never asserts; exit 0 when both sides were measured, 1 otherwise.
Root only (it stands up the swarm with ``scripts/swarm``). bench/SWARM.md says what it measures.

Each side is bench/scripts.py's cron fan-out (N scripts ``cron: "* * * * *"``, command
``true``, concurrency ``allow``, all due at the next minute boundary) against its own ``hgrun
server --engine swarm`` on the same three-node swarm: "one node" pins every run to node n2
(``--placement engine.labels.hgrun.node==n2``), "three nodes" lets Swarm place them anywhere.
Per side: **start lag** = ``started - slot`` of each run (p50, p99, max), **all started** = the
largest start lag (the moment the last of the N commands began), **all finished** after the
slot, and runs that did not succeed.

Environment:
  HGRUN_SWARM_SLOT        the slot of scripts/swarm to use (default 4); its swarm is stood up and
                          torn down here unless HGRUN_BENCH_SWARM names one already up (its DIR)
  HGRUN_BENCH_BASE_IMAGE  the app's base image (default hgrun-test/busybox:latest), put on the
                          manager by scripts/images --busybox when missing
  HGRUN_BENCH_CLI, HGRUN_BENCH_TMPDIR   as bench/scripts.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import harness
from harness import BenchError, say

import scripts

ROOT = Path(__file__).resolve().parent.parent
SIDES = (("one node", ("--placement", "engine.labels.hgrun.node==n2")), ("three nodes", ()))


@contextlib.contextmanager
def swarm() -> Iterator[tuple[str, Path]]:
    """(the manager's DOCKER_HOST, hgrun's client certificate folder) of a swarm that is up."""
    given = os.environ.get("HGRUN_BENCH_SWARM")
    if given:
        yield f"unix://{given}/n1/docker.sock", Path(given) / "tls" / "client"
        return
    slot = os.environ.get("HGRUN_SWARM_SLOT", "4")
    env = {**os.environ, "HGRUN_SWARM_SLOT": slot}
    where = Path(tempfile.mkdtemp(prefix="hgrun-bench-swarm-"))
    say(f"standing up a three-node swarm (slot {slot}, {where}) ...")
    up = subprocess.run([ROOT / "scripts" / "swarm", "up", where], env=env, capture_output=True,
                        text=True, check=False)  # fmt: skip
    try:
        if up.returncode != 0:
            raise BenchError(f"scripts/swarm up exited {up.returncode}: {up.stderr.strip()}")
        yield up.stdout.strip(), where / "tls" / "client"
    finally:
        say("tearing the swarm down ...")
        subprocess.run([ROOT / "scripts" / "swarm", "down", where], env=env, check=False,
                       capture_output=True)  # fmt: skip
        with contextlib.suppress(OSError):
            where.rmdir()


def remove_services(bench: scripts.Bench) -> int:
    """Services of the bench's servers left behind (a run cut short): removed, counted."""
    removed = 0
    for instance in bench.instances | {i for s in bench.servers if (i := s.instance())}:
        ids = subprocess.run(
            [bench.docker, "service", "ls", "-q", "--filter", f"label=hgrun.instance={instance}"],
            env=bench.env, capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        if ids:
            subprocess.run([bench.docker, "service", "rm", *ids], env=bench.env,
                           capture_output=True, check=False)  # fmt: skip
            removed += len(ids)
    return removed


def side(
    name: str, flags: tuple[str, ...], plan: scripts.Plan, manager: str, tls: Path, base: str
) -> dict[str, Any]:
    """One side's cron fan-out, on its own server; its figures (or what failed)."""
    say(f"== {name}")

    def make(tmp: Path) -> scripts.Bench:
        bench = scripts.Bench(plan, tmp, manager, base)
        bench.server.args = (*bench.server.args, "--engine", "swarm", "--engine-tls", str(tls),
                             "--max-timeout", "30m", *flags)  # fmt: skip
        return bench

    def steps(bench: scripts.Bench) -> int:
        bench.setup()
        bench.cron_fanout()
        return 0

    outcome = harness.measure(False, make, steps, (BenchError, OSError))
    bench = outcome.bench
    cron = dict(bench.results.get("cron", {})) if bench is not None else {}
    left = remove_services(bench) if bench is not None else 0
    start = cron.get("start_lag_s", {})
    return {
        "side": name,
        "flags": list(flags),
        "status": outcome.status,
        "runs": cron.get("runs_for_slot"),
        "statuses": cron.get("statuses"),
        "errors": cron.get("errors"),
        "start_lag_s": start,
        "all_started_s": start.get("max"),
        "all_finished_s": cron.get("all_finished_after_slot_s"),
        "dispatch_lag_s": cron.get("dispatch_lag_s"),
        "services_left_removed": left,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", type=int, default=1000, help="scripts due in the minute")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("bench/swarm.py needs root (scripts/swarm: namespaces, a bridge, three dockerds)")
        return 1
    plan = replace(scripts.make_plan(argparse.Namespace(quick=True, cron_scripts=args.scripts,
                                                         triggers=None, rows=None)),
                   list_scripts=0)  # fmt: skip
    start = harness.Start.now()
    results: list[dict[str, Any]] = []
    try:
        with swarm() as (manager, tls):
            images = subprocess.run([ROOT / "scripts" / "images", "--busybox"],
                                    env={**os.environ, "DOCKER_HOST": manager},
                                    capture_output=True, text=True, check=False)  # fmt: skip
            if images.returncode != 0:
                raise BenchError(f"scripts/images --busybox failed: {images.stderr.strip()}")
            for name, flags in SIDES:
                results.append(side(name, flags, plan, manager, tls, start.base_image))
    except BenchError as e:
        say(f"failed: {e}")
        return 1
    status = 0 if all(r["status"] == 0 and r["runs"] for r in results) else 1
    doc = harness.document(start, mode=f"{args.scripts} scripts", plan={"scripts": args.scripts},
                           status=status, table=[], results={"sides": results})  # fmt: skip
    if args.json:
        harness.print_json(doc)
        return status
    m = doc["machine"]
    print(f"hgrun on a swarm, {doc['date']}: {args.scripts} scripts due in one minute;"
          f" {m['cpus']} CPUs, load {doc['loadavg_before'][0]} -> {doc['loadavg_after'][0]},"
          f" commit {doc['source']['commit']}")  # fmt: skip
    print()
    harness.print_table(
        ["", *(r["side"] for r in results)],
        [
            ["runs started", *(f"{r['start_lag_s'].get('n', 0)}/{r['runs']}" for r in results)],
            ["start lag p50 (s)", *(r["start_lag_s"].get("p50") for r in results)],
            ["start lag p99 (s)", *(r["start_lag_s"].get("p99") for r in results)],
            ["all started (s after the slot)", *(r["all_started_s"] for r in results)],
            ["all finished (s after the slot)", *(r["all_finished_s"] for r in results)],
            ["statuses", *(r["statuses"] for r in results)],
        ],
    )
    for r in results:
        for error in r["errors"] or ():
            print(f"{r['side']}: {error['count']} x {error['message']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
