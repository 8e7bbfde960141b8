"""Every HTTP request the client makes goes through here: ``urlopen`` adds the bearer token
(STEPPE_TOKEN / MLFLOW_TRACKING_TOKEN) and trusts STEPPE_TLS_CA for https; ``open_checked``
also turns the server's error bodies into steppe errors. It knows no endpoints."""

from __future__ import annotations

import functools
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPResponse

from steppe import auth, config, errors


@functools.lru_cache(maxsize=4)
def _context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def urlopen(request: urllib.request.Request | str, timeout: float | None) -> HTTPResponse:
    if isinstance(request, str):
        request = urllib.request.Request(request)
    token = config.token()
    if token and not request.has_header("Authorization"):
        request.add_header("Authorization", auth.bearer(token))
    context = _context(config.tls_ca_file()) if request.full_url.startswith("https:") else None
    response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout, context=context)
    return response


#: Statuses a gateway answers for a server it cannot reach: retried like a refused connection.
_GATEWAY_DOWN = frozenset({502, 503, 504})


def open_checked(request: urllib.request.Request, timeout: float | None) -> HTTPResponse:
    """``urlopen``, with the server's ``{"error_code", "message"}`` raised as its steppe
    error and an unreachable server as ServerUnavailable."""
    try:
        return urlopen(request, timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                body = json.loads(exc.read())
                raise errors.from_code(body["error_code"], body["message"]) from None
            except (ValueError, KeyError, TypeError):
                if exc.code in _GATEWAY_DOWN:  # a proxy in front of a server that is away
                    raise errors.ServerUnavailable(
                        f"HTTP {exc.code} from {request.full_url} (the server behind it is "
                        "unreachable; will retry)"
                    ) from None
                raise errors.SteppeError(f"HTTP {exc.code} from {request.full_url}") from None
    except (urllib.error.URLError, OSError) as exc:
        base = urllib.parse.urlsplit(request.full_url)
        raise errors.ServerUnavailable(
            f"cannot reach the steppe server at {base.scheme}://{base.netloc}: {exc}"
        ) from None
