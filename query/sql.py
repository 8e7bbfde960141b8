"""User SQL over the public views, read-only and sandboxed; the one place it is run.

Defence in depth: (1) exactly one statement, of type SELECT; (2) its parse tree reads only
the public views (or its own CTEs) and a few pure table functions; (3) it runs on a fresh
in-memory DuckDB whose only reachable files are the snapshot's metrics files, with
extensions, Python replacement scans and settings changes locked off; (4) a time limit
(``interrupt``) and a row limit. Each refusal is an ``InvalidParameterValue`` naming the rule.
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
from steppe.query.views import PUBLIC_VIEWS, CatalogView, register_views

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIME_LIMIT_S",
    "MAX_MAX_ROWS",
    "MAX_QUERY_CHARS",
    "SAFE_TABLE_FUNCTIONS",
    "SqlSandbox",
]

DEFAULT_TIME_LIMIT_S = 30.0
DEFAULT_MAX_ROWS = 100_000
MAX_MAX_ROWS = 1_000_000
MAX_QUERY_CHARS = 100_000
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
    ) -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
        self.time_limit_s = time_limit_s
        self._memory_limit = memory_limit
        self._threads = threads
        # Parses only: json_serialize_sql of the user's text, bound as a parameter.
        self._parser = duckdb.connect(":memory:", config={"threads": 1})
        self._parser.execute("SET enable_external_access = false")
        self._parser.execute("SET lock_configuration = true")
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
            tree = json.loads(relation.fetchall()[0][0])
        finally:
            cursor.close()
        if tree.get("error"):
            raise _refuse(
                query, f"only plain SELECT queries are allowed: {tree.get('error_message', '')}"
            )
        _check_tree(query, tree)

    # -- running -----------------------------------------------------------------------------

    def run(self, snapshot: Snapshot, catalog: CatalogView, query: str, max_rows: int) -> pa.Table:
        """The query's result, at most ``max_rows`` rows (more is an error, never a silent
        cut). Raises InvalidParameterValue for refusals, bad SQL and exceeded limits;
        ``duckdb.IOException`` if a snapshot file vanished (take a fresh snapshot, retry)."""
        if not 1 <= max_rows <= MAX_MAX_ROWS:
            raise InvalidParameterValue(
                "max_rows", max_rows, f"must be an integer from 1 to {MAX_MAX_ROWS}"
            )
        self.check(query)
        with self.database(snapshot, catalog) as db, _deadline(db, self.time_limit_s) as expired:
            try:
                relation = db.sql(query)
                if relation is None:  # check() admitted a SELECT; DuckDB disagrees
                    raise _refuse(query, "only SELECT queries are allowed")
                table: pa.Table = relation.limit(max_rows + 1).to_arrow_table()
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


@contextmanager
def _deadline(db: duckdb.DuckDBPyConnection, limit_s: float) -> Iterator[threading.Event]:
    """Interrupt ``db`` once ``limit_s`` has passed, and keep interrupting until the block
    ends (an interrupt that lands between two queries' phases is otherwise lost)."""
    done = threading.Event()
    expired = threading.Event()

    def watch() -> None:
        if done.wait(limit_s):
            return
        expired.set()
        while True:
            db.interrupt()
            if done.wait(0.05):
                return

    watcher = threading.Thread(target=watch, name="steppe-sql-deadline", daemon=True)
    watcher.start()
    try:
        yield expired
    finally:
        done.set()
        watcher.join()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_tree(query: str, tree: dict[str, Any]) -> None:
    """Walk json_serialize_sql's tree (iteratively: user nesting is unbounded). Every base
    table must be a public view or a CTE in scope; every table function a safe one."""
    stack: list[tuple[object, frozenset[str]]] = [(tree, frozenset())]
    while stack:
        node, ctes = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            names = {
                str(entry.get("key", "")).lower()
                for entry in cte_map.get("map", [])
                if isinstance(entry, dict)
            }
            ctes = ctes | names
        kind = node.get("type")
        if "class" not in node and kind in _TABLE_REF_TYPES:
            _check_table_ref(query, node, str(kind), ctes)
        elif "table_name" in node and "class" not in node:
            raise _refuse(query, f"reads a table reference DuckDB calls {kind!r}: not allowed")
        stack.extend((value, ctes) for value in node.values())


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
