"""Which paths a build context holds: ``.dockerignore`` read and matched as ``docker build``
reads it, and the walk of the folder under those rules.

``.dockerignore`` is read and matched with Docker's rules (moby ``patternmatcher`` and the CLI's
``dockerignore.ReadAll``): patterns are Go ``filepath.Match`` globs plus ``**``, anchored at the
context root; a pattern that matches a directory excludes everything below it; ``!`` re-includes;
the last matching pattern wins.

:mod:`hgrun.context` hashes and tars what :func:`scan` lists; ``hgrun run``'s folder check
(:mod:`hgrun.cli.foldercache`) stats the same list to tell whether the folder changed. So this
module stays light: no hashlib, tarfile, dataclasses or typing (``python -X importtime``).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

DOCKERIGNORE = ".dockerignore"
_BOM = "\ufeff"
# Characters that mean nothing special in filepath.Match but do in a regexp (moby
# patternmatcher: shouldEscape).
_REGEX_SPECIALS = set(".+()|{}$")


def parse_dockerignore(text: str) -> list[str]:
    """Return the patterns of a ``.dockerignore`` text, normalised as the Docker CLI does.

    Lines starting with ``#`` are comments; blank lines are skipped; each pattern is trimmed and
    cleaned like Go's ``filepath.Clean`` (so ``fixtures/`` becomes ``fixtures``), and a leading
    ``/`` is dropped. Exceptions keep their leading ``!``.
    """
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    patterns = []
    for raw in text.splitlines():
        # Docker checks for "#" before trimming: " #x" is a pattern, not a comment.
        if raw.startswith("#"):
            continue
        pattern = raw.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            # normpath keeps a leading "//"; Go's Clean does not.
            if pattern.startswith("//"):
                pattern = "/" + pattern.lstrip("/")
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def load_dockerignore(root: str | os.PathLike[str]) -> list[str]:
    """Return the patterns of ``root/.dockerignore``, or ``[]`` when there is none."""
    try:
        with open(os.path.join(root, DOCKERIGNORE), encoding="utf-8") as f:
            return parse_dockerignore(f.read())
    except FileNotFoundError:
        return []


def is_ignored(path: str, patterns: Sequence[str]) -> bool:
    """Tell whether the context path ``path`` (relative, ``/``-separated) is excluded.

    ``patterns`` are normalised patterns as :func:`parse_dockerignore` returns them. A path is
    excluded when the last pattern matching it, or matching one of its parent directories, is
    not an exception (``!``). This is moby's ``PatternMatcher.MatchesOrParentMatches``.
    """
    if not patterns:  # the common case, once per entry of a walk: nothing to match
        return False
    path = posixpath.normpath(path)
    parent = posixpath.dirname(path)
    parents = parent.split("/") if parent else []
    matched = False
    for raw in patterns:
        exclusion = raw.startswith("!")
        # Only a pattern that could flip the answer needs evaluating.
        if exclusion != matched:
            continue
        pattern = _compile(raw[1:] if exclusion else raw)
        hit = pattern(path)
        if not hit:
            hit = any(pattern("/".join(parents[: i + 1])) for i in range(len(parents)))
        if hit:
            matched = not exclusion
    return matched


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> _Matcher:
    """Translate one pattern the way moby's ``Pattern.compile`` does, with its match types."""
    regex = "^"
    kind = "exact"
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                at_start = i == 0
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is read as "**"
                if i >= n:
                    # A trailing "**" matches everything below, as in .gitignore.
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regex"
                else:
                    # Any number of directories, none included.
                    regex += "(.*/)?"
                    kind = "regex"
                if at_start:
                    kind = "suffix"
                continue
            regex += "[^/]*"
            kind = "regex"
        elif ch == "?":
            regex += "[^/]"
            kind = "regex"
        elif ch in _REGEX_SPECIALS:
            regex += "\\" + ch
        elif ch == "\\":
            # A backslash escapes the next character; a trailing one stands for itself.
            if i + 1 < n:
                i += 1
                # re.escape, not a bare backslash: "\\d" means the letter d, not a digit.
                regex += re.escape(pattern[i])
                kind = "regex"
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = "regex"
        else:
            regex += ch
        i += 1
    return _Matcher(pattern, kind, regex + "$")


class _Matcher:
    def __init__(self, pattern: str, kind: str, regex: str) -> None:
        self.pattern = pattern
        self.kind = kind
        self.regex: re.Pattern[str] | None = None
        if kind == "regex":
            try:
                self.regex = re.compile(regex)
            except re.error:
                # Docker reports a bad pattern (e.g. an unclosed "[") as an error at build time;
                # a pattern that cannot match anything is the closest harmless reading here.
                self.kind = "never"

    def __call__(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.pattern
        if self.kind == "prefix":
            return path.startswith(self.pattern[:-2])
        if self.kind == "suffix":
            suffix = self.pattern[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        if self.kind == "regex" and self.regex is not None:
            return self.regex.match(path) is not None
        return False


def scan(
    root: str | os.PathLike[str],
    patterns: Sequence[str] | None = None,
    *,
    dockerfile: str = "Dockerfile",
) -> Iterator[tuple[str, str, os.stat_result]]:
    """The context's entries under ``root``: ``(relpath, path, lstat)``, each directory's
    children in name order, a directory before what it holds.

    ``patterns`` defaults to ``root/.dockerignore``. Directories, regular files and symlinks
    (never followed) are listed; sockets, FIFOs and devices are skipped. An excluded directory
    is not descended into unless ``patterns`` has exceptions (``!``), which could re-include
    something below it, or it holds ``dockerfile``. ``dockerfile`` and ``.dockerignore`` are
    never excluded.
    """
    root = os.fspath(root)
    if patterns is None:
        patterns = load_dockerignore(root)
    keep = {posixpath.normpath(dockerfile), DOCKERIGNORE}
    has_exceptions = any(p.startswith("!") for p in patterns)
    return _visit(root, "", patterns, keep, has_exceptions)


def _visit(
    directory: str, prefix: str, patterns: Sequence[str], keep: set[str], has_exceptions: bool
) -> Iterator[tuple[str, str, os.stat_result]]:
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        rel = prefix + child.name
        st = child.stat(follow_symlinks=False)
        ignored = rel not in keep and is_ignored(rel, patterns)
        if stat.S_ISDIR(st.st_mode):
            if not ignored:
                yield rel, child.path, st
            holds_kept = any(k.startswith(rel + "/") for k in keep)
            if not ignored or has_exceptions or holds_kept:
                yield from _visit(child.path, rel + "/", patterns, keep, has_exceptions)
        elif ignored:
            continue
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            yield rel, child.path, st
