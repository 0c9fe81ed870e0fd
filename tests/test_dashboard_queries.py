"""The dashboard's query strings and path numbers, read by the API's typed readers (issue 8):
a bad ``?before=``, ``?status=``, ``?after=`` or a huge number is a 4xx page (or JSON for a
data request) naming the parameter, never a 500. Plain HTTP with a real session, no browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.apps import deploy_busybox_app
from support.cli import Cli, check
from support.server import HgrunServer

pytestmark = pytest.mark.docker

HUGE = "9" * 30
SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() takes it, int() does not


@pytest.fixture(scope="module")
def app(cli: Cli, busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = deploy_busybox_app(cli, tmp_path_factory.mktemp("dashq"))
    check(cli("run", "-a", name, "echo", "hi", input=b""))
    return name


@pytest.fixture(scope="module")
def browser(server: HgrunServer) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the dashboard as the admin token."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        form = client.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        signed = client.post(
            "/signin", data={"csrf": csrf.group(1), "token": server.token, "next": "/"}
        )
        assert signed.status_code == 303, signed.text
        yield client


def _page(client: httpx.Client, path: str, status: int, *words: str) -> None:
    answer = client.get(path)
    assert answer.status_code == status, (path, answer.status_code, answer.text[:500])
    for word in words:
        assert word in answer.text, (path, word, answer.text[:2000])


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("before=abc", ["before", "abc"]),
        (f"before={SUPERSCRIPT_TWO}", ["before"]),
        (f"before={HUGE}", ["before"]),
        ("before=-1", ["before"]),
        ("before=1.5", ["before"]),
        ("status=nope", ["unknown status", "nope", "succeeded"]),
        ("trigger=nope", ["unknown trigger", "nope", "cron"]),
        ("script=nosuch", ["nosuch"]),
    ],
)
def test_a_bad_runs_filter_is_a_4xx_page_naming_it(
    browser: httpx.Client, app: str, query: str, words: list[str]
) -> None:
    status = 404 if query.startswith("script=") else 400
    for prefix in ("", "/live"):
        _page(browser, f"{prefix}/apps/{app}/runs?{query}", status, *words)


@pytest.mark.parametrize("query", ["before=1", "status=succeeded", "trigger=user", "before=0"])
def test_good_runs_filters_still_work(browser: httpx.Client, app: str, query: str) -> None:
    _page(browser, f"/apps/{app}/runs?{query}", 200)


def test_the_newest_run_is_found_with_before_past_it(browser: httpx.Client, app: str) -> None:
    # The largest number a run id can be is a valid page start (every run is older).
    answer = browser.get(f"/apps/{app}/runs?before={2**63 - 1}")
    assert answer.status_code == 200 and "echo hi" in answer.text, answer.text[:2000]


@pytest.mark.parametrize("after", ["abc", SUPERSCRIPT_TWO, HUGE, "-5", "1e3"])
def test_a_bad_log_cursor_is_a_json_400_naming_it(
    browser: httpx.Client, app: str, api_run: int, after: str
) -> None:
    answer = browser.get(f"/runs/{api_run}/log", params={"after": after})
    assert answer.status_code == 400, answer.text
    assert "after" in answer.json()["message"]


@pytest.fixture(scope="module")
def api_run(browser: httpx.Client, server: HgrunServer, app: str) -> int:
    runs = httpx.get(
        f"{server.url}/v1/apps/{app}/runs",
        headers={"Authorization": f"Bearer {server.token}"},
    ).json()
    return int(runs[0]["id"])


@pytest.mark.parametrize(
    "path",
    [
        f"/runs/{HUGE}",
        f"/live/runs/{HUGE}",
        f"/runs/{HUGE}/log",
        f"/scripts/{HUGE}",
        f"/live/scripts/{HUGE}",
        f"/runs/{2**63}",
    ],
)
def test_a_huge_number_in_a_path_is_a_404(browser: httpx.Client, path: str) -> None:
    answer = browser.get(path)
    assert answer.status_code == 404, (answer.status_code, answer.text[:500])


@pytest.mark.parametrize("run", ["abc", SUPERSCRIPT_TWO, HUGE])
def test_a_bad_shell_reattach_number_is_a_400(browser: httpx.Client, app: str, run: str) -> None:
    _page(browser, f"/apps/{app}/shell?run={run}", 400, "run")


def test_the_audit_page_takes_no_query_and_never_fails_on_one(browser: httpx.Client) -> None:
    for query in ("before=abc", f"before={HUGE}", f"run={SUPERSCRIPT_TWO}"):
        answer = browser.get(f"/audit?{query}")
        assert answer.status_code == 200, (query, answer.status_code, answer.text[:500])


def test_the_pages_still_open(
    browser: httpx.Client, app: str, api_run: int, tmp_path: Path
) -> None:
    for path in ("/", f"/apps/{app}/runs", f"/runs/{api_run}", f"/runs/{api_run}/log", "/audit"):
        assert browser.get(path).status_code == 200, path
