"""What the CLI imports: only what the command needs (issue 11, start-up of `hgrun run`).

Each case runs the real CLI in a subprocess with ``PYTHONPROFILEIMPORTTIME=1`` (the environment
form of ``python -X importtime``) and reads the modules it imported from stderr. A top-level
``import rich`` (or httpx, yaml, the server's code ...) on the path of `hgrun run` makes these
fail: every such import costs the user milliseconds on every run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.apps import deploy_busybox_app, unique
from support.cli import CLI, Cli

import hgrun

# Never on the run path: the server's stack, the dashboard's, the build's and rich (tables,
# progress bars: other commands').
HEAVY = (
    "rich",
    "httpx",
    "httpcore",
    "requests",
    "docker",
    "starlette",
    "uvicorn",
    "jinja2",
    "cryptography",
    "yaml",
    "croniter",
    "tarfile",
    "hgrun.server",
    "hgrun.store",
    "hgrun.engine",
    "hgrun.manifest",
    "hgrun.models",  # the records (a dozen dataclasses); the CLI reads hgrun.vocabulary
    "hgrun.schedule",
    "hgrun.stacks",
    # The attach client is blocking code on the standard library: asyncio and the websockets
    # client cost ~100 ms of import, more than a whole `docker run` start.
    "asyncio",
    "websockets",
)
# Never on the quick path of `hgrun run` (--help and unusual forms go through click).
RUN_PATH_NEVER = ("click", "http.client", "email", "ssl", "hgrun.cli.options", "hgrun.cli.root")
# Never on the run path as a clean virtualenv runs it (python -S: no site-packages, nothing
# preloaded by this machine's .pth files): the standard library's slow imports, ~40 ms of CPU
# together before the first request. dataclasses brings inspect (ast, dis, tokenize); pathlib
# brings fnmatch, urllib.parse and ipaddress; a str host to getaddrinfo brings the idna codec
# (stringprep, unicodedata); signal builds enums (a TTY's resize needs it, not `--no-tty`);
# hgrun.vocabulary builds the enums (only `--env`/`--size` read it).
CLEAN_RUN_PATH_NEVER = (
    "dataclasses",
    "inspect",
    "ast",
    "dis",
    "tokenize",
    "typing",
    "pathlib",
    "fnmatch",
    "urllib",
    "ipaddress",
    "threading",
    "signal",
    "encodings.idna",
    "stringprep",
    "unicodedata",
    "shlex",
    "termios",
    "tty",
    "hgrun.vocabulary",
    "hgrun.models",
)
# What pip's generated `hgrun` script does before calling main (pip's own template: it imports
# re itself, so re and enum come with every console script whatever hgrun does).
CONSOLE_SCRIPT = "import re, sys; from hgrun.cli.main import main; sys.exit(main())"
# Only when a run is attached: the attach client.
ATTACH = (
    "hgrun.cli.attach",
    "hgrun.cli.attachsession",
    "hgrun.cli.wsclient",
    "hgrun.relay.websocket",
)


def imported(stderr: bytes) -> set[str]:
    """The modules named in ``-X importtime`` lines."""
    names = set()
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def loaded(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> set[str]:
    done = subprocess.run(
        [*CLI, *argv],
        env={**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1", "NO_COLOR": "1"},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    names = imported(done.stderr)
    assert "hgrun.cli.invocation" in names and "hgrun.errors" in names  # the lines were read
    return names


def among(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["run", "--help"], ["help", "run"]], ids=" ".join
)
def test_help_and_version_import_neither_the_heavy_stack_nor_the_attach_client(
    argv: list[str], tmp_path: Path
) -> None:
    names = loaded(argv, cwd=tmp_path)
    assert among(names, HEAVY + ATTACH) == []
    assert "hgrun.cli.commands.apps" not in names  # one command's module, not every one's


@pytest.mark.docker
def test_the_run_path_imports_the_attach_client_and_nothing_heavy(
    cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str
) -> None:
    root = tmp_path_factory.mktemp("imports-app")
    name = deploy_busybox_app(cli, root, unique("imports"))
    elsewhere = tmp_path_factory.mktemp("imports-elsewhere")
    names = loaded(["run", "--no-tty", "-a", name, "echo", "hi"], env=cli.env(), cwd=elsewhere)
    assert among(names, HEAVY) == []
    assert set(ATTACH) <= names
    # The common forms of `hgrun run` are read without click (hgrun.cli.runfast), and the one
    # round trip needs no HTTP client: ~20 ms and ~15 ms of imports at every start.
    assert among(names, RUN_PATH_NEVER) == []


@pytest.mark.docker
def test_the_run_path_in_a_clean_interpreter_imports_none_of_the_slow_standard_library(
    cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str
) -> None:
    """`hgrun run` as a clean virtualenv runs it: the interpreter without site (this machine's
    .pth files preload pathlib, typing ... and would hide them), hgrun from its source tree, the
    console script's own imports; the run really made and attached (its output seen)."""
    root = tmp_path_factory.mktemp("clean-app")
    name = deploy_busybox_app(cli, root, unique("clean"))
    source = Path(hgrun.__file__).resolve().parent.parent
    env = {k: v for k, v in cli.env().items() if not k.startswith("PYTHON")}
    argv = ["run", "--no-tty", "-a", name, "echo", "clean"]
    done = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", CONSOLE_SCRIPT, *argv],
        env={**env, "PYTHONPATH": str(source)},
        cwd=tmp_path_factory.mktemp("clean-elsewhere"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert done.stdout == b"clean\n"
    names = imported(done.stderr)
    assert "site" not in names and "hgrun.cli.runstart" in names  # -S held; the run path read
    assert set(ATTACH) <= names
    assert among(names, HEAVY + RUN_PATH_NEVER + CLEAN_RUN_PATH_NEVER) == []


# Never in the folder check of `hgrun run` once the folder is in the cache (a warm check): the
# manifest's stack (YAML, cron, the models, the stacks), the context's hashing and tarring; nor
# http.client (with email, ssl, urllib.parse ...) for its GET of the live release (quickget).
WARM_FOLDER_CHECK_NEVER = (
    "http",
    "email",
    "ssl",
    "urllib",
    "ipaddress",
    "encodings.idna",
    "hgrun.manifest",
    "hgrun.models",
    "hgrun.schedule",
    "hgrun.stacks",
    "hgrun.procfile",
    "hgrun.context",
    "yaml",
    "croniter",
    "dateutil",
    "zoneinfo",
    "tarfile",
    "hashlib",
    "dataclasses",
    "pathlib",
)


@pytest.mark.docker
def test_a_warm_folder_check_imports_none_of_the_manifest_stack(
    cli: Cli, tmp_path_factory: pytest.TempPathFactory, busybox_image: str
) -> None:
    """`hgrun run` from its app's folder, without --no-build: the first run loads the folder
    (the manifest, YAML ...) and remembers it; a later run of the unchanged folder, as a clean
    virtualenv runs it (python -S: YAML is not even importable), takes the answers from the
    cache and imports none of that."""
    root = tmp_path_factory.mktemp("warm-app")
    deploy_busybox_app(cli, root, unique("warm"))
    cache = tmp_path_factory.mktemp("warm-cache")
    source = Path(hgrun.__file__).resolve().parent.parent
    clean = {k: v for k, v in cli.env().items() if not k.startswith("PYTHON")}
    clean.update(PYTHONPATH=str(source), XDG_CACHE_HOME=str(cache))

    def run(argv: list[str], env: dict[str, str]) -> set[str]:
        done = subprocess.run(
            [*argv, "run", "--no-tty", "echo", "warm"],
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        assert done.stdout == b"warm\n"
        said = [ln for ln in done.stderr.decode().splitlines() if not ln.startswith("import time")]
        assert said == []  # the folder is the live release: no note
        names = imported(done.stderr)
        assert "hgrun.cli.foldercache" in names  # the check ran
        return names

    cold_env = cli.env(XDG_CACHE_HOME=str(cache))
    cold = run(CLI, cold_env)
    assert "hgrun.manifest" in cold and "yaml" in cold  # a miss loads the folder
    # ... but not what only some manifests need (cron, time zones, TOML, an error's hint), nor
    # the tar writer (the check hashes the context, never tars it).
    only_some = ("croniter", "dateutil", "zoneinfo", "tomllib", "difflib", "tarfile")
    assert among(cold, only_some) == []
    # The entry is written once the folder's files are older than the racy window (2 s).
    deadline = time.monotonic() + 60
    while not any((cache / "hgrun" / "folders").glob("*.json")):
        assert time.monotonic() < deadline, "the folder check never wrote its cache entry"
        run(CLI, cold_env)
    warm = run([sys.executable, "-S", "-c", CONSOLE_SCRIPT], clean)
    assert "site" not in warm
    assert among(warm, WARM_FOLDER_CHECK_NEVER) == []


CRON_MANIFEST = """name: x
scripts:
  nightly:
    command: "true"
    cron: "0 4 * * *"
    timezone: Europe/Paris
"""


@pytest.mark.parametrize("cron", [False, True], ids=["no-cron", "cron"])
def test_croniter_and_zoneinfo_are_imported_only_for_a_cron_script(cron: bool) -> None:
    """A manifest without cron scripts, and the server's start, import neither croniter (with
    dateutil, ~36 ms) nor zoneinfo; a manifest that has one does (so this can tell)."""
    text = CRON_MANIFEST if cron else "name: x\n"
    code = (
        "from hgrun.manifest import parse_manifest; import hgrun.server.main;"
        f" parse_manifest({text!r})"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    names = imported(done.stderr)
    assert "hgrun.server.main" in names and "yaml" in names
    heavy = among(names, ("croniter", "dateutil", "zoneinfo"))
    if cron:
        assert "croniter" in heavy and "zoneinfo" in heavy
    else:
        assert heavy == []


def test_the_parser_of_importtime_lines_reads_python_own_format() -> None:
    """The helper itself: a module imported in a subprocess is found, one never imported is
    not (so the assertions above cannot pass by reading nothing)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import colorsys"],
        capture_output=True,
        timeout=60,
    )
    names = imported(done.stderr)
    assert "colorsys" in names
    assert "tkinter" not in names
