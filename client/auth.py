"""Bearer-token checks shared by the gRPC interceptor, the HTTP middleware and the client.

Constant-time comparison; the token itself is never logged or put in an error message.
"""

from __future__ import annotations

import hmac

HEADER = "authorization"
COOKIE = "steppe_token"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def matches(expected: str, presented: str | None) -> bool:
    """True if ``presented`` ("Bearer <token>" or the bare token) is the expected token."""
    if presented is None:
        return False
    value = presented[7:] if presented[:7].lower() == "bearer " else presented
    return hmac.compare_digest(value.strip().encode(), expected.encode())
