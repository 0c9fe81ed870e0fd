"""Secrets at rest and in flight (issue 8, item 6).

- Config values and each run's env snapshot are sealed in hgrun.db: a grep of every file of the
  data dir (the store, its WAL and shared memory, the audit store) finds neither, before and
  after a checkpoint; rows written in clear by an older server are sealed at the next start.
- The data dir and its files are owner-only, also when the dir existed with loose modes.
- The first admin token is in a 0600 file and never on the server's stdout when not a terminal;
  ``hgrun login --token -`` reads a token from stdin.
- ``hgrun server --rotate-key`` re-encrypts the store and the audit log under a new key.
- ``--tls-cert/--tls-key``: HTTPS and WSS with a certificate made here; ``hgrun login --ca-cert``
  trusts its private CA; a CLI with another CA is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerFactory
from cryptography.fernet import Fernet
from support.apps import deploy_busybox_app, unique
from support.cli import Cli, check, run_id, text
from support.server import HgrunServer, free_port, https_server
from support.store import app_with_release, new_run, new_store
from support.tls import certificate

from hgrun.errors import StoreError
from hgrun.server.main import rotate_key
from hgrun.store import Store
from hgrun.store.audit import AuditLog
from hgrun.store.keys import Sealer, load_keys


def data_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()}


def found(data_dir: Path, *needles: str) -> list[tuple[str, str]]:
    """(file, needle) pairs: which files of the data dir hold which needle."""
    return [
        (name, needle)
        for name, raw in data_bytes(data_dir).items()
        for needle in needles
        if needle.encode() in raw
    ]


def test_config_values_and_run_env_are_not_in_any_file_of_the_data_dir(
    hgrun_server: ServerFactory, cli: Cli, tmp_path: Path, busybox_image: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)  # loose, as an older hgrun or a person left it
    (data_dir / "notes.txt").write_text("x")
    (data_dir / "notes.txt").chmod(0o644)
    srv = hgrun_server(data_dir=data_dir)
    mark = unique("s").split("-")[1]
    config_value, env_value = f"cfgsecret{mark}", f"envsecret{mark}"
    name = deploy_busybox_app(cli, tmp_path / "app", server=srv)
    check(cli("config:set", f"API_KEY={config_value}", "--app", name, server=srv))
    check(cli("config:set", "PLAIN=1", "--app", name, server=srv))
    done = cli(
        "run", "--app", name, "--detached", "--env", f"RUN_ONLY={env_value}", "true", server=srv
    )
    number = run_id(check(done))
    # Decrypted when read: the run sees both, and the API shows the config.
    seen = cli("run", "--app", name, "sh", "-c", "echo ${#API_KEY}", input=b"", server=srv)
    assert check(seen).strip() == str(len(config_value))
    assert config_value in check(cli("config", "--app", name, "--json", server=srv))

    # Fresh rows sit in the WAL: grep it too, then again once checkpointed into hgrun.db.
    names = set(data_bytes(data_dir))
    assert {"hgrun.db", "hgrun.db-wal", "audit.db", "audit.key", "admin.token"} <= names, names
    assert found(data_dir, config_value, env_value) == []
    with sqlite3.connect(data_dir / "hgrun.db") as db:
        row = db.execute("SELECT env FROM runs WHERE id = ?", (number,)).fetchone()
        assert row[0].startswith("fernet:"), "not vacuous: the run's env snapshot is stored"
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    assert found(data_dir, config_value, env_value) == []

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o600}, modes

    # The admin token: in its 0600 file, never on the server's (non-terminal) output.
    token = (data_dir / "admin.token").read_text().strip()
    assert token == srv.token and token.startswith("hgr_")
    assert token not in "".join(srv.output)


def test_rows_written_in_clear_are_sealed_at_the_next_start_and_rotated(tmp_path: Path) -> None:
    db_path = tmp_path / "hgrun.db"
    old = new_store(db_path)  # no key: what a server before this change wrote
    app, release = app_with_release(old, "old")
    old.update_config(app.id, {"OLD_SECRET": "plainvalue1"})
    run = new_run(old, app, release, env={"RUN_SECRET": "plainvalue2"})
    old.close()
    assert found(tmp_path, "plainvalue1"), "not vacuous: the old server wrote it in clear"

    keys = load_keys(tmp_path, {})
    store = Store(db_path, sealer=Sealer(keys))
    assert store.config(app.id) == {"OLD_SECRET": "plainvalue1"}
    assert store.run(run.id).env == {"RUN_SECRET": "plainvalue2"}
    store.close()
    assert found(tmp_path, "plainvalue1", "plainvalue2") == []
    with pytest.raises(StoreError, match="encrypted"):
        Store(db_path).config(app.id)

    audit = AuditLog(tmp_path / "audit.db", keys[0])
    for n in range(3):
        audit.append("default", run.id, "run.start", {"n": n})
    audit.close()
    before = (tmp_path / "audit.key").read_bytes()
    rows, records = rotate_key(tmp_path, {})
    assert (rows, records) == (3, 3)  # config, the release's env, the run's env
    after = (tmp_path / "audit.key").read_bytes()
    assert after != before and not (tmp_path / "audit.key.next").exists()
    with pytest.raises(StoreError, match="does not decrypt"):
        Store(db_path, sealer=Sealer([before.strip()])).config(app.id)
    store = Store(db_path, sealer=Sealer([after.strip()]))
    assert store.config(app.id) == {"OLD_SECRET": "plainvalue1"}
    store.close()
    page = AuditLog(tmp_path / "audit.db", after.strip()).page("default")
    assert page.problems == [] and [r.payload for r in page.records] == [{"n": n} for n in range(3)]
    assert AuditLog(tmp_path / "audit.db", before.strip()).page("default").problems


def test_the_scan_for_clear_rows_runs_once_and_again_after_a_keyless_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up scan reads every run: a store found sealed is not scanned again, and an
    open without a key (which may write in clear) makes the next keyed open scan."""
    db_path = tmp_path / "hgrun.db"
    sealer = Sealer(load_keys(tmp_path, {}))
    scans: list[bool] = []
    reseal = Store.reseal
    monkeypatch.setattr(
        Store, "reseal", lambda self, *, rotate: scans.append(rotate) or reseal(self, rotate=rotate)
    )
    Store(db_path, sealer=sealer).close()
    Store(db_path, sealer=sealer).close()
    assert scans == [False]
    old = new_store(db_path)
    app, _release = app_with_release(old, "later")
    old.update_config(app.id, {"LATER_SECRET": "plainvalue3"})
    old.close()
    store = Store(db_path, sealer=sealer)
    assert store.config(app.id) == {"LATER_SECRET": "plainvalue3"}
    store.close()
    assert scans == [False, False]
    assert found(tmp_path, "plainvalue3") == []


