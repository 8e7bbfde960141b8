"""What the read side's handlers share: the app's keys (catalog, reader, executors, SQL
sandbox), and running a blocking read off the event loop on a snapshot taken on it.

steppe.query.app sets these up (make_app); its handlers, steppe.query.mlflow_api and
steppe.query.mlflow_models read them. Importing this module registers no routes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import duckdb
from aiohttp import web

from steppe.ingest.catalog import Catalog
from steppe.ingest.layout import Snapshot, SnapshotSource
from steppe.query.reader import Reader
from steppe.query.sql import (
    SqlSandbox,
)
from steppe.query.views import CatalogTables

if TYPE_CHECKING:
    pass

__all__ = [
    "API_PREFIX",
    "CATALOG",
    "CATALOG_TABLES",
    "EXECUTOR",
    "ON_ACTIVITY",
    "READER",
    "SERVER_INFO",
    "SNAPSHOT_SOURCE",
    "SQL_ADMISSION",
    "SQL_EXECUTOR",
    "SQL_MAX_RESULT_BYTES",
    "SQL_SANDBOX",
    "SQL_TIME_LIMIT_S",
    "STATIC_DIR",
    "blocking",
    "json_response",
    "run_on",
    "with_snapshot",
]

log = logging.getLogger("steppe.query")

P = ParamSpec("P")
T = TypeVar("T")

API_PREFIX = "/api/steppe/v1"

CATALOG = web.AppKey[Catalog]("catalog")
SNAPSHOT_SOURCE = web.AppKey[SnapshotSource]("snapshot_source")
SERVER_INFO = web.AppKey[Mapping[str, object]]("server_info")
STATIC_DIR = web.AppKey("static_dir", Path)
ON_ACTIVITY = web.AppKey[Callable[[], None] | None]("on_activity")
#: Set while the app runs (its cleanup context owns both).
READER = web.AppKey("reader", Reader)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
CATALOG_TABLES = web.AppKey("catalog_tables", CatalogTables)
SQL_SANDBOX = web.AppKey("sql_sandbox", SqlSandbox)
SQL_TIME_LIMIT_S = web.AppKey("sql_time_limit_s", float)
SQL_MAX_RESULT_BYTES = web.AppKey("sql_max_result_bytes", int)
SQL_EXECUTOR = web.AppKey("sql_executor", ThreadPoolExecutor)
SQL_ADMISSION = web.AppKey("sql_admission", asyncio.Semaphore)


async def blocking(
    request: web.Request, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    return await run_on(request.app[EXECUTOR], fn, *args, **kwargs)


async def run_on(
    executor: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


async def with_snapshot(
    request: web.Request,
    fn: Callable[Concatenate[Snapshot, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(snapshot, ...)`` in the executor on a snapshot taken here, on the loop."""
    source = request.app[SNAPSHOT_SOURCE]
    try:
        return await blocking(request, fn, source.snapshot(), *args, **kwargs)
    except duckdb.IOException:
        # Compaction may have replaced a file of that snapshot while the query waited;
        # a fresh snapshot names the replacement. A real I/O fault fails again.
        log.info("Retrying a read on a fresh snapshot", exc_info=True)
        return await blocking(request, fn, source.snapshot(), *args, **kwargs)


def json_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")
