"""Unit tests of the dashboard's pure parts: sessions, CSRF, cookies, schedules in words, the
run chart. No server, no browser."""

from __future__ import annotations

import hashlib

import pytest

from hgrun.models import Run, RunStatus, Trigger, TriggerKind
from hgrun.server.dashboard import words
from hgrun.server.dashboard.session import SessionBook, cookie_header, csrf_ok


def test_a_session_refers_to_the_token_by_hash_and_is_found_by_its_cookie() -> None:
    book = SessionBook()
    cookie, session = book.open("tokenhash", now=100.0)
    assert book.get(cookie, 101.0) is session
    assert session.token_hash == "tokenhash"
    assert len(cookie) >= 40 and len(session.csrf) >= 40 and cookie != session.csrf
    # The book holds the cookie only as its SHA-256.
    assert cookie not in repr(book._sessions)
    assert hashlib.sha256(cookie.encode()).hexdigest() in book._sessions
    assert book.get(cookie + "x", 101.0) is None
    assert book.get(None, 101.0) is None and book.get("", 101.0) is None


def test_sessions_expire_when_idle_and_after_their_lifetime() -> None:
    book = SessionBook(idle=10.0, lifetime=25.0)
    cookie, _ = book.open("h", now=0.0)
    assert book.get(cookie, 9.0) is not None  # touching it keeps it alive
    assert book.get(cookie, 18.0) is not None
    assert book.get(cookie, 26.0) is None  # past its lifetime, however recently seen
    idle, _ = book.open("h", now=100.0)
    assert book.get(idle, 111.0) is None
    assert len(book) == 0


def test_sign_out_ends_the_session_and_the_book_is_bounded() -> None:
    book = SessionBook(limit=3)
    cookies = [book.open("h", now=float(i))[0] for i in range(5)]
    assert len(book) == 3
    assert book.get(cookies[0], 5.0) is None  # the oldest went first
    book.close(cookies[4])
    assert book.get(cookies[4], 5.0) is None and book.get(cookies[3], 5.0) is not None


@pytest.mark.parametrize(
    ("expected", "given", "ok"),
    [
        ("abc", "abc", True),
        ("abc", "abd", False),
        ("abc", "", False),
        ("abc", None, False),
        ("", "", False),
        (None, None, False),
    ],
)
def test_csrf_ok(expected: str | None, given: str | None, ok: bool) -> None:
    assert csrf_ok(expected, given) is ok


@pytest.mark.parametrize(
    ("secure", "max_age", "want"),
    [
        (False, None, "s=v; Path=/; HttpOnly; SameSite=Strict"),
        (True, None, "s=v; Path=/; HttpOnly; SameSite=Strict; Secure"),
        (False, 0, "s=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    ],
)
def test_cookie_header(secure: bool, max_age: int | None, want: str) -> None:
    assert cookie_header("s", "v", secure=secure, max_age=max_age) == want


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("* * * * *", "every minute"),
        ("*/5 * * * *", "every 5 minutes"),
        ("0 * * * *", "every hour"),
        ("@hourly", "every hour"),
        ("15 * * * *", "every hour at minute 15"),
        ("0 */6 * * *", "every 6 hours at minute 0"),
        ("30 4 * * *", "every day at 04:30"),
        ("@daily", "every day at 00:00"),
        ("0 9 * * 1-5", "on weekdays at 09:00"),
        ("0 10 * * 0,6", "on weekends at 10:00"),
        ("0 8 * * 1", "every Monday at 08:00"),
        ("0 8 * * 1,3", "every Monday and Wednesday at 08:00"),
        ("0 0 1 * *", "on day 1 of every month at 00:00"),
        ("0 0 25 12 *", "every year on December 25 at 00:00"),
        ("5 4 1-7 * 1", "cron `5 4 1-7 * 1`"),  # no plain reading: shown as it is
        ("*/90 * * * *", "cron `*/90 * * * *`"),
        ("0 25 * * *", "cron `0 25 * * *`"),
    ],
)
def test_describe(expr: str, text: str) -> None:
    assert words.describe(expr) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (0.42, "0.4 s"), (12.4, "12 s"), (185, "3 min 5 s"), (900, "15 min"),
     (7260, "2 h 1 min"), (3600, "1 h")],
)  # fmt: skip
def test_duration(seconds: float | None, text: str) -> None:
    assert words.duration(seconds) == text


