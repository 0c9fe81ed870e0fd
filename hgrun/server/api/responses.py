"""The API's JSON response: Starlette's, encoded by orjson.

A listing of 50 runs is some 1,250 keys and 250 floats: the standard library's encoder took
~1.3 ms of it (most of it writing floats), orjson ~0.13 ms. Both write the same JSON values
(orjson spells some floats otherwise: 2.1e-05 as 0.000021). A value orjson will
not write (a lone surrogate in a string, an integer past 64 bits) goes to the standard
library's encoder, which answers as before.

orjson is imported at the first response, not with the server: it imports zoneinfo, which the
server's start otherwise never needs (tests/test_cli_imports.py).
"""

from __future__ import annotations

from typing import Any

from starlette import responses


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        import orjson  # at the first response: see the module's docstring

        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            return super().render(content)
