"""The catalog's models part: LoggedModels and the Model Registry (registered models, versions,
aliases, tags) as records, a repository protocol and its SQL implementation (the SQL both
catalog backends, SQLite and PostgreSQL, agree on).

Storage only: existence, conflicts and atomic numbering. The rules (names, aliases, stages) are
steppe.ingest.models'. It knows nothing of HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from steppe.errors import ResourceAlreadyExists, ResourceDoesNotExist

if TYPE_CHECKING:
    from steppe.ingest.sql_catalog import SqlConnection

__all__ = [
    "MODELS_SCHEMA",
    "LoggedModelRecord",
    "ModelMetricRecord",
    "ModelRepository",
    "ModelVersionRecord",
    "RegisteredModelRecord",
    "SqlModelRepository",
]

#: Created with the catalog's own tables (steppe.ingest.sqlite_catalog).
MODELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS logged_models (
    model_id          TEXT PRIMARY KEY,
    experiment_id     TEXT NOT NULL,
    name              TEXT NOT NULL,
    artifact_uri      TEXT NOT NULL,
    status            TEXT NOT NULL,
    model_type        TEXT NOT NULL,
    source_run_id     TEXT NOT NULL,
    status_message    TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL,
    creation_time     INTEGER NOT NULL,
    last_update_time  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS logged_models_by_experiment ON logged_models(experiment_id);
CREATE TABLE IF NOT EXISTS logged_model_tags (
    model_id TEXT NOT NULL REFERENCES logged_models(model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE IF NOT EXISTS logged_model_params (
    model_id TEXT NOT NULL REFERENCES logged_models(model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE IF NOT EXISTS logged_model_metrics (
    model_id       TEXT NOT NULL,
    key            TEXT NOT NULL,
    value          REAL,  -- SQLite keeps NaN as NULL
    timestamp      INTEGER NOT NULL,
    step           INTEGER NOT NULL,
    run_id         TEXT NOT NULL,
    dataset_name   TEXT NOT NULL,
    dataset_digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logged_model_metrics_by_model ON logged_model_metrics(model_id);
CREATE TABLE IF NOT EXISTS run_outputs (
    run_id   TEXT NOT NULL,
    model_id TEXT NOT NULL,
    step     INTEGER NOT NULL,
    PRIMARY KEY (run_id, model_id)
);
CREATE TABLE IF NOT EXISTS registered_models (
    name             TEXT PRIMARY KEY,
    description      TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    last_version     INTEGER NOT NULL,
    creation_time    INTEGER NOT NULL,
    last_update_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS registered_model_tags (
    name  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS model_versions (
    name             TEXT NOT NULL,
    version          INTEGER NOT NULL,
    source           TEXT NOT NULL,
    storage_location TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    run_link         TEXT NOT NULL,
    model_id         TEXT NOT NULL,
    description      TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    current_stage    TEXT NOT NULL,
    status           TEXT NOT NULL,
    creation_time    INTEGER NOT NULL,
    last_update_time INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS model_version_tags (
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (name, version, key)
);
CREATE TABLE IF NOT EXISTS registered_model_aliases (
    name    TEXT NOT NULL,
    alias   TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
);
"""


@dataclass(frozen=True)
class LoggedModelRecord:
    model_id: str
    experiment_id: str
    name: str
    artifact_uri: str
    status: str  # LOGGED_MODEL_PENDING | LOGGED_MODEL_READY | LOGGED_MODEL_UPLOAD_FAILED
    model_type: str
    source_run_id: str
    status_message: str
    lifecycle_stage: str  # "active" | "deleted"
    creation_time: int  # ms since epoch
    last_update_time: int  # ms since epoch
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelMetricRecord:
    """One metric point logged with a ``model_id`` (MLflow 3's LoggedModel metrics)."""

    model_id: str
    key: str
    value: float
    timestamp: int
    step: int
    run_id: str
    dataset_name: str = ""
    dataset_digest: str = ""


