"""What every command shares: the invocation :class:`Context`, common options, argument readers.

The context and the readers are :mod:`hgrun.cli.invocation`'s (click-free), re-exported here.
"""

from __future__ import annotations

from typing import Any

import click

from hgrun.cli.invocation import (  # noqa: F401 - re-exported for the commands
    Context,
    app_name_or_here,
    check_env_name,
    duration_flag,
    env_pair,
    parse_run_id,
    show_rows,
)
from hgrun.duration import format_duration
from hgrun.errors import InputError

pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
app_option = click.option(
    "--app", "-a", "app_name", help="The app (default: the name in ./hgrun.yaml)."
)


class Duration(click.ParamType):
    """An option's duration (90s, 15m, 1h) as seconds, within ``bounds`` (seconds, inclusive)
    when given. A bad value is the one-line InputError of :func:`duration_flag`, naming the
    option; one out of bounds says them, with the option's default as the example."""

    name = "duration"

    def __init__(self, bounds: tuple[float, float] | None = None) -> None:
        self.bounds = bounds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):  # converted already
            return value
        flag = param.opts[0] if param is not None else "duration"
        seconds = duration_flag(flag, str(value))
        if self.bounds is not None and not self.bounds[0] <= seconds <= self.bounds[1]:
            low, high = (format_duration(bound) for bound in self.bounds)
            example = param.default if param is not None else high
            raise InputError(
                f"{flag} {value!r}: must be from {low} to {high}", f"e.g. {flag} {example}"
            )
        return seconds
