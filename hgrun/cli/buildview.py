"""A build's output as it happens: a live view of its steps on a terminal, its lines otherwise.

On a terminal (stderr is one), each step is a line that says whether it ran or was cached and
how long it took, with the last lines of the running step under it; when a step fails, its last
lines stay on screen. Elsewhere (a pipe, a CI log) the builder's lines are printed as they come,
so nothing is lost and scripts can read them. Either way a failure becomes one error naming the
step, with the stack's hint for it (:func:`hgrun.stacks.hint_for`).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from hgrun.buildlog import BuildLog, Step, StepState
from hgrun.errors import HgrunError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

    from hgrun.cli.output import Output
    from hgrun.stacks import Plan

RUNNING_TAIL = 5  # lines of a running step shown under it
FAILED_TAIL = 15  # lines of a failed step kept on screen
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ICONS = {
    StepState.DONE: "[green]✓[/]",
    StepState.CACHED: "[green]✓[/]",
    StepState.FAILED: "[red]✗[/]",
}


class BuildView:
    """Feed it the build's lines with :meth:`line`; use it as a context manager around them."""

    def __init__(
        self,
        output: Output,
        *,
        live: bool,
        quiet: bool = False,
        plan: Plan | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``live``: draw the steps (stderr is a terminal); else print each line, unless
        ``quiet`` (then only a failure is reported, still naming its step)."""
        self.output = output
        self.plan = plan
        self.clock = clock
        self.log = BuildLog(keep=FAILED_TAIL)
        self._live_wanted = live and not quiet
        self._quiet = quiet
        self._live: Live | None = None

    def __enter__(self) -> BuildView:
        if self._live_wanted:
            from rich.live import Live

            self._live = Live(
                console=self.output.err,
                get_renderable=self._render,
                refresh_per_second=8,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()  # draws once more: the final state stays on screen
            self._live = None

    def line(self, text: str) -> None:
        # The classic builder colours a step's stderr red with ANSI codes: not for a pipe,
        # and rich draws its own.
        text = _ANSI.sub("", text).rstrip()
        if not text:
            return
        self.log.feed(text, self.clock())
        if self._live is None and not self._quiet:
            self.output.info("  " + text)

    def failure(self, error: HgrunError) -> HgrunError:
        """The error to report for a build that stopped with ``error``: one line naming the
        failed step, and the stack's hint for that step when there is one."""
        step = self.log.fail(self.clock())
        if step is None:
            return error
        hint = None
        if self.plan is not None:
            from hgrun.stacks import hint_for

            hint = hint_for(self.plan, step.instruction)
        lines = error.message.removeprefix("the build failed: ").strip().splitlines()
        detail = lines[0] if lines else "it stopped"
        label = step.label if len(step.label) <= 100 else step.label[:99] + "…"
        # The same kind of error (its exit status and code), said about the step.
        failed = copy.copy(error)
        failed.message = f"the build failed at {label}: {detail}"
        failed.args = (failed.message,)
        failed.hint = hint or error.hint
        return failed

    def cached(self) -> list[Step]:
        return self.log.cached()

    # -- drawing ------------------------------------------------------------------------------

    def _render(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        now = self.clock()
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=1, no_wrap=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        for step in self.log.steps:
            title = Text()
            title.append(f"{step.number}/{step.total} ", style="dim")
            title.append(" ".join(step.instruction.split()))
            if step.state is StepState.RUNNING:
                icon: RenderableType = Spinner("dots", style="cyan")
                status = f"{step.seconds(now):.1f}s"
            else:
                icon = Text.from_markup(_ICONS[step.state])
                status = "cached" if step.state is StepState.CACHED else f"{step.seconds(now):.1f}s"
            grid.add_row(icon, title, Text(status, style="dim"))
            shown = {StepState.RUNNING: RUNNING_TAIL, StepState.FAILED: FAILED_TAIL}.get(
                step.state, 0
            )
            for text in list(step.tail)[-shown:] if shown else ():
                style = "red" if step.state is StepState.FAILED else "dim"
                grid.add_row("", Text("│ " + text, style=style), "")
        if not self.log.steps:
            return Group(Spinner("dots", text="sending the build context", style="cyan"))
        return grid
