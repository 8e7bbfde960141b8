"""The web UI's files: index.html for every page route, /static/ files from one folder
(nothing outside it, no listings), a placeholder page when the UI is not installed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from steppe.query.context import STATIC_DIR

if TYPE_CHECKING:
    pass

DEFAULT_STATIC_DIR = Path(__file__).parent / "static"

PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>steppe</title></head>
<body><h1>steppe</h1><p>The web UI is not installed. The JSON API is at
<a href="/api/steppe/v1/experiments">/api/steppe/v1/experiments</a>.</p></body></html>
"""


def static_file(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None: no directories (no listings),
    nothing that resolves outside ``root`` (``..``, absolute paths, symlinks out)."""
    if not relative or Path(relative).is_absolute():
        return None
    try:
        base = root.resolve(strict=True)
        path = (base / relative).resolve(strict=True)
        path.relative_to(base)
    except (OSError, RuntimeError, ValueError):
        return None  # missing, a symlink loop, or outside the folder: all just "not found"
    return path if path.is_file() else None


async def serve_index(request: web.Request) -> web.StreamResponse:
    index = await asyncio.to_thread(static_file, request.app[STATIC_DIR], "index.html")
    if index is None:
        return web.Response(text=PLACEHOLDER_PAGE, content_type="text/html")
    # The page script routes on location.pathname; always revalidate it.
    return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


async def serve_static(request: web.Request) -> web.StreamResponse:
    path = await asyncio.to_thread(static_file, request.app[STATIC_DIR], request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)
