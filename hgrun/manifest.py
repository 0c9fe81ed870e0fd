"""Parse ``hgrun.yaml``, an app's manifest, into a :class:`~hgrun.models.Manifest`.

The YAML is composed into nodes (not loaded into plain values) so that every error can name the
line and column of the node at fault and its key path, e.g. ``hgrun.yaml:12:14:
scripts.nightly.timeout: "10 minutes" is not a duration``. Everything is validated here: unknown
keys, types, durations, sizes, cron expressions, time zones, names; the YAML itself is read as
nodes by :mod:`hgrun.yamlnodes`. docs/manifest.md documents the format.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import PurePosixPath

from yaml.nodes import MappingNode, Node, ScalarNode

from hgrun.errors import ManifestError
from hgrun.models import (
    APP_NAME,
    DEFAULT_SIZE,
    ENV_NAME,
    SIZES,
    Build,
    Catchup,
    Concurrency,
    Manifest,
    Notify,
    Script,
)
from hgrun.schedule import MACROS, validate_cron
from hgrun.stacks import ORDER as STACKS
from hgrun.yamlnodes import (
    INT,
    NULL,
    KeyPath,
    NodeReader,
    compose,
    kind,
    show,
    suggest,
)

NOTIFY_EVENTS = ("failure", "success", "timeout")
# The @-macros of Vixie cron that name a schedule; @reboot names an event, which hgrun has not.
CRON_MACROS = tuple(MACROS)
# A Docker network name (moby: daemon/network, "validNetworkNameRegex" [a-zA-Z0-9][a-zA-Z0-9_.-]).
# This refuses "container:<id>", which would join another container's namespace.
NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_TOP_KEYS = (
    "name",
    "build",
    "env",
    "size",
    "network",
    "user",
    "read_only",
    "scripts",
    "placement",
)
# A Swarm placement constraint (Docker docs, "docker service create --constraint"): a node or
# engine attribute, == or !=, a value.
# A container's user as Docker takes it (docker run --user): a name or uid, then optionally
# ':' and a group name or gid; names as useradd's (shadow-utils) NAME_REGEX, at most 32 each.
USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?\Z")
PLACEMENT = re.compile(r"^(node|engine)\.[A-Za-z0-9_.-]+ *(==|!=) *[^ =!]\S*$")
_BUILD_KEYS = ("dockerfile", "stack", "base", "builder", "network")
_SCRIPT_KEYS = (
    "command",
    "process",
    "timeout",
    "size",
    "concurrency",
    "cron",
    "catchup",
    "starting_deadline",
    "timezone",
    "history",
    "notify",
)
_NOTIFY_KEYS = ("webhook", "email", "on")

_CRON_HINT = (
    'use 5 fields "minute hour day-of-month month day-of-week", like "0 4 * * *", '
    "or one of " + ", ".join(CRON_MACROS)
)


def parse_manifest(
    text: str, file: str = "hgrun.yaml", procfile: Mapping[str, str] | None = None
) -> Manifest:
    """Parse and validate the manifest ``text``; ``file`` names it in errors.

    When ``procfile`` (as returned by :func:`hgrun.procfile.parse_procfile`) is given, a script's
    ``process:`` must name one of its types. The build stack is recorded as written; detecting it
    from the app's files is the CLI's job at deploy time.

    Raises :class:`ManifestError` for YAML syntax errors and for any invalid content, located at
    the offending node as ``file:line:col`` with the key path in the message; a document nested
    deeper than the interpreter can walk (PyYAML's composer recurses once per level) too.
    """
    try:
        return _Reader(file, procfile).manifest(compose(text, file))
    except RecursionError as e:
        raise ManifestError(
            "the manifest nests too deep",
            file=file,
            hint="a manifest is a few levels of keys; check for runaway brackets or dashes",
        ) from e


class _Reader(NodeReader):
    """Walks the composed node tree; each method validates one kind of value at a key path."""

    def __init__(self, file: str, procfile: Mapping[str, str] | None) -> None:
        super().__init__(file)
        self.procfile = procfile

    # -- the manifest -----------------------------------------------------------------------------

    def manifest(self, root: Node) -> Manifest:
        if not isinstance(root, MappingNode):
            raise self.error(
                root,
                (),
                f"the manifest must be a mapping of keys, found {kind(root)}",
                hint="start it with the app's name, e.g. 'name: myapp'; see docs/manifest.md",
            )
        top = self.mapping(root, (), _TOP_KEYS)
        if "name" not in top:
            raise self.error(
                root,
                (),
                "missing required key 'name'",
                hint="add the app's name at the top, e.g. 'name: myapp'",
            )
        name = self.string(top["name"][1], ("name",), example="myapp")
        if not APP_NAME.match(name):
            raise self.error(
                top["name"][1],
                ("name",),
                f"{show(name)} is not a valid app name",
                hint="use lowercase letters, digits and '-', starting with a letter "
                "(at most 63 characters)",
            )
        build = self.build(top["build"][1]) if "build" in top else Build()
        env = self.env(top["env"][1]) if "env" in top else {}
        size = self.size(top["size"][1], ("size",)) if "size" in top else DEFAULT_SIZE
        network = self.network(top["network"][1]) if "network" in top else "none"
        user = self.user(top["user"][1]) if "user" in top else None
        read_only = (
            self.boolean(top["read_only"][1], ("read_only",)) if "read_only" in top else False
        )
        scripts: list[Script] = []
        if "scripts" in top:
            section = self.optional_mapping(top["scripts"][1], ("scripts",))
            for script_name, (key_node, value_node) in section.items():
                scripts.append(self.script(script_name, key_node, value_node))
        placement = self.placement(top["placement"][1]) if "placement" in top else ()
        return Manifest(
            name=name,
            build=build,
            env=env,
            size=size,
            network=network,
            user=user,
            read_only=read_only,
            scripts=tuple(scripts),
            placement=placement,
        )

    def build(self, node: Node) -> Build:
        path: KeyPath = ("build",)
        items = self.optional_mapping(node, path, _BUILD_KEYS)
        dockerfile = stack = None
        if "dockerfile" in items:
            value_node = items["dockerfile"][1]
            dockerfile = self.string(value_node, (*path, "dockerfile"), example="Dockerfile")
            pure = PurePosixPath(dockerfile)
            if pure.is_absolute() or ".." in pure.parts:
                raise self.error(
                    value_node,
                    (*path, "dockerfile"),
                    f"{show(dockerfile)} is outside the app directory",
                    hint="give a path relative to the app directory, like Dockerfile or "
                    "docker/Dockerfile",
                )
        if "stack" in items:
            key_node, value_node = items["stack"]
            stack = self.choice(value_node, (*path, "stack"), STACKS)
            if dockerfile is not None:
                raise self.error(
                    key_node,
                    (*path, "stack"),
                    "give either dockerfile or stack, not both",
                    hint="stack generates a Dockerfile; remove it to build your own Dockerfile",
                )
        images: dict[str, str] = {}
        examples = (("base", "python:3.12-slim-bookworm"), ("builder", "golang:1-bookworm"))
        for key, example in examples:
            if key not in items:
                continue
            key_node, value_node = items[key]
            image = self.string(value_node, (*path, key), example=example)
            if any(c.isspace() for c in image):
                raise self.error(
                    value_node,
                    (*path, key),
                    f"{show(image)} is not an image name",
                    hint=f"e.g. {example}",
                )
            if dockerfile is not None:
                raise self.error(
                    key_node,
                    (*path, key),
                    f"{key} applies only to a generated Dockerfile, not to dockerfile",
                    hint=f"set the image in your Dockerfile's FROM line, and remove {key}",
                )
            images[key] = image
        network = None
        if "network" in items:
            network = self.network(items["network"][1], (*path, "network"))
        return Build(dockerfile=dockerfile, stack=stack, network=network, **images)

    def env(self, node: Node) -> dict[str, str]:
        env: dict[str, str] = {}
        for key, (key_node, value_node) in self.optional_mapping(node, ("env",)).items():
            path = ("env", key)
            if not ENV_NAME.match(key):
                raise self.error(
                    key_node,
                    path,
                    f"{show(key)} is not a valid environment variable name",
                    hint="use letters, digits and '_', not starting with a digit",
                )
            if not isinstance(value_node, ScalarNode):
                raise self.error(
                    value_node,
                    path,
                    f"expected a string, found {kind(value_node)}",
                    hint="environment values are strings; quote the whole value",
                )
            if value_node.tag == NULL:
                raise self.error(
                    value_node, path, "has no value", hint='write KEY: "" for an empty value'
                )
            # The text as written: "DEBUG: no" stays "no" and "PORT: 0800" stays "0800", where
            # YAML 1.1 would have made them False and 800.
            env[key] = str(value_node.value)
        return env

    def size(self, node: Node, path: KeyPath) -> str:
        return self.choice(node, path, SIZES)

    def network(self, node: Node, path: KeyPath = ("network",)) -> str:
        value = self.string(node, path, example="none")
        if not NETWORK_NAME.match(value):
            raise self.error(
                node,
                path,
                f"{show(value)} is not a network name",
                hint="use none, host, or the name of a Docker network "
                "(letters, digits, '_', '.', '-')",
            )
        return value

    def user(self, node: Node) -> str:
        # A number is a uid, as `docker run --user 10001` takes it: written bare or quoted.
        if isinstance(node, ScalarNode) and node.tag == INT and node.value.isdigit():
            value = str(int(node.value))
        else:
            value = self.string(node, ("user",), example='"10001"')
        # uid_t is 32 bits and (uid_t)-1 means "no change" (chown(2)): ids stop below it.
        if not USER.match(value) or any(
            part.isdigit() and int(part) >= 2**32 - 1 for part in value.split(":")
        ):
            raise self.error(
                node,
                ("user",),
                f"{show(value)} is not a user",
                hint='write a user name or uid, optionally with ":GROUP", e.g. "10001" or'
                ' "app:app"',
            )
        return value

    def placement(self, node: Node) -> tuple[str, ...]:
        path: KeyPath = ("placement",)
        example = "node.labels.pool==batch"
        constraints = []
        for value, item in self.strings(node, path, example=example):
            if not PLACEMENT.match(value):
                raise self.error(
                    item,
                    path,
                    f"{show(value)} is not a placement constraint",
                    hint=f"write ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, e.g. {example},"
                    " node.role==worker or engine.labels.disk==ssd",
                )
            constraints.append(value)
        return tuple(constraints)

    def script(self, name: str, key_node: Node, node: Node) -> Script:
        path: KeyPath = ("scripts", name)
        if not APP_NAME.match(name):
            raise self.error(
                key_node,
                path,
                f"{show(name)} is not a valid script name",
                hint="use lowercase letters, digits and '-', starting with a letter",
            )
        # "nightly:" with nothing under it reads as null: report what is missing, not the type.
        items = self.optional_mapping(node, path, _SCRIPT_KEYS)

        def at(key: str) -> KeyPath:
            return (*path, key)

        both_hint = "command: runs a shell command; process: runs a Procfile process type"
        if "command" in items and "process" in items:
            raise self.error(
                items["process"][0], path, "give either command or process, not both", both_hint
            )
        if "command" not in items and "process" not in items:
            raise self.error(key_node, path, "needs a command or a process", both_hint)
        command = process = None
        if "command" in items:
            command = self.string(items["command"][1], at("command"), example="python3 task.py")
        else:
            value_node = items["process"][1]
            process = self.string(value_node, at("process"), example="worker")
            if self.procfile is not None and process not in self.procfile:
                known = tuple(self.procfile)
                defined = "the Procfile defines: " + ", ".join(known) if known else ""
                raise self.error(
                    value_node,
                    at("process"),
                    f"{show(process)} is not a process type in the Procfile",
                    hint=suggest(process, known, defined or "the Procfile defines no types"),
                )
        d = Script(name=name)

        def get(key: str) -> Node | None:
            return items[key][1] if key in items else None

        n = get("timeout")
        timeout = self.duration(n, at("timeout")) if n else d.timeout
        n = get("size")
        size = self.size(n, at("size")) if n else d.size
        n = get("concurrency")
        concurrency = (
            Concurrency(self.choice(n, at("concurrency"), [c.value for c in Concurrency]))
            if n
            else d.concurrency
        )
        n = get("cron")
        cron = self.cron(n, at("cron")) if n else d.cron
        n = get("catchup")
        catchup = (
            Catchup(self.choice(n, at("catchup"), [c.value for c in Catchup])) if n else d.catchup
        )
        n = get("starting_deadline")
        deadline = self.duration(n, at("starting_deadline")) if n else d.starting_deadline
        n = get("timezone")
        timezone = self.timezone(n, at("timezone")) if n else d.timezone
        n = get("history")
        history = self.integer(n, at("history"), minimum=1) if n else d.history
        n = get("notify")
        notify = self.notify(n, at("notify")) if n else d.notify
        return Script(
            name=name,
            command=command,
            process=process,
            timeout=timeout,
            size=size,
            concurrency=concurrency,
            cron=cron,
            catchup=catchup,
            starting_deadline=deadline,
            timezone=timezone,
            history=history,
            notify=notify,
        )

    def cron(self, node: Node, path: KeyPath) -> str:
        expr = self.string(node, path, example='"0 4 * * *"').strip()
        problem = validate_cron(expr)
        if problem is not None:
            raise self.error(
                node, path, f"{show(expr)} is not a valid schedule: {problem}", hint=_CRON_HINT
            )
        return expr

    def timezone(self, node: Node, path: KeyPath) -> str:
        name = self.string(node, path, example="Europe/Paris")
        import zoneinfo  # here: ~8 ms of import that a manifest without a time zone skips

        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as e:
            raise self.error(
                node,
                path,
                f"{show(name)} is not a known time zone",
                hint=suggest(
                    name,
                    sorted(zoneinfo.available_timezones()),
                    "use an IANA time zone name, like UTC or Europe/Paris",
                ),
            ) from e
        return name

    def notify(self, node: Node, path: KeyPath) -> Notify:
        items = self.mapping(node, path, _NOTIFY_KEYS)
        webhook = None
        if "webhook" in items:
            value_node = items["webhook"][1]
            webhook = self.string(
                value_node, (*path, "webhook"), example="https://example.com/hook"
            )
            url = urllib.parse.urlsplit(webhook)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise self.error(
                    value_node,
                    (*path, "webhook"),
                    f"{show(webhook)} is not an http or https URL",
                    hint="e.g. https://example.com/hooks/hgrun",
                )
        emails: list[str] = []
        if "email" in items:
            found = self.strings(items["email"][1], (*path, "email"), example="ops@example.com")
            for address, item in found:
                if not _EMAIL.match(address):
                    raise self.error(
                        item,
                        (*path, "email"),
                        f"{show(address)} is not an email address",
                        hint="e.g. ops@example.com",
                    )
                emails.append(address)
        if webhook is None and not emails:
            raise self.error(
                node,
                path,
                "needs a webhook or an email",
                hint="add 'webhook: https://...' or 'email: [ops@example.com]', or remove notify",
            )
        on: tuple[str, ...] = Notify().on
        if "on" in items:
            events = self.strings(items["on"][1], (*path, "on"), example="failure")
            for event, item in events:
                if event not in NOTIFY_EVENTS:
                    raise self.error(
                        item,
                        (*path, "on"),
                        f"{show(event)} is not one of {', '.join(NOTIFY_EVENTS)}",
                        hint=suggest(
                            event, NOTIFY_EVENTS, "use any of: " + ", ".join(NOTIFY_EVENTS)
                        ),
                    )
            on = tuple(dict.fromkeys(event for event, _ in events))
        return Notify(webhook=webhook, email=tuple(emails), on=on)
