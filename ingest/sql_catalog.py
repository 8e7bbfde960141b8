"""The catalog's SQL, shared by its SQLite and PostgreSQL backends: every repository method of
``steppe.ingest.catalog.Catalog`` written once, in the SQL both dialects agree on.

A backend lends a connection per transaction or read (``SqlConnection``: sqlite3's ``execute``
and ``executemany`` with ``?`` parameters); it knows nothing of HTTP, gRPC or metric points.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, cast

from steppe.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from steppe.ingest.catalog import (
    RUN_STATUSES,
    DatasetInputRecord,
    ExperimentRecord,
    RunRecord,
)
from steppe.ingest.models_catalog import SqlModelRepository


class SqlCursor(Protocol):
    """What a statement returns (sqlite3's and psycopg's cursors both are one)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    """A connection as the shared SQL uses it: ``?`` parameters, sqlite3's method names."""

    def execute(self, sql: str, parameters: Any = (), /) -> SqlCursor: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> object: ...


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


class SqlCatalog(ABC):
    """``Catalog`` over a backend's connections. ``artifact_root`` prefixes new artifact URIs.

    Writes run in ``transaction()``; each one checks, then writes, in a way that stays right
    when another connection writes at the same time (PostgreSQL's READ COMMITTED): upserts
    instead of check-then-insert, ``lock()`` where a number is allocated."""

    _artifact_root: str

    @abstractmethod
    def transaction(self) -> AbstractContextManager[SqlConnection]:
        """One write transaction, committed when the block ends (rolled back on an error)."""

    @abstractmethod
    def reading(self) -> AbstractContextManager[SqlConnection]:
        """A connection for reads."""

    @functools.cached_property
    def models(self) -> SqlModelRepository:
        """LoggedModels and the Model Registry, in this same database."""
        return SqlModelRepository(self)

    @abstractmethod
    def lock(self, db: SqlConnection, name: str) -> None:
        """Serialise the rest of this transaction with other transactions taking ``name``."""

    # experiments -------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None
    ) -> ExperimentRecord:
        with self.transaction() as db:
            self.lock(db, "experiments")  # the name check and the id's allocation
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
        with self.reading() as db:
            row = db.execute(
                "SELECT * FROM experiments WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
            if row is None:
                raise ResourceDoesNotExist(f"No experiment with id={experiment_id!r} exists.")
            return self._experiment(db, row)

    def get_experiment_by_name(self, name: str) -> ExperimentRecord | None:
        with self.reading() as db:
            row = db.execute("SELECT * FROM experiments WHERE name = ?", (name,)).fetchone()
            return None if row is None else self._experiment(db, row)

    def list_experiments(self) -> list[ExperimentRecord]:
        with self.reading() as db:
            rows = db.execute(
                "SELECT * FROM experiments ORDER BY CAST(experiment_id AS INTEGER)"
            ).fetchall()
            return [self._experiment(db, row) for row in rows]

    def _experiment(
        self, db: SqlConnection, row: tuple[str, str, str, str, int, int]
    ) -> ExperimentRecord:
        tags = dict(
            db.execute(
                "SELECT key, value FROM experiment_tags WHERE experiment_id = ?", (row[0],)
            ).fetchall()
        )
        return ExperimentRecord(*row, tags=tags)

    def _experiment_stage(self, db: SqlConnection, experiment_id: str) -> str:
        row = db.execute(
            "SELECT lifecycle_stage FROM experiments WHERE experiment_id = ?", (experiment_id,)
        ).fetchone()
        if row is None:
            raise ResourceDoesNotExist(f"No experiment with id={experiment_id!r} exists.")
        return str(row[0])

    def _require_active_experiment(self, db: SqlConnection, experiment_id: str) -> None:
        stage = self._experiment_stage(db, experiment_id)
        if stage != "active":
            raise InvalidParameterValue(
                "experiment_id",
                experiment_id,
                f"the experiment must be in the 'active' state; it is {stage}",
            )

    def rename_experiment(self, experiment_id: str, new_name: str) -> ExperimentRecord:
        with self.transaction() as db:
            self.lock(db, "experiments")
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
        with self.transaction() as db:
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
        with self.transaction() as db:
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
        with self.transaction() as db:
            self._require_active_experiment(db, experiment_id)
            db.execute(
                "INSERT INTO experiment_tags VALUES (?, ?, ?) "
                "ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
                (experiment_id, key, value),
            )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        with self.transaction() as db:
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
        with self.transaction() as db:
            if not self._insert_run(db, run_id, experiment_id, run_name, start_time, tags, user_id):
                # Already there (or created by another connection a moment ago).
                (existing,) = db.execute(
                    "SELECT experiment_id FROM runs WHERE run_id = ?", (run_id,)
                ).fetchone()
                if existing != experiment_id:
                    raise ResourceAlreadyExists(
                        f"Run '{run_id}' already exists in experiment {existing}."
                    )
        return self.get_run(run_id)

    def _insert_run(
        self,
        db: SqlConnection,
        run_id: str,
        experiment_id: str,
        run_name: str,
        start_time: int,
        tags: Mapping[str, str] | None,
        user_id: str,
    ) -> bool:
        """Insert a new run with its first tags; False (and nothing written) if it exists."""
        if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None:
            return False
        exp = db.execute(
            "SELECT lifecycle_stage, artifact_location FROM experiments WHERE experiment_id = ?",
            (experiment_id,),
        ).fetchone()
        if exp is None:
            raise ResourceDoesNotExist(f"No experiment with id={experiment_id!r} exists.")
        if exp[0] != "active":
            raise InvalidParameterValue("experiment_id", experiment_id, "the experiment is deleted")
        name = run_name or (tags or {}).get("mlflow.runName") or readable_run_name()
        inserted = db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, 'RUNNING', ?, NULL, 'active', ?, ?) "
            "ON CONFLICT (run_id) DO NOTHING",
            (
                run_id,
                experiment_id,
                name,
                start_time,
                f"{exp[1].rstrip('/')}/{run_id}/artifacts",
                user_id,
            ),
        ).rowcount
        if not inserted:  # another connection's insert won (READ COMMITTED)
            return False
        merged = {"mlflow.runName": name, **(tags or {})}
        if user_id:
            merged.setdefault("mlflow.user", user_id)
        db.executemany(
            "INSERT INTO tags VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            [(run_id, k, v) for k, v in merged.items()],
        )
        db.execute(
            "UPDATE experiments SET last_update_time = ? WHERE experiment_id = ?",
            (_now_ms(), experiment_id),
        )
        return True

    def run_exists(self, run_id: str) -> bool:
        with self.reading() as db:
            return (
                db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
            )

    def get_run(self, run_id: str) -> RunRecord:
        with self.reading() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            return self._run(db, row)

    def list_runs(self, experiment_ids: Sequence[str] | None = None) -> list[RunRecord]:
        with self.reading() as db:
            if experiment_ids is None:
                rows = db.execute("SELECT * FROM runs ORDER BY start_time DESC, run_id").fetchall()
            else:
                marks = ",".join("?" * len(experiment_ids))
                rows = db.execute(
                    f"SELECT * FROM runs WHERE experiment_id IN ({marks}) "
                    "ORDER BY start_time DESC, run_id",
                    tuple(experiment_ids),
                ).fetchall()
            params = self._grouped(db, "params", [r[0] for r in rows])
            tags = self._grouped(db, "tags", [r[0] for r in rows])
            return [
                RunRecord(
                    *cast(_RunRow, row), params=params.get(row[0], {}), tags=tags.get(row[0], {})
                )
                for row in rows
            ]

    def _grouped(
        self, db: SqlConnection, table: str, run_ids: list[str]
    ) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if not run_ids:
            return out
        # One scan instead of a query per run; table is one of two literals above.
        for run_id, key, value in db.execute(f"SELECT run_id, key, value FROM {table}"):
            out.setdefault(run_id, {})[key] = value
        return out

    def _run(self, db: SqlConnection, row: _RunRow) -> RunRecord:
        run_id = row[0]
        params = dict(db.execute("SELECT key, value FROM params WHERE run_id = ?", (run_id,)))
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_id = ?", (run_id,)))
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
        with self.transaction() as db:
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
                    "INSERT INTO tags VALUES (?, 'mlflow.runName', ?) "
                    "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                    (run_id, run_name),
                )
        return self.get_run(run_id)

    def log_params(self, run_id: str, params: Sequence[tuple[str, str]]) -> None:
        with self.transaction() as db:
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
                # Insert first, compare after: a concurrent writer's value is then seen (its
                # insert commits before ours proceeds), never silently ignored.
                if db.execute(
                    "INSERT INTO params VALUES (?, ?, ?) ON CONFLICT (run_id, key) DO NOTHING",
                    (run_id, key, value),
                ).rowcount:
                    continue
                (logged,) = db.execute(
                    "SELECT value FROM params WHERE run_id = ? AND key = ?", (run_id, key)
                ).fetchone()
                if logged != value:
                    raise InvalidParameterValue(
                        f"params[{index}].value",
                        value,
                        f"param '{key}' of run '{run_id}' was already logged with value "
                        f"{logged!r}; params are immutable once logged (use a new run or "
                        "a nested run for another value)",
                    )

    def set_tags(self, run_id: str, tags: Sequence[tuple[str, str]]) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            db.executemany(
                "INSERT INTO tags VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                [(run_id, k, v) for k, v in tags],
            )
            for key, value in tags:
                if key == "mlflow.runName":
                    db.execute("UPDATE runs SET run_name = ? WHERE run_id = ?", (value, run_id))

    def delete_tag(self, run_id: str, key: str) -> None:
        with self.transaction() as db:
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
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE runs SET lifecycle_stage = ? WHERE run_id = ?", (stage, run_id)
            )
            if cur.rowcount == 0:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInputRecord]) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise ResourceDoesNotExist(f"Run with id={run_id!r} not found")
            row = db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM run_inputs WHERE run_id = ?", (run_id,)
            ).fetchone()
            seq = int(row[0])
            for item in inputs:
                seq += 1
                db.execute(
                    "INSERT INTO run_inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, name, digest) DO NOTHING",
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
        with self.reading() as db:
            for start in range(0, len(run_ids), 500):  # SQLite's bound-parameter limit
                chunk = list(run_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
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
        with self.reading() as db:
            return dict(db.execute("SELECT stream_id, seq FROM stream_watermarks"))

    def stream_last_ms(self) -> dict[str, int]:
        with self.reading() as db:
            return dict(db.execute("SELECT stream_id, last_ms FROM stream_watermarks"))

    def save_stream_watermarks(
        self, watermarks: Mapping[str, int], last_ms: int | None = None
    ) -> None:
        now = _now_ms() if last_ms is None else last_ms
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO stream_watermarks VALUES (?, ?, ?) ON CONFLICT(stream_id) "
                "DO UPDATE SET seq = CASE WHEN excluded.seq > stream_watermarks.seq "
                "THEN excluded.seq ELSE stream_watermarks.seq END, "
                "last_ms = CASE WHEN excluded.last_ms > stream_watermarks.last_ms "
                "THEN excluded.last_ms ELSE stream_watermarks.last_ms END",
                [(stream_id, seq, now) for stream_id, seq in watermarks.items()],
            )

    def expire_stream_watermarks(self, stream_ids: Sequence[str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM stream_watermarks WHERE stream_id = ?", [(s,) for s in stream_ids]
            )

    # compaction leases -------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take lease ``name`` for ``holder`` until ``ttl_s`` from now, if it is free, expired
        or already ``holder``'s (then this renews it). True if ``holder`` now holds it."""
        now = _now_ms()
        with self.transaction() as db:
            return bool(
                db.execute(
                    "INSERT INTO compaction_leases VALUES (?, ?, ?) ON CONFLICT (name) "
                    "DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms "
                    "WHERE compaction_leases.holder = excluded.holder "
                    "OR compaction_leases.expires_ms <= ?",
                    (name, holder, now + int(ttl_s * 1000), now),
                ).rowcount
            )

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s unexpired lease; False if it expired or is someone else's."""
        now = _now_ms()
        with self.transaction() as db:
            return bool(
                db.execute(
                    "UPDATE compaction_leases SET expires_ms = ? "
                    "WHERE name = ? AND holder = ? AND expires_ms > ?",
                    (now + int(ttl_s * 1000), name, holder, now),
                ).rowcount
            )

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (nothing happens if ``holder`` does not hold it)."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM compaction_leases WHERE name = ? AND holder = ?", (name, holder)
            )

    def lease_holder(self, name: str) -> str | None:
        """Who holds lease ``name`` now (None: nobody, or it expired)."""
        with self.reading() as db:
            row = db.execute(
                "SELECT holder FROM compaction_leases WHERE name = ? AND expires_ms > ?",
                (name, _now_ms()),
            ).fetchone()
        return None if row is None else str(row[0])
