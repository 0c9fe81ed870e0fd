#!/usr/bin/env python3
"""The example app's management commands: stdlib plus psycopg2, no pip needed.

    python3 manage.py migrate      create the tables (idempotent)
    python3 manage.py load PATH    load customers from a CSV, a tar of CSVs, or a folder of CSVs
    python3 manage.py report       print row counts
    python3 manage.py worker       print a line every WORKER_INTERVAL seconds until stopped
    python3 manage.py env          print the names (never the values) of the environment

Commands that need the database read DATABASE_URL and exit with status 2 when it is missing,
3 when the database cannot be reached.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

MIGRATIONS = [
    (
        "0001_customers",
        "CREATE TABLE IF NOT EXISTS customers ("
        "id serial PRIMARY KEY, name text NOT NULL, email text)",
    ),
]
EXPECTED_HEADER = ["name", "email"]


class Fail(Exception):
    """A failure to report in one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def connect() -> Any:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise Fail("DATABASE_URL is not set; set it in hgrun.yaml's env or with --env", 2)
    try:
        import psycopg2
    except ImportError as e:
        raise Fail("psycopg2 is not installed (Debian: python3-psycopg2)", 2) from e
    try:
        return psycopg2.connect(url, connect_timeout=5)
    except psycopg2.OperationalError as e:
        raise Fail(f"cannot reach the database at {safe_url(url)}: {one_line(e)}", 3) from e


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def migrate() -> None:
    with connect() as conn, conn.cursor() as cur:
        # Two migrate runs at once (say, a deploy and a cron) take turns on this lock.
        cur.execute("SELECT pg_advisory_xact_lock(7405)")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS hgrun_migrations ("
            "name text PRIMARY KEY, applied_at timestamptz)"
        )
        cur.execute("SELECT name FROM hgrun_migrations")
        done = {row[0] for row in cur.fetchall()}
        applied = 0
        for name, sql in MIGRATIONS:
            if name in done:
                print(f"migrate: {name} already applied")
                continue
            cur.execute(sql)
            cur.execute(
                "INSERT INTO hgrun_migrations (name, applied_at) VALUES (%s, now())", (name,)
            )
            print(f"migrate: applied {name}")
            applied += 1
    print(f"migrate: {applied} applied, {len(MIGRATIONS) - applied} already up to date")


def csv_sources(path: str) -> Iterator[tuple[str, io.TextIOBase]]:
    """Yield (name, text stream) for each CSV in ``path``: a CSV, a tar of CSVs, or a folder."""
    if os.path.isdir(path):
        for dirpath, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                if name.endswith(".csv"):
                    full = os.path.join(dirpath, name)
                    with open(full, newline="", encoding="utf-8") as f:
                        yield full, f
        return
    if not os.path.exists(path):
        raise Fail(f"{path}: no such file")
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".csv"):
                    raw = tar.extractfile(member)
                    if raw is not None:
                        yield (
                            f"{path}:{member.name}",
                            io.TextIOWrapper(raw, encoding="utf-8", newline=""),
                        )
        return
    with open(path, newline="", encoding="utf-8") as f:
        yield path, f


def load(path: str) -> None:
    sources = 0
    total = 0
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('customers')")
        if cur.fetchone()[0] is None:
            raise Fail("table customers does not exist; run 'python3 manage.py migrate' first")
        for name, stream in csv_sources(path):
            reader = csv.reader(stream)
            header = [h.strip().lower() for h in next(reader, [])]
            if header != EXPECTED_HEADER:
                raise Fail(f"{name}: expected the header 'name,email', found {','.join(header)!r}")
            rows = []
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != 2 or not row[0].strip():
                    raise Fail(f"{name}:{lineno}: expected 'name,email' with a name")
                rows.append((row[0].strip(), row[1].strip() or None))
            cur.executemany("INSERT INTO customers (name, email) VALUES (%s, %s)", rows)
            print(f"load: {name}: {len(rows)} rows")
            sources += 1
            total += len(rows)
    if sources == 0:
        raise Fail(f"{path}: no CSV file found")
    print(f"load: {total} rows from {sources} file(s)")


def report() -> None:
    with connect() as conn, conn.cursor() as cur:
        for table in ("customers", "hgrun_migrations"):
            cur.execute("SELECT to_regclass(%s)", (table,))
            if cur.fetchone()[0] is None:
                print(f"report: {table}: missing (run migrate)")
                continue
            cur.execute(f"SELECT count(*) FROM {table}")
            print(f"report: {table}: {cur.fetchone()[0]} rows")


def worker() -> None:
    interval = float(os.environ.get("WORKER_INTERVAL", "5"))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tick = 0
    print(f"worker: started, a line every {interval:g}s", flush=True)
    while not stopping:
        tick += 1
        print(f"worker: tick {tick}", flush=True)
        deadline = time.monotonic() + interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, interval))
    print("worker: stopped", flush=True)


def env() -> None:
    for name in sorted(os.environ):
        print(name)


USAGE = "usage: manage.py {migrate | load PATH | report | worker | env}"


def main(argv: list[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    commands = {"migrate": migrate, "report": report, "worker": worker, "env": env}
    try:
        if command == "load" and len(args) == 1:
            load(args[0])
        elif command in commands and not args:
            commands[command]()
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except Fail as e:
        print(f"manage.py {command}: {e}", file=sys.stderr)
        return e.status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
