"""The embedded catalog: experiments, runs, params, tags and stream watermarks in SQLite.

Implements ``steppe.ingest.catalog.Catalog``. One connection, used from one thread at a
time (the server's event loop); WAL journal mode so outside readers never block it.
"""

from __future__ import annotations

import functools
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import cast

from steppe.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from steppe.ingest.catalog import (
    DEFAULT_EXPERIMENT_ID,
    DEFAULT_EXPERIMENT_NAME,
    RUN_STATUSES,
    DatasetInputRecord,
    ExperimentRecord,
    RunRecord,
)
from steppe.ingest.models_catalog import MODELS_SCHEMA, SqliteModelRepository

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
"""

_ADJECTIVES = [
    "amber",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "crisp",
    "eager",
    "fast",
    "gentle",
    "grand",
    "keen",
    "lively",
    "lucid",
    "merry",
    "nimble",
    "noble",
    "quick",
    "quiet",
    "rapid",
    "sharp",
    "silent",
    "steady",
    "swift",
    "vivid",
    "wise",
]
_NOUNS = [
    "antelope",
    "bison",
    "crane",
    "eagle",
    "falcon",
    "gazelle",
    "hawk",
    "horse",
    "ibex",
    "kestrel",
    "lark",
    "lynx",
    "marmot",
    "onager",
    "owl",
    "saiga",
    "sparrow",
    "steppe",
    "tarpan",
    "wolf",
    "yak",
]


#: A row of the runs table, in column order (RunRecord's positional fields).
_RunRow = tuple[str, str, str, str, int, "int | None", str, str, str]


def _now_ms() -> int:
    return int(time.time() * 1000)


def readable_run_name() -> str:
    """A name like MLflow's generated ones: adjective-noun-number."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"


