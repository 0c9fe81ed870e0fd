"""Failure (and optionally success or timeout) notifications: a webhook POST and SMTP email.

Deliveries run as background tasks, retried with exponential backoff; a receiver that is down or
slow never blocks or fails a run. Targets come from the script's ``notify`` and from the
workspace settings the server was started with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import email.message
import functools
import logging
import smtplib
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from hgrun.duration import format_duration
from hgrun.models import Run, RunStatus, ScriptRecord
from hgrun.server.workers import run_in

log = logging.getLogger("hgrun.notifier")

EVENTS = {
    RunStatus.FAILED: "failure",
    RunStatus.LOST: "failure",
    RunStatus.TIMED_OUT: "timeout",
    RunStatus.SUCCEEDED: "success",
}


@dataclasses.dataclass(frozen=True)
class Targets:
    """Workspace-wide notification settings (server flags)."""

    webhook: str | None = None
    email: tuple[str, ...] = ()
    smtp_url: str | None = None  # smtp://host:port
    mail_from: str = "hgrun@localhost"


def wants(run: Run, on: Sequence[str]) -> bool:
    """Whether a run's outcome is one the script asked to hear about.

    ``failure`` covers failed and lost runs, and timed-out ones too unless ``timeout`` is
    listed on its own terms: a timed-out run is a failure either way.
    """
    event = EVENTS.get(run.status)
    if event is None:
        return False
    if event == "timeout":
        return "timeout" in on or "failure" in on
    return event in on


def summary(run: Run, app: str, script: str, stderr_tail: list[str]) -> dict[str, Any]:
    took = "" if run.duration is None else f" after {format_duration(run.duration)}"
    text = (
        f"hgrun: script {script} of {app} {run.status.value} ({run.label}, exit code "
        f"{run.exit_code}{took}, triggered by {run.trigger})"
    )
    return {
        "text": text,
        "run": {
            "id": run.id,
            "label": run.label,
            "app": app,
            "script": script,
            "status": run.status.value,
            "exit_code": run.exit_code,
            "trigger": str(run.trigger),
            "duration": run.duration,
            "error": run.error,
        },
        "stderr_tail": stderr_tail,
    }


class Notifier:
    def __init__(
        self,
        targets: Targets,
        stderr_tail: Callable[[int], list[str]],
        app_name: Callable[[int], str],
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        """``stderr_tail(run_id)`` reads the store and SMTP blocks: both run on ``executor``
        (the server's mail workers), never on the event loop or the engine's pool."""
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="mail"
        )
        self.targets = targets
        self.stderr_tail = stderr_tail
        self.app_name = app_name
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()

    def run_finished(self, run: Run, script: ScriptRecord) -> None:
        if wants(run, script.spec.notify.on):
            self._spawn(self._notify(run, script))

    async def _notify(self, run: Run, script: ScriptRecord) -> None:
        notify = script.spec.notify
        try:
            tail = await run_in(self.executor, self.stderr_tail, run.id)
        except Exception:
            log.exception("run %s: could not read its stderr tail for the notification", run.id)
            tail = []
        body = summary(run, self.app_name(run.app_id), script.name, tail)
        webhooks = {u for u in (notify.webhook, self.targets.webhook) if u}
        emails = tuple(dict.fromkeys((*notify.email, *self.targets.email)))
        deliveries = [
            self._deliver(f"webhook {url}", functools.partial(self._post, url, body))
            for url in webhooks
        ]
        if emails:
            send = functools.partial(self._mail, emails, body)
            deliveries.append(self._deliver(f"email {', '.join(emails)}", send))
        # Each delivery retries on its own; this task (which drain() waits for) ends with them.
        await asyncio.gather(*deliveries)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        """Give deliveries in flight a moment at shutdown."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _deliver(self, what: str, send: Callable[[], Awaitable[None]]) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                await send()
                log.info("notified %s", what)
                return
            except Exception as e:
                log.warning("notify %s: attempt %d/%d failed: %s", what, attempt, self.attempts, e)
                if attempt < self.attempts:
                    await self.sleep(delay)
                    delay *= 2

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(url, json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"the receiver answered {response.status_code}")

    async def _mail(self, to: Sequence[str], body: dict[str, Any]) -> None:
        if not self.targets.smtp_url:
            raise RuntimeError("no SMTP server configured (hgrun server --smtp-url)")
        url = urllib.parse.urlsplit(self.targets.smtp_url)
        message = email.message.EmailMessage()
        message["From"] = self.targets.mail_from
        message["To"] = ", ".join(to)
        message["Subject"] = body["text"]
        lines = [body["text"], ""]
        if body["run"]["error"]:
            lines += [body["run"]["error"], ""]
        if body["stderr_tail"]:
            lines += ["Last lines of stderr:", *("  " + line for line in body["stderr_tail"])]
        message.set_content("\n".join(lines) + "\n")

        def send() -> None:
            with smtplib.SMTP(url.hostname or "127.0.0.1", url.port or 25, timeout=10) as smtp:
                smtp.send_message(message)

        await run_in(self.executor, send)
