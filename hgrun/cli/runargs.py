"""How ``hgrun run`` splits its words between hgrun and the command, and checks them. Pure.

The rules, as ``heroku run`` (oclif, non-strict) and ``scalingo run`` take them:

- Before the command, every word starting with ``-`` is one of hgrun's options; an unknown one
  is an error with a "did you mean" (click's parser does that part).
- After the command's first word, hgrun takes the options ``heroku run`` takes there and has
  a meaning in hgrun: ``-a/--app``, ``-s/--size``, ``-e/--env`` and ``--type`` (with the value
  as the next word, or ``--app=NAME``). Every other word is the command's, ``-x``, ``-d``,
  ``-f``, ``-t`` and ``-n`` included (``bash -x``, ``tail -f``, ``head -n`` keep working).
- After ``--``, everything is the command's: ``hgrun run -- ls -a`` runs ``ls -a``. A ``--``
  inside the command (``git log -- FILE``) stays the command's, and hgrun looks no further.
"""

from __future__ import annotations

from hgrun.errors import InputError
from hgrun.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

AFTER_COMMAND = {
    "-a": "app",
    "--app": "app",
    "-s": "size",
    "--size": "size",
    "-e": "env",
    "--env": "env",
    "--type": "type",
}
"""The options hgrun takes after the command's first word, by the field they fill."""


class Split(Record):
    """The command, and what hgrun took from after it (in the order given); ``taken``: the
    words hgrun took, as typed, to say so."""

    __slots__ = ("command", "app", "size", "type", "env", "taken")

    def __init__(
        self,
        command: tuple[str, ...],
        app: str | None = None,
        size: str | None = None,
        type: str | None = None,  # noqa: A002 - the option's name
        env: tuple[str, ...] = (),
        taken: tuple[str, ...] = (),
    ) -> None:
        self.command = command
        self.app = app
        self.size = size
        self.type = type
        self.env = env
        self.taken = taken


def split_after_command(words: Sequence[str]) -> Split:
    """Take :data:`AFTER_COMMAND` options out of ``words`` (the command as the parser left it,
    its first word being the command's name)."""
    command: list[str] = list(words[:1])
    found: dict[str, str] = {}
    env: list[str] = []
    taken: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        if word == "--":
            command += words[i:]
            break
        name, eq, inline = word.partition("=")
        field = AFTER_COMMAND.get(name) if name.startswith("--") and eq else None
        if field is not None:
            value = inline
            taken.append(word)
            i += 1
        elif word in AFTER_COMMAND:
            field = AFTER_COMMAND[word]
            if i + 1 >= len(words):
                import shlex  # only for this message

                raise InputError(
                    f"{word} after the command needs a value",
                    f"to give {word} to the command, put the command after --:"
                    f" `hgrun run -- {shlex.join([*command, word])}`",
                )
            value = words[i + 1]
            taken.append(f"{word} {value}")
            i += 2
        else:
            command.append(word)
            i += 1
            continue
        if field == "env":
            env.append(value)
        elif field in found and found[field] != value:
            raise InputError(f"--{field} given twice ({found[field]!r} and {value!r})")
        else:
            found[field] = value
    return Split(
        command=tuple(command),
        app=found.get("app"),
        size=found.get("size"),
        type=found.get("type"),
        env=tuple(env),
        taken=tuple(taken),
    )


def check_text(command: Sequence[str], env_pairs: Sequence[str]) -> None:
    """Each word of the command and each ``--env`` pair is text: a word that is not UTF-8 (a
    shell passes any bytes; Python holds each such byte as a lone surrogate, which JSON cannot
    carry) is refused here, in the user's terms."""
    for i, word in enumerate(command):
        _utf8(f"argument {i + 1} of the command", word)
    for pair in env_pairs:
        _utf8(f"--env {pair.partition('=')[0]!r}", pair)


def _utf8(what: str, word: str) -> None:
    try:
        word.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} is not UTF-8 text (character {e.start + 1})",
            "hgrun sends commands and env values as UTF-8: convert it, e.g. with iconv",
        ) from e


def check_size(size: str) -> None:
    from hgrun.vocabulary import SIZES  # the enums and sizes: only for a run given --size

    if size not in SIZES:
        raise InputError(f"--size {size!r}: unknown size", f"sizes: {', '.join(SIZES)}")
