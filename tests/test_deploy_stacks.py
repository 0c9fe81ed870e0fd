"""`hgrun deploy` on apps with no Dockerfile, as a new user meets it: the detected stack, the
generated Dockerfile (`--show-dockerfile`), and one clear line for each app hgrun cannot build.

`--show-dockerfile` and these errors come before any server call, so no server is started:
HGRUN_URL points at a closed port, which a command that did call the server would report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.server import free_port

from hgrun.stacks import AppFiles, plan


def hgrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HGRUN_URL": f"http://127.0.0.1:{free_port()}",
        "HGRUN_TOKEN": "hgr_unused",
        "XDG_CONFIG_HOME": str(cwd / ".config"),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "hgrun.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def app(root: Path, manifest: str = "name: demo\n", **files: str) -> Path:
    (root / "hgrun.yaml").write_text(manifest)
    for name, text in files.items():
        (root / name.replace("_", ".")).write_text(text)
    return root


GO_MOD = "module example.com/hello\n\ngo 1.19\n"


def test_show_dockerfile_prints_the_generated_one(tmp_path: Path) -> None:
    root = app(tmp_path, go_mod=GO_MOD, go_sum="")
    done = hgrun("deploy", "--show-dockerfile", cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "detected go (go.mod)\n"
    expected = plan(AppFiles(frozenset({"go.mod", "go.sum"}), {"go.mod": GO_MOD}))
    assert expected is not None
    assert done.stdout == expected.dockerfile


def test_show_dockerfile_with_images_and_stack_from_the_manifest(tmp_path: Path) -> None:
    manifest = "name: demo\nbuild:\n  stack: node\n  base: hgrun/node:bookworm\n"
    root = app(tmp_path, manifest, go_mod=GO_MOD, package_json="{}")
    done = hgrun("deploy", "--show-dockerfile", cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "stack node (build.stack in hgrun.yaml)\n"
    assert "FROM hgrun/node:bookworm\n" in done.stdout


def test_two_stacks_the_order_wins_and_says_so(tmp_path: Path) -> None:
    root = app(tmp_path, go_mod=GO_MOD, package_json="{}")
    done = hgrun("deploy", "--show-dockerfile", cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "detected go (go.mod); also matched node (package.json): go comes first, "
        "set build.stack to choose\n"
    )
    assert "FROM golang:1-bookworm AS build" in done.stdout


def test_own_dockerfile_wins_over_detection(tmp_path: Path) -> None:
    root = app(tmp_path, package_json="{}", Dockerfile="FROM scratch\n")
    done = hgrun("deploy", "--show-dockerfile", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("FROM scratch\n", "the app's own Dockerfile\n")


@pytest.mark.parametrize(
    ("files", "manifest", "error"),
    [
        (
            {"README_md": "hi"},
            "name: demo\n",
            "error: hgrun.yaml:1:7: build: no Dockerfile, and no stack detected\n"
            "hint: add a Dockerfile, or the project file of a stack (go.mod, package.json, "
            "requirements.txt ...), or set build.stack to one of go, rust, java, ruby, php, "
            "python, node\n",
        ),
        (
            {"go_mod": "module example.com/a\nrequire example.com/b\nfoo bar\n"},
            "name: demo\n",
            "error: go.mod:3:1: unknown directive 'foo'\n"
            "hint: go.mod's lines start with module, go, toolchain, godebug, require, "
            "replace, exclude, retract, tool or ignore; `go mod tidy` rewrites it\n",
        ),
        (
            {"package_json": '{"name": "a",}'},
            "name: demo\n",
            "error: package.json:1:14: not valid JSON: Expecting property name enclosed in "
            "double quotes\n"
            "hint: fix the JSON (a trailing comma, a missing quote?); `npm pkg get` checks it\n",
        ),
        (
            {"package_json": "{}"},
            "name: demo\nbuild:\n  stack: ruby\n",
            "error: hgrun.yaml:3:10: build.stack is ruby, but the app has no Gemfile\n"
            "hint: add the ruby project files, or remove build.stack to detect the stack\n",
        ),
        (
            {"Gemfile": ""},
            "name: demo\nbuild:\n  builder: ruby:3.3\n",
            "error: hgrun.yaml:3:12: build.builder does not apply to ruby: its Dockerfile has "
            "one stage\n"
            "hint: remove build.builder, or set build.base; builder applies to go, rust, java, "
            "php\n",
        ),
    ],
)
def test_an_app_hgrun_cannot_build_is_one_clear_line(
    tmp_path: Path, files: dict[str, str], manifest: str, error: str
) -> None:
    root = app(tmp_path, manifest, **files)
    for args in (("deploy", "--show-dockerfile"), ("deploy",)):
        done = hgrun(*args, cwd=root)
        assert done.returncode == 3, done.stderr
        assert done.stderr == error
        assert done.stdout == ""
