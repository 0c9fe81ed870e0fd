"""The JSON views of rows the API answers with. Pure: values in, JSON-ready dicts out."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from hgrun import schedule
from hgrun.models import App, Release, Run, ScriptRecord, Token
from hgrun.store.audit import AuditRecord


def app_json(app: App) -> dict[str, Any]:
    return {"id": app.id, "name": app.name, "created": app.created}


def release_json(release: Release) -> dict[str, Any]:
    return {
        "id": release.id,
        "version": release.version,
        "image": release.image,
        "context_hash": release.context_hash,
        "process_types": list(release.procfile),
        "env_keys": sorted(release.env),
        "description": release.description,
        "actor": release.actor,
        "created": release.created,
    }


def run_json(
    run: Run, app_name: str | None = None, queue: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """A run as the API shows it; ``queue``: where it waits for a slot of the server
    (``{"position", "max_runs"}``, position 0 is next), None when it does not."""
    return {
        "id": run.id,
        "label": run.label,
        "app": app_name,
        "release": run.release_id,
        "command": list(run.command),
        "process_type": run.process_type,
        "tty": run.tty,
        "detached": run.detached,
        "size": run.size,
        "timeout": run.timeout,
        "env_keys": sorted(run.env),
        "trigger": {"kind": run.trigger.kind.value, "name": run.trigger.name},
        "script": run.script,
        "parent_run": run.parent_run,
        "status": run.status.value,
        "exit_code": run.exit_code,
        "node": run.node,
        "oom": run.oom,
        "error": run.error,
        "created": run.created,
        "started": run.started,
        "finished": run.finished,
        "duration": run.duration,
        # Bytes of output kept (the newest, up to the server's --max-output) and dropped.
        "output": {"bytes": run.output_bytes, "dropped": run.output_dropped},
        "queue": dict(queue) if queue is not None else None,
    }


def script_json(
    script: ScriptRecord, app_name: str, last_run: Run | None, now: float
) -> dict[str, Any]:
    """A script with its next cron slot after ``now`` (epoch seconds) and its latest run."""
    spec = script.spec
    next_fire = None
    if spec.cron:
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        next_fire = schedule.next_fire(spec.cron, spec.timezone, at).timestamp()
    return {
        "id": script.id,
        "app": app_name,
        "name": spec.name,
        "command": spec.command,
        "process": spec.process,
        "cron": spec.cron,
        "timezone": spec.timezone,
        "next_fire": next_fire,
        "concurrency": spec.concurrency.value,
        "catchup": spec.catchup.value,
        "timeout": spec.timeout,
        "size": spec.size,
        "history": spec.history,
        "notify": dataclasses.asdict(spec.notify),
        "last_run": run_json(last_run, app_name) if last_run else None,
    }


def token_json(token: Token) -> dict[str, Any]:
    return {
        "name": token.name,
        "scope": token.scope.value,
        "script": token.script,
        "created": token.created,
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "time": record.ts,
        "run": record.run_id,
        "action": record.action,
        "payload": record.payload,
        "problem": record.problem,
    }
