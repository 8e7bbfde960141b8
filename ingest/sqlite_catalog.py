"""The embedded catalog: experiments, runs, params, tags and stream watermarks in SQLite.

Implements ``steppe.ingest.catalog.Catalog`` (the SQL is steppe.ingest.sql_catalog's). One
connection, used from one thread at a time (the server's event loop); WAL journal mode so
outside readers never block it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from steppe.ingest.catalog import DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME
from steppe.ingest.models_catalog import MODELS_SCHEMA
from steppe.ingest.sql_catalog import SqlCatalog, SqlConnection, _now_ms, readable_run_name

__all__ = ["SqliteCatalog", "readable_run_name"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id     TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL DEFAULT 'active',
    creation_time     INTEGER NOT NULL,
    last_update_time  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_tags (
    experiment_id TEXT NOT NULL REFERENCES experiments(experiment_id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    experiment_id   TEXT NOT NULL REFERENCES experiments(experiment_id),
    run_name        TEXT NOT NULL,
    status          TEXT NOT NULL,
    start_time      INTEGER NOT NULL,
    end_time        INTEGER,
    lifecycle_stage TEXT NOT NULL DEFAULT 'active',
    artifact_uri    TEXT NOT NULL,
    user_id         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment_id, start_time);
CREATE TABLE IF NOT EXISTS params (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS tags (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS run_inputs (
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source      TEXT NOT NULL,
    schema      TEXT NOT NULL,
    profile     TEXT NOT NULL,
    tags        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (run_id, name, digest)
);
CREATE TABLE IF NOT EXISTS stream_watermarks (
    stream_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    last_ms   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS compaction_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
"""


class SqliteCatalog(SqlCatalog):
    """``Catalog`` on one SQLite file. ``artifact_root`` prefixes new artifact URIs."""

    def __init__(
        self, path: str | Path, artifact_root: str = "mlflow-artifacts:", *, read_only: bool = False
    ) -> None:
        """Open (and create, migrate) the catalog at ``path``. ``read_only=True`` opens an
        existing file with SQLite's ``mode=ro`` and writes nothing, ever (for ``steppe sql``
        on a data dir no server owns); its write methods then fail."""
        self._path = Path(path)
        self._artifact_root = artifact_root.rstrip("/")
        self._lock = threading.RLock()
        self._version = 0
        self._reading: _Locked
        if read_only:
            uri = self._path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._reading = _Locked(self._lock, self._db)
            return
        # check_same_thread=False: the server calls from its loop and from executor threads,
        # always one at a time under self._lock.
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._reading = _Locked(self._lock, self._db)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.transaction() as db:
            for statement in (_SCHEMA + MODELS_SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(stream_watermarks)")}
            if "last_ms" not in columns:  # a data dir of a steppe before stream expiry
                db.execute(
                    "ALTER TABLE stream_watermarks ADD COLUMN last_ms INTEGER NOT NULL DEFAULT 0"
                )
            if (
                db.execute(
                    "SELECT 1 FROM experiments WHERE experiment_id = ?", (DEFAULT_EXPERIMENT_ID,)
                ).fetchone()
                is None
            ):
                now = _now_ms()
                db.execute(
                    "INSERT INTO experiments VALUES (?, ?, ?, 'active', ?, ?)",
                    (
                        DEFAULT_EXPERIMENT_ID,
                        DEFAULT_EXPERIMENT_NAME,
                        f"{self._artifact_root}/{DEFAULT_EXPERIMENT_ID}",
                        now,
                        now,
                    ),
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this file (``BEGIN IMMEDIATE``: one writer at a time)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._version += 1

    def lock(self, db: SqlConnection, name: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already makes each write transaction the only one."""

    @property
    def version(self) -> int:
        # Own commits count in _version; SQLite's data_version moves when any other
        # connection, in this process or another, commits to the file.
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
        return self._version + int(row[0])

    def reading(self) -> _Locked:
        """The connection under the catalog's lock, for a repository's reads."""
        return self._reading

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Locked:
    """``with`` the lock held, the connection: a plain class, cheaper per read than a
    generator-based context manager (reads are the catalog's most frequent calls)."""

    __slots__ = ("_db", "_lock")

    def __init__(self, lock: threading.RLock, db: sqlite3.Connection) -> None:
        self._lock = lock
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        return self._db

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
