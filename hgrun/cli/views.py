"""How the CLI shows rows the API returns: table columns and rows, detail fields, log lines.

Pure: a JSON row in, strings or tuples out; :class:`~hgrun.cli.output.Output` prints them.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from hgrun.cli.output import ago, duration, visible

RUN_COLUMNS = ["Run", "Status", "Command", "Trigger", "Exit", "Duration", "Created"]
PS_COLUMNS = ["Run", "Status", "Mode", "Command", "Trigger", "Started"]
RELEASE_COLUMNS = ["Version", "Image", "Context", "Description", "By", "Created"]
SCRIPT_COLUMNS = ["Name", "Command", "Schedule", "Next", "Policy", "Last run", "Status"]
TOKEN_COLUMNS = ["Name", "Scope", "Script", "Created"]
NODE_COLUMNS = ["Name", "Role", "State", "Endpoint", "Attach", "Runs"]

FAILED_STATUSES = ("failed", "timed_out", "lost", "canceled")
"""Final states after which ``runs:info`` shows the tail of stderr."""


def local_time(epoch: float, sep: str = " ") -> str:
    return time.strftime(f"%Y-%m-%d{sep}%H:%M:%S", time.localtime(epoch))


def command_shown(run: dict[str, Any]) -> str:
    """A run's command as a person typed it: the process type, the ``sh -c`` text, or argv."""
    command = run["command"]
    if run["process_type"]:
        return str(run["process_type"])
    if command[:2] == ["sh", "-c"]:
        return command[2] if len(command) > 2 else ""
    return shlex.join(command)


def trigger_shown(run: dict[str, Any]) -> str:
    return f"{run['trigger']['kind']}:{run['trigger']['name']}"


def status_shown(run: dict[str, Any]) -> str:
    """A run's status; a run waiting for a slot of the server says how many wait ahead."""
    queue = run.get("queue")
    if run["status"] == "queued" and queue:
        return f"queued ({queue['position']} ahead)"
    return str(run["status"])


def waiting_line(run: dict[str, Any]) -> str:
    """What ``hgrun run`` shows while its run waits for a slot (``--max-runs``)."""
    queue = run.get("queue") or {}
    if not queue:
        return f"hgrun: {run['label']} is queued ..."
    ahead = queue["position"]
    where = "next in line" if ahead == 0 else f"{ahead} ahead"
    return f"hgrun: waiting for a free run slot ({where}, --max-runs {queue['max_runs']})"


def run_row(run: dict[str, Any]) -> tuple[Any, ...]:
    """A row under :data:`RUN_COLUMNS`."""
    return (
        run["label"],
        status_shown(run),
        command_shown(run)[:60],
        trigger_shown(run),
        run["exit_code"],
        duration(run["duration"]),
        ago(run["created"]),
    )


def ps_row(run: dict[str, Any]) -> tuple[Any, ...]:
    """A row under :data:`PS_COLUMNS`."""
    mode = "detached" if run["detached"] else ("attached tty" if run["tty"] else "attached")
    return (
        run["label"],
        status_shown(run),
        mode,
        command_shown(run)[:60],
        trigger_shown(run),
        ago(run["started"]),
    )


