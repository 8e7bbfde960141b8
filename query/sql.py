"""User SQL over the public views, read-only and sandboxed; the one place it is run.

Defence in depth: (1) exactly one statement, of type SELECT; (2) its parse tree reads only
the public views (or its own CTEs) and a few pure table functions; (3) it runs on a fresh
in-memory DuckDB whose only reachable files are the snapshot's metrics files, with
extensions, Python replacement scans and settings changes locked off; (4) a time limit
(``interrupt``), a row limit and a byte limit on the result. Each refusal is an
``InvalidParameterValue`` naming the rule.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from steppe.errors import InvalidParameterValue
from steppe.ingest.layout import Snapshot
from steppe.query.reader import deadline
from steppe.query.views import PUBLIC_VIEWS, CatalogView, register_views

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIME_LIMIT_S",
    "DENIED_FUNCTIONS",
    "MAX_MAX_ROWS",
    "MAX_QUERY_CHARS",
    "SAFE_TABLE_FUNCTIONS",
    "SqlSandbox",
]

DEFAULT_TIME_LIMIT_S = 30.0
DEFAULT_MAX_ROWS = 100_000
MAX_MAX_ROWS = 1_000_000
MAX_QUERY_CHARS = 100_000
#: Arrow bytes one result may hold (a JSON result: an eighth of it, as Python objects are
#: far bigger than Arrow's columns). Past it the query stops with an error, never a cut.
DEFAULT_MAX_RESULT_BYTES = 256 * 1024 * 1024
JSON_RESULT_FRACTION = 8
_BATCH_ROWS = 65_536
#: Scalar functions that read the session, settings, catalog or environment, or act on the
#: database; with the prefixes below they are refused wherever they appear.
DENIED_FUNCTIONS = frozenset(
    {
        "getenv",
        "getvariable",
        "current_setting",
        "session_user",
        "user",
        "col_description",
        "obj_description",
        "shobj_description",
        "in_search_path",
        "txid_current",
        "nextval",
        "currval",
        "setval",
        "write_log",
        "parse_duckdb_log_message",
        "json_serialize_plan",
        "json_serialize_sql",
        "sleep_ms",
        "get_block_size",
        "invoke",
    }
)
_DENIED_PREFIXES = ("duckdb_", "pg_", "current_", "has_", "inet_", "__internal", "enable_")
_ALLOWED_DESPITE_PREFIX = frozenset(
    {"current_date", "current_localtime", "current_localtimestamp", "pg_typeof"}
)
#: Table functions that only compute (no files, network, catalog or settings).
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

_VIEWS = frozenset(PUBLIC_VIEWS)
_VIEW_LIST = ", ".join(PUBLIC_VIEWS)
# DuckDB's TableReferenceType names as json_serialize_sql writes them. A dict carrying one
# of these is a table reference; the ones not allowed here fail closed.
_TABLE_REF_TYPES = frozenset(
    {
        "INVALID",
        "BASE_TABLE",
        "SUBQUERY",
        "JOIN",
        "TABLE_FUNCTION",
        "EXPRESSION_LIST",
        "CTE",
        "EMPTY",
        "EMPTY_FROM",
        "PIVOT",
        "SHOW_REF",
        "COLUMN_DATA",
        "DELIM_GET",
        "BOUND_TABLE_REF",
    }
)
_ALLOWED_REF_TYPES = frozenset(
    {"BASE_TABLE", "SUBQUERY", "JOIN", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "PIVOT"}
    | {"EMPTY_FROM", "SHOW_REF"}
)
# Errors that are the query's fault (bad SQL, bad casts, ...): 400 with DuckDB's message.
# IOException is not among them: a file replaced by compaction is retried by the caller.
_USER_ERRORS: tuple[type[Exception], ...] = (
    duckdb.ParserException,
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
    duckdb.NotImplementedException,
    duckdb.TypeMismatchException,
    duckdb.InvalidTypeException,
    duckdb.ConstraintException,
    duckdb.SyntaxException,
    duckdb.DataError,
    duckdb.ProgrammingError,
)


def _refuse(query: str, rule: str) -> InvalidParameterValue:
    return InvalidParameterValue("query", query, rule)


class SqlSandbox:
    """Runs user SQL: ``run(snapshot, catalog_view, query, max_rows)`` -> an Arrow table.

    Thread-safe; each query gets a fresh in-memory database (~15 ms), so nothing one query
    does can be seen by another. ``memory_limit`` and ``threads`` bound each query.

        sandbox = SqlSandbox(time_limit_s=30)
        table = sandbox.run(snapshot, tables.current(), "SELECT count(*) FROM metrics", 1000)
    """

    def __init__(
        self,
        *,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        memory_limit: str = "2GB",
        threads: int = 2,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
        if max_result_bytes <= 0:
            raise ValueError(f"max_result_bytes must be positive, got {max_result_bytes}")
        self.time_limit_s = time_limit_s
        self.max_result_bytes = max_result_bytes
        self._memory_limit = memory_limit
        self._threads = threads
        # Parses only: json_serialize_sql of the user's text, bound as a parameter.
        self._parser = duckdb.connect(":memory:", config={"threads": 1})
        self._parser.execute("SET enable_external_access = false")
        self._parser.execute("SET lock_configuration = true")
        # Every relation DuckDB itself defines (pg_settings, duckdb_*, information_schema...):
        # a CTE may not take one of these names, so a name the checker reads as a CTE is
        # never one that DuckDB resolves to its catalog.
        names = self._parser.sql(
            "SELECT lower(view_name) FROM duckdb_views() "
            "UNION SELECT lower(table_name) FROM duckdb_tables()"
        )
        assert names is not None
        self._internal = frozenset(str(row[0]) for row in names.fetchall()) - _VIEWS
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._parser.close()

    # -- checks ------------------------------------------------------------------------------

    def check(self, query: str) -> None:
        """Raise InvalidParameterValue unless ``query`` is one SELECT that reads only the
        public views (layers 1 and 2; the database itself is layer 3)."""
        if not isinstance(query, str) or not query.strip():
            raise _refuse(query, "must be a non-empty SQL string")
        if len(query) > MAX_QUERY_CHARS:
            raise _refuse(query, f"must be at most {MAX_QUERY_CHARS} characters")
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise _refuse(query, f"is not valid SQL: {_first_line(exc)}") from None
        if len(statements) != 1:
            raise _refuse(
                query,
                f"must be exactly one SQL statement (found {len(statements)}): "
                "several statements are not allowed",
            )
        kind = str(statements[0].type).rsplit(".", 1)[-1]
        if kind != "SELECT":
            raise _refuse(
                query,
                f"only SELECT queries are allowed (found a statement of type {kind}): "
                "user SQL is read-only: no COPY, ATTACH, INSTALL/LOAD, SET/PRAGMA, "
                "CREATE/INSERT/UPDATE/DELETE/DROP",
            )
        with self._lock:
            cursor = self._parser.cursor()
        try:
            relation = cursor.sql("SELECT json_serialize_sql($q::VARCHAR)", params={"q": query})
            assert relation is not None
            text = relation.fetchall()[0][0]
        finally:
            cursor.close()
        try:
            tree = json.loads(text)
        except RecursionError:
            raise _refuse(
                query, "nests too deeply (subqueries or expressions): flatten it, e.g. with CTEs"
            ) from None
        if tree.get("error"):
            raise _refuse(
                query, f"only plain SELECT queries are allowed: {tree.get('error_message', '')}"
            )
        _check_tree(query, tree, self._internal)

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        snapshot: Snapshot,
        catalog: CatalogView,
        query: str,
        max_rows: int,
        *,
        max_bytes: int | None = None,
    ) -> pa.Table:
        """The query's result, at most ``max_rows`` rows and ``max_bytes`` Arrow bytes
        (default: the sandbox's ``max_result_bytes``; more is an error, never a silent
        cut). Raises InvalidParameterValue for refusals, bad SQL and exceeded limits;
        ``duckdb.IOException`` if a snapshot file vanished (take a fresh snapshot, retry)."""
        if not 1 <= max_rows <= MAX_MAX_ROWS:
            raise InvalidParameterValue(
                "max_rows", max_rows, f"must be an integer from 1 to {MAX_MAX_ROWS}"
            )
        self.check(query)
        byte_limit = self.max_result_bytes if max_bytes is None else max_bytes
        with self.database(snapshot, catalog) as db, deadline(db, self.time_limit_s) as expired:
            try:
                relation = db.sql(query)
                if relation is None:  # check() admitted a SELECT; DuckDB disagrees
                    raise _refuse(query, "only SELECT queries are allowed")
                table = _bounded_table(
                    query, relation.limit(max_rows + 1).to_arrow_reader(_BATCH_ROWS), byte_limit
                )
            except duckdb.InterruptException:
                if expired.is_set():
                    raise _refuse(
                        query,
                        f"exceeded the time limit of {self.time_limit_s:g} s "
                        "(narrow it with WHERE on run_id/key/step, or aggregate)",
                    ) from None
                raise
            except duckdb.OutOfMemoryException as exc:
                raise _refuse(
                    query,
                    f"needs more memory than the query limit ({self._memory_limit}): "
                    f"{_first_line(exc)}",
                ) from None
            except duckdb.PermissionException as exc:
                raise _refuse(query, f"is not allowed to do that: {_first_line(exc)}") from None
            except _USER_ERRORS as exc:
                raise _refuse(query, f"DuckDB could not run it: {_first_line(exc)}") from None
        if table.num_rows > max_rows:
            raise _refuse(
                query,
                f"returned more than max_rows={max_rows} rows (the row limit): add a LIMIT, "
                f"filter or aggregate, or raise max_rows (at most {MAX_MAX_ROWS})",
            )
        return table

    @contextmanager
    def database(
        self, snapshot: Snapshot, catalog: CatalogView
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """The locked-down database a query runs on (layer 3 alone: tests use it to show
        that it refuses files, extensions and settings even without the checks)."""
        db = duckdb.connect(
            ":memory:",
            config={
                "threads": self._threads,
                "memory_limit": self._memory_limit,
                "temp_directory": "",  # no spilling: a query over its memory limit fails
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
                "allow_community_extensions": False,
                "allow_unsigned_extensions": False,
                "python_enable_replacements": False,  # no reading Python variables by name
            },
        )
        try:
            # Only the snapshot's own files stay reachable; then nothing may change again.
            db.execute("SET allowed_paths = $paths", {"paths": [str(p) for p in snapshot.files]})
            db.execute("SET enable_external_access = false")
            register_views(db, snapshot, catalog)
            db.execute("SET lock_configuration = true")
            yield db
        finally:
            db.close()


def _bounded_table(query: str, reader: pa.RecordBatchReader, limit: int) -> pa.Table:
    """Read ``reader`` batch by batch, stopping with an error once past ``limit`` bytes."""
    batches: list[pa.RecordBatch] = []
    total = 0
    for batch in reader:
        total += batch.nbytes
        if total > limit:
            reader.close()
            raise _refuse(
                query,
                f"returned more than {limit:,} bytes (the result size limit): select fewer "
                "columns or rows, or aggregate",
            )
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=reader.schema)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_tree(query: str, tree: dict[str, Any], internal: frozenset[str]) -> None:
    """Walk json_serialize_sql's tree (iteratively: user nesting is unbounded). Every base
    table must be a public view or a CTE in scope; every table function a safe one; no
    function may read settings or the catalog.

    CTE scope follows DuckDB's: a CTE sees the CTEs before it in its WITH list (and itself
    only as a recursive CTE); the query after the WITH sees them all. No CTE may take the
    name of one of DuckDB's own relations (``internal``)."""
    stack: list[tuple[object, frozenset[str]]] = [(tree, frozenset())]
    while stack:
        node, ctes = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if "function_name" in node:
            _check_function(query, node)
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            seen = ctes
            for entry in cte_map.get("map", []):
                if not isinstance(entry, dict):
                    continue
                name = str(entry.get("key", "")).lower()
                if name in internal:
                    raise _refuse(
                        query,
                        f"a CTE may not be named {name!r}: that is the name of one of "
                        "DuckDB's own relations",
                    )
                value = entry.get("value")
                inner = value.get("query_node") if isinstance(value, dict) else None
                recursive = isinstance(inner, dict) and inner.get("type") == "RECURSIVE_CTE_NODE"
                stack.append((value, seen | {name} if recursive else seen))
                seen = seen | {name}
            ctes = seen
            node = {key: value for key, value in node.items() if key != "cte_map"}
        kind = node.get("type")
        if not isinstance(kind, str):  # e.g. a SAMPLE's {"type": {...}}: not a reference
            kind = None
        if "class" not in node and kind in _TABLE_REF_TYPES:
            _check_table_ref(query, node, str(kind), ctes)
        elif "table_name" in node and "class" not in node:
            raise _refuse(query, f"reads a table reference DuckDB calls {kind!r}: not allowed")
        stack.extend((value, ctes) for value in node.values())


