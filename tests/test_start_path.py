"""The parts that replaced slow standard-library imports on the start path of `hgrun run`
(issue 11): :class:`hgrun.record.Record` for dataclasses, :func:`hgrun.cli.wsclient.split_url`
for urllib.parse, the string form of finding the app folder for pathlib. Each is held side by
side with what it replaced."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from hgrun.cli import appdir
from hgrun.cli.client import Settings
from hgrun.cli.runstart import RunArgs
from hgrun.cli.wsclient import split_url
from hgrun.errors import InputError
from hgrun.record import Record
from hgrun.relay.protocol import Exited, StderrData, StdoutData


class Point(Record):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


class Other(Record):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


def test_a_record_compares_hashes_and_shows_its_fields_as_a_frozen_dataclass_does() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(2, 1)
    assert Point(1, 2) != Other(1, 2)  # same fields, another class: not equal
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert {Point(1, 2), Point(1, 2)} == {Point(1, 2)}
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    with pytest.raises(AttributeError):
        Point(1, 2).z = 3  # type: ignore[attr-defined]  # __slots__: no stray fields


def test_protocol_events_are_told_apart_by_class_not_only_by_payload() -> None:
    assert StdoutData(b"x") != StderrData(b"x")
    assert [StdoutData(b"a"), Exited(7, "NonZeroExitCode")] == [
        StdoutData(b"a"),
        Exited(7, "NonZeroExitCode", None),
    ]
    assert Exited(0) != Exited(0, "Canceled")


def test_run_args_compare_every_field() -> None:
    base = RunArgs(command=("true",), raw=("true",))
    assert base == RunArgs(command=("true",), raw=("true",))
    assert base != RunArgs(command=("true",), raw=("true",), no_build=True)
    assert base != RunArgs(command=("true",), raw=("true",), tty=False)


def test_settings_compare_without_where_the_token_came_from_and_hide_it() -> None:
    a = Settings("http://h:1", "secret", None, token_from="HGRUN_TOKEN")
    assert a == Settings("http://h:1", "secret", None, token_from="/some/config.json")
    assert a != Settings("http://h:1", "other", None)
    assert "secret" not in repr(a)


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:8765/v1/runs/7/attach",
        "ws://127.0.0.1:8765/v1/runs/7/attach?offset=12",
        "wss://Example.COM/v1/apps/a/runs/attach",
        "ws://localhost",
        "ws://localhost:80/x",
        "wss://host:443",
        "ws://[::1]:9000/p?q=1&r=2",
        "ws://[fe80::1]/p",
        "ws://user:pw@host:81/p",
        "ws://host:8765?offset=3",
        "ws://host/p?",
        "ws://host/p#frag",
        "WS://host:0/p",
    ],
)
def test_split_url_reads_what_urlsplit_reads(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    assert split_url(url) == (secure, parts.hostname, parts.port or (443 if secure else 80), target)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://host/x", "not a ws:// or wss:// URL"),
        ("host:80/x", "not a ws:// or wss:// URL"),
        ("ws:///x", "not a ws:// or wss:// URL"),
        ("ws://host:http/x", "port 'http' is not a number"),
        ("ws://host:70000/x", "port out of range"),
        ("ws://[::1/x", "invalid IPv6 address"),
    ],
)
def test_split_url_refuses_what_cannot_be_attached_to(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says):
        split_url(url)


def test_the_app_folder_is_found_as_pathlib_found_it(tmp_path: Path) -> None:
    app = tmp_path / "app"
    deep = app / "a" / "b"
    deep.mkdir(parents=True)
    (app / appdir.MANIFEST).write_text("name: thing\n")
    assert appdir.find_app_folder(str(deep)) == str(app)
    assert appdir.find_app_dir(deep) == app
    assert appdir.quick_name(str(app)) == appdir.quick_name(app) == "thing"
    alone = tmp_path / "alone"
    alone.mkdir()
    found = appdir.find_app_folder(str(alone))
    # Nothing here or above (unless the machine's tmp itself sits in an app folder).
    assert found is None or os.path.isfile(os.path.join(found, appdir.MANIFEST))
