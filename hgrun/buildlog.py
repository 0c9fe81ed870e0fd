"""An image build's output, read as steps: which step runs, which were cached, which failed.

Pure: lines in (with the time they arrived), state out; the CLI draws it. The lines are those of
Docker's classic builder (what the Engine API's ``POST /build`` streams without BuildKit, and
what docker-py asks for), as :meth:`hgrun.engine.docker.DockerEngine.build` yields them::

    Step 4/9 : RUN go mod download
     ---> Running in 2f1c0e9a4b7d
    go: downloading example.com/b v1.0.0
     ---> Removed intermediate container 2f1c0e9a4b7d
     ---> 5d0a1b2c3d4e
    Step 5/9 : COPY . .
     ---> Using cache
     ---> 9e8f7a6b5c4d
    Successfully built 9e8f7a6b5c4d
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ARROW = re.compile(r"^\s*---> (.*)$")
# What the builder says about its own work, not the step's output.
_BOOKKEEPING = re.compile(
    r"^(Running in [0-9a-f]+|Using cache|[0-9a-f]{12,64}|Removed intermediate container .*)$"
)
_REMOVING = re.compile(r"^Removing intermediate container [0-9a-f]+$")
_DONE = re.compile(r"^Successfully (built|tagged) ")


class StepState(enum.Enum):
    RUNNING = "running"
    CACHED = "cached"  # the builder reused the layer: " ---> Using cache"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass
class Step:
    """One instruction of the Dockerfile. ``tail`` keeps its last output lines only."""

    number: int
    total: int
    instruction: str
    started: float
    state: StepState = StepState.RUNNING
    finished: float | None = None
    tail: collections.deque[str] = dataclasses.field(default_factory=collections.deque)

    @property
    def label(self) -> str:
        """``step 4/9: RUN go mod download``, continuation blanks squeezed."""
        return f"step {self.number}/{self.total}: {' '.join(self.instruction.split())}"

    def seconds(self, now: float) -> float:
        return (self.finished if self.finished is not None else now) - self.started


class BuildLog:
    """Feed it the build's lines in order; it keeps the steps and each one's last ``keep``
    output lines (a build's output is unbounded; a step's tail is what a person needs)."""

    def __init__(self, keep: int = 15) -> None:
        self.keep = keep
        self.steps: list[Step] = []
        self.finished = False

    @property
    def current(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def feed(self, line: str, now: float) -> Step | None:
        """Take one line; return the step it started, if it started one."""
        if match := _STEP.match(line):
            self._close(now)
            started = Step(int(match[1]), int(match[2]), match[3], started=now)
            started.tail = collections.deque(maxlen=self.keep)
            self.steps.append(started)
            return started
        if _DONE.match(line):
            self._close(now)
            self.finished = True
            return None
        step = self.current
        if step is None:
            return None
        arrow = _ARROW.match(line)
        if arrow and arrow[1] == "Using cache":
            step.state = StepState.CACHED
            step.finished = now
        elif arrow and _BOOKKEEPING.match(arrow[1]):
            pass
        elif _REMOVING.match(line.strip()):
            pass
        else:
            step.tail.append(line)
        return None

    def fail(self, now: float) -> Step | None:
        """The build stopped with an error: the step running then failed (None before any)."""
        step = self.current
        if step is not None and step.state is not StepState.CACHED:
            step.state = StepState.FAILED
            step.finished = now
        return step

    def _close(self, now: float) -> None:
        step = self.current
        if step is not None and step.state is StepState.RUNNING:
            step.state = StepState.DONE
            step.finished = now

    def cached(self) -> list[Step]:
        return [s for s in self.steps if s.state is StepState.CACHED]
