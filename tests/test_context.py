from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from hgrun.context import (
    context_hash,
    is_ignored,
    load_dockerignore,
    parse_dockerignore,
    walk_context,
    write_context_tar,
)


@pytest.mark.parametrize(
    ("text", "patterns"),
    [
        ("", []),
        ("# comment\n\n   \n", []),
        ("fixtures/\n", ["fixtures"]),
        ("  node_modules  \n", ["node_modules"]),
        ("/abs\n", ["abs"]),
        ("./a/../b\n", ["b"]),
        ("a//b/\n", ["a/b"]),
        ("!keep\n", ["!keep"]),
        ("! keep/ \n", ["!keep"]),
        ("!/keep\n", ["!keep"]),
        ("\ufeff*.pyc\r\n*.log\r\n", ["*.pyc", "*.log"]),
        (" # not a comment\n", ["# not a comment"]),
        ("/\n", ["/"]),
    ],
)
def test_parse_dockerignore(text: str, patterns: list[str]) -> None:
    assert parse_dockerignore(text) == patterns


# (patterns, path, ignored), after moby's patternmatcher tests.
MATCHES = [
    (["fixtures"], "fixtures", True),
    (["fixtures"], "fixtures/a.csv", True),
    (["fixtures"], "fixtures/deep/a.csv", True),
    (["fixtures"], "src/fixtures", False),
    (["fixtures"], "fixtures2", False),
    (["*.pyc"], "a.pyc", True),
    (["*.pyc"], "src/a.pyc", False),
    (["**/*.pyc"], "src/a.pyc", True),
    (["**/*.pyc"], "a.pyc", True),
    (["**/*.pyc"], "a/b/c.pyc", True),
    (["**/__pycache__"], "a/__pycache__/x.pyc", True),
    (["**/__pycache__"], "__pycache__", True),
    (["**"], "anything/at/all", True),
    (["src/**"], "src/a", True),
    (["src/**"], "src/a/b", True),
    (["src/**"], "src", False),
    (["src/**/test"], "src/test", True),
    (["src/**/test"], "src/a/b/test", True),
    (["src/**/test"], "src/a/b/testing", False),
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/sub/temporary.txt", False),
    (["*/*/temp*"], "a/b/temp", True),
    (["temp?"], "temp1", True),
    (["temp?"], "temp", False),
    (["temp?"], "temp/x", False),
    (["a?b"], "a/b", False),
    (["[abc].txt"], "b.txt", True),
    (["[abc].txt"], "d.txt", False),
    (["[^abc].txt"], "d.txt", True),
    (["[a-c].txt"], "c.txt", True),
    (["a.b"], "axb", False),
    (["a+b"], "a+b", True),
    (["(a)"], "(a)", True),
    (["\\*"], "*", True),
    (["\\*"], "x", False),
    (["\\d"], "d", True),
    (["\\d"], "1", False),
    (["*"], "x", True),
    (["*"], "a/b", True),
    (["*", "!keep"], "keep", False),
    (["*", "!keep"], "other", True),
    (["*", "!keep", "keep"], "keep", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["docs", "!docs/README.md"], "docs", True),
    (["**/*.md", "!README.md"], "README.md", False),
    (["**/*.md", "!README.md"], "sub/README.md", True),
    (["!keep"], "keep", False),
    ([], "x", False),
    (["["], "[", False),
]


@pytest.mark.parametrize(("patterns", "path", "ignored"), MATCHES)
def test_is_ignored(patterns: list[str], path: str, ignored: bool) -> None:
    assert is_ignored(path, patterns) is ignored


def make_app(root: Path) -> None:
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "manage.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "fixtures").mkdir()
    (root / "fixtures" / "customers.csv").write_text("name,email\n")
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (root / "empty").mkdir()
    (root / "link").symlink_to("manage.py")
    (root / ".dockerignore").write_text("fixtures/\n**/__pycache__\n")


def test_load_dockerignore(tmp_path: Path) -> None:
    assert load_dockerignore(tmp_path) == []
    (tmp_path / ".dockerignore").write_text("# x\nfixtures/\n!fixtures/keep\n")
    assert load_dockerignore(tmp_path) == ["fixtures", "!fixtures/keep"]


def test_walk_context(tmp_path: Path) -> None:
    make_app(tmp_path)
    entries = walk_context(tmp_path)
    assert [(e.relpath, e.kind) for e in entries] == [
        (".dockerignore", "file"),
        ("Dockerfile", "file"),
        ("empty", "dir"),
        ("link", "symlink"),
        ("manage.py", "file"),
        ("pkg", "dir"),
        ("pkg/__init__.py", "file"),
        ("run.sh", "file"),
    ]
    by = {e.relpath: e for e in entries}
    assert by["run.sh"].executable and not by["manage.py"].executable
    assert by["link"].target == "manage.py"
    assert by["manage.py"].path == os.path.join(tmp_path, "manage.py")


