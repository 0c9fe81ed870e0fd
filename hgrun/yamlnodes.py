"""YAML read as nodes, so that every error names the line and column of the node at fault and its
key path: composing a document, finding a key's position, and a reader of typed values
(:class:`NodeReader`) on which :mod:`hgrun.manifest` builds. yaml's own exceptions are translated
here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hgrun.duration import parse_duration
from hgrun.errors import ManifestError

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"
BOOL = "tag:yaml.org,2002:bool"
MERGE = "tag:yaml.org,2002:merge"
_KINDS = {
    STR: "a string",
    INT: "a number",
    FLOAT: "a number",
    NULL: "nothing",
    BOOL: "a boolean",
    "tag:yaml.org,2002:timestamp": "a date",
}

DURATION_HINT = "use a number with a unit, like 90s, 15m or 1h"
KeyPath = tuple[str, ...]


def compose(text: str, file: str) -> Node:
    """The YAML ``text`` composed into nodes; YAML's errors (and an empty document) as a
    :class:`ManifestError` at their line in ``file``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "syntax error"
        hint = (
            "indent with spaces, not tabs"
            if "\\t" in problem
            else "check the indentation, and quote values that contain ': ' or ' #' "
            "or start with a special character such as *, &, !, @ or `"
        )
        raise ManifestError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            col=mark.column + 1 if mark else None,
            hint=hint,
        ) from e
    except yaml.YAMLError as e:
        # A ReaderError (a character YAML does not allow) carries a position, not a mark.
        position = getattr(e, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        raise ManifestError(
            f"invalid YAML: {e}",
            file=file,
            line=line,
            hint="remove control characters; the manifest must be UTF-8 text",
        ) from e
    if root is None or (isinstance(root, ScalarNode) and root.tag == NULL):
        raise ManifestError(
            "the manifest is empty",
            file=file,
            hint="start it with the app's name, e.g. 'name: myapp'; see docs/manifest.md",
        )
    if "\\" in text:  # only an escape in a double-quoted scalar makes a lone surrogate
        _no_lone_surrogate(root, file)
    return root


def _no_lone_surrogate(node: Node, file: str) -> None:
    """A ManifestError at the first scalar holding a lone UTF-16 surrogate (YAML's "\\ud800"):
    a string no UTF-8 can hold, which would be stored, then fail every answer showing it."""
    if isinstance(node, ScalarNode):
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError as e:
            lone = f"\\u{ord(e.object[e.start]):04x}"
            raise ManifestError(
                f"a lone UTF-16 surrogate ({lone}) is not a character",
                file=file,
                line=node.start_mark.line + 1,
                col=node.start_mark.column + 1,
                hint="write the character itself, or YAML's 8-digit escape (\\U0001F600)",
            ) from e
        return
    for item in node.value:
        for child in item if isinstance(node, MappingNode) else (item,):
            _no_lone_surrogate(child, file)


def locate(text: str, path: Sequence[str]) -> tuple[int, int] | None:
    """Line and column (1-based) of the value at ``path`` in a manifest already parsed.

    For checks that need more than the text (a file that must exist, say) and still want to
    point at the key; None when the path is not there.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for key in path:
        if not isinstance(node, MappingNode):
            return None
        found = [v for k, v in node.value if isinstance(k, ScalarNode) and k.value == key]
        if not found:
            return None
        node = found[0]
    if node is None:
        return None
    return node.start_mark.line + 1, node.start_mark.column + 1


class NodeReader:
    """Reads values off a composed node tree; each method validates one shape of value at a key
    path, and every refusal is a :class:`ManifestError` at the node, with a hint."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, node: Node, path: KeyPath, what: str, hint: str) -> ManifestError:
        """A :class:`ManifestError` at ``node``; every manifest error says how to fix it."""
        prefix = f"{'.'.join(path)}: " if path else ""
        return ManifestError(
            prefix + what,
            file=self.file,
            line=node.start_mark.line + 1,
            col=node.start_mark.column + 1,
            hint=hint,
        )

    # -- shapes ---------------------------------------------------------------------------------

    def mapping(
        self, node: Node, path: KeyPath, allowed: Iterable[str] | None = None
    ) -> dict[str, tuple[Node, Node]]:
        """Return ``{key: (key node, value node)}``; refuse non-mappings, duplicates, unknowns.

        ``allowed=None`` admits any key (env names, script names); the caller checks them.
        """
        if not isinstance(node, MappingNode):
            raise self.error(
                node,
                path,
                f"expected a mapping, found {kind(node)}",
                hint="write 'key: value' pairs indented under it; see docs/manifest.md",
            )
        known = tuple(allowed) if allowed is not None else None
        items: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.error(
                    key_node,
                    path,
                    f"a key must be a string, not {kind(key_node)}",
                    hint="keys are plain names, like size or timeout",
                )
            if key_node.tag == MERGE:
                raise self.error(
                    key_node,
                    path,
                    "merge keys (<<) are not supported",
                    hint="write the keys out in each mapping",
                )
            # The key's text as written: with YAML 1.1 resolution, "on:" would be the boolean true.
            key = key_node.value
            if key in items:
                first = items[key][0].start_mark.line + 1
                raise self.error(
                    key_node,
                    (*path, key),
                    "duplicate key",
                    hint=f"it is already set on line {first}; keep one of the two",
                )
            if known is not None and key not in known:
                raise self.error(
                    key_node,
                    (*path, key),
                    "unknown key",
                    hint=suggest(key, known, "valid keys here: " + ", ".join(known)),
                )
            items[key] = (key_node, value_node)
        return items

    def optional_mapping(
        self, node: Node, path: KeyPath, allowed: Iterable[str] | None = None
    ) -> dict[str, tuple[Node, Node]]:
        # "scripts:" with every entry commented out is an empty section, not an error.
        if isinstance(node, ScalarNode) and node.tag == NULL:
            return {}
        return self.mapping(node, path, allowed)

    def string(self, node: Node, path: KeyPath, *, example: str = "") -> str:
        if not isinstance(node, ScalarNode) or node.tag != STR:
            hint = f"write it as a string, e.g. {example}" if example else "write it as a string"
            if isinstance(node, ScalarNode) and node.tag != NULL:
                hint = f'put it in quotes: "{node.value}"'
            raise self.error(node, path, f"expected a string, found {kind(node)}", hint=hint)
        if not node.value.strip():
            hint = f"e.g. {example}" if example else "give a value, or remove the key"
            raise self.error(node, path, "must not be empty", hint=hint)
        return str(node.value)

    def choice(self, node: Node, path: KeyPath, choices: Iterable[str]) -> str:
        options = tuple(choices)
        value = self.string(node, path, example=options[0])
        if value not in options:
            raise self.error(
                node,
                path,
                f"{show(value)} is not one of {', '.join(options)}",
                hint=suggest(value, options, "use one of: " + ", ".join(options)),
            )
        return value

    def duration(self, node: Node, path: KeyPath) -> float:
        if not isinstance(node, ScalarNode) or node.tag not in (STR, INT, FLOAT):
            raise self.error(
                node, path, f"expected a duration, found {kind(node)}", hint=DURATION_HINT
            )
        try:
            return parse_duration(node.value)
        except ValueError as e:
            raise self.error(
                node, path, f"{show(node.value)} is not a duration ({e})", hint=DURATION_HINT
            ) from e

    def integer(self, node: Node, path: KeyPath, *, minimum: int) -> int:
        if not isinstance(node, ScalarNode) or node.tag != INT:
            raise self.error(
                node, path, f"expected a whole number, found {kind(node)}", hint=f"e.g. {minimum}"
            )
        value = int(yaml.constructor.SafeConstructor().construct_yaml_int(node))
        if value < minimum:
            raise self.error(
                node, path, f"must be at least {minimum}, not {value}", hint=f"e.g. {minimum}"
            )
        return value

    def boolean(self, node: Node, path: KeyPath) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != BOOL:
            raise self.error(
                node, path, f"expected true or false, found {kind(node)}", hint="e.g. true"
            )
        return bool(yaml.constructor.SafeConstructor().construct_yaml_bool(node))

    def strings(self, node: Node, path: KeyPath, *, example: str) -> list[tuple[str, Node]]:
        """A string or a non-empty list of strings, as ``[(value, its node)]``."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        if not items:
            raise self.error(node, path, "the list is empty", hint=f"e.g. [{example}]")
        return [(self.string(item, path, example=example), item) for item in items]


def kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = _KINDS.get(node.tag, "a value")
    if node.tag == NULL:
        return kind
    return f"{kind} {show(node.value)}" if kind != "a string" else kind


def show(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def suggest(word: str, options: Iterable[str], otherwise: str) -> str:
    import difflib  # only for an error's hint: ~4 ms of import that a valid manifest skips

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else otherwise
