"""Uploads checked by the real server (issue 8, item 4): hostile tars get a 400 naming the entry
and never reach the container; a good tar lands in /tmp/uploads; one upload per run."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from support.api import Api
from support.apps import deploy_busybox_app
from support.cli import Cli
from support.server import HgrunServer
from test_uploadtar import _chr_device, entry, make_tar

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def app(cli: Cli, busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return deploy_busybox_app(cli, tmp_path_factory.mktemp("upload-app"))


HOSTILE = {
    "dotdot": (entry("uploads/../../etc/passwd", b"root::0:0::/:/bin/sh\n"), "etc/passwd"),
    "absolute": (entry("/etc/passwd", b"x"), "/etc/passwd"),
    "symlink": (entry("uploads/ln", kind=b"2", linkname="/etc/shadow"), "uploads/ln"),
    "hardlink": (entry("uploads/hard", kind=b"1", linkname="uploads/ok"), "uploads/hard"),
    "chardev": (_chr_device(), "uploads/null"),
    "setuid": (entry("uploads/suid", b"#!/bin/sh\n", mode=0o4755), "uploads/suid"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_tar_is_a_400_naming_the_entry(server: HgrunServer, app: str, name: str):
    hostile, named = HOSTILE[name]
    with Api(server) as api:
        run = api.run_taking_upload(app, ["ls", "-la", "/tmp/uploads"])
        data = make_tar(entry("uploads/ok", b"fine"), hostile)
        response = api.http.put(f"/v1/runs/{run}/files", content=data)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_upload"
        assert named in response.json()["message"]
        ended = api.finished_run(run)
        assert ended["status"] == "failed"
        assert "upload" in (ended["error"] or "")


def test_a_huge_declared_size_and_a_truncated_stream_are_400(server: HgrunServer, app: str):
    import tarfile

    info, _ = entry("uploads/huge")
    info.size = 10 * 1024**4
    huge = info.tobuf(format=tarfile.GNU_FORMAT)
    truncated = make_tar(entry("uploads/a", b"x" * 5000))[:2048]
    with Api(server) as api:
        for data, words in ((huge, "declares"), (truncated, "ended before the end")):
            run = api.run_taking_upload(app, ["true"])
            response = api.http.put(f"/v1/runs/{run}/files", content=data)
            assert response.status_code == 400, response.text
            assert words in response.json()["message"]


def test_a_good_tar_lands_with_its_modes_masked(server: HgrunServer, app: str) -> None:
    data = make_tar(
        entry("uploads/dir", kind=b"5", mode=0o755),
        entry("uploads/dir/a.txt", b"hello\n", mode=0o1644),
    )
    with Api(server) as api:
        run = api.run_taking_upload(
            app, ["sh", "-c", "cat /tmp/uploads/dir/a.txt; stat -c %a /tmp/uploads/dir/a.txt"]
        )
        response = api.http.put(f"/v1/runs/{run}/files", content=data)
        assert response.status_code == 200, response.text
        assert response.json()["bytes"] == len(data)
        assert api.finished_run(run)["status"] == "succeeded"
        assert api.log_text(app, run).split() == ["hello", "644"]


def test_a_second_upload_at_once_is_409(server: HgrunServer, app: str) -> None:
    first_sent = threading.Event()
    release = threading.Event()
    data = make_tar(entry("uploads/a", b"a" * 100_000))

    def slow() -> Iterator[bytes]:
        yield data[:4096]
        first_sent.set()
        release.wait(30)
        yield data[4096:]

    with Api(server) as api:
        run = api.run_taking_upload(app, ["cat", "/tmp/uploads/a"])
        results: list[httpx.Response] = []
        first = threading.Thread(
            target=lambda: results.append(api.http.put(f"/v1/runs/{run}/files", content=slow()))
        )
        first.start()
        try:
            assert first_sent.wait(30)
            # The first upload's head reached the server before its first body bytes went.
            second = api.http.put(f"/v1/runs/{run}/files", content=data)
            assert second.status_code == 409, second.text
        finally:
            release.set()
            first.join(60)
        assert results and results[0].status_code == 200, results and results[0].text
        assert api.finished_run(run)["status"] == "succeeded"
