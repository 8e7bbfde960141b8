"""Page tokens: the one codec of every paged answer (steppe's runs search and MLflow's
search routes). A token is MLflow's format, base64 of ``{"offset": N}``; both base64
alphabets are read, so tokens of older steppe versions (URL-safe) still work.
"""

from __future__ import annotations

import base64
import binascii
import json

from steppe.errors import InvalidParameterValue

__all__ = ["page_offset", "page_token"]

_URLSAFE = str.maketrans("-_", "+/")


def page_token(offset: int) -> str:
    """The token of the page that starts at ``offset``."""
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def page_offset(token: object) -> int:
    """The offset a token from ``page_token`` names; 0 for no token (None or "").

    Anything else: InvalidParameterValue naming ``page_token``."""
    if token is None or token == "":
        return 0
    offset = None
    if isinstance(token, str):
        try:
            raw = base64.b64decode(token.translate(_URLSAFE).encode(), validate=True)
            offset = json.loads(raw)["offset"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            offset = None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidParameterValue(
            "page_token", token, "is not a page token from a previous search"
        )
    return offset
