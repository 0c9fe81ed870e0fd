"""One invocation's :class:`Context` and the readers of command arguments, without click.

:mod:`hgrun.cli.options` re-exports them beside click's options; they live here so that the
quick path of ``hgrun run`` (:mod:`hgrun.cli.runfast`) starts without importing click.
"""

from __future__ import annotations

import os

from hgrun.cli import appdir
from hgrun.cli.client import Api, Settings
from hgrun.duration import parse_duration
from hgrun.errors import InputError

# On the start path of `hgrun run`: typing, pathlib and dataclasses are not imported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from hgrun.cli.output import Output
    from hgrun.cli.terminal import Terminal


class Context:
    """One invocation: the terminal, where output goes, the environment, the API (made on use)."""

    __slots__ = ("terminal", "output", "environ", "debug", "_api")

    def __init__(
        self,
        terminal: Terminal,
        output: Output,
        environ: dict[str, str],
        debug: bool = False,
        _api: Api | None = None,
    ) -> None:
        self.terminal = terminal
        self.output = output
        self.environ = environ
        self.debug = debug
        self._api = _api

    @property
    def settings(self) -> Settings:
        return Settings.load(self.environ)

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.settings)
        return self._api


def app_name_or_here(app_name: str | None) -> str:
    """``--app``, else the name in the hgrun.yaml of this folder or one above."""
    if app_name:
        return app_name
    root = appdir.find_app_folder(os.getcwd())
    if root is None:
        raise InputError(
            "no app given and no hgrun.yaml in this folder or above",
            "pass --app NAME, or run hgrun from your app's folder",
        )
    # The name line is all a command needs: a typo elsewhere in hgrun.yaml must not stop
    # `hgrun ps` or `hgrun logs`. Anything but a plain `name:` line is parsed whole.
    return appdir.quick_name(root) or appdir.load(appdir.as_path(root)).name


def parse_run_id(text: str) -> int:
    """A run id as typed: ``42`` or ``run.42``."""
    raw = text.removeprefix("run.")
    if not raw.isdigit():
        raise InputError(f"invalid run id {text!r}", "a run id looks like 42 or run.42")
    return int(raw)


def duration_flag(flag: str, value: str) -> float:
    """Seconds from a ``flag`` value such as 90s, 15m or 1h."""
    try:
        return parse_duration(value)
    except ValueError as e:
        raise InputError(f"{flag} {value!r}: {e}", "use e.g. 90s, 15m or 1h") from e


def env_pair(text: str, where: str) -> tuple[str, str]:
    """``KEY=VALUE`` split, the key checked; ``where`` names the flag in errors."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"{where} {text!r}: expected KEY=VALUE", "e.g. DEBUG=1")
    check_env_name(key, where)
    return key, value


def check_env_name(key: str, where: str) -> None:
    from hgrun.vocabulary import ENV_NAME  # with the enums: not for a run without --env

    if not ENV_NAME.match(key):
        raise InputError(
            f"{where} {key!r}: not a valid env var name",
            "use letters, digits and underscores, not starting with a digit",
        )


def show_rows(
    ctx: Context,
    items: list[dict[str, Any]],
    as_json: bool,
    columns: Sequence[str],
    row: Callable[[dict[str, Any]], Sequence[Any]],
) -> None:
    """A list from the API: JSON for scripts, else a table of ``columns``, one ``row`` each."""
    if as_json:
        ctx.output.json(items)
        return
    ctx.output.table(list(columns), [row(item) for item in items])
