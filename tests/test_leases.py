"""Who holds a lease, and when a holder is known dead without waiting out its lease: a process
of this host and PID namespace that no longer exists (a server killed with -9 here). A holder
elsewhere, or in another PID namespace under the same host name (containers), is never declared
dead: its lease must expire."""

from __future__ import annotations

import subprocess
import sys

from hgrun.server.recovery import lease_owner, process_gone, this_host


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_holder_of_this_host_is_not_gone() -> None:
    assert not process_gone(lease_owner("n1"))


def test_a_dead_process_of_this_host_is_gone() -> None:
    assert process_gone(f"{this_host()}:{_dead_pid()}:n1")


def test_a_holder_elsewhere_or_in_another_pid_namespace_waits_for_its_lease() -> None:
    pid = _dead_pid()
    host = this_host()
    name = host.partition("~")[0]
    assert not process_gone(f"elsewhere:{pid}:n1")
    assert not process_gone(f"{name}~1:{pid}:n1")  # same name, another namespace
    assert not process_gone(f"{host}:notapid:n1")
