"""Stores on both backends for the shared store suite: SQLite files in the test's tmp dir, or
PostgreSQL databases cloned from a migrated template in the session's private cluster.

A test asks for ``make_store`` (parametrized over both backends in tests/conftest.py) and calls
``make_store(name="hgrun", **options)``: the same ``name`` twice in one test is one store (two
connections to it, as two servers would have). Every store a test opened is closed, and its
PostgreSQL database dropped, when the test ends.
"""

from __future__ import annotations

import glob
import itertools
import os
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg

from hgrun.store import Store

TEMPLATE = "hgrun_template"
_serial = itertools.count(1)


def postgres_binaries() -> str | None:
    """The newest Debian PostgreSQL bin dir, None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


def database_url(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


class Databases:
    """Databases of one throwaway cluster, each a copy of a template migrated once (a copy is
    a file copy: far faster than running the migrations per test)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin = psycopg.connect(url, autocommit=True)
        # A private throwaway cluster: durability is not wanted, speed is.
        self._admin.execute("ALTER SYSTEM SET fsync = off")
        self._admin.execute("ALTER SYSTEM SET synchronous_commit = off")
        self._admin.execute("ALTER SYSTEM SET full_page_writes = off")
        self._admin.execute("SELECT pg_reload_conf()")
        exists = self._admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)
        ).fetchone()
        if not exists:
            self._admin.execute(f"CREATE DATABASE {TEMPLATE}")
            Store(database_url(url, TEMPLATE)).close()

    def create(self) -> str:
        name = f"store_{os.getpid()}_{next(_serial)}"
        self._admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return database_url(self.url, name)

    def drop(self, url: str) -> None:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self._admin.close()


class StoreFactory:
    """``make_store(name="hgrun", cls=Store, workspace="default", **options)``: a store of the
    test's backend (``backend``), with the workspace made unless ``workspace`` is None."""

    def __init__(self, backend: str, tmp_path: Path, databases: Databases | None) -> None:
        self.backend = backend
        self._tmp_path = tmp_path
        self._databases = databases
        self._targets: dict[str, Path | str] = {}
        self._opened: list[Store] = []

    def target(self, name: str = "hgrun") -> Path | str:
        """The store's address: a SQLite file's path or a PostgreSQL URL."""
        if name not in self._targets:
            if self._databases is None:
                self._targets[name] = self._tmp_path / f"{name}.db"
            else:
                self._targets[name] = self._databases.create()
        return self._targets[name]

    def __call__(
        self,
        name: str = "hgrun",
        *,
        cls: type[Store] = Store,
        workspace: str | None = "default",
        **options: Any,
    ) -> Store:
        store = cls(self.target(name), **options)
        self._opened.append(store)
        if workspace is not None:
            store.ensure_workspace(workspace)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()
        if self._databases is not None:
            for target in self._targets.values():
                self._databases.drop(str(target))
