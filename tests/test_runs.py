"""One-off runs end to end, on a real engine: deploys, attached and detached runs, stdin and
exit codes, env, uploads, logs, stop, hardening, recovery after a server SIGKILL, and the
example app against a real PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import REPO, ServerFactory
from support.api import Api
from support.apps import deploy_busybox_app, own_server_app, unique, write_busybox_app
from support.cli import Cli, check, cli_popen, run_id, text
from support.server import HgrunServer, instance_id
from support.waits import wait_for

PROCFILE = "greet: echo hello\nsleeper: sleep\n"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (run\.\d+)(/err)?: (.*)$")

# Linux capability numbers (linux/capability.h).
CAP = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
DOCKER_DEFAULT_CAPS = {
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}  # fmt: skip
NEVER_CAPS = {
    "NET_RAW", "MKNOD", "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO", "NET_ADMIN",
    "SYS_CHROOT", "SETPCAP", "SETFCAP", "AUDIT_WRITE", "DAC_READ_SEARCH", "SYS_BOOT",
}  # fmt: skip


def mask(names: set[str]) -> int:
    return sum(1 << CAP[n] for n in names)


@pytest.fixture
def app(cli: Cli, busybox_image: str, tmp_path: Path) -> tuple[str, Path]:
    """A deployed busybox app of this test's own: (name, folder)."""
    root = tmp_path / "app"
    name = deploy_busybox_app(cli, root, unique("run"), procfile=PROCFILE)
    return name, root


@pytest.fixture
def api(server: HgrunServer) -> Iterator[Api]:
    with Api(server) as client:
        yield client


def run_json(cli: Cli, label: str, server: HgrunServer | None = None) -> dict[str, object]:
    info: dict[str, object] = json.loads(check(cli("runs:info", label, "--json", server=server)))
    return info


def log_text(api: Api, app: str, number: int) -> str:
    return "".join(line["line"] + "\n" for line in api.log_lines(app, number))


# -- deploys ---------------------------------------------------------------------------------


