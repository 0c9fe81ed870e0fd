"""Two real ``hgrun server`` processes on one PostgreSQL store and one dockerd (issue 9, items 2
and 3): either serves any call; one runs the scheduler (the store's ``scheduler`` lease), each
run in flight has one supervisor (its ``run:ID`` lease). Server A is killed with SIGKILL while
it supervises three detached runs and a cron slot is seconds away: server B takes the runs up
(output neither doubled nor lost, every run succeeded) and the scheduler (the slot runs once per
script, on time). Then A comes back, and B is killed in the middle of the next slot's triggers:
A takes over and every script's slot runs once. The takeover times are measured from the
store's leases and printed.

Attach through the server that does not hold the run (hgrun/server/remote.py): a run created
through A (its holder) is attached through B, in a real terminal and piped; B's client gets the
output live, its input, resizes and EOF reach the container, and the exit code comes back. A is
given a short ``--grace``: had it not counted B's client, it would have canceled the run.

Both servers run on this host, so B sees A's process die (``process_gone``) at its next lease
check; on another host it waits for the lease to expire (10 s for the scheduler, 15 s for a
run): docs/scale-out.md.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet
from support.api import Api
from support.apps import deploy_busybox_app, deploy_script_app, unique
from support.cli import CLI, Cli, check, cli_popen, run_id
from support.server import HgrunServer, free_port
from support.stores import Databases
from support.waits import wait_for

from hgrun.store.audit import AuditLog

pytestmark = pytest.mark.docker

LINES = 40
COUNTING = f"i=0; while [ $i -lt {LINES} ]; do echo line$i; i=$((i+1)); sleep 0.5; done"
SCRIPTS = 6


class Pair:
    """Servers A and B on one PostgreSQL store (``url``), sharing the key of its secrets."""

    def __init__(
        self, url: str, docker_host: str, tmp_path: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.url = url
        env = {"HGRUN_AUDIT_KEY": Fernet.generate_key().decode()}
        args = ("--store", url, *extra)
        self.a = HgrunServer(free_port(), tmp_path / "a", docker_host, args=args, env=env)
        self.b = HgrunServer(free_port(), tmp_path / "b", docker_host, args=args, env=env)
        self.db = psycopg.connect(url, autocommit=True)

    def lease(self, name: str) -> str | None:
        """The holder of lease ``name`` (``host:pid:nonce``), None when nobody holds it."""
        row = self.db.execute("SELECT value FROM meta WHERE key = %s", (f"lease:{name}",))
        found = row.fetchone()
        return str(found[0]).rpartition(" ")[0] if found else None

    def held_by(self, name: str, server: HgrunServer) -> bool:
        holder = self.lease(name)
        return (
            holder is not None
            and server.process is not None
            and (holder.split(":")[1] == str(server.process.pid))
        )

    def close(self) -> None:
        for server in (self.a, self.b):
            server.stop(signal.SIGKILL)
        self.db.close()


@pytest.fixture
def pair(
    store_databases: Databases, docker_host: str, busybox_image: str, tmp_path: Path
) -> Iterator[Pair]:
    url = store_databases.create()
    servers = Pair(url, docker_host, tmp_path)
    try:
        yield servers
    finally:
        servers.close()
        store_databases.drop(url)


GRACE = 4.0  # --grace of the attach tests: an attached run with no client is canceled after it


@pytest.fixture
def short_grace_pair(
    store_databases: Databases, docker_host: str, busybox_image: str, tmp_path: Path
) -> Iterator[Pair]:
    url = store_databases.create()
    servers = Pair(url, docker_host, tmp_path, ("--grace", f"{GRACE:g}s"))
    try:
        yield servers
    finally:
        servers.close()
        store_databases.drop(url)


def _start_both(pair: Pair, tmp_path: Path) -> Cli:
    """A (the scheduler's holder) and B up on the one store; a CLI logged in to A."""
    a, b = pair.a, pair.b
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a.start()
    wait_for(lambda: "runs the scheduler" in a.log, 20, "A to run the scheduler")
    b.token = a.token  # one store, one admin token: B prints none (it is not the first start)
    b.start()
    wait_for(lambda: "standing by" in b.log, 20, "B to stand by")
    return Cli(a, tmp_path / "xdg")


def _slot(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_server_killed_during_runs_and_before_a_cron_slot_is_taken_over_by_the_other(
    pair: Pair, tmp_path: Path
) -> None:
    a, b = pair.a, pair.b
    cli = _start_both(pair, tmp_path)
    scripts = "".join(
        f'  tick{i}:\n    command: echo tick{i}\n    cron: "* * * * *"\n' for i in range(SCRIPTS)
    )
    name = deploy_script_app(cli, tmp_path / "app", unique("scale"), scripts, server=a)

    # The next minute boundary with room before it for three runs to get going.
    now = time.time()
    slot = (now // 60 + 1) * 60
    if slot - now < 15:
        slot += 60
    wait_for(lambda: time.time() >= slot - 13 or None, 75, "13 s before the slot", interval=0.5)
    runs = [
        run_id(check(cli("run", "--detached", "-a", name, COUNTING, server=a)).strip())
        for _ in range(3)
    ]
    with Api(a) as api_a:
        for number in runs:
            api_a.running(number)
    for number in runs:
        assert pair.held_by(f"run:{number}", a)
    wait_for(lambda: time.time() >= slot - 3 or None, 20, "3 s before the slot", interval=0.1)

    assert a.process is not None
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    killed = time.time()
    wait_for(lambda: pair.held_by("scheduler", b), 30, "B to take the scheduler", interval=0.1)
    scheduler_taken = time.time() - killed
    for number in runs:
        wait_for(lambda n=number: pair.held_by(f"run:{n}", b), 40, f"B to take run {number}", 0.1)
    runs_taken = time.time() - killed
    print(f"takeover after SIGKILL: scheduler {scheduler_taken:.1f} s, runs {runs_taken:.1f} s")

    with Api(b) as api:
        # 0 runs lost, no output doubled or lost: every line once, in order.
        for number in runs:
            run = api.finished_run(number, timeout=60)
            assert (run["status"], run["exit_code"]) == ("succeeded", 0), run
            assert api.log_text(name, number) == "".join(f"line{i}\n" for i in range(LINES))
        # The slot due 3 s after the kill runs once per script, started by B on time.
        _each_script_ran_once(api, name, slot)
    assert scheduler_taken < 5, scheduler_taken
    assert runs_taken < 20, runs_taken  # the recovery pass every 5 s, on a loaded machine

    # A comes back and stands by; B is killed in the middle of the next slot's triggers (at
    # its first run of the slot): A takes over, and the runs B made but did not start (queued,
    # or starting without a container) are started by A, the others taken up; each script's
    # slot still runs once.
    a.start()
    wait_for(lambda: "standing by" in a.log, 30, "A to stand by")
    slot += 60
    wait_for(lambda: time.time() >= slot - 2 or None, 75, "2 s before the slot", interval=0.1)

    def slot_runs() -> int | None:
        row = pair.db.execute("SELECT count(*) FROM runs WHERE slot = %s", (_slot(slot),))
        found = row.fetchone()
        return int(found[0]) if found and found[0] else None

    wait_for(slot_runs, 20, f"B's first run of {_slot(slot)}", interval=0.01)
    assert b.process is not None
    b.process.send_signal(signal.SIGKILL)
    b.process.wait()
    killed = time.time()
    made_by_b = slot_runs()
    wait_for(lambda: pair.held_by("scheduler", a), 30, "A to take the scheduler", interval=0.1)
    scheduler_taken = time.time() - killed
    with Api(a) as api:
        _each_script_ran_once(api, name, slot)
    print(
        f"B killed after making {made_by_b} of the slot's {SCRIPTS} runs: A took the scheduler"
        f" {scheduler_taken:.1f} s later; every script's slot ran once"
    )
    assert scheduler_taken < 5, scheduler_taken


def _each_script_ran_once(api: Api, name: str, slot: float) -> None:
    """Each script's cron run of ``slot``: exactly one, made within 10 s of it, succeeded; and
    no slot of the script ever ran twice."""
    for i in range(SCRIPTS):
        script_id = api.script_id(name, f"tick{i}")

        def in_slot(sid: int = script_id) -> list[dict[str, object]] | None:
            found = [
                r
                for r in api.script_runs(sid)
                if r["trigger"]["kind"] == "cron" and r["trigger"]["name"] == _slot(slot)
            ]
            return found or None

        (run,) = wait_for(in_slot, 30, f"tick{i}'s run of {_slot(slot)}")
        assert slot <= float(str(run["created"])) < slot + 10, (run, slot)
        finished = api.finished_run(int(str(run["id"])), timeout=60)
        assert (finished["status"], finished["exit_code"]) == ("succeeded", 0), finished
        cron = [r for r in api.script_runs(script_id) if r["trigger"]["kind"] == "cron"]
        names = [r["trigger"]["name"] for r in cron]
        assert len(names) == len(set(names)), f"a slot ran twice: {names}"


def test_one_audit_log_for_both_servers(pair: Pair, tmp_path: Path) -> None:
    """The audit log is the store's (issue 9 with issue 8's audit): a run supervised and
    finished by A and one by B are both in ``hgrun audit`` through either server, as one chain
    that verifies; neither server writes an audit.db of its own, and B's, left from before,
    stays as it was (B says so at start)."""
    a, b = pair.a, pair.b
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old = AuditLog(tmp_path / "b" / "audit.db", b.env["HGRUN_AUDIT_KEY"].encode())
    old.append("default", 1, "run.finish", {"stdout": "from before PostgreSQL"})
    old.close()
    a.start()
    b.token = a.token  # one store, one admin token
    b.start()
    cli = Cli(a, tmp_path / "xdg")
    name = deploy_busybox_app(cli, tmp_path / "app", unique("audit"), server=a)
    runs: dict[str, int] = {}
    for label, server in (("a", a), ("b", b)):
        # Long enough for the lease to be seen: the server that made the run supervises it.
        command = f"sleep 4; echo finished-by-{label}"
        runs[label] = run_id(
            check(cli("run", "--detached", "-a", name, command, server=server)).strip()
        )
        wait_for(
            lambda n=runs[label], s=server: pair.held_by(f"run:{n}", s),
            20,
            f"run {runs[label]} held by server {label}",
        )

    def both_finished(server: HgrunServer) -> dict[str, Any] | None:
        page = json.loads(check(cli("audit", "--json", "-n", "100", server=server)))
        finished = {r["run"]: r for r in page["records"] if r["action"] == "run.finish"}
        return page if set(runs.values()) <= set(finished) else None

    pages = []
    for label, server in (("a", a), ("b", b)):
        page = wait_for(
            lambda s=server: both_finished(s), 60, f"both runs' run.finish through {label}"
        )
        assert page["problems"] == [] and page["checked"] == len(page["records"]), page
        for who, number in runs.items():
            (finish,) = [
                r for r in page["records"] if r["run"] == number and r["action"] == "run.finish"
            ]
            assert finish["payload"]["stdout"] == f"finished-by-{who}\n", finish
            assert finish["problem"] is None
        pages.append([(r["id"], r["run"], r["action"]) for r in page["records"]])
    assert pages[0] == pages[1]  # one log, whichever server answers
    assert not (tmp_path / "a" / "audit.db").exists()
    assert "audit log from before it: no longer written" in b.log, b.log
    old = AuditLog(tmp_path / "b" / "audit.db", b.env["HGRUN_AUDIT_KEY"].encode())
    (record,) = old.read("default")
    assert record.payload == {"stdout": "from before PostgreSQL"} and record.problem is None
    old.close()
    for server in (a, b):
        check(cli("audit", "-n", "5", server=server))  # exit 0: the whole chain verifies

    # Tampering in the database is seen through either server: a record's run changed, then
    # (put back) the newest record deleted.
    (first_id, first_run, _action) = pages[0][0]
    pair.db.execute("UPDATE audit SET run_id = %s WHERE id = %s", (first_run + 1000, first_id))
    for server in (a, b):
        done = cli("audit", "-n", "1", server=server)
        shown = done.stdout.decode(errors="replace")
        assert done.returncode == 1, shown
        assert f"#{first_id} !! the record's id, time, workspace, run or action" in shown, shown
    pair.db.execute("UPDATE audit SET run_id = %s WHERE id = %s", (first_run, first_id))
    check(cli("audit", "-n", "1", server=b))
    (newest,) = pair.db.execute("SELECT max(id) FROM audit").fetchone()
    pair.db.execute("DELETE FROM audit WHERE id = %s", (newest,))
    done = cli("audit", "-n", "1", server=a)
    shown = done.stdout.decode(errors="replace")
    assert done.returncode == 1, shown
    assert f"#{newest} !! the newest record(s) #{newest} were deleted" in shown, shown


# -- attach through the server that does not hold the run --------------------------------------


def _create_attached(api: Api, app: str, command: list[str], *, tty: bool) -> int:
    """An attached run made through ``api``'s server (no client yet: it waits for one)."""
    response = api.http.post(f"/v1/apps/{app}/runs", json={"command": command, "tty": tty})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


class Terminal:
    """A process on a real pseudo-terminal of ``cols`` x ``rows``; everything it prints is
    gathered by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int, rows: int) -> None:
        self.master, slave = os.openpty()
        self.resize(cols, rows, signal_it=False, fd=slave)
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self._seen = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._seen += data

    @property
    def text(self) -> str:
        with self._lock:
            return self._seen.decode(errors="replace")

    def type(self, keys: bytes) -> float:
        os.write(self.master, keys)
        return time.monotonic()

    def expect(self, pattern: str, after: int, what: str, timeout: float = 20) -> re.Match[str]:
        """The first match of ``pattern`` in what was printed after character ``after``."""
        return wait_for(lambda: re.compile(pattern).search(self.text, after), timeout, what)

    def resize(
        self, cols: int, rows: int, *, signal_it: bool = True, fd: int | None = None
    ) -> None:
        size = struct.pack("HHHH", rows, cols, 0, 0)
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ, size)
        if signal_it:
            os.kill(self.process.pid, signal.SIGWINCH)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def test_a_tty_session_made_through_a_is_attached_through_b_live(
    short_grace_pair: Pair, tmp_path: Path
) -> None:
    """Made through A, attached only through B (as behind a balancer): the run starts, B's
    terminal gets the shell's answers live, its resize reaches the TTY, the session outlives A's
    grace and then A itself (killed -9: B takes the run over under the same attach), and
    `exit 3` comes back as the CLI's exit code."""
    pair = short_grace_pair
    cli = _start_both(pair, tmp_path)
    name = deploy_busybox_app(cli, tmp_path / "app", unique("xa"), server=pair.a)
    with Api(pair.a) as api:
        number = _create_attached(api, name, ["sh"], tty=True)
    terminal = Terminal([*CLI, "attach", str(number)], cli.env(pair.b), 100, 30)
    try:
        with Api(pair.b) as api:
            api.running(number, timeout=30)
        assert pair.held_by(f"run:{number}", pair.a)
        mark = len(terminal.text)
        typed = terminal.type(b"echo pid$$\r")
        terminal.expect(r"pid\d+", mark, "the shell's answer through B")
        print(f"typed through B, answer seen {time.monotonic() - typed:.2f} s later")
        mark = len(terminal.text)
        terminal.type(b"stty size\r")
        terminal.expect(r"\n30 100\r?\n", mark, "the first size")
        terminal.resize(132, 43)
        time.sleep(0.5)  # the resize travels on its own (no answer to wait for)
        mark = len(terminal.text)
        terminal.type(b"stty size\r")
        terminal.expect(r"\n43 132\r?\n", mark, "the new size")

        # Twice A's grace with this one client through B: A counts it, the run goes on.
        time.sleep(2 * GRACE)
        mark = len(terminal.text)
        terminal.type(b"echo still-$((40+2))\r")
        terminal.expect(r"still-42", mark, "an answer after A's grace")

        # A dies; B takes the run over (recovery joins the engine's replay to the stored
        # output, the prompt not yet in Docker's log); the same attach goes on.
        assert pair.a.process is not None
        pair.a.process.send_signal(signal.SIGKILL)
        pair.a.process.wait()
        wait_for(lambda: pair.held_by(f"run:{number}", pair.b), 40, "B to take the run over")
        mark = len(terminal.text)
        terminal.type(b"echo after-$((6*7))\r")
        terminal.expect(r"after-42", mark, "an answer after the takeover")

        terminal.type(b"exit 3\r")
        assert terminal.process.wait(timeout=30) == 3, terminal.text
        with Api(pair.b) as api:
            run = api.finished_run(number)
            assert (run["status"], run["exit_code"]) == ("failed", 3), run
            # The stored output has each answer once (nothing doubled by the takeover).
            log = api.log_text(name, number)
            assert len(re.findall(r"pid\d+", log)) == 1, log
            assert log.count("still-42") == 1 and log.count("after-42") == 1, log
            assert "lost" not in log and log.count("echo after-$((6*7))") == 1, log
    finally:
        terminal.close()


def test_a_piped_session_run_through_a_is_attached_through_b_with_eof(
    short_grace_pair: Pair, tmp_path: Path
) -> None:
    """`hgrun run` through A (its client stays there, silent), a second client attaches through
    B and pipes: each line reaches the command and its answer comes back to both before the next
    is sent (live), B's EOF ends the command's input, and both clients exit with its code."""
    pair = short_grace_pair
    cli = _start_both(pair, tmp_path)
    name = deploy_busybox_app(cli, tmp_path / "app", unique("xp"), server=pair.a)
    script = 'while read line; do echo "got-$line"; done; echo eof; exit 3'
    first = cli_popen(cli, "run", "-a", name, script, server=pair.a)
    with Api(pair.a) as api:
        (found,) = wait_for(
            lambda: api.get(f"/v1/apps/{name}/runs", active=1) or None, 30, "the run through A"
        )
        number = int(found["id"])
        api.running(number, timeout=30)
    assert pair.held_by(f"run:{number}", pair.a)
    second = cli_popen(cli, "attach", str(number), server=pair.b)
    clients = (first, second)
    seen: tuple[list[str], list[str]] = ([], [])

    def read(client: subprocess.Popen[bytes], lines: list[str]) -> None:
        for line in client.stdout or ():
            lines.append(line.decode())

    readers = [
        threading.Thread(target=read, args=(client, lines), daemon=True)
        for client, lines in zip(clients, seen, strict=True)
    ]
    for reader in readers:
        reader.start()
    assert second.stdin is not None
    try:
        for word in ("one", "two", "three"):
            second.stdin.write(f"{word}\n".encode())
            second.stdin.flush()
            wait_for(lambda w=word: f"got-{w}\n" in seen[1], 20, f"the answer to {word} through B")
        second.stdin.write(b"four\n")
        second.stdin.close()  # EOF
        for client in clients:
            assert client.wait(timeout=30) == 3, client.stderr.read() if client.stderr else ""
        for reader in readers:
            reader.join(10)
        expected = ["got-one\n", "got-two\n", "got-three\n", "got-four\n", "eof\n"]
        assert seen == (expected, expected), seen
        with Api(pair.b) as api:
            run = api.finished_run(number)
            assert (run["status"], run["exit_code"]) == ("failed", 3), run
            assert pair.lease(f"run:{number}") is None  # A held it to the end, and let it go
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
