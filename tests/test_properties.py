"""Properties of the pure parsers, fuzzed by hypothesis (issue 8, item 2).

For any input: a value or our own error type, never another exception. The parsers: Procfile,
manifest, durations, cron expressions, the attach channel protocol (both sides, any sequence of
messages), .dockerignore matching and the upload tar filter. ``HYPOTHESIS_NO_PLUGINS=1`` is set
by tests/conftest.py before hypothesis is imported (a third-party entry point here is broken).
"""

from __future__ import annotations

import io
import json
import math
import tarfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgrun.context import is_ignored, parse_dockerignore
from hgrun.duration import format_duration, parse_duration
from hgrun.errors import InputError, ManifestError, ProcfileError
from hgrun.manifest import parse_manifest
from hgrun.models import Manifest
from hgrun.procfile import parse_procfile
from hgrun.relay.protocol import (
    SUBPROTOCOLS,
    ClientConnection,
    ProtocolError,
    ServerConnection,
)
from hgrun.schedule import validate_cron
from hgrun.uploadtar import UploadError, UploadFilter

settings.register_profile(
    "hgrun", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("hgrun")

# Text that reaches the parsers' corners more often than uniform unicode: their own syntax.
SYNTAX = st.sampled_from(
    [":", " ", "\n", "\t", "#", "-", "!", "*", "/", "?", "[", "]", "{", "}", "\\", ".", "..",
     "**", "@", '"', "'", "&", "|", "=", ",", "\x00", "\r", "\ufeff", "é", "1", "0", "h", "m",
     "ms", "s", "d", "web", "name", "scripts", "command", "cron", "build", "timeout", "a"]
)  # fmt: skip
TEXT = st.one_of(st.text(), st.lists(SYNTAX, max_size=40).map("".join))


@given(TEXT)
def test_procfile_any_text_is_types_or_a_procfile_error(text: str) -> None:
    try:
        types = parse_procfile(text)
    except ProcfileError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in types.items())


# YAML documents with the manifest's own keys, nested at random, plus any text.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), SYNTAX
)
KEYS = st.one_of(
    st.sampled_from(
        ["name", "build", "env", "size", "network", "scripts", "command", "process", "cron",
         "timeout", "concurrency", "catchup", "timezone", "history", "notify", "webhook",
         "email", "on", "dockerfile", "stack", "base", "starting_deadline"]
    ),
    st.text(max_size=8),
)  # fmt: skip
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=10,
)


@given(st.one_of(TEXT, DOCS.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True))))
def test_manifest_any_text_is_a_manifest_or_a_manifest_error(text: str) -> None:
    try:
        manifest = parse_manifest(text)
    except ManifestError:
        return
    assert isinstance(manifest, Manifest)


@settings(max_examples=100)
@given(
    st.dictionaries(
        KEYS,
        DOCS,
        max_size=6,
    ).map(lambda d: {"name": "app", **d})
)
def test_manifest_with_a_name_and_any_keys(doc: dict) -> None:
    try:
        parse_manifest(yaml.safe_dump(doc))
    except ManifestError:
        pass


@given(st.one_of(TEXT, st.integers(), st.floats(), st.booleans(), st.none()))
def test_duration_is_positive_and_finite_or_a_value_error(value) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return
    assert seconds > 0 and math.isfinite(seconds)
    assert format_duration(seconds)  # any accepted duration can be shown
    if 0.001 <= seconds < 1e12:
        assert math.isclose(parse_duration(format_duration(seconds)), seconds, rel_tol=0.06)


CRON_FIELD = st.one_of(
    st.sampled_from(["*", "*/5", "0", "59", "1-5", "MON-FRI", "jan", "L", "W", "?", "#", "H"]),
    st.from_regex(r"[0-9*/,\-LW#?A-Za-z]{1,6}", fullmatch=True),
)


@given(st.one_of(TEXT, st.lists(CRON_FIELD, min_size=1, max_size=7).map(" ".join)))
def test_cron_validation_is_a_reason_or_none(expr: str) -> None:
    assert validate_cron(expr) is None or isinstance(validate_cron(expr), str)


MESSAGES = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.text(max_size=8),
        st.tuples(st.integers(0, 255), st.binary(max_size=32)).map(lambda t: bytes([t[0]]) + t[1]),
        st.builds(
            lambda ch, obj: bytes([ch]) + json.dumps(obj).encode(),
            st.sampled_from([3, 4]),
            DOCS,
        ),
    ),
    max_size=8,
)


@pytest.mark.parametrize("side", [ServerConnection, ClientConnection], ids=["server", "client"])
@given(st.sampled_from(SUBPROTOCOLS), MESSAGES)
def test_each_side_of_the_channel_protocol_never_crashes(side, sub: str, messages) -> None:
    connection = side(sub)
    for message in messages:
        try:
            events = connection.receive(message)
        except ProtocolError:
            continue
        assert isinstance(events, list)


PATHS = st.lists(
    st.one_of(st.sampled_from(["a", "b", ".", "..", "*", "x.py", "node_modules"]), st.text()),
    min_size=1,
    max_size=5,
).map("/".join)


@given(TEXT, PATHS)
def test_dockerignore_matching_is_a_bool_or_an_input_error(text: str, path: str) -> None:
    patterns = parse_dockerignore(text)
    assert all(isinstance(p, str) for p in patterns)
    try:
        assert is_ignored(path, patterns) in (True, False)
    except InputError:
        pass


def _tar(names_modes: list[tuple[str, bytes, int, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, data in names_modes:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


TAR_ENTRIES = st.lists(
    st.tuples(
        st.one_of(
            st.lists(
                st.sampled_from(["uploads", "a", "..", ".", "", "/", "b c", "é"]), max_size=4
            ).map("/".join),
            st.text(max_size=120),
        ),
        st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.FIFOTYPE]),
        st.integers(0, 0o7777),
        st.binary(max_size=1500),
    ),
    max_size=5,
)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.one_of(TAR_ENTRIES.map(_tar), st.binary(max_size=3000)), st.integers(1, 2000), st.data())
def test_the_upload_filter_emits_a_clean_tar_or_an_upload_error(data: bytes, piece: int, draw):
    # Some inputs flipped or cut short, to reach the checksum and truncation paths.
    if data and draw.draw(st.booleans()):
        at = draw.draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
    upload = UploadFilter(1024 * 1024)
    try:
        out = b"".join(upload.feed(data[i : i + piece]) for i in range(0, len(data), piece))
        out += upload.close()
    except UploadError:
        return
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tar:
        for member in tar.getmembers():
            assert member.isfile() or member.isdir(), member.name
            assert member.name == "uploads" or member.name.startswith("uploads/"), member.name
            assert ".." not in member.name.split("/")
            assert not member.mode & 0o6000
            assert member.isdir() or not member.mode & 0o1000
