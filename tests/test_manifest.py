from __future__ import annotations

import textwrap

import pytest

from hgrun.errors import ExitStatus, ManifestError
from hgrun.manifest import parse_manifest
from hgrun.models import (
    Build,
    Catchup,
    Concurrency,
    Manifest,
    Notify,
    Script,
    manifest_from_json,
    manifest_to_json,
)

FULL = """\
name: myapp
build:
  stack: python
  base: hgrun/python:bookworm
env: {DATABASE_URL: "postgres://db/x", DEBUG: no, PORT: 0800, RATIO: 1.50, ON: true, EMPTY: ""}
size: standard
network: host
scripts:
  nightly-report:
    command: python manage.py report
    timeout: 10m
    size: pro
    concurrency: skip
    cron: "0 4 * * *"
    catchup: latest
    starting_deadline: 90s
    timezone: Europe/Paris
    history: 7
    notify:
      webhook: "http://127.0.0.1:9000/hook"
      email: [ops@example.com]
      on: [failure, timeout]
  migrate:
    process: migrate
"""


def test_full_example() -> None:
    m = parse_manifest(FULL, procfile={"migrate": "python3 manage.py migrate"})
    assert m == Manifest(
        name="myapp",
        build=Build(stack="python", base="hgrun/python:bookworm"),
        env={
            "DATABASE_URL": "postgres://db/x",
            "DEBUG": "no",
            "PORT": "0800",
            "RATIO": "1.50",
            "ON": "true",
            "EMPTY": "",
        },
        size="standard",
        network="host",
        scripts=(
            Script(
                name="nightly-report",
                command="python manage.py report",
                timeout=600.0,
                size="pro",
                concurrency=Concurrency.SKIP,
                cron="0 4 * * *",
                catchup=Catchup.LATEST,
                starting_deadline=90.0,
                timezone="Europe/Paris",
                history=7,
                notify=Notify(
                    webhook="http://127.0.0.1:9000/hook",
                    email=("ops@example.com",),
                    on=("failure", "timeout"),
                ),
            ),
            Script(name="migrate", process="migrate"),
        ),
    )


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("name: a", lambda m: m == Manifest(name="a")),
        ("name: a\nscripts:\n", lambda m: m.scripts == ()),
        ("name: a\nenv:\n", lambda m: m.env == {}),
        ("name: a\nbuild:\n", lambda m: m.build == Build()),
        ("name: a\nbuild: {dockerfile: docker/Dockerfile.prod}", lambda m: m.build.dockerfile),
        ("name: a\nbuild: {base: debian:bookworm}", lambda m: m.build.base == "debian:bookworm"),
        (
            "name: a\nnetwork: none\nbuild: {network: default}",
            lambda m: (m.network, m.build.network) == ("none", "default"),
        ),
        (
            "name: a\nbuild: {stack: go, builder: golang:1.22}",
            lambda m: (m.build.stack, m.build.builder) == ("go", "golang:1.22"),
        ),
        ("\ufeffname: a", lambda m: m.name == "a"),
        ("name: a\r\nsize: pro\r\n", lambda m: m.size == "pro"),
        ("---\nname: a\n...\n", lambda m: m.name == "a"),
        ("name: a\nnetwork: none", lambda m: m.network == "none"),
        ("name: a\nnetwork: my_net.1", lambda m: m.network == "my_net.1"),
        ("name: a", lambda m: m.placement == ()),
        ("name: a", lambda m: m.user is None and m.read_only is False),
        ("name: a\nuser: 10001", lambda m: m.user == "10001"),
        ("name: a\nuser: '10001:10001'", lambda m: m.user == "10001:10001"),
        ("name: a\nuser: app:staff", lambda m: m.user == "app:staff"),
        ("name: a\nuser: 0", lambda m: m.user == "0"),
        ("name: a\nuser: '4294967294'", lambda m: m.user == "4294967294"),
        ("name: a\nread_only: true", lambda m: m.read_only is True),
        ("name: a\nread_only: false", lambda m: m.read_only is False),
        ("name: a\nplacement: node.role==worker", lambda m: m.placement == ("node.role==worker",)),
        (
            "name: a\nplacement: [node.labels.pool == batch, engine.labels.disk!=hdd]",
            lambda m: m.placement == ("node.labels.pool == batch", "engine.labels.disk!=hdd"),
        ),
        ("name: a\nscripts: {x: {command: y, timeout: 90}}", lambda m: m.scripts[0].timeout == 90),
        (
            "name: a\nscripts: {x: {command: y, timeout: 1.5}}",
            lambda m: m.scripts[0].timeout == 1.5,
        ),
        ("name: a\nscripts: {x: {command: y, cron: '@daily'}}", lambda m: m.scripts[0].cron),
        (
            "name: a\nscripts: {x: {command: y, cron: ' */5 * * * * '}}",
            lambda m: m.scripts[0].cron == "*/5 * * * *",
        ),
        (
            "name: a\nscripts: {x: {command: y, history: 1_000}}",
            lambda m: m.scripts[0].history == 1000,
        ),
        (
            "name: a\nscripts: {x: {command: y, notify: {email: a@b.io}}}",
            lambda m: m.scripts[0].notify == Notify(email=("a@b.io",), on=("failure",)),
        ),
        (
            "name: a\nscripts: {x: {command: y, notify: {webhook: 'https://h/x', on: success}}}",
            lambda m: m.scripts[0].notify.on == ("success",),
        ),
        (
            "name: a\nscripts: {x: {command: y, notify: {email: a@b.io, on: [failure, failure]}}}",
            lambda m: m.scripts[0].notify.on == ("failure",),
        ),
        # Without a Procfile, process: cannot be checked and is recorded as given.
        ("name: a\nscripts: {x: {process: anything}}", lambda m: m.scripts[0].process),
        (
            "name: a\nscripts: {b: {command: 1}, a: {command: 2}}".replace("1", "'1'").replace(
                "2", "'2'"
            ),
            lambda m: [s.name for s in m.scripts] == ["b", "a"],
        ),
    ],
)
def test_valid(text: str, check: object) -> None:
    m = parse_manifest(text)
    assert callable(check) and check(m)


