"""`hgrun run`'s folder check, remembered per folder (hgrun/cli/foldercache.py; issue 11).

Real folders and a real cache directory. What a cached answer must be: exactly what the check
computes from scratch, in every way the folder can change; a change the stat signature cannot
see (made while the check runs) must not be trusted; a bad cache file is a miss, never an error;
writers running at once never leave a reader a torn file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hgrun.cli import foldercache
from hgrun.cli.foldercache import FolderCheck
from hgrun.cli.runstart import folder_note

NAME = "demo"
DEPLOYED = "the context hash of the release that runs"


def later() -> int:
    """A clock 10 s ahead: the files just written are older than the racy window."""
    return time.time_ns() + 10 * 10**9


def make_app(root: Path) -> Path:
    root.mkdir()
    (root / "hgrun.yaml").write_text(f"name: {NAME}\n")
    (root / "Dockerfile").write_text("FROM busybox\nCOPY . /app\n")
    (root / "Procfile").write_text("hello: echo hello\n")
    (root / "note.txt").write_text("deployed\n")
    (root / "lib").mkdir()
    (root / "lib" / "util.txt").write_text("util\n")
    return root


def check_of(
    root: Path, cache: Path, clock: Callable[[], int] = later, version: str = "1.0"
) -> FolderCheck:
    return FolderCheck(str(root), str(cache), cwd=str(root), clock=clock, version=version)


def answers(check: FolderCheck) -> tuple[str | None, str | None, str | None]:
    """Name, load error and context hash; and the note against two live releases."""
    name, error = check.manifest()
    return name, error, (check.context_hash() if error is None else None)


def notes(check: FolderCheck, root: Path, live_hash: str) -> tuple[str | None, str | None]:
    live = {"context_hash": live_hash, "version": 3}
    return (
        folder_note(check, str(root), NAME, lambda: live),
        folder_note(check, str(root), NAME, lambda: None),
    )


def fresh(root: Path, tmp_path: Path) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
    """The answers and notes computed from scratch (an empty cache of its own)."""
    empty = tmp_path / f"empty-{time.time_ns()}"
    check = check_of(root, empty)
    assert not check.hit
    return answers(check), notes(check, root, DEPLOYED)


def edit_same_size(root: Path) -> None:
    path = root / "note.txt"
    before = path.stat()
    path.write_text("edited!!\n")  # as long as "deployed\n"
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def edit_keeping_mtime(root: Path) -> None:
    """Same size, mtime put back: only the ctime (and the content) tell."""
    path = root / "note.txt"
    before = path.stat()
    path.write_text("edited!!\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def edit_deep(root: Path) -> None:
    (root / "lib" / "util.txt").write_text("UTIL\n")


def add_file(root: Path) -> None:
    (root / "lib" / "new.txt").write_text("new\n")


def delete_file(root: Path) -> None:
    (root / "note.txt").unlink()


def replace_by_rename(root: Path) -> None:
    """As editors save: a new file renamed over the old one (a new inode)."""
    (root / "note.tmp").write_text("edited!!\n")
    os.replace(root / "note.tmp", root / "note.txt")


def ignore_a_file(root: Path) -> None:
    (root / ".dockerignore").write_text("note.txt\n")


def break_manifest(root: Path) -> None:
    (root / "hgrun.yaml").write_text(f"name: {NAME}\nbuild:\n  dockerfile: Nope\n")


def break_procfile(root: Path) -> None:
    (root / "Procfile").write_text("web: a\nweb: b\n")


def drop_dockerfile(root: Path) -> None:
    """No Dockerfile: then no stack either, so the folder does not load."""
    (root / "Dockerfile").unlink()


def rename_app(root: Path) -> None:
    (root / "hgrun.yaml").write_text("name: other\n")


def link_file(root: Path) -> None:
    (root / "link.txt").symlink_to("note.txt")


CHANGES = [
    edit_same_size,
    edit_keeping_mtime,
    edit_deep,
    add_file,
    delete_file,
    replace_by_rename,
    ignore_a_file,
    break_manifest,
    break_procfile,
    drop_dockerfile,
    rename_app,
    link_file,
]


def warm(root: Path, cache: Path) -> tuple[str | None, ...]:
    """Check once (a miss, written) and once more (a hit); the answers."""
    first = check_of(root, cache)
    assert not first.hit
    got = answers(first)
    first.save()
    second = check_of(root, cache)
    assert second.hit
    assert answers(second) == got
    return got


def test_an_unchanged_folder_is_a_hit_with_the_answers_of_a_miss(tmp_path: Path) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    got = warm(root, cache)
    assert got[0] == NAME and got[1] is None and got[2] is not None
    hit = check_of(root, cache)
    assert hit.hit
    assert answers(hit) == fresh(root, tmp_path)[0]
    assert notes(hit, root, DEPLOYED) == fresh(root, tmp_path)[1]
    # Against a live release with the folder's own hash: no note, from the cache too.
    assert folder_note(check_of(root, cache), str(root), NAME, lambda: {
        "context_hash": got[2], "version": 1
    }) is None  # fmt: skip


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_a_changed_folder_is_a_miss_with_the_answers_of_a_fresh_check(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    before = warm(root, cache)
    change(root)
    after = check_of(root, cache)
    assert not after.hit
    expected_answers, expected_notes = fresh(root, tmp_path)
    assert answers(after) == expected_answers
    assert expected_answers != before  # the change changed what the check says
    assert notes(check_of(root, cache), root, DEPLOYED) == expected_notes
    # Written again: the next check of the changed folder is a hit with the same answers.
    after.save()
    again = check_of(root, cache)
    assert again.hit and answers(again) == expected_answers


def test_a_broken_folder_is_remembered_and_its_note_kept(tmp_path: Path) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    break_manifest(root)
    got = warm(root, cache)
    assert got[0] is None and "build.dockerfile: Nope does not exist" in str(got[1])
    note = notes(check_of(root, cache), root, DEPLOYED)[0]
    assert note is not None and note.startswith(f"hgrun: running the live release of {NAME};")
    assert note == fresh(root, tmp_path)[1][0]
    # The missing file comes: the folder loads (Nope is consulted, though no walk lists it
    # when .dockerignore leaves it out).
    (root / ".dockerignore").write_text("Nope\n")
    warm(root, cache)
    (root / "Nope").write_text("FROM busybox\n")
    now = check_of(root, cache)
    assert not now.hit and answers(now) == fresh(root, tmp_path)[0]
    assert now.manifest() == (NAME, None)


def test_an_ignored_file_that_the_load_reads_still_counts(tmp_path: Path) -> None:
    """A Dockerfile .dockerignore leaves out of the walk: the load still looks for it."""
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    (root / "Dockerfile").unlink()
    (root / "requirements.txt").write_text("flask\n")  # a python stack: Dockerfile.hgrun
    (root / ".dockerignore").write_text("Dockerfile\n")
    before = warm(root, cache)
    (root / "Dockerfile").write_text("FROM busybox\n")
    after = check_of(root, cache)
    assert not after.hit
    assert answers(after) == fresh(root, tmp_path)[0] != before


def test_a_link_out_of_the_folder_counts_by_what_it_points_to(tmp_path: Path) -> None:
    """The context holds the link (its target's name); the stack reads what it points to: a
    go app's vendor/ folder, linked from outside, that becomes a file."""
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    (root / "Dockerfile").unlink()
    (root / "go.mod").write_text("module example.com/demo\n\ngo 1.22\n")
    outside = tmp_path / "vendored"
    outside.mkdir()
    (root / "vendor").symlink_to(outside)
    before = warm(root, cache)
    outside.rmdir()
    outside.write_text("not a folder any more\n")
    after = check_of(root, cache)
    assert not after.hit
    assert answers(after) == fresh(root, tmp_path)[0] != before


def test_a_marker_that_is_no_regular_file_counts(tmp_path: Path) -> None:
    """The context leaves FIFOs out; a stack's detection sees every name at the top."""
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    (root / "Dockerfile").unlink()
    before = warm(root, cache)
    assert before[1] is not None and "no stack detected" in before[1]
    os.mkfifo(root / "manage.py")  # a python stack's marker
    after = check_of(root, cache)
    assert not after.hit
    assert answers(after) == fresh(root, tmp_path)[0] != before


def test_an_ignored_file_may_change_without_a_miss(tmp_path: Path) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    (root / ".dockerignore").write_text("*.log\n")
    got = warm(root, cache)
    (root / "server.log").write_text("noise\n")
    hit = check_of(root, cache)
    assert hit.hit and answers(hit) == got == fresh(root, tmp_path)[0]


def test_another_hgrun_version_is_a_miss(tmp_path: Path) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    warm(root, cache)
    assert not check_of(root, cache, version="1.1").hit
    assert check_of(root, cache, version="1.0").hit


def test_another_working_directory_is_a_miss(tmp_path: Path) -> None:
    """Load errors name files relative to it."""
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    warm(root, cache)
    elsewhere = FolderCheck(str(root), str(cache), cwd=str(tmp_path), clock=later, version="1.0")
    assert not elsewhere.hit


def test_a_change_made_while_the_check_runs_is_not_trusted(tmp_path: Path) -> None:
    """The racy case: the file changes after the check read it and before the entry is
    written, so the signature written holds the new stat with the old answers. The entry is not
    written (the file's times are within the window of the check's start)."""
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    check = check_of(root, cache, clock=time.time_ns)
    before = answers(check)
    edit_same_size(root)
    check.save()
    again = check_of(root, cache, clock=time.time_ns)
    assert not again.hit
    assert answers(again) == fresh(root, tmp_path)[0] != before


def test_files_changed_just_before_the_check_are_checked_again(tmp_path: Path) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    recent = check_of(root, cache, clock=time.time_ns)
    answers(recent)
    recent.save()
    assert not check_of(root, cache, clock=time.time_ns).hit
    assert not os.path.exists(foldercache.entry_file(str(cache), str(root)))
    # Once they are older than the window (a clock 10 s on), the entry is written.
    warm(root, cache)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[1, 2]",
        b"\xff\xfe",
        b'{"format": 1}',
        "truncated",
        "wrong types",
    ],
)
def test_a_corrupt_cache_file_is_a_miss(tmp_path: Path, content: bytes | str) -> None:
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    warm(root, cache)
    file = Path(foldercache.entry_file(str(cache), str(root)))
    if content == "truncated":
        content = file.read_bytes()[:-20]
    elif content == "wrong types":
        entry = json.loads(file.read_bytes())
        content = json.dumps({**entry, "name": 5, "error": None}).encode()
    assert isinstance(content, bytes)
    file.write_bytes(content)
    check = check_of(root, cache)
    assert not check.hit
    assert answers(check) == fresh(root, tmp_path)[0]
    check.save()
    assert check_of(root, cache).hit


