"""Browser-facing request checks: DNS rebinding (Host), cross-site writes (Origin) and
content-type smuggling (JSON bodies must say ``application/json``).

A web page the user visits can make the browser send requests to a token-less steppe server
on 127.0.0.1; these checks refuse what only such a page would send, and never what steppe's
own clients, MLflow's client or the UI send.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from steppe.query.jsonenc import dumps

#: Hosts allowed by default, on any port (as MLflow 3's ``--allowed-hosts`` default).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Private address patterns also allowed when the server binds every interface.
PRIVATE_HOSTS = ("10.*", "192.168.*", *(f"172.{i}.*" for i in range(16, 32)), "[fc*", "[fd*")
_WILDCARD_BINDS = {"0.0.0.0", "::", ""}
_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
#: PUT carries raw artifact bytes; the other writes carry JSON (or nothing).
_JSON_BODY_METHODS = {"POST", "PATCH", "DELETE"}
#: Probed by load balancers and orchestrators with a Host of their own; read-only and
#: token-free, so exempt from the Host check (as MLflow 3 exempts /health and /version).
_HOST_EXEMPT_PATHS = {"/health"}


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names, plus the bound address, plus private ranges on a wildcard bind."""
    hosts = list(LOOPBACK_HOSTS)
    if bind_host in _WILDCARD_BINDS:
        hosts.extend(PRIVATE_HOSTS)
    elif bind_host not in ("localhost", "127.0.0.1", "::1"):
        hosts.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    return hosts


def _host_name(host: str) -> str:
    """``Host`` header without its port: ``[::1]:5000`` -> ``[::1]``, ``a.b:80`` -> ``a.b``."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_allowed(patterns: Sequence[str], host: str | None) -> bool:
    """A pattern with a port matches that host:port; without one, the host on any port.
    ``*`` wildcards as in MLflow (fnmatch); ``*`` alone allows every host."""
    if not host:
        return False
    host = host.lower()
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern == "*":
            return True
        has_port = (pattern.rpartition("]")[2] if pattern.startswith("[") else pattern).count(
            ":"
        ) == 1
        subject = host if has_port else _host_name(host)
        if fnmatch.fnmatchcase(subject, pattern.replace("[", "[[]")):
            return True
    return False


def _refuse(message: str) -> web.Response:
    return web.Response(
        status=403,
        body=dumps({"error_code": "PERMISSION_DENIED", "message": message}),
        content_type="application/json",
    )


def guard_middleware(allowed_hosts: Sequence[str], allowed_origins: Sequence[str] = ()) -> Any:
    """The outermost middleware of the HTTP app (before auth): Host, Origin, Content-Type."""
    hosts = list(allowed_hosts)
    origins = [o.strip().lower() for o in allowed_origins if o.strip()]

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        host = request.headers.get("Host")
        if request.path in _HOST_EXEMPT_PATHS and request.method in ("GET", "HEAD"):
            return await handler(request)
        if not host_allowed(hosts, host):
            return _refuse(
                f"Host {host!r} is not allowed (a DNS rebinding guard): open the server by "
                "an allowed name, or start it with --allowed-hosts"
            )
        method = request.method
        origin = request.headers.get("Origin")
        if method in _STATE_CHANGING and origin is not None:
            netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
            same = bool(netloc) and netloc == (host or "").lower()
            listed = any(fnmatch.fnmatchcase(origin.lower(), o) for o in origins)
            if not (same or listed):
                return _refuse(
                    f"Origin {origin!r} may not {method} here (cross-site request refused): "
                    "start the server with --allowed-origins to allow it"
                )
        if (
            method in _JSON_BODY_METHODS
            # An empty body carries nothing a forged request could use, whatever its type.
            and request.body_exists
            and request.content_type != "application/json"
        ):
            return web.Response(
                status=415,
                body=dumps(
                    {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": f"Content-Type must be application/json for {method} "
                        f"with a body, not {request.content_type!r}",
                    }
                ),
                content_type="application/json",
            )
        return await handler(request)

    return check