@dataclass(frozen=True)
class ModelVersionRecord:
    name: str
    version: int
    source: str
    storage_location: str  # where the files are: source, resolved when it is a models:/ URI
    run_id: str
    run_link: str
    model_id: str
    description: str
    user_id: str
    current_stage: str  # None | Staging | Production | Archived
    status: str  # READY
    creation_time: int
    last_update_time: int
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegisteredModelRecord:
    name: str
    description: str
    user_id: str
    creation_time: int
    last_update_time: int
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)  # alias -> version


class ModelRepository(Protocol):
    """Durable LoggedModels and registry. Every write is one committed transaction; unknown
    names/ids raise ResourceDoesNotExist, taken names ResourceAlreadyExists."""

    # LoggedModels
    def create_logged_model(self, record: LoggedModelRecord) -> None: ...
    def get_logged_model(self, model_id: str) -> LoggedModelRecord: ...
    def list_logged_models(self, experiment_ids: Sequence[str]) -> list[LoggedModelRecord]: ...
    def update_logged_model(self, model_id: str, status: str, now_ms: int) -> None: ...
    def delete_logged_model(self, model_id: str, now_ms: int) -> None: ...
    def set_logged_model_tags(self, model_id: str, tags: Sequence[tuple[str, str]]) -> None: ...
    def delete_logged_model_tag(self, model_id: str, key: str) -> None: ...
    def log_logged_model_params(self, model_id: str, params: Sequence[tuple[str, str]]) -> None: ...
    def log_outputs(self, run_id: str, outputs: Sequence[tuple[str, int]]) -> None: ...
    def run_outputs(self, run_ids: Sequence[str]) -> dict[str, list[tuple[str, int]]]: ...
    def log_model_metrics(self, metrics: Sequence[ModelMetricRecord]) -> None: ...
    def model_metrics(self, model_ids: Sequence[str]) -> dict[str, list[ModelMetricRecord]]: ...

    # registry
    def create_registered_model(self, record: RegisteredModelRecord) -> None: ...
    def get_registered_model(self, name: str) -> RegisteredModelRecord: ...
    def list_registered_models(self) -> list[RegisteredModelRecord]: ...
    def rename_registered_model(self, name: str, new_name: str, now_ms: int) -> None: ...
    def update_registered_model(self, name: str, description: str, now_ms: int) -> None: ...
    def delete_registered_model(self, name: str) -> None: ...
    def set_registered_model_tag(self, name: str, key: str, value: str) -> None: ...
    def delete_registered_model_tag(self, name: str, key: str) -> None: ...
    def create_model_version(self, record: ModelVersionRecord) -> int:
        """Insert with the next version number (one more than any ever given); returns it."""
        ...

    def get_model_version(self, name: str, version: int) -> ModelVersionRecord: ...
    def list_model_versions(self, name: str | None = None) -> list[ModelVersionRecord]: ...
    def update_model_version(
        self,
        name: str,
        version: int,
        now_ms: int,
        *,
        description: str | None = None,
        stage: str | None = None,
        archive_others_in: str | None = None,
    ) -> None:
        """With ``archive_others_in``, other versions in that stage move to Archived too."""
        ...

    def delete_model_version(self, name: str, version: int) -> None:
        """Also drops the version's tags and the aliases pointing at it."""
        ...

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None: ...
    def delete_model_version_tag(self, name: str, version: int, key: str) -> None: ...
    def set_alias(self, name: str, alias: str, version: int) -> None: ...
    def delete_alias(self, name: str, alias: str) -> None: ...


class _Connection(Protocol):
    """What a catalog (steppe.ingest.sql_catalog.SqlCatalog) lends its repositories."""

    def transaction(self) -> AbstractContextManager[SqlConnection]: ...
    def reading(self) -> AbstractContextManager[SqlConnection]: ...


_LM_COLUMNS = (
    "model_id, experiment_id, name, artifact_uri, status, model_type, source_run_id, "
    "status_message, lifecycle_stage, creation_time, last_update_time"
)
_MV_COLUMNS = (
    "name, version, source, storage_location, run_id, run_link, model_id, description, "
    "user_id, current_stage, status, creation_time, last_update_time"
)


