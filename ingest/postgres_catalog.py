"""The catalog on PostgreSQL (``--catalog postgresql://...``): the SQL of
steppe.ingest.sql_catalog over a psycopg connection pool, so several steppe processes share one
catalog. Versioned migrations; errors mapped onto steppe's; a DSN is only ever shown redacted.

psycopg is imported here only: the embedded default (SQLite) never loads it.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from steppe.errors import ResourceAlreadyExists, ResourceDoesNotExist, ServerUnavailable
from steppe.ingest.catalog import (
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    CatalogUnavailable,
    redact_dsn,
)
from steppe.ingest.sql_catalog import SqlCatalog, SqlCursor, _now_ms

__all__ = ["MIGRATIONS", "PostgresCatalog"]

#: The schema's numbered steps: step N brings a database at version N-1 to N. Append only;
#: a step once released is never edited (databases out there are at it).
MIGRATIONS: tuple[str, ...] = (
    # 1: the tables of the SQLite catalog (times BIGINT ms, values DOUBLE PRECISION, which
    # keeps NaN), plus an identity column where SQLite's reads order by rowid, compaction
    # leases, and the counter behind ``version``.
    """
CREATE TABLE experiments (
    experiment_id     TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL DEFAULT 'active',
    creation_time     BIGINT NOT NULL,
    last_update_time  BIGINT NOT NULL
);
CREATE TABLE experiment_tags (
    experiment_id TEXT NOT NULL REFERENCES experiments(experiment_id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    experiment_id   TEXT NOT NULL REFERENCES experiments(experiment_id),
    run_name        TEXT NOT NULL,
    status          TEXT NOT NULL,
    start_time      BIGINT NOT NULL,
    end_time        BIGINT,
    lifecycle_stage TEXT NOT NULL DEFAULT 'active',
    artifact_uri    TEXT NOT NULL,
    user_id         TEXT NOT NULL
);
CREATE INDEX runs_by_experiment ON runs(experiment_id, start_time);
CREATE TABLE params (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE tags (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE run_inputs (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source      TEXT NOT NULL,
    schema      TEXT NOT NULL,
    profile     TEXT NOT NULL,
    tags        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (run_id, name, digest)
);
CREATE TABLE stream_watermarks (
    stream_id TEXT PRIMARY KEY,
    seq       BIGINT NOT NULL,
    last_ms   BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE compaction_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE TABLE logged_models (
    model_id          TEXT PRIMARY KEY,
    experiment_id     TEXT NOT NULL,
    name              TEXT NOT NULL,
    artifact_uri      TEXT NOT NULL,
    status            TEXT NOT NULL,
    model_type        TEXT NOT NULL,
    source_run_id     TEXT NOT NULL,
    status_message    TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL,
    creation_time     BIGINT NOT NULL,
    last_update_time  BIGINT NOT NULL
);
CREATE INDEX logged_models_by_experiment ON logged_models(experiment_id);
CREATE TABLE logged_model_tags (
    model_id TEXT NOT NULL REFERENCES logged_models(model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE logged_model_params (
    model_id TEXT NOT NULL REFERENCES logged_models(model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE logged_model_metrics (
    model_id       TEXT NOT NULL,
    key            TEXT NOT NULL,
    value          DOUBLE PRECISION,
    timestamp      BIGINT NOT NULL,
    step           BIGINT NOT NULL,
    run_id         TEXT NOT NULL,
    dataset_name   TEXT NOT NULL,
    dataset_digest TEXT NOT NULL,
    rowid          BIGINT GENERATED ALWAYS AS IDENTITY  -- logging order
);
CREATE INDEX logged_model_metrics_by_model ON logged_model_metrics(model_id);
CREATE TABLE run_outputs (
    run_id   TEXT NOT NULL,
    model_id TEXT NOT NULL,
    step     BIGINT NOT NULL,
    rowid    BIGINT GENERATED ALWAYS AS IDENTITY,  -- logging order
    PRIMARY KEY (run_id, model_id)
);
CREATE TABLE registered_models (
    name             TEXT PRIMARY KEY,
    description      TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    last_version     BIGINT NOT NULL,
    creation_time    BIGINT NOT NULL,
    last_update_time BIGINT NOT NULL
);
CREATE TABLE registered_model_tags (
    name  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE model_versions (
    name             TEXT NOT NULL,
    version          BIGINT NOT NULL,
    source           TEXT NOT NULL,
    storage_location TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    run_link         TEXT NOT NULL,
    model_id         TEXT NOT NULL,
    description      TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    current_stage    TEXT NOT NULL,
    status           TEXT NOT NULL,
    creation_time    BIGINT NOT NULL,
    last_update_time BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE model_version_tags (
    name    TEXT NOT NULL,
    version BIGINT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (name, version, key)
);
CREATE TABLE registered_model_aliases (
    name    TEXT NOT NULL,
    alias   TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE SEQUENCE catalog_writes;
""",
)


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    # The shared SQL has no literal "?" or "%": parameter marks are its only ones.
    return sql.replace("?", "%s")


def _lock_key(name: str) -> int:
    """A stable advisory-lock key per name (PostgreSQL's are 64-bit integers)."""
    return zlib.crc32(f"steppe.catalog.{name}".encode())


class _PgConnection:
    """A psycopg connection with sqlite3's ``execute``/``executemany`` and ``?`` marks."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> SqlCursor:
        return self._conn.execute(_pg_sql(sql), parameters or None)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> object:
        rows = list(parameters)
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)
        return None


class PostgresCatalog(SqlCatalog):
    """``Catalog`` in a PostgreSQL database shared by every steppe process pointed at it.

    Opening it applies missing migrations (one process at a time, under an advisory lock) and
    refuses a schema newer than ``MIGRATIONS``. Connections come from a pool of
    ``pool_size``; each write is one transaction on one connection (READ COMMITTED).

    >>> catalog = PostgresCatalog("postgresql://steppe@127.0.0.1:5432/steppe")  # doctest: +SKIP
    """

    def __init__(
        self,
        dsn: str,
        artifact_root: str = "mlflow-artifacts:",
        *,
        pool_size: int = 8,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._artifact_root = artifact_root.rstrip("/")
        self.dsn_redacted = redact_dsn(dsn)
        try:
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout_s))
            ) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise CatalogUnavailable(
                f"cannot open the PostgreSQL catalog at {self.dsn_redacted}: {exc}"
            ) from exc
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True},
            name="steppe-catalog",
            open=False,
        )
        self._pool.open(wait=True, timeout=connect_timeout_s)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Two processes starting at once: the second waits, then finds nothing to do.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("migrations"),))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)"
            )
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row is not None else 0
            if current > len(MIGRATIONS):
                raise CatalogUnavailable(
                    f"the PostgreSQL catalog at {self.dsn_redacted} has schema version "
                    f"{current}, newer than this steppe knows ({len(MIGRATIONS)}): "
                    "upgrade steppe to use it"
                )
            for number in range(current + 1, len(MIGRATIONS) + 1):
                conn.execute(MIGRATIONS[number - 1])
                conn.execute("INSERT INTO schema_version VALUES (%s, %s)", (number, _now_ms()))
            now = _now_ms()
            conn.execute(
                "INSERT INTO experiments VALUES (%s, %s, %s, 'active', %s, %s) "
                "ON CONFLICT DO NOTHING",
                (
                    DEFAULT_EXPERIMENT_ID,
                    DEFAULT_EXPERIMENT_NAME,
                    f"{self._artifact_root}/{DEFAULT_EXPERIMENT_ID}",
                    now,
                    now,
                ),
            )

    @property
    def schema_version(self) -> int:
        with self.reading() as db:
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row is not None else 0

    @contextmanager
    def transaction(self) -> Iterator[_PgConnection]:
        """One write transaction on a pooled connection; a unique or foreign-key violation
        (a race another connection won) comes out as steppe's error."""
        with self._pool.connection() as conn:
            try:
                with conn.transaction():
                    yield _PgConnection(conn)
            except psycopg.errors.UniqueViolation as exc:
                raise ResourceAlreadyExists(_detail(exc, "already exists")) from exc
            except psycopg.errors.ForeignKeyViolation as exc:
                raise ResourceDoesNotExist(_detail(exc, "refers to nothing")) from exc
            except psycopg.OperationalError as exc:
                raise ServerUnavailable(f"the catalog database is unavailable: {exc}") from exc
            # After the commit, so a reader that sees the new number also sees the write.
            conn.execute("SELECT nextval('catalog_writes')")

    @contextmanager
    def reading(self) -> Iterator[_PgConnection]:
        """A pooled connection in autocommit (each read statement sees the latest commits)."""
        try:
            with self._pool.connection() as conn:
                yield _PgConnection(conn)
        except psycopg.OperationalError as exc:  # down, restarting, or the pool exhausted
            raise ServerUnavailable(f"the catalog database is unavailable: {exc}") from exc

    def lock(self, db: Any, name: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(name),))

    @property
    def version(self) -> int:
        # A sequence moves outside transactions: every process's commits show at once.
        with self.reading() as db:
            row = db.execute("SELECT last_value FROM catalog_writes").fetchone()
        return int(row[0]) if row is not None else 0

    def close(self) -> None:
        self._pool.close()


def _detail(exc: psycopg.Error, what: str) -> str:
    diag = exc.diag
    return diag.message_detail or diag.message_primary or f"the record {what}"
