"""What every command shares: the invocation :class:`Context`, common options, argument readers.

The context and the readers are :mod:`hgrun.cli.invocation`'s (click-free), re-exported here.
"""

from __future__ import annotations

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

pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
app_option = click.option(
    "--app", "-a", "app_name", help="The app (default: the name in ./hgrun.yaml)."
)