def test_walk_keeps_dockerfile_and_dockerignore(tmp_path: Path) -> None:
    make_app(tmp_path)
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile.prod").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("*\n")
    assert [e.relpath for e in walk_context(tmp_path)] == [".dockerignore", "Dockerfile"]
    names = [e.relpath for e in walk_context(tmp_path, dockerfile="docker/Dockerfile.prod")]
    assert names == [".dockerignore", "docker/Dockerfile.prod"]


def test_walk_descends_for_exceptions(tmp_path: Path) -> None:
    make_app(tmp_path)
    (tmp_path / "fixtures" / "keep.csv").write_text("a\n")
    names = [e.relpath for e in walk_context(tmp_path, ["fixtures", "!fixtures/keep.csv"])]
    assert "fixtures/keep.csv" in names
    assert "fixtures/customers.csv" not in names and "fixtures" not in names


def test_walk_sorts_parents_first(tmp_path: Path) -> None:
    for name in ("a-b", "a/b", "a.c", "a/a"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert [e.relpath for e in walk_context(tmp_path, [])] == ["a", "a/a", "a/b", "a-b", "a.c"]


def test_walk_skips_fifos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert walk_context(tmp_path, []) == []


def test_hash_is_stable_and_ignores_mtime_and_ignored_files(tmp_path: Path) -> None:
    make_app(tmp_path)
    first = context_hash(tmp_path)
    assert len(first) == 64 and first == context_hash(tmp_path)
    os.utime(tmp_path / "manage.py", (1, 1))
    (tmp_path / "fixtures" / "more.csv").write_text("x\n")
    (tmp_path / "manage.py").chmod(0o600)  # not an exec bit change
    assert context_hash(tmp_path) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "manage.py").write_text("print('bye')\n"),
        lambda r: (r / "manage.py").chmod(0o755),
        lambda r: (r / "new.txt").write_text(""),
        lambda r: (r / "newdir").mkdir(),
        lambda r: (r / "manage.py").rename(r / "main.py"),
        lambda r: ((r / "link").unlink(), (r / "link").symlink_to("run.sh")),
        lambda r: (r / ".dockerignore").write_text("fixtures/\n"),
    ],
)
def test_hash_changes(tmp_path: Path, change: object) -> None:
    make_app(tmp_path)
    before = context_hash(tmp_path)
    assert callable(change)
    change(tmp_path)
    assert context_hash(tmp_path) != before


def test_hash_covers_extra(tmp_path: Path) -> None:
    make_app(tmp_path)
    assert context_hash(tmp_path, b"FROM a") != context_hash(tmp_path, b"FROM b")
    assert context_hash(tmp_path, b"") == context_hash(tmp_path)


def test_hash_frames_records(tmp_path: Path) -> None:
    # Moving bytes between a file's name and its content must change the hash.
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("yz")
    (b / "xy").write_text("z")
    assert context_hash(a) != context_hash(b)


def read_tar(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_tar(tmp_path: Path) -> None:
    make_app(tmp_path)
    out = io.BytesIO()
    write_context_tar(tmp_path, out)
    members = read_tar(out.getvalue())
    assert [m.name for m in members] == [e.relpath for e in walk_context(tmp_path)]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    by = {m.name: m for m in members}
    assert by["run.sh"].mode == 0o755 and by["manage.py"].mode == 0o644
    assert by["empty"].isdir() and by["empty"].mode == 0o755
    assert by["link"].issym() and by["link"].linkname == "manage.py"
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        f = tar.extractfile("manage.py")
        assert f is not None and f.read() == b"print('hi')\n"


def test_tar_is_deterministic(tmp_path: Path) -> None:
    make_app(tmp_path)
    first, second = io.BytesIO(), io.BytesIO()
    write_context_tar(tmp_path, first)
    os.utime(tmp_path / "manage.py", (12345, 12345))
    write_context_tar(tmp_path, second)
    assert first.getvalue() == second.getvalue()


def test_tar_extra_files(tmp_path: Path) -> None:
    make_app(tmp_path)
    out = io.BytesIO()
    write_context_tar(tmp_path, out, {"Dockerfile": b"FROM generated\n", "gen/x": b"1"})
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
        dockerfile = tar.extractfile("Dockerfile")
        assert dockerfile is not None and dockerfile.read() == b"FROM generated\n"
    assert names.count("Dockerfile") == 1
    assert names.index("gen/x") < names.index("link")


class WriteOnly(io.RawIOBase):
    """A non-seekable sink, like a pipe or an HTTP upload body."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        view = memoryview(b)  # type: ignore[arg-type]
        self.data += view
        return len(view)


def test_tar_streams_to_unseekable_sink(tmp_path: Path) -> None:
    make_app(tmp_path)
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    sink = WriteOnly()
    write_context_tar(tmp_path, sink)  # type: ignore[arg-type]
    by = {m.name: m for m in read_tar(bytes(sink.data))}
    assert by["big.bin"].size == 3 * 1024 * 1024 + 7
