"""``steppe sql`` and ``Client.sql``: user SQL goes to a server's SQL endpoint as an Arrow
stream; when no server owns the local data dir, it runs in this process over the folder,
read-only (the same sandbox as the server's). Never imported by ``import steppe``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.ipc
import pyarrow.parquet as pq

from steppe import config, errors
from steppe.connection import post
from steppe.discovery import local_data_dir
from steppe.lock import live_owner

SQL_PATH = "/api/steppe/v1/sql"
FORMATS = ("table", "csv", "json", "parquet")
#: The server enforces its own time limit; this only guards against a hung connection.
_HTTP_TIMEOUT_S = 600.0
_CELL_CHARS = 60


def fetch_arrow(http_url: str, query: str, max_rows: int | None = None) -> pa.Table:
    """Run ``query`` on the server at ``http_url``; the result as an Arrow table."""
    body: dict[str, Any] = {"query": query, "format": "arrow"}
    if max_rows is not None:
        body["max_rows"] = max_rows
    data = post(http_url.rstrip("/") + SQL_PATH, body, _HTTP_TIMEOUT_S)
    table: pa.Table = pa.ipc.open_stream(data).read_all()
    return table


def query_data_dir(data_dir: Path, query: str, max_rows: int | None = None) -> pa.Table:
    """Run ``query`` over a local data dir: through its server if one owns it, else
    directly on the folder (files + a read-only catalog), writing nothing."""
    deadline = time.monotonic() + config.server_start_timeout_s()
    held, owner = live_owner(data_dir)
    while held and owner is None and time.monotonic() < deadline:
        time.sleep(0.02)  # a server is starting: wait for it to publish its address
        held, owner = live_owner(data_dir)
    if owner is not None:
        return fetch_arrow(owner.http_url, query, max_rows)
    if held:
        raise errors.ServerUnavailable(f"the server starting on {data_dir} did not become ready")
    return _run_in_process(data_dir, query, max_rows)


def _run_in_process(data_dir: Path, query: str, max_rows: int | None) -> pa.Table:
    import duckdb

    from steppe.ingest.layout import DataDir
    from steppe.query.reader import DirectorySnapshot
    from steppe.query.sql import DEFAULT_MAX_ROWS, SqlSandbox
    from steppe.query.views import CatalogTables, CatalogView, open_catalog_read_only

    layout = DataDir.at(data_dir)
    if not layout.root.is_dir():
        raise errors.InvalidParameterValue(
            "data_dir",
            str(layout.root),
            "no steppe data dir there (set --data-dir, STEPPE_DATA_DIR or STEPPE_TRACKING_URI)",
        )
    catalog = open_catalog_read_only(layout.catalog_file) if layout.catalog_file.exists() else None
    sandbox = SqlSandbox()
    try:
        view = CatalogTables(catalog).current() if catalog is not None else CatalogView.empty()
        source = DirectorySnapshot(layout)
        rows = DEFAULT_MAX_ROWS if max_rows is None else max_rows
        try:
            return sandbox.run(source.snapshot(), view, query, rows)
        except duckdb.IOException:
            # A server started meanwhile and compacted a file away: its successor is live.
            return sandbox.run(source.snapshot(), view, query, rows)
    finally:
        sandbox.close()
        if catalog is not None:
            catalog.close()


# -- output --------------------------------------------------------------------------------


def render_table(table: pa.Table) -> str:
    """A plain text grid: one header line, a rule, the rows, and a row count."""
    names = table.column_names
    columns = [[_cell(v) for v in column.to_pylist()] for column in table.columns]
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]
    widths = [
        max([len(name), *(len(c) for c in cells)])
        for name, cells in zip(names, columns, strict=True)
    ]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out.extend(line(list(row)) for row in zip(*columns, strict=True))
    count = table.num_rows
    out.append(f"({count} row{'' if count == 1 else 's'})")
    return "\n".join(out) + "\n"


def _cell(value: object) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"


def write(table: pa.Table, fmt: str, out: IO[bytes]) -> None:
    """``table`` in ``fmt`` (table, csv, json or parquet) to the binary stream ``out``."""
    if fmt == "table":
        out.write(render_table(table).encode())
    elif fmt == "csv":
        pyarrow.csv.write_csv(table, out)
    elif fmt == "json":
        from steppe.query.jsonenc import column_values

        names = table.column_names
        columns = [column_values(column) for column in table.columns]
        rows = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        out.write(json.dumps(rows, allow_nan=False, ensure_ascii=False, indent=1).encode())
        out.write(b"\n")
    elif fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        out.write(buffer.getvalue())
    else:
        raise ValueError(f"unknown format {fmt!r}")


# -- the command ---------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """The ``sql`` subcommand on the CLI's subparsers."""
    parser = sub.add_parser(
        "sql",
        help="run a read-only SQL query over experiments, runs, params, tags and metrics",
        description="Run one read-only SELECT over steppe's views: experiments, runs, params, "
        "tags, metrics (run_id, key, step, value, timestamp) and latest_metrics. Asks the "
        "server at STEPPE_TRACKING_URI, or the server that owns the local data dir, or reads "
        "the data dir directly when no server runs.",
    )
    parser.add_argument("query", help='e.g. "SELECT key, count(*) FROM metrics GROUP BY key"')
    parser.add_argument(
        "--format", choices=FORMATS, default="table", help="output format (default: table)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="write to this file instead of stdout"
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="more result rows than this is an error (server default 100000)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="read this local data dir (default: $STEPPE_TRACKING_URI, else "
        f"./{config.DEFAULT_DATA_DIR} or $STEPPE_DATA_DIR)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``steppe sql``; exit 0, or 1 with the reason on stderr."""
    if args.format == "parquet" and args.output is None and sys.stdout.isatty():
        print("steppe: parquet is binary: use --output FILE or redirect stdout", file=sys.stderr)
        return 1
    try:
        if args.data_dir is not None:
            table = query_data_dir(args.data_dir.expanduser().resolve(), args.query, args.max_rows)
        else:
            uri = config.tracking_uri()
            data_dir = local_data_dir(uri)
            if data_dir is None:
                assert uri is not None
                table = fetch_arrow(uri, args.query, args.max_rows)
            else:
                table = query_data_dir(data_dir, args.query, args.max_rows)
    except errors.SteppeError as exc:
        print(f"steppe: {exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        with open(args.output, "wb") as out:
            write(table, args.format, out)
    else:
        write(table, args.format, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0
