"""The README's security claims checked against independent expectations, end to end.

- Tokens are "stored only as their SHA-256": no file of the data dir (the store, its WAL and
  shared-memory files, the audit store, the key) holds a token in plain text, read while fresh
  rows still sit in the WAL and again after a checkpoint; a run's own token too.
- A ``deploy`` token deploys and runs, and is refused what only ``admin`` may do.
- The capability set of a run is exactly the README's list, read from the container's own
  ``/proc/self/status`` and compared with bit numbers from ``linux/capability.h`` written here,
  not with the code's list.
- "A size the host cannot give is refused before anything starts", whatever host runs this:
  the expectation is computed from the engine's own figures, and a server told a smaller
  capacity (``HGRUN_MAX_MEMORY_MB``, ``HGRUN_MAX_CPUS``) refuses on any machine.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import ServerFactory
from support.api import Api
from support.apps import deploy_busybox_app, deploy_script_app, unique
from support.cli import Cli, check, run_id, text
from support.server import HgrunServer

from hgrun.engine import ContainerSpec, EngineInfo
from hgrun.engine.dockerspec import create_args
from hgrun.errors import InputError
from hgrun.models import SIZES
from hgrun.server.main import capacity

# -- capabilities: the README's list, with linux/capability.h's bit numbers ------------------

README_CAPABILITIES = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "NET_BIND_SERVICE": 10,
}
EXPECTED_CAPS = 0x4FB  # bits 0 1 3 4 5 6 7 10: the sum below, written out to be read at a glance
assert sum(1 << bit for bit in README_CAPABILITIES.values()) == EXPECTED_CAPS

# The README's size table (memory MB, CPUs), written out here rather than read from the code.
README_SIZES = {
    "starter": (512, 0.5),
    "standard": (2048, 1),
    "pro": (4096, 2),
    "pro-plus": (8192, 4),
    "pro-max": (16384, 4),
    "pro-ultra": (32768, 8),
}


def proc_status(out: str) -> dict[str, str]:
    return {
        k: v.strip()
        for k, v in (line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    }


def test_the_container_holds_exactly_the_readme_capabilities(
    cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    root = tmp_path / "app"
    deploy_busybox_app(cli, root, unique("caps"))
    status = proc_status(check(cli("run", "cat", "/proc/self/status", cwd=root, input=b"")))
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == EXPECTED_CAPS, (field, status[field], hex(EXPECTED_CAPS))
    assert int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"


def test_the_container_arguments_add_back_exactly_the_readme_capabilities() -> None:
    """The same claim without Docker (fast, for mutation testing): drop all, add these."""
    spec = ContainerSpec(image="i", command=["true"], env={}, labels={}, size=SIZES["starter"])
    _, host = create_args(spec)
    assert host["cap_drop"] == ["ALL"]
    assert sorted(host["cap_add"]) == sorted(README_CAPABILITIES)
    assert host["privileged"] is False
    assert host["security_opt"] == ["no-new-privileges:true"]


# -- tokens stored only as hashes, in every file of the data dir -----------------------------


def data_files(data_dir: Path) -> dict[Path, bytes]:
    """Every file of the data dir but ``admin.token``: the one file meant to hold a token (the
    first admin token, 0600, for its owner to read once; checked in test_secrets.py)."""
    return {
        p: p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and p.name != "admin.token"
    }


def plaintext_found(files: dict[Path, bytes], secrets_: list[str]) -> list[tuple[str, str]]:
    """(file, token) pairs where a token, or its random part, is in a file."""
    found = []
    for path, raw in files.items():
        for secret in secrets_:
            for form in {secret, secret.removeprefix("hgr_")}:
                if form.encode() in raw:
                    found.append((path.name, secret[:8] + "..."))
    return found


@pytest.fixture
def own_server(hgrun_server: ServerFactory) -> Iterator[HgrunServer]:
    server = hgrun_server()
    yield server
    server.stop()


def test_no_file_of_the_data_dir_holds_a_token_in_plain_text(
    own_server: HgrunServer, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    srv = own_server
    secrets_ = [srv.token]
    with Api(srv) as api:
        for scope in ("deploy", "run", "trigger"):
            made = api.http.post("/v1/tokens", json={"name": unique(scope), "scope": scope})
            assert made.status_code == 201, made.text
            secrets_.append(made.json()["token"])

    # A script run gets a token of its own in HGRUN_TOKEN; it prints it reversed, so its output
    # (stored, and audited) does not hold it, and we learn it.
    name = deploy_script_app(
        cli,
        tmp_path / "app",
        unique("tok"),
        '  leak:\n    command: echo "$HGRUN_TOKEN" | rev\n',
        server=srv,
    )
    with Api(srv) as scripts:
        run = scripts.finished_run(scripts.start(scripts.script_id(name, "leak"))["id"])
        assert run["status"] == "succeeded", run
        reversed_token = scripts.log_text(name, run["id"]).strip()
    run_token = reversed_token[::-1]
    assert run_token.startswith("hgr_"), reversed_token
    secrets_.append(run_token)

    db = srv.data_dir / "hgrun.db"
    files = data_files(srv.data_dir)
    assert {db, srv.data_dir / "audit.db"} <= set(files), sorted(files)
    assert plaintext_found(files, secrets_) == []
    # Not vacuous: the hashes are there, in the store or its WAL (where fresh rows sit).
    newest = hashlib.sha256(secrets_[3].encode()).hexdigest().encode()
    assert any(newest in raw for path, raw in files.items() if path.name.startswith("hgrun.db"))

    # After a checkpoint every row is in hgrun.db itself.
    with sqlite3.connect(db) as connection:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    files = data_files(srv.data_dir)
    assert newest in files[db]
    assert plaintext_found(files, secrets_) == []

    # And once the server is stopped (SQLite folds the WAL in and deletes it).
    srv.stop()
    files = data_files(srv.data_dir)
    assert plaintext_found(files, secrets_) == []


# -- a deploy-scoped token -------------------------------------------------------------------


def test_a_deploy_token_deploys_and_runs_and_is_refused_admin_actions(
    cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    with Api(cli.server) as api:
        made = api.http.post("/v1/tokens", json={"name": unique("deployer"), "scope": "deploy"})
        assert made.status_code == 201, made.text
    env = {"HGRUN_TOKEN": made.json()["token"]}

    name = unique("bydeploy")
    root = tmp_path / "app"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM hgrun-test/busybox:latest\nCOPY . /app\nWORKDIR /app\n")
    (root / "hgrun.yaml").write_text(f"name: {name}\nbuild:\n  dockerfile: Dockerfile\n")
    (root / "Procfile").write_text("hello: echo hello\n")
    check(cli("apps:create", name, env=env))
    check(cli("config:set", "GREETING=hi", "--app", name, env=env))
    check(cli("deploy", cwd=root, env=env))
    assert check(cli("run", "sh", "-c", 'echo "$GREETING"', cwd=root, env=env, input=b"")) == "hi\n"
    label = check(cli("run", "--detached", "true", cwd=root, env=env, input=b"")).strip()
    with Api(cli.server) as api:
        assert api.finished_run(run_id(label))["status"] == "succeeded"
    assert json.loads(check(cli("releases", "--json", cwd=root, env=env)))

    # Tokens and the audit log are admin's.
    for args in (
        ("tokens",),
        ("tokens:create", unique("sneaky"), "--scope", "admin"),
        ("tokens:create", unique("sneaky"), "--scope", "run"),
        ("tokens:revoke", "admin"),
        ("audit",),
    ):
        done = cli(*args, cwd=root, env=env)
        assert done.returncode == 4, (args, done.returncode, text(done.stderr))
        assert text(done.stderr).startswith("error: ") and "deploy" in text(done.stderr), args
    # Nothing was made or revoked by those refusals.
    assert check(cli("apps", "--json")), "the admin token still works"
    names = [t["name"] for t in json.loads(check(cli("tokens", "--json")))]
    assert not [n for n in names if n.startswith("sneaky")], names


# -- sizes the host cannot give --------------------------------------------------------------


def test_sizes_are_refused_exactly_when_the_engine_host_cannot_give_them(
    cli: Cli, docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path
) -> None:
    """Whatever machine runs this: the expectation comes from the engine's own figures."""
    info = docker_client.info()
    host_mb, host_cpus = info["MemTotal"] // 1024**2, info["NCPU"]
    root = tmp_path / "app"
    name = deploy_busybox_app(cli, root, unique("sizes"))
    with Api(cli.server) as api:
        for size, (memory_mb, cpus) in README_SIZES.items():
            response = api.http.post(
                f"/v1/apps/{name}/runs",
                json={"command": ["true"], "size": size, "detached": True},
            )
            if memory_mb * 1024**2 <= info["MemTotal"] and cpus <= host_cpus:
                assert response.status_code == 201, (size, response.text)
                assert api.finished_run(response.json()["id"])["status"] == "succeeded"
            else:
                assert response.status_code == 422, (size, host_mb, host_cpus, response.text)
                assert size in response.json()["message"]


