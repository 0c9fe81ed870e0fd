"""One error tree for hgrun.

Every error a user can meet is an :class:`HgrunError`: it carries a one-line ``message`` (what is
wrong, and where), an optional ``hint`` (how to fix it), the process exit status the CLI uses and
the HTTP status the server uses. Third-party exceptions are translated into this tree at their one
seam (``engine/`` for docker, ``store/`` for sqlite3, ``manifest.py`` for yaml) and chained with
``from``.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes of the ``hgrun`` command; scripts can tell these apart.

    124-127 follow ``timeout(1)`` and ``docker run``: 124 the run timed out, 125 hgrun could not
    run the command, 126 the command is not executable, 127 the command was not found.
    """

    OK = 0
    ERROR = 1
    USAGE = 2
    INPUT = 3
    AUTH = 4
    NOT_FOUND = 5
    CONFLICT = 6
    UNREACHABLE = 7
    TIMED_OUT = 124
    CANNOT_RUN = 125
    NOT_EXECUTABLE = 126
    COMMAND_NOT_FOUND = 127


class HgrunError(Exception):
    """Root of every error hgrun reports to a person."""

    code = "error"
    exit_status = ExitStatus.ERROR
    http_status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, str | None]:
        return {"error": self.code, "message": self.message, "hint": self.hint}


class InputError(HgrunError):
    """Bad input from a person: a flag, a request body, a file."""

    code = "invalid_input"
    exit_status = ExitStatus.USAGE
    http_status = 400


class LocatedError(InputError):
    """An error in a file, located as ``file:line:col`` (and a key path for the manifest)."""

    exit_status = ExitStatus.INPUT

    def __init__(
        self,
        what: str,
        *,
        file: str,
        line: int | None = None,
        col: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = file
        if line is not None:
            where += f":{line}"
            if col is not None:
                where += f":{col}"
        super().__init__(f"{where}: {what}", hint)
        self.what = what
        self.file = file
        self.line = line
        self.col = col


class ProcfileError(LocatedError):
    code = "invalid_procfile"


class ManifestError(LocatedError):
    code = "invalid_manifest"


class AuthError(HgrunError):
    code = "unauthorized"
    exit_status = ExitStatus.AUTH
    http_status = 401


class ForbiddenError(HgrunError):
    code = "forbidden"
    exit_status = ExitStatus.AUTH
    http_status = 403


class NotFoundError(HgrunError):
    code = "not_found"
    exit_status = ExitStatus.NOT_FOUND
    http_status = 404


class ConflictError(HgrunError):
    code = "conflict"
    exit_status = ExitStatus.CONFLICT
    http_status = 409


class PayloadTooLargeError(HgrunError):
    code = "payload_too_large"
    exit_status = ExitStatus.USAGE
    http_status = 413


class CapacityError(InputError):
    """A size or limit the host cannot give."""

    code = "insufficient_capacity"
    http_status = 422


class EngineError(HgrunError):
    """The container engine failed or refused; hgrun could not run the command."""

    code = "engine_error"
    exit_status = ExitStatus.CANNOT_RUN
    http_status = 502


class CommandNotFoundError(EngineError):
    code = "command_not_found"
    exit_status = ExitStatus.COMMAND_NOT_FOUND
    http_status = 400


class NotExecutableError(EngineError):
    code = "not_executable"
    exit_status = ExitStatus.NOT_EXECUTABLE
    http_status = 400


class NodeLostError(EngineError):
    """The node a run was on went away (a swarm node down): the run is ``lost``, not failed."""

    code = "node_lost"


class StoreError(HgrunError):
    code = "store_error"
    http_status = 500


class StoreFullError(StoreError):
    """The disk of the data directory is full: nothing can be recorded until space returns."""

    code = "store_full"
    http_status = 507  # Insufficient Storage, RFC 4918 section 11.5


class BusyError(HgrunError):
    """The server runs as many runs as it may (``--max-runs``) and its queue is full
    (``--max-queue``): nothing was recorded; try again later (a 503 with ``Retry-After``)."""

    code = "busy"
    exit_status = ExitStatus.CANNOT_RUN
    http_status = 503
    retry_after = 5  # seconds (RFC 9110 section 10.2.3)


class UnreachableError(HgrunError):
    """The CLI could not reach the server."""

    code = "unreachable"
    exit_status = ExitStatus.UNREACHABLE
    http_status = 503


_BY_CODE: dict[str, type[HgrunError]] = {
    cls.code: cls
    for cls in (
        HgrunError,
        InputError,
        ProcfileError,
        ManifestError,
        AuthError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        CapacityError,
        EngineError,
        CommandNotFoundError,
        NotExecutableError,
        StoreError,
        StoreFullError,
        BusyError,
        UnreachableError,
    )
}


def from_json(body: dict[str, object], http_status: int) -> HgrunError:
    """Rebuild an error the server sent as JSON (``error``, ``message``, ``hint``)."""
    code = str(body.get("error") or "")
    cls = _BY_CODE.get(code)
    located = cls is not None and issubclass(cls, LocatedError)
    if cls is None or located:
        cls = InputError if 400 <= http_status < 500 else HgrunError
    hint = body.get("hint")
    message = str(body.get("message") or f"server answered {http_status}")
    err = cls(message, str(hint) if hint else None)
    if located:
        err.exit_status = ExitStatus.INPUT
    return err
