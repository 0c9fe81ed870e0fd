"""Counting the calls an engine makes to its API: what a test of "one call, whatever the
number" watches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def counted(call: Callable[..., Any], calls: list[str]) -> Callable[..., Any]:
    """``call``, appending its name to ``calls`` each time it is made."""

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(call.__name__)
        return call(*args, **kwargs)

    return counting