def S(body: str) -> str:
    """A manifest with one script ``job`` whose keys are ``body`` (at 4 spaces)."""
    return "name: a\nscripts:\n  job:\n" + textwrap.indent(textwrap.dedent(body), "    ")


# (text, line, col, message after "hgrun.yaml:L:C: ", part of the hint)
ERRORS = [
    # top level
    ("[1, 2]", 1, 1, "the manifest must be a mapping of keys, found a list", "name: myapp"),
    ("just text", 1, 1, "the manifest must be a mapping of keys, found a string", "name: myapp"),
    ("size: pro", 1, 1, "missing required key 'name'", "name: myapp"),
    ("name: a\nnme: b", 2, 1, "nme: unknown key", "did you mean 'name'?"),
    ("name: a\nscript: {}", 2, 1, "script: unknown key", "did you mean 'scripts'?"),
    ("name: a\nzzz: 1", 2, 1, "zzz: unknown key", "valid keys here: name, build, env"),
    ("name: a\nname: b", 2, 1, "name: duplicate key", "already set on line 1"),
    ("name: a\n<<: {size: pro}", 2, 1, "merge keys (<<) are not supported", "write the keys"),
    ("name: a\n[x]: 1", 2, 1, "a key must be a string, not a list", None),
    ("name: 12", 1, 7, 'name: expected a string, found a number "12"', 'quotes: "12"'),
    ("name: ''", 1, 7, "name: must not be empty", None),
    ("name: My_App", 1, 7, 'name: "My_App" is not a valid app name', "lowercase"),
    ("name:\n  - a", 2, 3, "name: expected a string, found a list", "myapp"),
    ("name:", 1, 6, "name: expected a string, found nothing", "myapp"),
    # build
    ("name: a\nbuild: python", 2, 8, "build: expected a mapping, found a string", None),
    (
        "name: a\nbuild:\n  dockerfile: D\n  stack: python",
        4,
        3,
        "build.stack: give either dockerfile or stack, not both",
        "remove it",
    ),
    (
        "name: a\nbuild:\n  dockerfile: D\n  base: x",
        4,
        3,
        "build.base: base applies only to a generated Dockerfile, not to dockerfile",
        "FROM",
    ),
    (
        "name: a\nbuild:\n  stack: cobol",
        3,
        10,
        'build.stack: "cobol" is not one of go, rust, java, ruby, php, python, node',
        "use one of: go, rust, java, ruby, php, python, node",
    ),
    (
        "name: a\nbuild:\n  stack: pyhton",
        3,
        10,
        'build.stack: "pyhton" is not one of go, rust, java, ruby, php, python, node',
        "did you mean 'python'?",
    ),
    (
        "name: a\nbuild:\n  dockerfile: D\n  builder: x",
        4,
        3,
        "build.builder: builder applies only to a generated Dockerfile, not to dockerfile",
        "FROM",
    ),
    ("name: a\nbuild:\n  builder: 'a b'", 3, 12, 'build.builder: "a b" is not an image name', None),
    (
        "name: a\nbuild:\n  network: 'a b'",
        3,
        12,
        'build.network: "a b" is not a network name',
        "use none, host",
    ),
    (
        "name: a\nbuild:\n  dockerfile: ../Dockerfile",
        3,
        15,
        'build.dockerfile: "../Dockerfile" is outside the app directory',
        "relative",
    ),
    (
        "name: a\nbuild:\n  dockerfile: /etc/Dockerfile",
        3,
        15,
        'build.dockerfile: "/etc/Dockerfile" is outside the app directory',
        "relative",
    ),
    ("name: a\nbuild:\n  base: a b", 3, 9, 'build.base: "a b" is not an image name', None),
    (
        "name: a\nbuild:\n  dockerfle: D",
        3,
        3,
        "build.dockerfle: unknown key",
        "did you mean 'dockerfile'?",
    ),
    # env
    ("name: a\nenv: [A]", 2, 6, "env: expected a mapping, found a list", None),
    (
        "name: a\nenv:\n  DATABASE-URL: x",
        3,
        3,
        'env.DATABASE-URL: "DATABASE-URL" is not a valid environment variable name',
        "letters",
    ),
    (
        "name: a\nenv:\n  1A: x",
        3,
        3,
        'env.1A: "1A" is not a valid environment variable name',
        "not starting with a digit",
    ),
    ("name: a\nenv:\n  A: x\n  A: y", 4, 3, "env.A: duplicate key", "line 3"),
    ("name: a\nenv:\n  A:", 3, 5, "env.A: has no value", 'KEY: ""'),
    ("name: a\nenv:\n  A: [1, 2]", 3, 6, "env.A: expected a string, found a list", "quote"),
    # size, network
    (
        "name: a\nsize: huge",
        2,
        7,
        'size: "huge" is not one of starter, standard, pro, pro-plus, pro-max, pro-ultra',
        "use one of",
    ),
    ("name: a\nsize: pro_plus", 2, 7, 'size: "pro_plus" is not one of', "did you mean 'pro-plus'?"),
    (
        "name: a\nnetwork: container:db",
        3 - 1,
        10,
        'network: "container:db" is not a network name',
        "none, host",
    ),
    (
        "name: a\nnetwork: no",
        2,
        10,
        'network: expected a string, found a boolean "no"',
        'quotes: "no"',
    ),
    # user, read_only
    ("name: a\nuser: 'a b'", 2, 7, 'user: "a b" is not a user', '"10001" or "app:app"'),
    ("name: a\nuser: 'a:b:c'", 2, 7, 'user: "a:b:c" is not a user', None),
    ("name: a\nuser: '-1'", 2, 7, 'user: "-1" is not a user', None),
    ("name: a\nuser: 4294967295", 2, 7, 'user: "4294967295" is not a user', None),
    ("name: a\nuser: '1:99999999999'", 2, 7, 'user: "1:99999999999" is not a user', None),
    ("name: a\nuser: ''", 2, 7, "user: must not be empty", None),
    ("name: a\nuser: [1]", 2, 7, "user: expected a string, found a list", None),
    ("name: a\nuser: 1.5", 2, 7, 'user: expected a string, found a number "1.5"', None),
    ("name: a\nread_only: 1", 2, 12, 'read_only: expected true or false, found a number "1"', None),
    (
        "name: a\nread_only: 'true'",
        2,
        12,
        "read_only: expected true or false, found a string",
        "e.g. true",
    ),
    ("name: a\nreadonly: true", 2, 1, "readonly", "did you mean 'read_only'"),
    # placement
    (
        "name: a\nplacement: [node.role==worker, pool=batch]",
        2,
        32,
        'placement: "pool=batch" is not a placement constraint',
        "node.labels.pool==batch",
    ),
    ("name: a\nplacement: []", 2, 12, "placement: the list is empty", None),
    # scripts
    ("name: a\nscripts: [a]", 2, 10, "scripts: expected a mapping, found a list", None),
    (
        "name: a\nscripts:\n  Nightly:\n    command: x",
        3,
        3,
        'scripts.Nightly: "Nightly" is not a valid script name',
        "lowercase",
    ),
    (
        "name: a\nscripts:\n  job:\n",
        3,
        3,
        "scripts.job: needs a command or a process",
        "Procfile process type",
    ),
    (
        "name: a\nscripts:\n  job: run it",
        3,
        8,
        "scripts.job: expected a mapping, found a string",
        None,
    ),
    (
        S("command: x\nprocess: y"),
        5,
        5,
        "scripts.job: give either command or process, not both",
        "command:",
    ),
    (S("timeout: 1m"), 3, 3, "scripts.job: needs a command or a process", None),
    (
        S("command: x\ncomand: y"),
        5,
        5,
        "scripts.job.comand: unknown key",
        "did you mean 'command'?",
    ),
    (S("command: x\ncommand: y"), 5, 5, "scripts.job.command: duplicate key", "line 4"),
    (S("command: ''"), 4, 14, "scripts.job.command: must not be empty", None),
    (S("command: [a, b]"), 4, 14, "scripts.job.command: expected a string, found a list", None),
    (
        S("command: x\ntimeout: 10 minutes"),
        5,
        14,
        "scripts.job.timeout: \"10 minutes\" is not a duration (unknown unit 'minutes')",
        "use a number with a unit, like 90s, 15m or 1h",
    ),
    (
        S("command: x\ntimeout: 0"),
        5,
        14,
        'scripts.job.timeout: "0" is not a duration (a duration must be greater than zero)',
        "90s",
    ),
    (
        S("command: x\ntimeout: -1m"),
        5,
        14,
        'scripts.job.timeout: "-1m" is not a duration (a duration cannot be negative)',
        "90s",
    ),
    (
        S("command: x\ntimeout: yes"),
        5,
        14,
        'scripts.job.timeout: expected a duration, found a boolean "yes"',
        "90s",
    ),
    (
        S("command: x\ntimeout: {m: 1}"),
        5,
        14,
        "scripts.job.timeout: expected a duration, found a mapping",
        "90s",
    ),
    (
        S("command: x\nstarting_deadline: soon"),
        5,
        24,
        "scripts.job.starting_deadline: \"soon\" is not a duration (unexpected 'soon')",
        "90s",
    ),
    (S("command: x\nsize: large"), 5, 11, 'scripts.job.size: "large" is not one of', "use one of"),
    (
        S("command: x\nconcurrency: parallel"),
        5,
        18,
        'scripts.job.concurrency: "parallel" is not one of queue, skip, allow, replace',
        "one of",
    ),
    (
        S("command: x\nconcurrency: skipp"),
        5,
        18,
        'scripts.job.concurrency: "skipp" is not one',
        "did you mean 'skip'?",
    ),
    (
        S("command: x\ncatchup: all"),
        5,
        14,
        'scripts.job.catchup: "all" is not one of skip, latest',
        "use one of: skip, latest",
    ),
    (S("command: x\nhistory: 0"), 5, 14, "scripts.job.history: must be at least 1, not 0", None),
    (S("command: x\nhistory: -3"), 5, 14, "scripts.job.history: must be at least 1, not -3", None),
    (
        S("command: x\nhistory: '10'"),
        5,
        14,
        "scripts.job.history: expected a whole number, found a string",
        "e.g. 1",
    ),
    (
        S("command: x\nhistory: 2.5"),
        5,
        14,
        'scripts.job.history: expected a whole number, found a number "2.5"',
        None,
    ),
    (
        S("command: x\ntimezone: Europe/Pari"),
        5,
        15,
        'scripts.job.timezone: "Europe/Pari" is not a known time zone',
        "did you mean 'Europe/Paris'?",
    ),
    (
        S("command: x\ntimezone: Mars/Olympus"),
        5,
        15,
        'scripts.job.timezone: "Mars/Olympus" is not a known time zone',
        None,
    ),
    (
        S("command: x\ntimezone: ../../etc/passwd"),
        5,
        15,
        'scripts.job.timezone: "../../etc/passwd" is not a known time zone',
        None,
    ),
    (
        S("command: x\ntimezone: /etc/localtime"),
        5,
        15,
        'scripts.job.timezone: "/etc/localtime" is not a known time zone',
        None,
    ),
    # cron
    (
        S("command: x\ncron: 0 0 4 * * *"),
        5,
        11,
        'scripts.job.cron: "0 0 4 * * *" is not a valid schedule: 6 fields, expected 5',
        "minute hour day-of-month",
    ),
    (
        S("command: x\ncron: 0 4 * * * 2030"),
        5,
        11,
        'scripts.job.cron: "0 4 * * * 2030" is not a valid schedule: 6 fields, expected 5',
        None,
    ),
    (
        S("command: x\ncron: 0 0 4 * * * 2030"),
        5,
        11,
        'scripts.job.cron: "0 0 4 * * * 2030" is not a valid schedule: 7 fields, expected 5',
        None,
    ),
    (
        S("command: x\ncron: 0 4 * *"),
        5,
        11,
        'scripts.job.cron: "0 4 * *" is not a valid schedule: 4 fields',
        None,
    ),
    (
        S("command: x\ncron: '@reboot'"),
        5,
        11,
        'scripts.job.cron: "@reboot" is not a valid schedule: @reboot is not supported',
        None,
    ),
    (
        S("command: x\ncron: '@every 5m'"),
        5,
        11,
        'scripts.job.cron: "@every 5m" is not a valid schedule: unknown macro',
        "@hourly",
    ),
    (
        S("command: x\ncron: H * * * *"),
        5,
        11,
        'scripts.job.cron: "H * * * *" is not a valid schedule: H (hashed) and R (random)',
        None,
    ),
    (
        S("command: x\ncron: H/15 * * * *"),
        5,
        11,
        'scripts.job.cron: "H/15 * * * *" is not a valid schedule: H (hashed)',
        None,
    ),
    (
        S("command: x\ncron: 0 H(0-3) * * *"),
        5,
        11,
        'scripts.job.cron: "0 H(0-3) * * *" is not a valid schedule: H (hashed)',
        None,
    ),
    (
        S("command: x\ncron: R * * * *"),
        5,
        11,
        'scripts.job.cron: "R * * * *" is not a valid schedule: H (hashed)',
        None,
    ),
    (
        S("command: x\ncron: 0,R * * * *"),
        5,
        11,
        'scripts.job.cron: "0,R * * * *" is not a valid schedule: H (hashed)',
        None,
    ),
    (
        S("command: x\ncron: 61 * * * *"),
        5,
        11,
        'scripts.job.cron: "61 * * * *" is not a valid schedule: a field is malformed',
        None,
    ),
    (
        S("command: x\ncron: 0 0 31 2 *"),
        5,
        11,
        'scripts.job.cron: "0 0 31 2 *" is not a valid schedule: that day never occurs',
        None,
    ),
    (
        S("command: x\ncron: every day"),
        5,
        11,
        'scripts.job.cron: "every day" is not a valid schedule: 2 fields',
        None,
    ),
    (
        S("command: x\ncron: 5"),
        5,
        11,
        'scripts.job.cron: expected a string, found a number "5"',
        'quotes: "5"',
    ),
    # notify
    (
        S("command: x\nnotify: {}"),
        5,
        13,
        "scripts.job.notify: needs a webhook or an email",
        "remove notify",
    ),
    (
        S("command: x\nnotify: {webhook: ftp://h/x}"),
        5,
        23,
        'scripts.job.notify.webhook: "ftp://h/x" is not an http or https URL',
        None,
    ),
    (
        S("command: x\nnotify: {webhook: 'http://'}"),
        5,
        23,
        'scripts.job.notify.webhook: "http://" is not an http or https URL',
        None,
    ),
    (
        S("command: x\nnotify: {email: ops}"),
        5,
        21,
        'scripts.job.notify.email: "ops" is not an email address',
        None,
    ),
    (
        S("command: x\nnotify: {email: []}"),
        5,
        21,
        "scripts.job.notify.email: the list is empty",
        None,
    ),
    (
        S("command: x\nnotify: {email: [a@b.io], on: [failure, crash]}"),
        5,
        45,
        'scripts.job.notify.on: "crash" is not one of failure, success, timeout',
        "use any of",
    ),
    (
        S("command: x\nnotify: {email: [a@b.io], on: [sucess]}"),
        5,
        36,
        'scripts.job.notify.on: "sucess" is not one of',
        "did you mean 'success'?",
    ),
    (
        S("command: x\nnotify: {email: a@b.io, when: failure}"),
        5,
        29,
        "scripts.job.notify.when: unknown key",
        "valid keys here: webhook, email, on",
    ),
    (
        S("command: x\nnotify: {email: a@b.io, on: [1]}"),
        5,
        34,
        'scripts.job.notify.on: expected a string, found a number "1"',
        None,
    ),
    # YAML syntax
    (
        "name: a\n\tsize: pro",
        2,
        1,
        "invalid YAML: found character '\\t' that cannot start any token",
        "spaces, not tabs",
    ),
    ("name: [a", 1, 9, "invalid YAML: expected ',' or ']'", "indentation"),
    (
        "name: a\nenv:\n  A: b: c",
        3,
        7,
        "invalid YAML: mapping values are not allowed here",
        "quote values",
    ),
    ("name: a\n  size: pro", 2, 7, "invalid YAML: mapping values are not allowed here", None),
    ("name: a\n---\nname: b", 2, 1, "invalid YAML: but found another document", None),
    ("name: *x", 1, 7, "invalid YAML: found undefined alias 'x'", None),
    ("name: 'a", 1, 9, "invalid YAML: found unexpected end of stream", None),
]