def test_a_server_told_a_smaller_capacity_refuses_bigger_sizes_on_any_host(
    hgrun_server: ServerFactory, cli: Cli, busybox_image: str, tmp_path: Path
) -> None:
    srv = hgrun_server(env={"HGRUN_MAX_MEMORY_MB": "1024", "HGRUN_MAX_CPUS": "1"})
    root = tmp_path / "app"
    name = deploy_busybox_app(cli, root, unique("cap"), server=srv)
    assert check(cli("run", "--size", "starter", "echo", "ok", cwd=root, server=srv, input=b""))
    with Api(srv) as api:
        for size in ("standard", "pro", "pro-ultra"):
            response = api.http.post(
                f"/v1/apps/{name}/runs", json={"command": ["true"], "size": size}
            )
            assert response.status_code == 422, (size, response.text)
            body = response.json()
            assert size in body["message"] and "1024 MB" in body["message"], body
            assert body["hint"]
        # Refused before anything starts: no run was recorded for them.
        runs = api.http.get(f"/v1/apps/{name}/runs").json()
        assert {r["size"] for r in runs} == {"starter"}, runs
    done = cli("run", "--size", "pro-ultra", "true", cwd=root, server=srv, input=b"")
    assert done.returncode in (2, 3), (done.returncode, text(done.stderr))
    assert text(done.stderr).startswith("error: ") and "pro-ultra" in text(done.stderr)