class SqliteCatalog:
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
        if read_only:
            uri = self._path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            return
        # check_same_thread=False: the server calls from its loop and from executor threads,
        # always one at a time under self._lock.
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx() as db:
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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._version += 1

    @property
    def version(self) -> int:
        # Own commits count in _version; SQLite's data_version moves when any other
        # connection, in this process or another, commits to the file.
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
        return self._version + int(row[0])

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction on this file, for the per-entity repositories sharing it."""
        return self._tx()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection under the catalog's lock, for a repository's reads."""
        with self._lock:
            yield self._db

    @functools.cached_property
    def models(self) -> SqliteModelRepository:
        """LoggedModels and the Model Registry, in this same file."""
        return SqliteModelRepository(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # experiments -------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None
    ) -> ExperimentRecord:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone():
                raise ResourceAlreadyExists(f"Experiment '{name}' already exists.")
            row = db.execute(
                "SELECT COALESCE(MAX(CAST(experiment_id AS INTEGER)), 0) + 1 FROM experiments"
            ).fetchone()
            experiment_id = str(row[0])
            now = _now_ms()
            location = artifact_location or f"{self._artifact_root}/{experiment_id}"
            db.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, 'active', ?, ?)",
                (experiment_id, name, location, now, now),
            )
            for key, value in (tags or {}).items():
                db.execute(
                    "INSERT INTO experiment_tags VALUES (?, ?, ?)", (experiment_id, key, value)
                )
        return self.get_experiment(experiment_id)

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM experiments WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
            if row is None:
                raise ResourceDoesNotExist(f"No experiment with id={experiment_id!r} exists.")
            return self._experiment(row)

    def get_experiment_by_name(self, name: str) -> ExperimentRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM experiments WHERE name = ?", (name,)).fetchone()
            return None if row is None else self._experiment(row)

    def list_experiments(self) -> list[ExperimentRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM experiments ORDER BY CAST(experiment_id AS INTEGER)"
            ).fetchall()
            return [self._experiment(row) for row in rows]

    def _experiment(self, row: tuple[str, str, str, str, int, int]) -> ExperimentRecord:
        tags = dict(
            self._db.execute(
                "SELECT key, value FROM experiment_tags WHERE experiment_id = ?", (row[0],)
            ).fetchall()
        )
        return ExperimentRecord(*row, tags=tags)

    def _experiment_stage(self, db: sqlite3.Connection, experiment_id: str) -> str:
        row = db.execute(
            "SELECT lifecycle_stage FROM experiments WHERE experiment_id = ?", (experiment_id,)
        ).fetchone()
        if row is None:
            raise ResourceDoesNotExist(f"No experiment with id={experiment_id!r} exists.")
        return str(row[0])

    def _require_active_experiment(self, db: sqlite3.Connection, experiment_id: str) -> None:
        stage = self._experiment_stage(db, experiment_id)
        if stage != "active":
            raise InvalidParameterValue(
                "experiment_id",
                experiment_id,
                f"the experiment must be in the 'active' state; it is {stage}",
            )

    def rename_experiment(self, experiment_id: str, new_name: str) -> ExperimentRecord:
        with self._tx() as db:
            self._require_active_experiment(db, experiment_id)
            taken = db.execute(
                "SELECT experiment_id FROM experiments WHERE name = ?", (new_name,)
            ).fetchone()
            if taken is not None and taken[0] != experiment_id:
                raise ResourceAlreadyExists(f"Experiment '{new_name}' already exists.")
            db.execute(
                "UPDATE experiments SET name = ?, last_update_time = ? WHERE experiment_id = ?",
                (new_name, _now_ms(), experiment_id),
            )
        return self.get_experiment(experiment_id)

    def delete_experiment(self, experiment_id: str) -> list[str]:
        with self._tx() as db:
            if self._experiment_stage(db, experiment_id) != "active":
                raise ResourceDoesNotExist(f"No active experiment with id={experiment_id!r}.")
            db.execute(
                "UPDATE experiments SET lifecycle_stage = 'deleted', last_update_time = ? "
                "WHERE experiment_id = ?",
                (_now_ms(), experiment_id),
            )
            rows = db.execute(
                "SELECT run_id FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'",
                (experiment_id,),
            ).fetchall()
            db.execute(
                "UPDATE runs SET lifecycle_stage = 'deleted' WHERE experiment_id = ?",
                (experiment_id,),
            )
        return [row[0] for row in rows]

    def restore_experiment(self, experiment_id: str) -> None:
        with self._tx() as db:
            if self._experiment_stage(db, experiment_id) != "deleted":
                raise ResourceDoesNotExist(f"No deleted experiment with id={experiment_id!r}.")
            db.execute(
                "UPDATE experiments SET lifecycle_stage = 'active', last_update_time = ? "
                "WHERE experiment_id = ?",
                (_now_ms(), experiment_id),
            )
            db.execute(
                "UPDATE runs SET lifecycle_stage = 'active' WHERE experiment_id = ?",
                (experiment_id,),
            )

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        with self._tx() as db:
            self._require_active_experiment(db, experiment_id)
            db.execute(
                "INSERT OR REPLACE INTO experiment_tags VALUES (?, ?, ?)",
                (experiment_id, key, value),
            )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        with self._tx() as db:
            self._require_active_experiment(db, experiment_id)
            cur = db.execute(
                "DELETE FROM experiment_tags WHERE experiment_id = ? AND key = ?",
                (experiment_id, key),
            )
            if cur.rowcount == 0:
                raise ResourceDoesNotExist(
                    f"No tag with name: {key} in experiment with id {experiment_id}"
                )

    # runs --------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        experiment_id: str,
        run_name: str,
        start_time: int,
        tags: Mapping[str, str] | None = None,
        user_id: str = "",
    ) -> RunRecord:
        with self._tx() as db:
            existing = db.execute(
                "SELECT experiment_id FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if existing is not None:
                if existing[0] != experiment_id:
                    raise ResourceAlreadyExists(
                        f"Run '{run_id}' already exists in experiment {existing[0]}."
                    )
            else:
                exp = db.execute(
                    "SELECT lifecycle_stage, artifact_location FROM experiments "
                    "WHERE experiment_id = ?",
                    (experiment_id,),
                ).fetchone()
                if exp is None:
                    raise ResourceDoesNotExist(f"No experiment with id={experiment_id!r} exists.")
                if exp[0] != "active":
                    raise InvalidParameterValue(
                        "experiment_id", experiment_id, "the experiment is deleted"
                    )
                name = run_name or (tags or {}).get("mlflow.runName") or readable_run_name()
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, 'RUNNING', ?, NULL, 'active', ?, ?)",
                    (
                        run_id,
                        experiment_id,
                        name,
                        start_time,
                        f"{exp[1].rstrip('/')}/{run_id}/artifacts",
                        user_id,
                    ),
                )
                merged = {"mlflow.runName": name, **(tags or {})}
                if user_id:
                    merged.setdefault("mlflow.user", user_id)
                db.executemany(
                    "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                    [(run_id, k, v) for k, v in merged.items()],
                )
                db.execute(
                    "UPDATE experiments SET last_update_time = ? WHERE experiment_id = ?",
                    (_now_ms(), experiment_id),
                )
        return self.get_run(run_id)

    def run_exists(self, run_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                is not None
            )

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            return self._run(row)

    def list_runs(self, experiment_ids: Sequence[str] | None = None) -> list[RunRecord]:
        with self._lock:
            if experiment_ids is None:
                rows = self._db.execute(
                    "SELECT * FROM runs ORDER BY start_time DESC, run_id"
                ).fetchall()
            else:
                marks = ",".join("?" * len(experiment_ids))
                rows = self._db.execute(
                    f"SELECT * FROM runs WHERE experiment_id IN ({marks}) "
                    "ORDER BY start_time DESC, run_id",
                    tuple(experiment_ids),
                ).fetchall()
            params = self._grouped("params", [r[0] for r in rows])
            tags = self._grouped("tags", [r[0] for r in rows])
            return [
                RunRecord(
                    *cast(_RunRow, row), params=params.get(row[0], {}), tags=tags.get(row[0], {})
                )
                for row in rows
            ]

    def _grouped(self, table: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if not run_ids:
            return out
        # One scan instead of a query per run; table is one of two literals above.
        for run_id, key, value in self._db.execute(f"SELECT run_id, key, value FROM {table}"):
            out.setdefault(run_id, {})[key] = value
        return out

    def _run(self, row: _RunRow) -> RunRecord:
        run_id = row[0]
        params = dict(self._db.execute("SELECT key, value FROM params WHERE run_id = ?", (run_id,)))
        tags = dict(self._db.execute("SELECT key, value FROM tags WHERE run_id = ?", (run_id,)))
        return RunRecord(*row, params=params, tags=tags)

    def update_run(
        self,
        run_id: str,
        status: str | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunRecord:
        if status is not None and status not in RUN_STATUSES:
            raise InvalidParameterValue("status", status, f"must be one of {RUN_STATUSES}")
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            if status is not None:
                db.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))
                if status == "RUNNING":
                    db.execute("UPDATE runs SET end_time = NULL WHERE run_id = ?", (run_id,))
            if end_time is not None:
                db.execute("UPDATE runs SET end_time = ? WHERE run_id = ?", (end_time, run_id))
            if run_name:
                db.execute("UPDATE runs SET run_name = ? WHERE run_id = ?", (run_name, run_id))
                db.execute(
                    "INSERT OR REPLACE INTO tags VALUES (?, 'mlflow.runName', ?)",
                    (run_id, run_name),
                )
        return self.get_run(run_id)

    def log_params(self, run_id: str, params: Sequence[tuple[str, str]]) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            seen: dict[str, str] = {}
            for index, (key, value) in enumerate(params):
                if seen.get(key, value) != value:
                    raise InvalidParameterValue(
                        f"params[{index}].value",
                        value,
                        f"param '{key}' appears twice in one request with different values",
                    )
                seen[key] = value
                row = db.execute(
                    "SELECT value FROM params WHERE run_id = ? AND key = ?", (run_id, key)
                ).fetchone()
                if row is not None and row[0] != value:
                    raise InvalidParameterValue(
                        f"params[{index}].value",
                        value,
                        f"param '{key}' of run '{run_id}' was already logged with value "
                        f"{row[0]!r}; params are immutable once logged (use a new run or "
                        "a nested run for another value)",
                    )
                db.execute("INSERT OR IGNORE INTO params VALUES (?, ?, ?)", (run_id, key, value))

    def set_tags(self, run_id: str, tags: Sequence[tuple[str, str]]) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            db.executemany(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                [(run_id, k, v) for k, v in tags],
            )
            for key, value in tags:
                if key == "mlflow.runName":
                    db.execute("UPDATE runs SET run_name = ? WHERE run_id = ?", (value, run_id))

    def delete_tag(self, run_id: str, key: str) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            cur = db.execute("DELETE FROM tags WHERE run_id = ? AND key = ?", (run_id, key))
            if cur.rowcount == 0:
                raise ResourceDoesNotExist(f"No tag with name: {key} in run with id {run_id}")

    def delete_run(self, run_id: str) -> None:
        self._set_run_stage(run_id, "deleted")

    def restore_run(self, run_id: str) -> None:
        self._set_run_stage(run_id, "active")

    def _set_run_stage(self, run_id: str, stage: str) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE runs SET lifecycle_stage = ? WHERE run_id = ?", (stage, run_id)
            )
            if cur.rowcount == 0:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInputRecord]) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            row = db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM run_inputs WHERE run_id = ?", (run_id,)
            ).fetchone()
            seq = int(row[0])
            for item in inputs:
                seq += 1
                db.execute(
                    "INSERT OR IGNORE INTO run_inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        item.name,
                        item.digest,
                        item.source_type,
                        item.source,
                        item.schema,
                        item.profile,
                        json.dumps(dict(item.tags)),
                        seq,
                    ),
                )

    def run_inputs(self, run_ids: Sequence[str]) -> dict[str, list[DatasetInputRecord]]:
        out: dict[str, list[DatasetInputRecord]] = {}
        if not run_ids:
            return out
        with self._lock:
            for start in range(0, len(run_ids), 500):  # SQLite's bound-parameter limit
                chunk = list(run_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT run_id, name, digest, source_type, source, schema, profile, tags "
                    f"FROM run_inputs WHERE run_id IN ({marks}) ORDER BY run_id, seq",
                    chunk,
                ).fetchall()
                for run_id, name, digest, source_type, source, schema, profile, tags in rows:
                    out.setdefault(run_id, []).append(
                        DatasetInputRecord(
                            name, digest, source_type, source, schema, profile, json.loads(tags)
                        )
                    )
        return out

    # stream watermarks -------------------------------------------------------------

    def stream_watermarks(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT stream_id, seq FROM stream_watermarks"))

    def stream_last_ms(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT stream_id, last_ms FROM stream_watermarks"))

    def save_stream_watermarks(
        self, watermarks: Mapping[str, int], last_ms: int | None = None
    ) -> None:
        now = _now_ms() if last_ms is None else last_ms
        with self._tx() as db:
            db.executemany(
                "INSERT INTO stream_watermarks VALUES (?, ?, ?) ON CONFLICT(stream_id) "
                "DO UPDATE SET seq = MAX(seq, excluded.seq), "
                "last_ms = MAX(last_ms, excluded.last_ms)",
                [(stream_id, seq, now) for stream_id, seq in watermarks.items()],
            )

    def expire_stream_watermarks(self, stream_ids: Sequence[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM stream_watermarks WHERE stream_id = ?", [(s,) for s in stream_ids]
            )
