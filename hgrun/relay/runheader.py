"""The run asked for and the run made, as a header of the attach handshake (hgrun's own).

``/v1/apps/{app}/runs/attach`` creates a run and attaches to it in one WebSocket handshake: the
upgrade request carries the body of ``POST /v1/apps/{app}/runs`` and the 101 answer the run's
JSON view, each in the ``X-Hgrun-Run`` header as base64url of compact JSON, so any UTF-8 (an env
value's) travels in a header's ASCII. Pure: the server and the CLI share it.
"""

from __future__ import annotations

import base64
import binascii
import json

from hgrun.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the start of `hgrun run` milliseconds: for the checker only
    from typing import Any, Final

HEADER: Final = "X-Hgrun-Run"
MAX_REQUEST: Final = 16 * 1024
"""The longest request header a client sends (the server takes request heads up to 32 KB); a
longer run request (many ``--env``) goes as a ``POST`` instead."""


def encode(value: Any) -> str:
    """``value`` as JSON, then base64url."""
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def decode(text: str) -> Any:
    """The inverse of :func:`encode`; :class:`InputError` for what is not base64url JSON."""
    try:
        return json.loads(unwrap(text))
    except (UnicodeError, ValueError) as e:
        raise _not_json() from e


def unwrap(text: str) -> bytes:
    """The JSON text inside the header (the server parses it as it does a request's body);
    :class:`InputError` for what is not base64url."""
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (UnicodeError, binascii.Error, ValueError) as e:
        raise _not_json() from e


def _not_json() -> InputError:
    return InputError(
        f"header {HEADER} is not base64url-encoded JSON",
        "send the body of POST /v1/apps/{app}/runs as JSON, then base64url",
    )
