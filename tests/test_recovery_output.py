"""A run's output across a SIGKILL of the server, end to end on a real dockerd.

The run writes far more than Docker's log keeps (its rotation is sized from the
server's ``--max-output``, small here), the server is killed with -9 in the middle, the run
writes more while no server is up, the server starts again and takes the run up, and the run
writes more still. What the store holds at the end must be the run's output byte for byte:
nothing it had stored dropped, nothing doubled, nothing written while the server was down lost.
"""

from __future__ import annotations

import signal
from pathlib import Path

import docker
import pytest
from conftest import ServerFactory
from support.api import Api
from support.apps import own_server_app
from support.cli import Cli, check, run_id
from support.server import HgrunServer, run_containers, store_rows
from support.waits import wait_for


def seq(first: int, last: int) -> bytes:
    return b"".join(b"%d\n" % n for n in range(first, last + 1))


def stored_output(server: HgrunServer, number: int) -> bytes:
    """The run's stored output, every chunk in order, read from the server's SQLite store."""
    rows = store_rows(server, "SELECT data FROM output WHERE run_id = ? ORDER BY id", number)
    return b"".join(bytes(row[0]) for row in rows)


# After the kill the run writes 5,000 lines, then: waits to be taken up and writes 95,000 more
# ("taken-up"), ends ("ended"), or goes on writing 100 lines every 50 ms through the restart and
# the takeover ("busy").
AFTER = {
    "taken-up": ("while [ ! -e /go2 ]; do sleep 0.05; done; seq 405001 500000", 500000),
    "ended": ("true", 405000),
    "busy": (
        "for j in $(seq 0 599); do seq $((405001+j*100)) $((405100+j*100)); sleep 0.05; done",
        465000,
    ),
}


@pytest.mark.parametrize("after", list(AFTER))
def test_output_survives_a_sigkill_of_the_server_past_dockers_log_rotation(
    hgrun_server: ServerFactory,
    cli: Cli,
    busybox_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    after: str,
) -> None:
    """Taken up running (an attach replaying Docker's log, then live; idle or writing at the
    takeover), or ended while no server was up (Docker's log read through the logs API)."""
    # A store cap of 4 MB: Docker's log keeps two files of 4 MB (some 80,000 lines of seq each,
    # stored by Docker's local driver with some 45 bytes of framing), so the 400,000 lines
    # written before the kill have rotated out of it; the whole output (3.2 MB) stays under the
    # cap. The premise is checked below.
    srv, root, _ = own_server_app(hgrun_server, cli, tmp_path, "rejoin", "--max-output", "4")
    rest, last = AFTER[after]
    command = "seq 1 400000; while [ ! -e /go1 ]; do sleep 0.05; done; seq 400001 405000; " + rest
    number = run_id(check(cli("run", "--detached", command, cwd=root, server=srv)))
    before = seq(1, 400000)
    wait_for(lambda: stored_output(srv, number) == before or None, 120, "the first part stored")
    srv.stop(signal.SIGKILL)
    (container,) = run_containers(docker_client, srv, number)
    container.exec_run(["touch", "/go1"])  # written while no server is up
    wait_for(
        lambda: int(container.logs(tail=1) or 0) >= 405000 or None,
        60,
        "the part written while down",
    )
    if after == "ended":
        container.wait(timeout=60)
    # The test's premise: Docker's log no longer holds the run's start.
    assert not container.logs().startswith(b"1\n2\n3\n")
    srv.start()
    with Api(srv) as api:
        wait_for(lambda: srv.log.count("taken up here") or None, 60, "the run taken up")
        if after == "taken-up":
            container.exec_run(["touch", "/go2"])  # written once the run is taken up again
        info = api.finished_run(number, timeout=120)
    assert info["status"] == "succeeded", info
    got = stored_output(srv, number)
    want = seq(1, last)
    if got != want:
        lines = got.split(b"\n")
        doubled = len(lines) - len(set(lines))
        raise AssertionError(
            f"stored {len(got)} bytes, {len(lines) - 1} lines ({doubled} doubled), first"
            f" {got[:20]!r}, want {len(want)} bytes: {want[:20]!r}"
        )