@pytest.mark.parametrize(("text", "line", "col", "what", "hint"), ERRORS)
def test_errors(text: str, line: int, col: int, what: str, hint: str | None) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    err = info.value
    assert (err.file, err.line, err.col) == ("hgrun.yaml", line, col), err.message
    assert err.what.startswith(what), err.what
    assert err.message == f"hgrun.yaml:{line}:{col}: {err.what}"
    if hint is not None:
        assert err.hint is not None and hint in err.hint, err.hint
    assert err.hint, "every manifest error says how to fix it"
    assert err.exit_status == ExitStatus.INPUT


def test_the_brief_example_message() -> None:
    text = S("command: python manage.py report\ncron: '0 4 * * *'\ntimeout: 10 minutes")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, file="app/hgrun.yaml")
    assert info.value.message == (
        'app/hgrun.yaml:6:14: scripts.job.timeout: "10 minutes" is not a duration '
        "(unknown unit 'minutes')"
    )
    assert info.value.hint == "use a number with a unit, like 90s, 15m or 1h"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty(text: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert info.value.message == "hgrun.yaml: the manifest is empty"
    assert info.value.line is None


def test_yaml_errors_are_chained() -> None:
    import yaml

    with pytest.raises(ManifestError) as info:
        parse_manifest("name: [a")
    assert isinstance(info.value.__cause__, yaml.YAMLError)


@pytest.mark.parametrize(
    ("text", "line"),
    [('name: a\nenv:\n  A: "x\\ud800"\n', 3), ('name: a\nenv:\n  "B\\udfff": x\n', 3)],
    ids=["value", "key"],
)
def test_a_lone_surrogate_is_refused_at_its_line(text: str, line: int) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert info.value.line == line and "lone UTF-16 surrogate" in info.value.message
    assert "U0001F600" in (info.value.hint or "")  # YAML joins no surrogate pair: its escape
    assert parse_manifest('name: a\nenv:\n  A: "\\U0001F600"\n').env == {"A": "\U0001f600"}


def test_reader_error_is_translated() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("name: a\nenv: {A: \x07}")
    assert info.value.line == 2
    assert "invalid YAML" in info.value.message


@pytest.mark.parametrize(
    ("process", "procfile", "hint"),
    [
        ("wroker", {"worker": "w", "web": "x"}, "did you mean 'worker'?"),
        ("cron", {"worker": "w", "web": "x"}, "the Procfile defines: worker, web"),
        ("web", {}, "the Procfile defines no types"),
    ],
)
def test_process_must_exist_in_procfile(process: str, procfile: dict[str, str], hint: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(S(f"process: {process}"), procfile=procfile)
    assert info.value.message == (
        f'hgrun.yaml:4:14: scripts.job.process: "{process}" is not a process type in the Procfile'
    )
    assert info.value.hint == hint


def test_process_in_procfile() -> None:
    m = parse_manifest(S("process: worker"), procfile={"worker": "python3 w.py"})
    assert m.scripts[0].process == "worker" and m.scripts[0].command is None


def test_example_app_manifest() -> None:
    from pathlib import Path

    from hgrun.procfile import parse_procfile

    app = Path(__file__).resolve().parent.parent / "examples" / "pyapp"
    procfile = parse_procfile((app / "Procfile").read_text())
    m = parse_manifest((app / "hgrun.yaml").read_text(), procfile=procfile)
    assert m.name == "pyapp"
    assert m.build == Build(dockerfile="Dockerfile")
    assert m.network == "host"
    assert m.env["DATABASE_URL"] == "postgresql://hgrun@127.0.0.1:5432/pyapp"
    by_name = {s.name: s for s in m.scripts}
    assert by_name["report"].command == "python3 manage.py report"
    assert by_name["report"].cron == "*/5 * * * *"
    assert by_name["migrate"].process == "migrate"
    assert by_name["migrate"].concurrency == Concurrency.SKIP


def test_docs_example_parses() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "manifest.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    m = parse_manifest(block, procfile={"worker": "python3 manage.py worker"})
    assert m.name == "myapp"


@pytest.mark.parametrize(
    "text", ["name: a", "name: a\nuser: '10001:10001'\nread_only: true", "name: a\nuser: app"]
)
def test_user_and_read_only_survive_the_release_json(text: str) -> None:
    manifest = parse_manifest(text)
    assert manifest_from_json(manifest_to_json(manifest)) == manifest


def test_a_release_stored_before_user_and_read_only_gets_their_defaults() -> None:
    manifest = manifest_from_json({"name": "a", "network": "none"})
    assert (manifest.user, manifest.read_only) == (None, False)