GIB = 1024**3


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (8 * GIB, 4)),
        ({"HGRUN_MAX_MEMORY_MB": "1024"}, (GIB, 4)),
        ({"HGRUN_MAX_CPUS": "2"}, (8 * GIB, 2)),
        ({"HGRUN_MAX_MEMORY_MB": " 2048 ", "HGRUN_MAX_CPUS": "1"}, (2 * GIB, 1)),
        # Never more than the host has.
        ({"HGRUN_MAX_MEMORY_MB": "999999", "HGRUN_MAX_CPUS": "64"}, (8 * GIB, 4)),
        ({"HGRUN_MAX_MEMORY_MB": ""}, (8 * GIB, 4)),
    ],
    ids=repr,
)
def test_capacity(environ: dict[str, str], expected: tuple[int, int]) -> None:
    assert capacity(EngineInfo(cpus=4, memory=8 * GIB, version="x"), environ) == expected


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "lots"])
def test_capacity_refuses_a_bad_value(value: str) -> None:
    info = EngineInfo(cpus=4, memory=8 * GIB, version="x")
    for name in ("HGRUN_MAX_MEMORY_MB", "HGRUN_MAX_CPUS"):
        with pytest.raises(InputError, match=name):
            capacity(info, {name: value})


def test_a_bad_capacity_variable_stops_the_server_with_a_one_line_error(
    cli: Cli, tmp_path: Path, docker_host: str
) -> None:
    done = cli(
        "server", "--port", "0", "--data-dir", str(tmp_path / "data"),
        "--docker-host", docker_host,
        env={"HGRUN_MAX_CPUS": "many"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, text(done.stderr))
    assert "HGRUN_MAX_CPUS" in text(done.stderr) and "Traceback" not in text(done.stderr)
