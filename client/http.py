"""Every HTTP request the client makes goes through ``urlopen`` here: it adds the bearer
token (STEPPE_TOKEN / MLFLOW_TRACKING_TOKEN) and trusts STEPPE_TLS_CA for https.
It knows no endpoints and maps no errors."""

from __future__ import annotations

import functools
import ssl
import urllib.request
from http.client import HTTPResponse

from steppe import auth, config


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
