"""Who a run is and what it may write (issue 8, item 5): ``user:`` and ``read_only:`` in
hgrun.yaml, and ``hgrun server --require-non-root``; real servers on a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ServerFactory
from support.apps import create_and_deploy, unique, write_busybox_app, write_script_app
from support.cli import Cli, check, text

from hgrun.errors import ForbiddenError
from hgrun.server.users import check_user, is_root

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    ("user", "root"),
    [
        ("", True),
        ("root", True),
        ("0", True),
        ("000", True),
        ("0:0", True),
        ("root:staff", True),
        (" 0", True),
        ("10001", False),
        ("10001:0", False),  # group root is not user root
        ("app", False),
        ("rooty", False),
        ("01", False),
    ],
)
def test_is_root(user: str, root: bool) -> None:
    assert is_root(user) is root


@pytest.mark.parametrize(
    ("manifest_user", "image_user", "refused"),
    [
        (None, "", "its image has no USER"),
        (None, "root", "its image's user is root"),
        (None, "10001", None),
        ("0", "10001", "user: 0"),  # the manifest wins over the image
        ("10001", "", None),
        ("root", "", "user: root"),
    ],
)
def test_check_user(manifest_user: str | None, image_user: str, refused: str | None) -> None:
    check_user(manifest_user, image_user, False, "app a")  # never refused without the flag
    if refused is None:
        check_user(manifest_user, image_user, True, "app a")
        return
    with pytest.raises(ForbiddenError) as info:
        check_user(manifest_user, image_user, True, "app a")
    assert f"app a would run as root ({refused})" in info.value.message
    assert 'user: "10001"' in (info.value.hint or "")


def _app(root: Path, top: str, procfile: str = "whoami: id -u\n") -> tuple[Path, str]:
    name = unique("usr")
    write_busybox_app(root, name, procfile, manifest_extra=top)
    return root, name


def test_user_sets_the_runs_uid(cli: Cli, busybox_image: str, tmp_path: Path) -> None:
    folder, name = _app(tmp_path / "a", 'user: "10001:10002"\n')
    create_and_deploy(cli, folder, name)
    assert check(cli("run", "-a", name, "sh", "-c", "id -u; id -g", input=b"")) == "10001\n10002\n"


def test_require_non_root_refuses_root_runs_and_lets_others_run(
    hgrun_server: ServerFactory, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    srv = hgrun_server("--require-non-root")
    # The busybox image has no USER: deploying it as is is refused, naming why and the fix.
    folder, name = _app(tmp_path / "root", "")
    check(cli("apps:create", name, server=srv))
    done = cli("deploy", cwd=folder, server=srv)
    assert done.returncode == 4, done
    error = text(done.stderr)
    assert "the app would run as root (its image has no USER)" in error, error
    assert 'user: "10001"' in error and "Traceback" not in error, error
    # An explicit root is refused too.
    (folder / "hgrun.yaml").write_text((folder / "hgrun.yaml").read_text() + "user: root\n")
    done = cli("deploy", cwd=folder, server=srv)
    assert done.returncode == 4 and "(user: root)" in text(done.stderr), done
    # A non-root user deploys and runs, as that user.
    (folder / "hgrun.yaml").write_text(
        (folder / "hgrun.yaml").read_text().replace("user: root", "user: 10001")
    )
    check(cli("deploy", cwd=folder, server=srv))
    assert check(cli("run", "-a", name, "whoami", input=b"", server=srv)) == "10001\n"


def test_require_non_root_refuses_a_release_made_before_it(
    hgrun_server: ServerFactory, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    """A root release deployed while the server allowed it: its runs and script triggers are
    refused once the server requires non-root, before any run is recorded."""
    srv = hgrun_server()
    name = unique("old")
    write_script_app(tmp_path / "app", name, "  job:\n    command: id -u\n")
    create_and_deploy(cli, tmp_path / "app", name, server=srv)
    assert check(cli("run", "-a", name, "id", "-u", input=b"", server=srv)) == "0\n"
    srv.args = ("--require-non-root",)
    strict = srv.restart()  # the same data dir, port and token
    for args in (("run", "-a", name, "id", "-u"), ("scripts:run", "job", "-a", name)):
        done = cli(*args, input=b"", server=strict)
        assert done.returncode == 4, (args, done)
        assert "would run as root (its image has no USER)" in text(done.stderr), done
    runs = check(cli("runs", "-a", name, "--json", server=strict))
    assert [run["id"] for run in json.loads(runs)] == [1], runs  # only the run made before


def test_read_only_root_with_a_writable_tmp_and_uploads(
    cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    folder, name = _app(tmp_path / "ro", 'read_only: true\nuser: "10001"\n')
    create_and_deploy(cli, folder, name)
    upload = tmp_path / "data.csv"
    upload.write_bytes(b"a,b\n1,2\n")
    script = (
        "touch /app/x 2>/dev/null && echo root-writable || echo root-read-only;"
        " echo scratch > /tmp/s && cat /tmp/s;"
        " cat /tmp/uploads/data.csv; ls -ld /tmp | cut -c1-10"
    )
    out = check(cli("run", "-a", name, "--file", str(upload), "sh", "-c", script, input=b""))
    assert out == "root-read-only\nscratch\na,b\n1,2\ndrwxrwxrwt\n", out
    # Without an upload, /tmp is writable all the same; detached too.
    out = check(cli("run", "-a", name, "sh", "-c", "echo t > /tmp/t && cat /tmp/t", input=b""))
    assert out == "t\n"


def test_read_only_is_off_by_default(cli: Cli, busybox_image: str, tmp_path: Path) -> None:
    folder, name = _app(tmp_path / "rw", "")
    create_and_deploy(cli, folder, name)
    out = check(cli("run", "-a", name, "sh", "-c", "touch /x && echo ok", input=b""))
    assert out == "ok\n"
