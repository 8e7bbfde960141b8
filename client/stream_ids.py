"""Stream ids that carry their creation time: UUIDv7 (RFC 9562) as 32 lowercase hex digits.

The server reads the time back to expire idle watermarks safely (see ingest.store); this
module only makes and parses ids, it never talks to the network.
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["created_ms", "new_stream_id"]

_UUID7_HEX = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")


def new_stream_id(now_ms: int | None = None) -> str:
    """A fresh UUIDv7 in hex: 48 bits of Unix ms, the version, 74 random bits.

    >>> created_ms(new_stream_id(1_700_000_000_000))
    1700000000000
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62
    value |= rand & (2**62 - 1)
    return f"{value:032x}"


def created_ms(stream_id: str) -> int | None:
    """The creation time (Unix ms) of a UUIDv7 hex stream id, None for any other id."""
    if _UUID7_HEX.fullmatch(stream_id) is None:
        return None
    return int(stream_id[:12], 16)