def test_rotation_by_environment_needs_the_new_key_first(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    store = new_store(tmp_path / "hgrun.db", sealer=Sealer([old.encode()]))
    app, _ = app_with_release(store)
    store.update_config(app.id, {"K": "v"})
    store.close()
    from hgrun.errors import InputError

    with pytest.raises(InputError, match="nothing to rotate to"):
        rotate_key(tmp_path, {"HGRUN_AUDIT_KEY": old})
    assert rotate_key(tmp_path, {"HGRUN_AUDIT_KEY": f"{new},{old}"})[0] == 2
    assert Store(tmp_path / "hgrun.db", sealer=Sealer([new.encode()])).config(app.id) == {"K": "v"}


def test_login_reads_the_token_from_stdin(server: HgrunServer, cli: Cli, tmp_path: Path) -> None:
    env = {"HGRUN_TOKEN": "", "XDG_CONFIG_HOME": str(tmp_path)}
    done = cli("login", "--url", server.url, "--token", "-", input=f"{server.token}\n".encode(),
               env=env)  # fmt: skip
    check(done)
    saved = json.loads((tmp_path / "hgrun" / "config.json").read_text())
    assert saved["token"] == server.token
    assert check(cli("apps", "--json", env=env)).startswith("[")
    done = cli("login", "--url", server.url, "--token", "-", input=b"", env=env)
    assert done.returncode == 2 and "no token on stdin" in text(done.stderr)


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(docker_host: str, tmp_path: Path, busybox_image: str) -> Iterator[HgrunServer]:
    ca = certificate(tmp_path, "ca", ca=None)
    certificate(tmp_path, "server", ca=ca)
    certificate(tmp_path, "other-ca", ca=None)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = https_server(tmp_path, data_dir, docker_host)
    try:
        yield srv.start()
    finally:
        srv.stop(signal.SIGKILL)


def test_https_and_wss_with_a_private_ca(tls_server: HgrunServer, cli: Cli, tmp_path: Path) -> None:
    srv = tls_server
    config = tmp_path / "xdg"
    env = {"HGRUN_URL": "", "HGRUN_TOKEN": "", "XDG_CONFIG_HOME": str(config)}
    assert srv.url.startswith("https://")
    assert any("listening on https://" in line for line in srv.output), srv.output

    # Without the CA: refused, one line, no traceback.
    done = cli("login", "--url", srv.url, "--token", "-", input=srv.token.encode(), env=env)
    assert done.returncode != 0
    error = text(done.stderr)
    assert "certificate" in error and "--ca-cert" in error and "Traceback" not in error, error
    assert not (config / "hgrun" / "config.json").exists()

    done = cli(
        "login", "--url", srv.url, "--ca-cert", str(tmp_path / "ca.pem"), "--token", "-",
        input=srv.token.encode(), env=env,
    )  # fmt: skip
    check(done)
    saved = json.loads((config / "hgrun" / "config.json").read_text())
    assert saved["ca_cert"] == str(tmp_path / "ca.pem")

    name = unique("tls")
    from support.apps import write_busybox_app

    write_busybox_app(tmp_path / "app", name)
    check(cli("apps:create", name, env=env))
    check(cli("deploy", cwd=tmp_path / "app", env=env))
    # An attached run: stdin goes over WSS and the exit code comes back.
    done = cli("run", "--app", name, "sh", "-c", "read x; echo got-$x; exit 3",
               input=b"over-wss\n", env=env)  # fmt: skip
    assert done.returncode == 3, (text(done.stdout), text(done.stderr))
    assert text(done.stdout).strip() == "got-over-wss"
    # A --file upload through TLS: the CLI cannot sendfile into TLS records, the server cannot
    # read the body off the socket (hgrun/server/rawbody.py); both take their other path.
    payload = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "payload.bin").write_bytes(payload)
    done = cli("run", "--app", name, "--file", str(tmp_path / "payload.bin"),
               "md5sum", "/tmp/uploads/payload.bin", env=env)  # fmt: skip
    assert done.returncode == 0, (text(done.stdout), text(done.stderr))
    assert text(done.stdout).split()[0] == hashlib.md5(payload).hexdigest()  # noqa: S324

    # Another CA (a server that is not ours, say): refused on the API and on attach.
    wrong = {**env, "HGRUN_CA_CERT": str(tmp_path / "other-ca.pem")}
    done = cli("apps", env=wrong)
    error = text(done.stderr).strip()
    assert done.returncode != 0 and "not trust" in error and "Traceback" not in error, error
    assert len([line for line in error.splitlines() if line.strip()]) <= 2, error  # + its hint