def _check_function(query: str, node: dict[str, Any]) -> None:
    name = str(node.get("function_name", "")).lower()
    if node.get("schema") or node.get("catalog"):
        raise _refuse(
            query, f"function {name}() must be called by its plain name, not schema-qualified"
        )
    denied = name in DENIED_FUNCTIONS or (
        name.startswith(_DENIED_PREFIXES) and name not in _ALLOWED_DESPITE_PREFIX
    )
    if denied:
        raise _refuse(
            query,
            f"function {name}() is not allowed: user SQL cannot read DuckDB's settings, "
            "catalog, session or environment",
        )


def _check_table_ref(query: str, ref: dict[str, Any], kind: str, ctes: frozenset[str]) -> None:
    if kind not in _ALLOWED_REF_TYPES:
        raise _refuse(query, f"uses a {kind} table reference, which is not allowed")
    if kind in ("BASE_TABLE", "SHOW_REF"):
        name = str(ref.get("table_name", ""))
        if kind == "SHOW_REF" and name == "":
            return  # DESCRIBE/SUMMARIZE of a query: its own tables are checked
        if ref.get("catalog_name") or ref.get("schema_name"):
            qualified = ".".join(
                part for part in (ref.get("catalog_name"), ref.get("schema_name"), name) if part
            )
            raise _refuse(
                query,
                f"may only read the views {_VIEW_LIST} by their plain names (found {qualified!r})",
            )
        if name.lower() not in _VIEWS and name.lower() not in ctes:
            raise _refuse(
                query,
                f"may only read the views {_VIEW_LIST} (found {name!r}; files, other "
                "databases and DuckDB's internal tables are not reachable)",
            )
    elif kind == "TABLE_FUNCTION":
        function = ref.get("function") or {}
        name = str(function.get("function_name", ""))
        if (
            name.lower() not in SAFE_TABLE_FUNCTIONS
            or function.get("schema")
            or function.get("catalog")
        ):
            raise _refuse(
                query,
                f"table function {name}() is not allowed: user SQL cannot read files, the "
                "network or DuckDB's internals (allowed: "
                f"{', '.join(sorted(SAFE_TABLE_FUNCTIONS))})",
            )
