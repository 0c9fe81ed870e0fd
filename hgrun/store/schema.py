"""Versioned schema migrations: each entry moves the schema one version up. Never edit one that
has shipped; add the next.

Written once for both databases: in SQLite's words, with the column types INTEGER, REAL, TEXT
and BLOB only (``hgrun.store.postgres.ddl`` maps them to PostgreSQL's) and statements both
understand (``ALTER TABLE ... ADD COLUMN``, partial indexes); split on ``;``."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: workspaces, tokens, apps, config, releases, build cache, runs and their output.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        workspace TEXT NOT NULL REFERENCES workspaces(id),
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        script TEXT,
        created REAL NOT NULL,
        revoked REAL,
        UNIQUE (workspace, name)
    );
    CREATE TABLE apps (
        id INTEGER PRIMARY KEY,
        workspace TEXT NOT NULL REFERENCES workspaces(id),
        name TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (workspace, name)
    );
    CREATE TABLE config (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (app_id, key)
    );
    CREATE TABLE images (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        context_hash TEXT NOT NULL,
        image TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (app_id, context_hash)
    );
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        image TEXT NOT NULL,
        context_hash TEXT NOT NULL,
        procfile TEXT NOT NULL,
        manifest TEXT NOT NULL,
        env TEXT NOT NULL,
        description TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE (app_id, version)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        workspace TEXT NOT NULL,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        release_id INTEGER NOT NULL REFERENCES releases(id),
        command TEXT NOT NULL,
        process_type TEXT,
        tty INTEGER NOT NULL,
        detached INTEGER NOT NULL,
        uploads INTEGER NOT NULL,
        size TEXT NOT NULL,
        timeout REAL NOT NULL,
        env TEXT NOT NULL,
        trigger_kind TEXT NOT NULL,
        trigger_name TEXT NOT NULL,
        script TEXT,
        slot TEXT,
        parent_run INTEGER,
        status TEXT NOT NULL,
        exit_code INTEGER,
        oom INTEGER NOT NULL DEFAULT 0,
        container_id TEXT,
        error TEXT,
        created REAL NOT NULL,
        started REAL,
        finished REAL
    );
    CREATE INDEX runs_by_app ON runs (app_id, id DESC);
    CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'starting', 'running');
    CREATE TABLE output (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        app_id INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        ts REAL NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX output_by_run ON output (run_id, id);
    CREATE INDEX output_by_app ON output (app_id, id);
    """,
    # 2: scripts registered from the manifest at each release; one run per script and cron slot.
    """
    CREATE TABLE scripts (
        id INTEGER PRIMARY KEY,
        workspace TEXT NOT NULL,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        cron TEXT,
        timezone TEXT NOT NULL,
        cursor REAL,
        active INTEGER NOT NULL DEFAULT 1,
        updated REAL NOT NULL,
        UNIQUE (app_id, name)
    );
    ALTER TABLE runs ADD COLUMN script_id INTEGER REFERENCES scripts(id);
    CREATE UNIQUE INDEX runs_one_per_slot ON runs (script_id, slot) WHERE slot IS NOT NULL;
    CREATE INDEX runs_by_script ON runs (script_id, id DESC) WHERE script_id IS NOT NULL;
    CREATE INDEX runs_by_script_status ON runs (script_id, status) WHERE script_id IS NOT NULL;
    """,
    # 3: the node a run was placed on (the swarm engine; none on one host).
    """
    ALTER TABLE runs ADD COLUMN node TEXT;
    """,
    # 4: bounded output and history. Bytes of output stored and dropped per run (the per-run
    # cap keeps the newest), each chunk's byte offset in its run's output (NULL for the marker
    # of dropped bytes), a stream-first index for stderr tails, and one for the retention of
    # one-off runs by age.
    """
    ALTER TABLE runs ADD COLUMN output_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN output_dropped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE output ADD COLUMN byte_offset INTEGER;
    CREATE INDEX output_by_run_stream ON output (run_id, stream, id);
    CREATE INDEX runs_oneoff_finished ON runs (finished) WHERE script_id IS NULL;
    """,
    # 5: one-off runs of an app by id, for retention by count: without it, counting an app's
    # one-offs walks every run of its scripts too.
    """
    CREATE INDEX runs_oneoff_by_app ON runs (app_id, id) WHERE script_id IS NULL;
    """,
    # 6: who made a release (the token's name); how is its description (Deploy, Set X, Rollback).
    """
    ALTER TABLE releases ADD COLUMN actor TEXT NOT NULL DEFAULT '';
    """,
    # 7: engine endpoints of swarm nodes registered by an operator (`hgrun nodes:add`), server
    # wide (the engine is): a registered endpoint wins over the one a node advertises.
    """
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        actor TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
    # 8: an app's runs by status, by trigger, by both: the filters of the runs page and of
    # GET /v1/apps/{app}/runs. Each index ends with the rowid, so a filtered page is read in id
    # order from where it starts (id < before); without them a status that matches none of a
    # million runs walked all million (1.5 s).
    """
    CREATE INDEX runs_by_app_status ON runs (app_id, status);
    CREATE INDEX runs_by_app_trigger ON runs (app_id, trigger_kind);
    CREATE INDEX runs_by_app_trigger_status ON runs (app_id, trigger_kind, status);
    """,
]
