"""Which user a run is made as, under the server's policy: ``hgrun server --require-non-root``.

A run is made as its manifest's ``user:`` (``docker run --user``), else as its image's own
``USER`` (the image's ``Config.User``; empty is root, as Docker has it). A server that requires
non-root refuses, before a run is recorded, a run that would be root: ``root`` or uid 0, by
name or number, with or without a group. Another name is taken at its word: it is resolved in
the image's ``/etc/passwd`` by the runtime when the container starts, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hgrun.errors import ForbiddenError


def is_root(user: str) -> bool:
    """Whether a Docker user string (``NAME|UID[:GROUP|GID]``, or empty) is root."""
    name = user.partition(":")[0].strip()
    return name in ("", "root") or (name.isdigit() and int(name) == 0)


def check_user(
    manifest_user: str | None, image_user: str, require_non_root: bool, what: str
) -> None:
    """Raise ForbiddenError when the server requires non-root and ``what`` would run as root."""
    if not require_non_root:
        return
    user = manifest_user if manifest_user is not None else image_user
    if not is_root(user):
        return
    said = (
        f"user: {manifest_user}"
        if manifest_user is not None
        else (f"its image's user is {image_user}" if image_user else "its image has no USER")
    )
    raise ForbiddenError(
        f"{what} would run as root ({said}), and this server requires non-root runs",
        'set a non-root user in hgrun.yaml, e.g. user: "10001", and `hgrun deploy`',
    )


class UserPolicy:
    """The server's policy with the lookup of an image's user (an engine call, in a thread,
    remembered: a release's image never changes)."""

    def __init__(self, image_user: Callable[[str], str], *, require_non_root: bool) -> None:
        self._image_user = image_user
        self.require_non_root = require_non_root
        self._known: dict[str, str] = {}

    def check_known(self, user: str | None, image: str, what: str) -> bool:
        """:meth:`check` without an engine call: False when it needs one (the image's user is
        not known yet; then call :meth:`check`), True when the runs may go; ForbiddenError when
        they are refused."""
        if not self.require_non_root:
            return True
        image_user = ""
        if user is None:
            known = self._known.get(image)
            if known is None:
                return False
            image_user = known
        check_user(user, image_user, self.require_non_root, what)
        return True

    async def check(self, user: str | None, image: str, what: str) -> None:
        """Raise ForbiddenError when runs of ``image`` as the manifest's ``user`` would be root
        and that is refused."""
        if not self.require_non_root:
            return
        image_user = ""
        if user is None:
            known = self._known.get(image)
            if known is None:
                known = self._known[image] = await asyncio.to_thread(self._image_user, image)
            image_user = known
        check_user(user, image_user, self.require_non_root, what)