def _run(number: int, status: RunStatus, started: float | None, finished: float | None) -> Run:
    return Run(
        id=number, workspace="w", app_id=1, release_id=1, command=["true"], process_type=None,
        tty=False, detached=True, uploads=False, size="starter", timeout=60, env={},
        trigger=Trigger(TriggerKind.API, "t"), script="s", slot=None, parent_run=None,
        status=status, exit_code=None, oom=False, container_id=None, error=None, created=0,
        started=started, finished=finished,
    )  # fmt: skip


def test_chart_bars_run_oldest_first_scaled_to_the_longest_and_coloured_by_status() -> None:
    runs = [
        _run(3, RunStatus.RUNNING, 100.0, None),  # counts up to now
        _run(1, RunStatus.SUCCEEDED, 0.0, 10.0),
        _run(2, RunStatus.FAILED, 0.0, 5.0),
        _run(4, RunStatus.SKIPPED, None, None),
    ]
    bars = words.chart(runs, now=120.0)
    assert [b.run for b in bars] == [1, 2, 3, 4]
    assert [b.status for b in bars] == ["ok", "bad", "live", "off"]
    assert bars[2].height == words.HEIGHT  # the running one, 20 s, is the longest
    assert bars[0].height == pytest.approx(words.HEIGHT / 2)
    assert bars[3].height == 2.0  # never started: a stub, still visible
    assert all(b.y + b.height == pytest.approx(words.HEIGHT) for b in bars)
    assert bars[0].x < bars[1].x < bars[2].x
    assert words.chart([], now=0) == []


@pytest.mark.parametrize(
    ("status", "colour"),
    [(RunStatus.SUCCEEDED, "ok"), (RunStatus.FAILED, "bad"), (RunStatus.TIMED_OUT, "bad"),
     (RunStatus.CANCELED, "off"), (RunStatus.SKIPPED, "off"), (RunStatus.RUNNING, "live"),
     (RunStatus.QUEUED, "live"), (RunStatus.LOST, "bad")],
)  # fmt: skip
def test_badge_colours(status: RunStatus, colour: str) -> None:
    assert words.badge(status) == colour


@pytest.mark.parametrize(
    ("target", "where"),
    [(None, "/"), ("/runs/4", "/runs/4"), ("//evil.example/x", "/"), ("https://evil.example", "/"),
     ("/\\evil.example", "/"), ("runs", "/")],
)  # fmt: skip
def test_sign_in_goes_back_only_to_this_site(target: str | None, where: str) -> None:
    from hgrun.server.dashboard.actions import _next

    assert _next(target) == where


@pytest.mark.parametrize(
    ("headers", "browser"),
    [
        ([(b"cookie", b"hgrun_session=abc")], True),
        ([(b"cookie", b"a=1; hgrun_session=abc")], True),
        ([(b"cookie", b"hgrun_session=abc"), (b"authorization", b"Bearer x")], False),
        ([(b"authorization", b"Bearer x")], False),
        ([(b"cookie", b"other=1")], False),
        ([], False),
    ],
)
def test_the_gate_gives_the_dashboard_only_cookie_attaches(
    headers: list[tuple[bytes, bytes]], browser: bool
) -> None:
    from hgrun.server.dashboard import _cookie_only

    assert _cookie_only({"headers": headers}) is browser


def test_a_shell_command_is_split_like_a_shell_would() -> None:
    from hgrun.errors import InputError
    from hgrun.server.dashboard.shell import command_argv

    assert command_argv("bash") == ["bash"]
    assert command_argv("python3 -c 'print(1)'") == ["python3", "-c", "print(1)"]
    with pytest.raises(InputError):
        command_argv("   ")
    with pytest.raises(InputError):
        command_argv("echo 'unclosed")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["sh", "-c", 'sleep 2; echo "hi $X"'], """sh -c 'sleep 2; echo "hi $X"'"""),
        (["python3", "manage.py", "report"], "python3 manage.py report"),
        (["echo", "it's"], """echo 'it'"'"'s'"""),
        (["printf", ""], "printf ''"),
        (words.BASH_OR_SH, "bash (sh where the image has no bash)"),
    ],
)
def test_a_command_reads_as_it_would_be_typed(argv: list[str], line: str) -> None:
    assert words.command_line(argv) == line