def test_deploy_twice_reuses_the_build_and_a_change_rebuilds(
    cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    name = unique("dep")
    root = write_busybox_app(tmp_path / "app", name, PROCFILE)
    check(cli("apps:create", name))

    first = cli("deploy", cwd=root)
    check(first)
    assert "Step 1/" in text(first.stderr)

    second = cli("deploy", cwd=root)
    check(second)
    assert "reus" in text(second.stderr).lower(), text(second.stderr)
    assert "Step 1/" not in text(second.stderr)

    (root / "data.txt").write_text("a change\n")
    third = cli("deploy", cwd=root)
    check(third)
    assert "Step 1/" in text(third.stderr)

    releases = json.loads(check(cli("releases", "--json", cwd=root)))
    assert len(releases) >= 2
    newest, older = releases[0], releases[-1]
    assert newest["version"] > older["version"]
    assert newest["image"] != older["image"]
    assert newest["context_hash"] != older["context_hash"]
    table = check(cli("releases", cwd=root))
    assert f"v{newest['version']}" in table and f"v{older['version']}" in table
    # The new release is the one runs use.
    assert check(cli("run", "cat", "data.txt", cwd=root, input=b"")) == "a change\n"


def test_run_from_a_changed_folder_runs_the_live_release(cli: Cli, app: tuple[str, Path]) -> None:
    """`hgrun run` never deploys (as `heroku run`); --build runs the folder this once."""
    _, root = app
    (root / "new.txt").write_text("fresh\n")
    assert cli("run", "cat", "new.txt", cwd=root, input=b"").returncode == 1
    assert check(cli("run", "--build", "cat", "new.txt", cwd=root, input=b"")) == "fresh\n"
    check(cli("deploy", cwd=root))
    (root / "new.txt").write_text("fresher\n")
    stale = cli("run", "--no-build", "cat", "new.txt", cwd=root, input=b"")
    assert check(stale) == "fresh\n"


# -- attached runs: stdin, stdout, stderr, exit codes ----------------------------------------


def test_stdin_is_piped_with_eof(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = cli("run", "sort", "-r", input=b"a\nb\n", cwd=root)
    assert check(done) == "b\na\n"


def test_empty_stdin_reaches_eof(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    assert check(cli("run", "sh", "-c", "wc -c", input=b"", cwd=root)).strip() == "0"


def test_stdout_and_stderr_are_kept_apart_and_the_exit_code_returned(
    cli: Cli, app: tuple[str, Path]
) -> None:
    _, root = app
    done = cli("run", "sh", "-c", "echo out; echo err >&2; exit 7", cwd=root, input=b"")
    assert done.returncode == 7, text(done.stderr)
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"


@pytest.mark.parametrize("megabytes", [20, 100])
def test_stdin_to_stdout_is_binary_safe(
    cli: Cli, app: tuple[str, Path], tmp_path: Path, megabytes: int
) -> None:
    _, root = app
    data = os.urandom(megabytes * 1024 * 1024)
    done = cli("run", "cat", input=data, cwd=root, timeout=600)
    assert done.returncode == 0, text(done.stderr)
    assert len(done.stdout) == len(data)
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_exit_code_127_for_a_missing_command(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = cli("run", "no-such-command-here", cwd=root, input=b"")
    assert done.returncode == 127, text(done.stderr)
    assert "Traceback" not in text(done.stderr)


def test_exit_code_126_for_a_file_that_is_not_executable(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    script = root / "not-executable.sh"
    script.write_text("echo should not run\n")
    script.chmod(0o644)
    check(cli("deploy", cwd=root))  # `hgrun run` runs the live release; it never deploys
    done = cli("run", "/app/not-executable.sh", cwd=root, input=b"")
    assert done.returncode == 126, text(done.stderr)
    assert b"should not run" not in done.stdout


def test_timeout_exits_124_and_records_timed_out(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = cli("run", "--timeout", "2s", "sleep", "60", cwd=root, input=b"", timeout=50)
    assert done.returncode == 124, text(done.stderr)
    assert "timed out" in text(done.stderr)
    runs = json.loads(check(cli("runs", "--json", "-n", "5", cwd=root)))
    timed = [r for r in runs if r["command"] == ["sleep", "60"]]
    assert timed and timed[0]["status"] == "timed_out"
    assert timed[0]["exit_code"] == 124


def test_procfile_type_runs_its_command_with_the_extra_args(
    cli: Cli, app: tuple[str, Path]
) -> None:
    _, root = app
    done = cli("run", "greet", "big", "world", cwd=root, input=b"")
    assert check(done) == "hello big world\n"
    runs = json.loads(check(cli("runs", "--json", "-n", "1", cwd=root)))
    assert runs[0]["process_type"] == "greet"


def test_env_values_are_kept_exactly(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    values = {
        "SEMI": "a;b; rm -rf /tmp/x",
        "EQUALS": "k=v=w",
        "QUOTES": "\"double\" 'single' `back`",
        "SPACES": "  two  spaces  ",
        "DOLLAR": "$HOME ${PATH} $(id)",
        "EMPTY": "",
        "UNICODE": "héllo wörld ✓",
    }
    args = [arg for key, value in values.items() for arg in ("--env", f"{key}={value}")]
    script = "printf '%s\\0' " + " ".join(f'"${key}"' for key in values)
    done = cli("run", *args, "sh", "-c", script, cwd=root, input=b"")
    got = check(done).split("\0")[:-1]
    assert got == list(values.values())
    single = cli("run", "--env", "X=a;b c=d 'e'", "sh", "-c", 'printf %s "$X"', cwd=root, input=b"")
    assert check(single) == "a;b c=d 'e'"


# -- detached runs, ps, runs, logs, stop -----------------------------------------------------


def test_detached_run_shows_in_ps_runs_and_logs_and_stops(
    cli: Cli, app: tuple[str, Path], api: Api
) -> None:
    name, root = app
    script = "echo first line; echo to stderr >&2; sleep 1000"
    done = cli("run", "--detached", "sh", "-c", script, cwd=root, input=b"")
    label = check(done).strip()
    number = run_id(label)
    assert label == f"run.{number}"

    ps = json.loads(check(cli("ps", "--json", cwd=root)))
    assert number in [r["id"] for r in ps]
    assert label in check(cli("ps", cwd=root))
    runs = json.loads(check(cli("runs", "--json", cwd=root)))
    assert runs[0]["id"] == number  # newest first

    def both_lines() -> list[re.Match[str]] | None:
        out = check(cli("logs", "--run", label, cwd=root))
        found = [m for m in map(LOG_LINE.match, out.splitlines()) if m]
        texts = {m.group(4) for m in found}
        return found if {"first line", "to stderr"} <= texts else None

    lines = wait_for(both_lines, 30, f"{label}'s lines in `hgrun logs`")
    for match in lines:
        assert match.group(2) == label
    by_text = {m.group(4): m for m in lines}
    assert by_text["first line"].group(3) is None
    assert by_text["to stderr"].group(3) == "/err"
    # The lines also join the app's log.
    assert "first line" in check(cli("logs", cwd=root))

    started = time.monotonic()
    stopped = cli("stop", label, cwd=root, timeout=60)
    check(stopped)
    info = api.finished_run(number, timeout=15)
    assert time.monotonic() - started < 15
    assert info["status"] == "canceled"
    assert number not in [r["id"] for r in json.loads(check(cli("ps", "--json", cwd=root)))]
    history = json.loads(check(cli("runs", "--json", "--status", "canceled", cwd=root)))
    assert number in [r["id"] for r in history]
    assert "canceled" in check(cli("runs:info", label, cwd=root))
    again = cli("stop", label, cwd=root)
    assert again.returncode != 0 and b"Traceback" not in again.stderr
    assert text(again.stderr).startswith("error: ")


def test_logs_tail(cli: Cli, app: tuple[str, Path], api: Api) -> None:
    _, root = app
    check(cli("run", "sh", "-c", "for i in $(seq 30); do echo line$i; done", cwd=root, input=b""))
    out = check(cli("logs", "-n", "3", cwd=root)).splitlines()
    assert [LOG_LINE.match(line).group(4) for line in out] == ["line28", "line29", "line30"]  # type: ignore[union-attr]


def test_uploads_of_a_file_and_a_folder_with_a_detached_run(
    cli: Cli, app: tuple[str, Path], api: Api, tmp_path: Path
) -> None:
    name, root = app
    payload = tmp_path / "x.tar"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    folder = tmp_path / "somedir"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (folder / "empty").write_bytes(b"")
    expected = {
        "./x.tar": payload,
        "./somedir/a.txt": folder / "a.txt",
        "./somedir/sub/b.bin": folder / "sub" / "b.bin",
        "./somedir/empty": folder / "empty",
    }
    script = "cd /tmp/uploads && find . -type f | sort | xargs sha256sum"
    done = cli(
        "run", "--detached", "--file", str(payload), "--file", str(folder),
        "sh", "-c", script, cwd=root, input=b"",
    )  # fmt: skip
    number = run_id(check(done))
    info = api.finished_run(number, timeout=60)
    assert info["status"] == "succeeded", info
    logged = check(cli("logs", "--run", str(number), cwd=root))
    hashes = {}
    for line in logged.splitlines():
        match = LOG_LINE.match(line)
        assert match, line
        digest, path = match.group(4).split(maxsplit=1)
        hashes[path] = digest
    assert hashes == {
        path: hashlib.sha256(local.read_bytes()).hexdigest() for path, local in expected.items()
    }


def test_an_attached_run_with_an_upload(cli: Cli, app: tuple[str, Path], tmp_path: Path) -> None:
    _, root = app
    upload = tmp_path / "data.bin"
    upload.write_bytes(os.urandom(1024 * 1024))
    done = cli("run", "--file", str(upload), "cat", "/tmp/uploads/data.bin", cwd=root, input=b"")
    assert done.returncode == 0, text(done.stderr)
    assert done.stdout == upload.read_bytes()


# -- hardening inside the container ----------------------------------------------------------


def test_no_new_privileges_and_a_reduced_capability_set(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    out = check(cli("run", "cat", "/proc/self/status", cwd=root, input=b""))
    status = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert status["NoNewPrivs"].strip() == "1"
    effective = int(status["CapEff"], 16)
    bounding = int(status["CapBnd"], 16)
    assert effective != 0
    assert effective & mask(NEVER_CAPS) == 0, hex(effective)
    assert effective & ~mask(DOCKER_DEFAULT_CAPS) == 0, hex(effective)
    assert effective != mask(DOCKER_DEFAULT_CAPS), "Docker's default set: nothing dropped"
    assert bounding & mask(NEVER_CAPS) == 0, hex(bounding)


def test_the_pids_limit_contains_a_fork_bomb(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    # starter allows 256 processes, so 400 background sleeps cannot all start; the run then ends
    # with its shell (the sleeps that did start do not keep it alive: the CLI's timeout is the
    # deadline).
    script = "for i in $(seq 400); do sleep 1000 & done; echo all started"
    done = cli("run", "sh", "-c", script, cwd=root, input=b"", timeout=120)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert b"all started" not in done.stdout
    assert b"fork" in done.stderr.lower(), done.stderr
    runs = json.loads(check(cli("runs", "--json", "-n", "1", cwd=root)))
    assert runs[0]["status"] == "failed" and runs[0]["finished"] is not None


def test_the_memory_limit_kills_a_memory_hog_and_the_run_says_so(
    cli: Cli, app: tuple[str, Path]
) -> None:
    _, root = app
    # tail keeps the last line of its input; /dev/zero has no newline, so it keeps it all.
    done = cli(
        "run", "sh", "-c", "head -c 700m /dev/zero | tail > /dev/null",
        cwd=root, input=b"", timeout=180,
    )  # fmt: skip
    assert done.returncode == 137, text(done.stderr)
    assert "out of memory" in text(done.stderr).lower()
    runs = json.loads(check(cli("runs", "--json", "-n", "1", cwd=root)))
    info = run_json(cli, runs[0]["label"])
    assert info["oom"] is True
    assert info["status"] == "failed"
    assert "out of memory" in str(info["error"]).lower()
    shown = check(cli("runs:info", runs[0]["label"], cwd=root))
    assert re.search(r"OOM killed:\s+yes", shown), shown


def test_the_memory_limit_leaves_a_small_run_alone(cli: Cli, app: tuple[str, Path]) -> None:
    _, root = app
    done = cli("run", "sh", "-c", "head -c 100m /dev/zero | tail | wc -c", cwd=root, input=b"")
    assert check(done).strip() == str(100 * 1024 * 1024)


# -- recovery: a dropped attach, a killed server ---------------------------------------------


def test_a_dropped_attach_can_be_taken_up_again(cli: Cli, app: tuple[str, Path], api: Api) -> None:
    name, root = app
    command = ["sh", "-c", "sleep 3; echo done; exit 5"]
    first = cli_popen(cli, "run", *command, cwd=root)
    try:

        def running() -> int | None:
            response = api.http.get(f"/v1/apps/{name}/runs", params={"active": 1})
            for run in response.json():
                if run["command"] == command and run["status"] == "running":
                    return int(run["id"])
            return None

        number = wait_for(running, 30, "the attached run to start")
        first.kill()  # the connection drops; the run must go on
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    again = cli("attach", str(number), cwd=root, input=b"", timeout=60)
    assert again.returncode == 5, text(again.stderr)
    assert again.stdout == b"done\n"
    info = api.finished_run(number, timeout=15)
    assert info["exit_code"] == 5 and info["status"] == "failed"


def test_a_server_sigkill_during_three_detached_runs_loses_nothing(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    srv, root, _ = own_server_app(hgrun_server, cli, tmp_path, "crash")
    instance = instance_id(srv)
    scripts = {
        # Still running after the restart: taken up again, output still captured.
        "long-ok": ("for i in $(seq 60); do echo long$i; sleep 0.1; done", 0, "succeeded"),
        "long-fail": (
            "for i in $(seq 60); do echo fail$i >&2; sleep 0.1; done; exit 3", 3, "failed"
        ),
        # Ends while the server is down: its status and output come from the exited container.
        "short": ("for i in $(seq 5); do echo short$i; done; sleep 1; exit 4", 4, "failed"),
    }  # fmt: skip
    numbers = {}
    for key, (script, _, _) in scripts.items():
        out = check(cli("run", "--detached", "sh", "-c", script, cwd=root, server=srv, input=b""))
        numbers[key] = run_id(out)

    with Api(srv) as api:
        for number in numbers.values():

            def running(n: int = number) -> bool:
                return api.run(n)["status"] == "running"

            wait_for(running, 30, f"run {number} running")
        # Some output is stored before the kill, and more comes while the server is down.
        wait_for(lambda: api.log_lines(root_name(root), numbers["long-ok"]), 30, "first output")

    srv.stop(signal.SIGKILL)

    def short_exited() -> bool:
        found = docker_client.containers.list(
            all=True,
            filters={"label": [f"hgrun.instance={instance}", f"hgrun.run={numbers['short']}"]},
        )
        return bool(found) and all(c.status == "exited" for c in found)

    wait_for(short_exited, 30, "the short run's container to exit while the server is down")
    srv.restart(signal.SIGKILL)

    with Api(srv) as api:
        for key, (_, code, status) in scripts.items():
            info = api.finished_run(numbers[key], timeout=60)
            assert (info["status"], info["exit_code"]) == (status, code), (key, info)
        app_name = root_name(root)
        assert log_text(api, app_name, numbers["long-ok"]) == "".join(
            f"long{i}\n" for i in range(1, 61)
        )
        assert log_text(api, app_name, numbers["long-fail"]) == "".join(
            f"fail{i}\n" for i in range(1, 61)
        )
        assert log_text(api, app_name, numbers["short"]) == "".join(
            f"short{i}\n" for i in range(1, 6)
        )
        streams = {line["stream"] for line in api.log_lines(app_name, numbers["long-fail"])}
        assert streams == {"stderr"}

    def no_containers_left() -> bool:
        return not docker_client.containers.list(
            all=True, filters={"label": f"hgrun.instance={instance}"}
        )

    wait_for(no_containers_left, 30, "every run container of this server to be removed")


def root_name(root: Path) -> str:
    """The app name in ``root``'s hgrun.yaml."""
    first = (root / "hgrun.yaml").read_text().splitlines()[0]
    return first.removeprefix("name:").strip()


# -- the example app against PostgreSQL ------------------------------------------------------


def psql(database_url: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", database_url, "-Atc", sql], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_example_app_migrates_and_loads_rows_into_postgres(
    cli: Cli, python_image: str, postgres: str, tmp_path: Path
) -> None:
    source = REPO / "examples" / "pyapp"
    root = tmp_path / "pyapp"
    shutil.copytree(source, root)
    # The example as shipped, under a name of this test's own (the server is shared).
    name = unique("pyapp")
    manifest = (root / "hgrun.yaml").read_text()
    assert re.search(r"^name: pyapp$", manifest, re.M)
    (root / "hgrun.yaml").write_text(
        re.sub(r"^name: pyapp$", f"name: {name}", manifest, flags=re.M)
    )

    check(cli("apps:create", name))
    check(cli("config:set", f"DATABASE_URL={postgres}", "--app", name))
    check(cli("deploy", cwd=root, timeout=600))

    migrated = cli("run", "migrate", cwd=root, input=b"", timeout=300)
    assert migrated.returncode == 0, text(migrated.stderr)
    assert "migrate:" in text(migrated.stdout)
    assert psql(postgres, "select to_regclass('customers') is not null") == "t"
    assert psql(postgres, "select to_regclass('hgrun_migrations') is not null") == "t"

    before = int(psql(postgres, "select count(*) from customers"))
    fixture = source / "fixtures" / "customers.csv"
    with fixture.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row]
    loaded = cli(
        "run", "--file", str(fixture),
        "python3", "manage.py", "load", "/tmp/uploads/customers.csv",
        cwd=root, input=b"", timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, text(loaded.stderr)
    after = int(psql(postgres, "select count(*) from customers"))
    assert after - before == len(rows)
    names = psql(postgres, f"select name from customers order by id desc limit {len(rows)}")
    assert sorted(names.splitlines()) == sorted(r["name"] for r in rows)
