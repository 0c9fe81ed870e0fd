"""The launcher's defaults, decided once for `hgrun run`, scripts and the dashboard's shell."""

from __future__ import annotations

import pytest

from hgrun.errors import InputError
from hgrun.models import Manifest, Release
from hgrun.server.launcher import command_of, network_of, size_of


def release(size: str = "starter", network: str = "none") -> Release:
    return Release(
        id=1,
        app_id=1,
        version=1,
        image="img",
        context_hash="h",
        procfile={"worker": "python3 worker.py", "web": "serve"},
        manifest=Manifest(name="app", size=size, network=network),
        env={},
        description="Deploy",
        created=0.0,
    )


@pytest.mark.parametrize(
    ("kwargs", "command", "process"),
    [
        ({"argv": ["worker"]}, ["sh", "-c", "python3 worker.py"], "worker"),
        (
            {"argv": ["worker", "--once", "a b"]},
            ["sh", "-c", "python3 worker.py --once 'a b'"],
            "worker",
        ),
        ({"argv": ["ls", "-l"]}, ["ls", "-l"], None),
        ({"process": "web"}, ["sh", "-c", "serve"], "web"),
        ({"shell": "echo hi | wc -c"}, ["sh", "-c", "echo hi | wc -c"], None),
        ({"shell": "env"}, ["env"], None),  # one plain word runs without a shell
        ({}, ["true"], None),
    ],
)
def test_command_of(kwargs: dict[str, object], command: list[str], process: str | None) -> None:
    assert command_of(release(), **kwargs) == (command, process)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"argv": []}, "the command is empty"), ({"process": "nope"}, "no process type 'nope'")],
)
def test_command_of_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        command_of(release(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("manifest_size", "asked", "size"),
    [("starter", None, "starter"), ("pro", None, "pro"), ("pro", "standard", "standard")],
)
def test_size_of(manifest_size: str, asked: str | None, size: str) -> None:
    assert size_of(release(size=manifest_size), asked) == size


def test_size_of_refuses_an_unknown_size() -> None:
    with pytest.raises(InputError, match="unknown size 'huge'"):
        size_of(release(), "huge")


@pytest.mark.parametrize(
    ("network", "expected"), [("none", "none"), ("host", "host"), ("", "none")]
)
def test_network_of(network: str, expected: str) -> None:
    assert network_of(release(network=network)) == expected