class SqlModelRepository:
    """``ModelRepository`` on the catalog's connections (same database, same transactions)."""

    def __init__(self, catalog: _Connection) -> None:
        self._catalog = catalog

    # -- LoggedModels -------------------------------------------------------------------

    def create_logged_model(self, record: LoggedModelRecord) -> None:
        with self._catalog.transaction() as db:
            db.execute(
                f"INSERT INTO logged_models ({_LM_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.model_id,
                    record.experiment_id,
                    record.name,
                    record.artifact_uri,
                    record.status,
                    record.model_type,
                    record.source_run_id,
                    record.status_message,
                    record.lifecycle_stage,
                    record.creation_time,
                    record.last_update_time,
                ),
            )
            db.executemany(
                "INSERT INTO logged_model_tags VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                [(record.model_id, k, v) for k, v in record.tags.items()],
            )
            db.executemany(
                "INSERT INTO logged_model_params VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                [(record.model_id, k, v) for k, v in record.params.items()],
            )

    def _logged_model(self, db: SqlConnection, row: tuple[object, ...]) -> LoggedModelRecord:
        model_id = str(row[0])
        tags = dict(
            db.execute(
                "SELECT key, value FROM logged_model_tags WHERE model_id = ? ORDER BY key",
                (model_id,),
            ).fetchall()
        )
        params = dict(
            db.execute(
                "SELECT key, value FROM logged_model_params WHERE model_id = ? ORDER BY key",
                (model_id,),
            ).fetchall()
        )
        return LoggedModelRecord(*row, tags=tags, params=params)  # type: ignore[arg-type, misc]

    @staticmethod
    def _require_logged_model(db: SqlConnection, model_id: str) -> None:
        if (
            db.execute(
                "SELECT 1 FROM logged_models WHERE model_id = ? AND lifecycle_stage = 'active'",
                (model_id,),
            ).fetchone()
            is None
        ):
            raise ResourceDoesNotExist(f"Logged model with ID '{model_id}' not found.")

    def get_logged_model(self, model_id: str) -> LoggedModelRecord:
        with self._catalog.reading() as db:
            row = db.execute(
                f"SELECT {_LM_COLUMNS} FROM logged_models WHERE model_id = ?", (model_id,)
            ).fetchone()
            if row is None:
                raise ResourceDoesNotExist(f"Logged model with ID '{model_id}' not found.")
            return self._logged_model(db, row)

    def list_logged_models(self, experiment_ids: Sequence[str]) -> list[LoggedModelRecord]:
        marks = ", ".join("?" for _ in experiment_ids)
        with self._catalog.reading() as db:
            rows = db.execute(
                f"SELECT {_LM_COLUMNS} FROM logged_models WHERE lifecycle_stage = 'active' "
                f"AND experiment_id IN ({marks})",
                tuple(experiment_ids),
            ).fetchall()
            return [self._logged_model(db, row) for row in rows]

    def update_logged_model(self, model_id: str, status: str, now_ms: int) -> None:
        with self._catalog.transaction() as db:
            self._require_logged_model(db, model_id)
            db.execute(
                "UPDATE logged_models SET status = ?, last_update_time = ? WHERE model_id = ?",
                (status, now_ms, model_id),
            )

    def delete_logged_model(self, model_id: str, now_ms: int) -> None:
        with self._catalog.transaction() as db:
            self._require_logged_model(db, model_id)
            db.execute(
                "UPDATE logged_models SET lifecycle_stage = 'deleted', last_update_time = ? "
                "WHERE model_id = ?",
                (now_ms, model_id),
            )

    def set_logged_model_tags(self, model_id: str, tags: Sequence[tuple[str, str]]) -> None:
        with self._catalog.transaction() as db:
            self._require_logged_model(db, model_id)
            db.executemany(
                "INSERT INTO logged_model_tags VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                [(model_id, k, v) for k, v in tags],
            )

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        with self._catalog.transaction() as db:
            self._require_logged_model(db, model_id)
            gone = db.execute(
                "DELETE FROM logged_model_tags WHERE model_id = ? AND key = ?", (model_id, key)
            ).rowcount
            if not gone:
                raise ResourceDoesNotExist(
                    f"No tag with key {key!r} found for logged model {model_id!r}."
                )

    def log_logged_model_params(self, model_id: str, params: Sequence[tuple[str, str]]) -> None:
        with self._catalog.transaction() as db:
            self._require_logged_model(db, model_id)
            db.executemany(
                "INSERT INTO logged_model_params VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                [(model_id, k, v) for k, v in params],
            )

    def log_outputs(self, run_id: str, outputs: Sequence[tuple[str, int]]) -> None:
        with self._catalog.transaction() as db:
            for model_id, _ in outputs:
                self._require_logged_model(db, model_id)
            db.executemany(
                "INSERT INTO run_outputs (run_id, model_id, step) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, model_id) DO UPDATE SET step = excluded.step",
                [(run_id, model_id, step) for model_id, step in outputs],
            )

    def run_outputs(self, run_ids: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {}
        if not run_ids:
            return out
        marks = ", ".join("?" for _ in run_ids)
        with self._catalog.reading() as db:
            for run_id, model_id, step in db.execute(
                f"SELECT run_id, model_id, step FROM run_outputs WHERE run_id IN ({marks}) "
                "ORDER BY rowid",
                tuple(run_ids),
            ):
                out.setdefault(run_id, []).append((model_id, step))
        return out

    def log_model_metrics(self, metrics: Sequence[ModelMetricRecord]) -> None:
        with self._catalog.transaction() as db:
            for model_id in {m.model_id for m in metrics}:
                self._require_logged_model(db, model_id)
            db.executemany(
                "INSERT INTO logged_model_metrics (model_id, key, value, timestamp, step, run_id, "
                "dataset_name, dataset_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.model_id,
                        m.key,
                        m.value,
                        m.timestamp,
                        m.step,
                        m.run_id,
                        m.dataset_name,
                        m.dataset_digest,
                    )
                    for m in metrics
                ],
            )

    def model_metrics(self, model_ids: Sequence[str]) -> dict[str, list[ModelMetricRecord]]:
        out: dict[str, list[ModelMetricRecord]] = {}
        if not model_ids:
            return out
        marks = ", ".join("?" for _ in model_ids)
        with self._catalog.reading() as db:
            for row in db.execute(
                "SELECT model_id, key, value, timestamp, step, run_id, dataset_name, "
                f"dataset_digest FROM logged_model_metrics WHERE model_id IN ({marks}) "
                "ORDER BY rowid",
                tuple(model_ids),
            ):
                value = math.nan if row[2] is None else float(row[2])
                out.setdefault(row[0], []).append(
                    ModelMetricRecord(row[0], row[1], value, *row[3:])
                )
        return out

    # -- registered models --------------------------------------------------------------

    @staticmethod
    def _require_registered(db: SqlConnection, name: str) -> None:
        if db.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,)).fetchone() is None:
            raise ResourceDoesNotExist(f"Registered Model with name={name} not found")

    def create_registered_model(self, record: RegisteredModelRecord) -> None:
        with self._catalog.transaction() as db:
            # Insert-or-nothing rather than check-then-insert: a name taken by another
            # connection at the same moment is then "already exists" too.
            if not db.execute(
                "INSERT INTO registered_models VALUES (?, ?, ?, 0, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (
                    record.name,
                    record.description,
                    record.user_id,
                    record.creation_time,
                    record.last_update_time,
                ),
            ).rowcount:
                raise ResourceAlreadyExists(
                    f"Registered Model (name={record.name}) already exists."
                )
            db.executemany(
                "INSERT INTO registered_model_tags VALUES (?, ?, ?) "
                "ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                [(record.name, k, v) for k, v in record.tags.items()],
            )

    def _registered(self, db: SqlConnection, row: tuple[object, ...]) -> RegisteredModelRecord:
        name = str(row[0])
        tags = dict(
            db.execute(
                "SELECT key, value FROM registered_model_tags WHERE name = ? ORDER BY key", (name,)
            ).fetchall()
        )
        aliases = dict(
            db.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = ? ORDER BY alias",
                (name,),
            ).fetchall()
        )
        return RegisteredModelRecord(
            name=name,
            description=str(row[1]),
            user_id=str(row[2]),
            creation_time=int(str(row[3])),
            last_update_time=int(str(row[4])),
            tags=tags,
            aliases=aliases,
        )

    _RM_SELECT = (
        "SELECT name, description, user_id, creation_time, last_update_time FROM registered_models"
    )

    def get_registered_model(self, name: str) -> RegisteredModelRecord:
        with self._catalog.reading() as db:
            row = db.execute(f"{self._RM_SELECT} WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ResourceDoesNotExist(f"Registered Model with name={name} not found")
            return self._registered(db, row)

    def list_registered_models(self) -> list[RegisteredModelRecord]:
        with self._catalog.reading() as db:
            rows = db.execute(f"{self._RM_SELECT} ORDER BY name").fetchall()
            return [self._registered(db, row) for row in rows]

    def rename_registered_model(self, name: str, new_name: str, now_ms: int) -> None:
        with self._catalog.transaction() as db:
            self._require_registered(db, name)
            if db.execute("SELECT 1 FROM registered_models WHERE name = ?", (new_name,)).fetchone():
                raise ResourceAlreadyExists(f"Registered Model (name={new_name}) already exists.")
            for table in (
                "registered_models",
                "registered_model_tags",
                "model_versions",
                "model_version_tags",
                "registered_model_aliases",
            ):
                db.execute(f"UPDATE {table} SET name = ? WHERE name = ?", (new_name, name))
            db.execute(
                "UPDATE registered_models SET last_update_time = ? WHERE name = ?",
                (now_ms, new_name),
            )

    def update_registered_model(self, name: str, description: str, now_ms: int) -> None:
        with self._catalog.transaction() as db:
            self._require_registered(db, name)
            db.execute(
                "UPDATE registered_models SET description = ?, last_update_time = ? WHERE name = ?",
                (description, now_ms, name),
            )

    def delete_registered_model(self, name: str) -> None:
        with self._catalog.transaction() as db:
            self._require_registered(db, name)
            for table in (
                "registered_models",
                "registered_model_tags",
                "model_versions",
                "model_version_tags",
                "registered_model_aliases",
            ):
                db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        with self._catalog.transaction() as db:
            self._require_registered(db, name)
            db.execute(
                "INSERT INTO registered_model_tags VALUES (?, ?, ?) "
                "ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                (name, key, value),
            )

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        with self._catalog.transaction() as db:
            self._require_registered(db, name)
            db.execute("DELETE FROM registered_model_tags WHERE name = ? AND key = ?", (name, key))

    # -- model versions -----------------------------------------------------------------

    @staticmethod
    def _require_version(db: SqlConnection, name: str, version: int) -> None:
        if (
            db.execute(
                "SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            is None
        ):
            raise ResourceDoesNotExist(f"Model Version (name={name}, version={version}) not found")

    def create_model_version(self, record: ModelVersionRecord) -> int:
        with self._catalog.transaction() as db:
            self._require_registered(db, record.name)
            # The counter lives on the registered model, so a deleted version's number is
            # never handed out again; the UPDATE locks the row, so concurrent writers (other
            # connections to PostgreSQL) wait for it and each get their own number.
            row = db.execute(
                "UPDATE registered_models SET last_version = last_version + 1, "
                "last_update_time = ? WHERE name = ? RETURNING last_version",
                (record.creation_time, record.name),
            ).fetchone()
            if row is None:  # deleted since the check above, by another connection
                raise ResourceDoesNotExist(f"Registered Model with name={record.name} not found")
            (version,) = row
            db.execute(
                f"INSERT INTO model_versions ({_MV_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.name,
                    version,
                    record.source,
                    record.storage_location,
                    record.run_id,
                    record.run_link,
                    record.model_id,
                    record.description,
                    record.user_id,
                    record.current_stage,
                    record.status,
                    record.creation_time,
                    record.last_update_time,
                ),
            )
            db.executemany(
                "INSERT INTO model_version_tags VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
                [(record.name, version, k, v) for k, v in record.tags.items()],
            )
            return int(version)

    def _version(self, db: SqlConnection, row: tuple[object, ...]) -> ModelVersionRecord:
        name, version = str(row[0]), int(str(row[1]))
        tags = dict(
            db.execute(
                "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ? "
                "ORDER BY key",
                (name, version),
            ).fetchall()
        )
        aliases = tuple(
            alias
            for (alias,) in db.execute(
                "SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ? "
                "ORDER BY alias",
                (name, version),
            )
        )
        return ModelVersionRecord(*row, tags=tags, aliases=aliases)  # type: ignore[arg-type, misc]

    def get_model_version(self, name: str, version: int) -> ModelVersionRecord:
        with self._catalog.reading() as db:
            row = db.execute(
                f"SELECT {_MV_COLUMNS} FROM model_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if row is None:
                raise ResourceDoesNotExist(
                    f"Model Version (name={name}, version={version}) not found"
                )
            return self._version(db, row)

    def list_model_versions(self, name: str | None = None) -> list[ModelVersionRecord]:
        with self._catalog.reading() as db:
            query = f"SELECT {_MV_COLUMNS} FROM model_versions"
            rows = (
                db.execute(query + " WHERE name = ? ORDER BY version", (name,))
                if name is not None
                else db.execute(query + " ORDER BY name, version")
            ).fetchall()
            return [self._version(db, row) for row in rows]

    def update_model_version(
        self,
        name: str,
        version: int,
        now_ms: int,
        *,
        description: str | None = None,
        stage: str | None = None,
        archive_others_in: str | None = None,
    ) -> None:
        with self._catalog.transaction() as db:
            self._require_version(db, name, version)
            if description is not None:
                db.execute(
                    "UPDATE model_versions SET description = ?, last_update_time = ? "
                    "WHERE name = ? AND version = ?",
                    (description, now_ms, name, version),
                )
            if stage is not None:
                if archive_others_in is not None:
                    db.execute(
                        "UPDATE model_versions SET current_stage = 'Archived', "
                        "last_update_time = ? WHERE name = ? AND version != ? "
                        "AND current_stage = ?",
                        (now_ms, name, version, archive_others_in),
                    )
                db.execute(
                    "UPDATE model_versions SET current_stage = ?, last_update_time = ? "
                    "WHERE name = ? AND version = ?",
                    (stage, now_ms, name, version),
                )
            db.execute(
                "UPDATE registered_models SET last_update_time = ? WHERE name = ?", (now_ms, name)
            )

    def delete_model_version(self, name: str, version: int) -> None:
        with self._catalog.transaction() as db:
            self._require_version(db, name, version)
            for table in ("model_versions", "model_version_tags", "registered_model_aliases"):
                db.execute(f"DELETE FROM {table} WHERE name = ? AND version = ?", (name, version))

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        with self._catalog.transaction() as db:
            self._require_version(db, name, version)
            db.execute(
                "INSERT INTO model_version_tags VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
                (name, version, key, value),
            )

    def delete_model_version_tag(self, name: str, version: int, key: str) -> None:
        with self._catalog.transaction() as db:
            self._require_version(db, name, version)
            db.execute(
                "DELETE FROM model_version_tags WHERE name = ? AND version = ? AND key = ?",
                (name, version, key),
            )

    def set_alias(self, name: str, alias: str, version: int) -> None:
        with self._catalog.transaction() as db:
            self._require_version(db, name, version)
            db.execute(
                "INSERT INTO registered_model_aliases VALUES (?, ?, ?) "
                "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
                (name, alias, version),
            )

    def delete_alias(self, name: str, alias: str) -> None:
        with self._catalog.transaction() as db:
            self._require_registered(db, name)
            db.execute(
                "DELETE FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias)
            )