def run_fields(run: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ``runs:info`` fields of one run, in order."""
    fields = [
        ("Run", run["label"]),
        ("App", run["app"]),
        ("Command", shlex.join(run["command"])),
        ("Process type", run["process_type"] or ""),
        ("Trigger", trigger_shown(run)),
        ("Status", status_shown(run)),
        ("Exit code", "" if run["exit_code"] is None else run["exit_code"]),
        ("OOM killed", "yes" if run["oom"] else "no"),
        ("Size", run["size"]),
        ("Mode", "detached" if run["detached"] else "attached"),
        ("Env keys", ", ".join(run["env_keys"])),
        ("Created", local_time(run["created"])),
        ("Duration", duration(run["duration"])),
    ]
    if run.get("node"):
        fields.insert(fields.index(("Size", run["size"])), ("Node", run["node"]))
    output = run.get("output") or {}
    if output.get("dropped"):
        kept, dropped = _megabytes(output["bytes"]), _megabytes(output["dropped"])
        fields.append(("Output", f"last {kept} kept, {dropped} before it dropped (server cap)"))
    if run["error"]:
        fields.append(("Note", run["error"]))
    return fields


def _megabytes(count: int) -> str:
    return f"{count / 1024**2:.1f} MB"


def aligned(fields: list[tuple[str, Any]]) -> list[str]:
    """``Key: value`` lines with the values in one column (control characters made visible)."""
    width = max(len(k) for k, _ in fields)
    return [f"{key + ':':<{width + 1}} {visible(str(value))}" for key, value in fields]


def release_row(release: dict[str, Any]) -> tuple[Any, ...]:
    """A row under :data:`RELEASE_COLUMNS`."""
    return (
        f"v{release['version']}",
        release["image"][7:19],
        release["context_hash"][:12],
        release["description"],
        release.get("actor", ""),
        ago(release["created"]),
    )


def script_row(script: dict[str, Any]) -> tuple[Any, ...]:
    """A row under :data:`SCRIPT_COLUMNS`."""
    last = script["last_run"]
    schedule = f"{script['cron']} ({script['timezone']})" if script["cron"] else ""
    next_fire = local_time(script["next_fire"]) if script["next_fire"] else ""
    return (
        script["name"],
        script["command"] or f"process {script['process']}",
        schedule,
        next_fire,
        f"{script['concurrency']}/{script['catchup']}",
        f"{last['label']} {ago(last['created'])}" if last else "",
        last["status"] if last else "",
    )


def token_row(token: dict[str, Any]) -> tuple[Any, ...]:
    """A row under :data:`TOKEN_COLUMNS`."""
    return (token["name"], token["scope"], token["script"] or "", ago(token["created"]))


def node_row(node: dict[str, Any]) -> tuple[Any, ...]:
    """A row under :data:`NODE_COLUMNS`: the endpoint with where it comes from; "yes" when the
    server reaches it now, else why not."""
    endpoint = node["endpoint"] or ""
    if endpoint and node["source"] in ("registered", "docker-host"):
        endpoint += f" ({node['source']})"
    attach = "yes" if node["attach"] else f"no: {node['problem']}"
    state = (
        node["state"]
        if node["availability"] == "active"
        else f"{node['state']}, {node['availability']}"
    )
    runs = ", ".join(f"run.{r}" for r in node["runs"])
    return (node["name"], node["role"], state, endpoint, attach, runs)


def log_line(line: dict[str, Any]) -> str:
    """One line of ``hgrun logs``: time, source (``/err`` for stderr) and the text.

    The source is made visible; the text is the run's own output and passes as it is.
    """
    source = visible(f"{line['source']}{'/err' if line['stream'] == 'stderr' else ''}")
    return f"{local_time(line['time'], 'T')} {source}: {line['line']}"


def audit_lines(record: dict[str, Any]) -> list[str]:
    """One audit record: a head line, then its notable fields and the tail of its I/O, with
    control characters made visible (the record is shown, not replayed)."""
    return [visible(line) for line in _audit_lines(record)]


def _audit_lines(record: dict[str, Any]) -> list[str]:
    head = f"#{record['id']} {local_time(record['time'])} run.{record['run']} {record['action']}"
    if record["problem"]:
        return [f"{head} !! {record['problem']}"]
    payload = dict(record["payload"] or {})
    actor = payload.pop("actor", "")
    lines = [f"{head} by {actor}"]
    for key in ("command", "env_keys", "mode", "status", "exit_code", "error"):
        if payload.get(key) not in (None, "", []):
            value = payload[key]
            shown = shlex.join(value) if key == "command" else value
            if key == "env_keys":
                shown = ", ".join(value)
            lines.append(f"    {key}: {shown}")
    for key in ("input", "stdout", "stderr"):
        if payload.get(key):
            lines.append(f"    {key}:")
            lines += [f"      {line}" for line in str(payload[key]).splitlines()[-20:]]
    return lines
