"""schemathesis against the running server's own OpenAPI document (issue 8, item 2).

A server of its own (tight timeouts, so the runs the fuzzer starts end quickly) with a deployed
app that has a script; every operation of /v1/openapi.json is called with the admin token and
generated parameters and bodies. Where a path names an app, a run or a script, the fuzzer's
value is replaced by a real one for most cases, so the calls reach the handlers' checks rather
than a 404. Every schemathesis check runs: no 5xx, every status, content type and body as the
document says. Bounded for CI: FUZZ_EXAMPLES cases an operation (HGRUN_FUZZ_EXAMPLES to change).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from support.api import Api
from support.apps import deploy_script_app, unique
from support.cli import Cli
from support.server import HgrunServer

pytestmark = pytest.mark.docker

FUZZ_EXAMPLES = int(os.environ.get("HGRUN_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_server(hgrun_server, cli: Cli, busybox_image: str, tmp_path_factory) -> dict:
    server: HgrunServer = hgrun_server(
        "--grace", "2s", "--max-timeout", "10s", "--idle-timeout", "10s", "--max-upload", "4"
    )
    app = deploy_script_app(
        cli,
        tmp_path_factory.mktemp("fuzz-app"),
        unique("fuzz"),
        "  echo:\n    command: echo fuzz\n",
        server=server,
    )
    with Api(server) as api:
        script = api.script_id(app, "echo")
        run = api.start(script)["id"]
        api.finished_run(run)
    return {"server": server, "app": app, "run_id": run, "script_id": script}


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter[str]]:
    """Calls made, by status class; printed at the end (``-s``) for docs/reliability.md."""
    counts: Counter[str] = Counter()
    yield counts
    print(f"\nschemathesis: {sum(counts.values())} calls, {dict(sorted(counts.items()))}")


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: dict):
    server: HgrunServer = fuzz_server["server"]
    return schemathesis.openapi.from_url(f"{server.url}/v1/openapi.json")


# The attach WebSockets (marked x-websocket) are in the document for clients; not plain HTTP.
schema = schemathesis.pytest.from_fixture("fuzz_schema").exclude(
    operation_id=["attach_run", "create_and_attach_run"]
)


@schemathesis.serializer("application/x-tar")
def _tar_bytes(ctx, value) -> bytes:
    """Build contexts and uploads: the generated string or bytes as the body (random bytes
    reach the upload filter's checks; a real tar is tests/test_upload_checks.py's job)."""
    return value if isinstance(value, bytes) else str(value).encode()


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_follows_its_document(case, fuzz_server: dict, tally: Counter[str]) -> None:
    server: HgrunServer = fuzz_server["server"]
    real = {k: fuzz_server[k] for k in ("app", "run_id", "script_id")}
    chooser = random.Random(repr((case.path_parameters, case.query)))
    for name, value in real.items():
        if case.path_parameters and name in case.path_parameters and chooser.random() < 0.8:
            case.path_parameters[name] = value
    if case.path_parameters and "name" in case.path_parameters:
        # Revoking the token the fuzzer calls with would end the run early.
        case.path_parameters["name"] = "x" + str(case.path_parameters["name"])
    response = case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=60,
        # Valid by the document yet refused by what it cannot say (the host's capacity, a
        # command the Procfile lacks, a script reference that names no script): those 4xx are
        # right. Every other check runs.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
    tally[f"{response.status_code // 100}xx"] += 1
