"""The read side's middlewares: the token check (public paths excepted) and the one place
errors become MLflow's JSON error body with the status of steppe.errors' table.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from steppe import auth
from steppe.errors import (
    CODE_BY_HTTP_STATUS,
    SteppeError,
)
from steppe.query.context import API_PREFIX, ON_ACTIVITY
from steppe.query.jsonenc import dumps

if TYPE_CHECKING:
    pass

log = logging.getLogger("steppe.query")


def error_response(status: int, error_code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=dumps({"error_code": error_code, "message": message}),
        content_type="application/json",
    )


PUBLIC_PATHS = {f"{API_PREFIX}/server-info", "/api/3.0/mlflow/server-info", "/health"}


def auth_middleware(token: str) -> Any:
    """Bearer token for APIs (MLflow's client sends MLFLOW_TRACKING_TOKEN this way); for a
    browser, ``?token=`` on a page sets an HttpOnly cookie and redirects without it."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        if auth.matches(token, request.headers.get("Authorization")) or auth.matches(
            token, request.cookies.get(auth.COOKIE)
        ):
            return await handler(request)
        if request.method == "GET" and auth.matches(token, request.query.get("token")):
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPFound(request.rel_url.with_query(query))
            response.set_cookie(
                auth.COOKIE, token, httponly=True, samesite="Strict", secure=request.secure
            )
            raise response
        return web.json_response(
            {
                "error_code": "UNAUTHENTICATED",
                "message": "this steppe server needs a token: send 'Authorization: Bearer "
                "<token>' (STEPPE_TOKEN / MLFLOW_TRACKING_TOKEN), or log in a browser by "
                "opening http://HOST:PORT/?token=<your token> once",
            },
            status=401,
        )

    return check


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        on_activity = request.app[ON_ACTIVITY]
        if on_activity is not None:
            on_activity()
        return await handler(request)
    except SteppeError as exc:
        return error_response(exc.http_status, exc.error_code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"Not found: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed for {request.path}"
        else:
            message = f"{exc.reason}: {request.method} {request.path}"
        code = CODE_BY_HTTP_STATUS.get(
            exc.status, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR"
        )
        response = error_response(exc.status, code, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (OSError, sqlite3.OperationalError) as exc:
        if not disk_full(exc):
            log.exception("Unhandled error in %s %s", request.method, request.path)
            return error_response(
                500, "INTERNAL_ERROR", "Internal server error; see the server log."
            )
        log.warning("Disk full in %s %s: %s", request.method, request.path, exc)
        return error_response(
            507,
            "RESOURCE_EXHAUSTED",
            "the server's disk is full: nothing was changed; free space and retry",
        )
    except Exception:
        # Anything else is a bug: log it with its stack, answer without one.
        log.exception("Unhandled error in %s %s", request.method, request.path)
        return error_response(500, "INTERNAL_ERROR", "Internal server error; see the server log.")


def disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
    return "disk is full" in str(exc)
