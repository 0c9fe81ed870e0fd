"""The classic builder's output read as steps (hgrun/buildlog.py), without Docker."""

from __future__ import annotations

import io

import pytest

from hgrun.buildlog import BuildLog, StepState
from hgrun.cli.buildview import BuildView
from hgrun.errors import EngineError

OUTPUT = """\
Step 1/6 : FROM hgrun/go:bookworm AS build
 ---> 0f1e2d3c4b5a
Step 2/6 : COPY go.mod ./
 ---> Using cache
 ---> 1a2b3c4d5e6f
Step 3/6 : RUN go mod download
 ---> Using cache
 ---> 2b3c4d5e6f7a
Step 4/6 : COPY . .
 ---> 3c4d5e6f7a8b
Step 5/6 : RUN CGO_ENABLED=0 go build -o /out/bin/ ./...
 ---> Running in 4d5e6f7a8b9c
go: downloading nothing
compiled
 ---> Removed intermediate container 4d5e6f7a8b9c
 ---> 5e6f7a8b9c0d
Step 6/6 : USER 10001:10001
 ---> Running in 6f7a8b9c0d1e
Removing intermediate container 6f7a8b9c0d1e
 ---> 7a8b9c0d1e2f
Successfully built 7a8b9c0d1e2f
Successfully tagged hgrun/default-a:0123456789ab
"""


def feed(text: str, log: BuildLog | None = None) -> BuildLog:
    log = log or BuildLog(keep=3)
    for t, line in enumerate(text.splitlines()):
        log.feed(line, now=float(t))
    return log


def test_steps_their_states_and_output() -> None:
    log = feed(OUTPUT)
    assert [(s.number, s.total, s.state) for s in log.steps] == [
        (1, 6, StepState.DONE),
        (2, 6, StepState.CACHED),
        (3, 6, StepState.CACHED),
        (4, 6, StepState.DONE),
        (5, 6, StepState.DONE),
        (6, 6, StepState.DONE),
    ]
    assert [s.instruction for s in log.cached()] == ["COPY go.mod ./", "RUN go mod download"]
    # Only the step's own output is kept, not the builder's bookkeeping.
    assert list(log.steps[4].tail) == ["go: downloading nothing", "compiled"]
    assert list(log.steps[5].tail) == []
    assert log.finished
    # Step 5 started at line 10 and was closed by step 6's line, 15.
    assert log.steps[4].seconds(now=99.0) == 6.0


def test_a_failing_step_keeps_its_last_lines() -> None:
    log = feed(
        "Step 1/3 : FROM hgrun/go:bookworm\n ---> 0f1e2d3c4b5a\n"
        "Step 2/3 : RUN go mod download\n ---> Running in 4d5e6f7a8b9c\n"
        "line 1\nline 2\nline 3\nline 4\ngo: example.com/b: no network\n"
    )
    step = log.fail(now=20.0)
    assert step is log.steps[1]
    assert step.state is StepState.FAILED and step.finished == 20.0
    assert list(step.tail) == ["line 3", "line 4", "go: example.com/b: no network"]
    assert step.label == "step 2/3: RUN go mod download"
    assert not log.finished


def test_label_squeezes_continuations() -> None:
    log = feed("Step 7/9 : RUN composer install --no-dev     --no-scripts\n")
    assert log.steps[0].label == "step 7/9: RUN composer install --no-dev --no-scripts"


def test_failure_before_any_step() -> None:
    log = BuildLog()
    assert log.fail(now=1.0) is None
    log.feed("Sending build context to Docker daemon  2.048kB", now=0.0)
    assert log.steps == []


# -- the CLI's view of it (hgrun/cli/buildview.py) ------------------------------------------------


def _view(live: bool = False, plan: object = None, quiet: bool = False) -> BuildView:
    from hgrun.cli.output import Output
    from hgrun.cli.terminal import Terminal

    ticks = iter(range(1000))
    terminal = Terminal(None, io.BytesIO(), io.BytesIO())
    return BuildView(
        Output(terminal),
        live=live,
        quiet=quiet,
        plan=plan,  # type: ignore[arg-type]
        clock=lambda: float(next(ticks)),
    )


def test_view_prints_the_lines_when_not_live(capsys: pytest.CaptureFixture[str]) -> None:
    with _view() as view:
        for line in OUTPUT.splitlines()[:4]:
            view.line(line)
    assert capsys.readouterr().err.splitlines() == [
        "  Step 1/6 : FROM hgrun/go:bookworm AS build",
        "   ---> 0f1e2d3c4b5a",
        "  Step 2/6 : COPY go.mod ./",
        "   ---> Using cache",
    ]


def test_view_failure_names_the_step_with_the_stacks_hint() -> None:
    from hgrun.stacks import AppFiles, plan

    made = plan(AppFiles(frozenset({"go.mod"}), {"go.mod": "module a\n"}))
    view = _view(plan=made)
    for line in ("Step 3/8 : RUN go mod download", " ---> Running in 4d5e6f7a8b9c", "nope"):
        view.line(line)
    error = EngineError(
        "the build failed: The command '/bin/sh -c go mod download' returned a non-zero code: 1",
        "fix the Dockerfile or the build context, then deploy again",
    )
    failed = view.failure(error)
    assert failed.message == (
        "the build failed at step 3/8: RUN go mod download: The command '/bin/sh -c go mod "
        "download' returned a non-zero code: 1"
    )
    assert failed.hint is not None and failed.hint.startswith("go could not fetch the modules")
    assert isinstance(failed, EngineError) and failed.exit_status == error.exit_status
    assert str(failed) == failed.message


def test_view_failure_without_a_hint_keeps_the_engines() -> None:
    view = _view()
    view.line("Step 2/2 : RUN false")
    failed = view.failure(EngineError("the build failed: exit 1", "fix it"))
    assert failed.message == "the build failed at step 2/2: RUN false: exit 1"
    assert failed.hint == "fix it"


def test_view_before_any_step_passes_the_error_on() -> None:
    error = EngineError("the build failed: no such image", "x")
    assert _view().failure(error) is error


def test_live_render_shows_states_and_the_failed_tail() -> None:
    from rich.console import Console

    view = _view()
    for line in OUTPUT.splitlines()[:12]:
        view.line(line)
    for n in range(20):
        view.line(f"output {n}")
    view.failure(EngineError("the build failed: boom"))
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(view._render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "✓ 2/6 COPY go.mod ./" in text and "cached" in text
    assert "✗ 5/6 RUN CGO_ENABLED=0 go build -o /out/bin/ ./..." in text
    # The failed step's last 15 lines stay; older ones are gone.
    assert "│ output 19" in text and "│ output 5" in text and "│ output 4\n" not in text


def test_view_strips_the_builders_colours(capsys: pytest.CaptureFixture[str]) -> None:
    view = _view()
    view.line("Step 1/1 : RUN x")
    view.line("\x1b[91mgo: no module dependencies to download")
    view.line("\x1b[0m")
    assert "\x1b" not in capsys.readouterr().err
    assert list(view.log.steps[0].tail) == ["go: no module dependencies to download"]


def test_quiet_view_prints_nothing_but_still_names_the_failed_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _view(quiet=True) as view:
        view.line("Step 1/1 : RUN false")
        failed = view.failure(EngineError("the build failed: exit 1"))
    assert capsys.readouterr().err == ""
    assert failed.message == "the build failed at step 1/1: RUN false: exit 1"