def test_a_bad_certificate_is_refused_before_serving(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    srv = HgrunServer(
        port=free_port(),
        data_dir=tmp_path,
        docker_host=os.environ.get("DOCKER_HOST", ""),
        args=("--tls-cert", str(tmp_path / "bad.pem"), "--tls-key", str(tmp_path / "bad.pem")),
    )
    with pytest.raises(RuntimeError):
        srv.startup_timeout = 20
        srv.start()
    log = "".join(srv.output)
    assert "cannot use --tls-cert" in log and "Traceback" not in log, log


def test_the_admin_token_is_shown_once_on_a_terminal_never_on_stdout(
    docker_host: str, tmp_path: Path
) -> None:
    """stderr a terminal (a pty here), stdout a pipe (a log): the token goes to the terminal
    only, once; a restart shows it no more."""
    import pty
    import subprocess
    import sys
    import time

    def start() -> tuple[subprocess.Popen[bytes], int]:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hgrun.cli.main",
                "server",
                "--port",
                str(free_port()),
                "--data-dir",
                str(tmp_path / "data"),
                "--docker-host",
                docker_host,
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        return process, leader

    def read_pty(leader: int) -> bytes:
        """What the terminal holds now (non-blocking: an empty or closed pty ends it)."""
        data = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except (BlockingIOError, OSError):  # nothing more now; EIO once the server is gone
                return data
            if not chunk:
                return data
            data += chunk

    def until_listening(process: subprocess.Popen[bytes], leader: int) -> tuple[str, str]:
        """Everything the server wrote to its log and its terminal, from its start until it
        listens, then stopped: what it says at start-up (the token lines come after
        "listening on") is written before it exits, so it is all there to read then."""
        out, terminal = b"", b""
        deadline = time.monotonic() + 60
        os.set_blocking(leader, False)
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        while b"listening on" not in out and time.monotonic() < deadline:
            assert process.poll() is None, out
            out += process.stdout.read() or b""
            terminal += read_pty(leader)  # the pty's buffer is small: keep it drained
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        out += process.stdout.read() or b""
        terminal += read_pty(leader)
        os.close(leader)
        return out.decode(), terminal.decode()

    out, terminal = until_listening(*start())
    token = (tmp_path / "data" / "admin.token").read_text().strip()
    assert token not in out and "admin token saved in" in out, out
    assert terminal.count(token) == 1, terminal
    out, terminal = until_listening(*start())
    assert token not in out and token not in terminal