def test_a_cache_that_cannot_be_read_or_written_is_no_error(tmp_path: Path) -> None:
    root = make_app(tmp_path / "app")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache's folder would be")
    check = check_of(root, blocked)
    assert answers(check) == fresh(root, tmp_path)[0]
    check.save()
    cache = tmp_path / "cache"
    os.makedirs(foldercache.entry_file(str(cache), str(root)))  # a folder in the entry's place
    check = check_of(root, cache)
    assert not check.hit
    answers(check)
    check.save()
    assert not check_of(root, cache).hit


WRITER = """
import json, sys, time
from hgrun.cli import foldercache
file, entry, rounds = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
    foldercache.write_entry(file, entry, time.time_ns)
"""


def test_writers_at_once_never_leave_a_torn_file(tmp_path: Path) -> None:
    """Three processes rewrite the entry while this one reads it: every read is a hit."""
    root, cache = make_app(tmp_path / "app"), tmp_path / "cache"
    warm(root, cache)
    file = foldercache.entry_file(str(cache), str(root))
    entry = Path(file).read_text()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, file, entry, "400"]) for _ in range(3)
    ]
    reads = misses = 0
    try:
        while any(w.poll() is None for w in writers) or reads < 200:
            reads += 1
            misses += not check_of(root, cache).hit
    finally:
        for w in writers:
            w.wait(timeout=120)
    assert [w.returncode for w in writers] == [0, 0, 0]
    assert misses == 0, f"{misses} of {reads} reads found no entry"
    assert [p.name for p in cache.iterdir()] == [os.path.basename(file)]  # no temp left


def test_the_cache_keeps_a_bounded_number_of_folders(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for i in range(foldercache.KEEP + 5):
        (cache / f"{i:040d}.json").write_text("{}")
        os.utime(cache / f"{i:040d}.json", ns=(i * 10**9, i * 10**9))
    (cache / "left.json.1.2.3.tmp").write_text("{")
    os.utime(cache / "left.json.1.2.3.tmp", ns=(0, 0))
    root = make_app(tmp_path / "app")
    warm(root, cache)
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == foldercache.KEEP
    assert os.path.basename(foldercache.entry_file(str(cache), str(root))) in names
    assert f"{0:040d}.json" not in names and "left.json.1.2.3.tmp" not in names


def test_the_cache_directory_follows_xdg() -> None:
    assert foldercache.directory({"XDG_CACHE_HOME": "/x/cache"}) == "/x/cache/hgrun/folders"
    home = os.path.expanduser("~")
    assert foldercache.directory({}) == os.path.join(home, ".cache", "hgrun", "folders")
