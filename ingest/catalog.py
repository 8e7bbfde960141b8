"""The catalog: experiments, runs, params, tags and per-stream watermarks.

``Catalog`` is the seam (embedded SQLite, or PostgreSQL shared by several processes; see
``open_catalog``), made of one small protocol per entity (ExperimentRepository, RunRepository,
DatasetInputs, StreamWatermarks, CompactionLeases); records are plain frozen dataclasses. It
knows nothing of metrics points, gRPC or HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True)
class ExperimentRecord:
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str  # "active" | "deleted"
    creation_time: int  # ms since epoch
    last_update_time: int  # ms since epoch
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    experiment_id: str
    run_name: str
    status: str  # one of RUN_STATUSES
    start_time: int  # ms since epoch
    end_time: int | None  # ms since epoch; None while running
    lifecycle_stage: str  # "active" | "deleted"
    artifact_uri: str
    user_id: str
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInputRecord:
    """A dataset a run used (MLflow's DatasetInput): the dataset's fields and the input's tags
    (e.g. ``mlflow.data.context``). ``schema`` and ``profile`` are JSON text, as MLflow sends."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str = ""
    profile: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


class ExperimentRepository(Protocol):
    """Experiments and their tags."""

    def create_experiment(
        self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None
    ) -> ExperimentRecord: ...

    def get_experiment(self, experiment_id: str) -> ExperimentRecord: ...

    def get_experiment_by_name(self, name: str) -> ExperimentRecord | None: ...

    def list_experiments(self) -> list[ExperimentRecord]: ...

    def rename_experiment(self, experiment_id: str, new_name: str) -> ExperimentRecord:
        """Only an active experiment; the new name must be free."""
        ...

    def delete_experiment(self, experiment_id: str) -> list[str]:
        """Mark an active experiment and all its runs deleted (MLflow); returns the ids of the
        runs this deleted."""
        ...

    def restore_experiment(self, experiment_id: str) -> None:
        """Mark a deleted experiment and all its runs active again (MLflow)."""
        ...

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Only on an active experiment."""
        ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...


class RunRepository(Protocol):
    """Runs, their params and tags, and their lifecycle."""

    def create_run(
        self,
        run_id: str,
        experiment_id: str,
        run_name: str,
        start_time: int,
        tags: Mapping[str, str] | None = None,
        user_id: str = "",
    ) -> RunRecord:
        """Idempotent on run_id: an existing run of the same experiment is returned as is."""
        ...

    def get_run(self, run_id: str) -> RunRecord: ...

    def update_run(
        self,
        run_id: str,
        status: str | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunRecord: ...

    def list_runs(self, experiment_ids: Sequence[str] | None = None) -> list[RunRecord]:
        """Runs of these experiments (all when None), newest start_time first."""
        ...

    def run_exists(self, run_id: str) -> bool: ...

    def log_params(self, run_id: str, params: Sequence[tuple[str, str]]) -> None:
        """Same key and value again is fine; same key with another value is rejected whole."""
        ...

    def set_tags(self, run_id: str, tags: Sequence[tuple[str, str]]) -> None: ...

    def delete_tag(self, run_id: str, key: str) -> None: ...

    def delete_run(self, run_id: str) -> None:
        """Mark the run deleted (its data stays; restore_run brings it back)."""
        ...

    def restore_run(self, run_id: str) -> None: ...


class DatasetInputs(Protocol):
    """The datasets each run used (MLflow's run inputs)."""

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInputRecord]) -> None:
        """Record datasets the run used; a dataset (name, digest) already recorded is kept."""
        ...

    def run_inputs(self, run_ids: Sequence[str]) -> dict[str, list[DatasetInputRecord]]:
        """run_id -> its dataset inputs in logging order (runs without any are absent)."""
        ...


class StreamWatermarks(Protocol):
    """Per metric stream, the highest seq durably in Parquet: what makes resends exactly once.
    The store's only use of the catalog."""

    def stream_watermarks(self) -> dict[str, int]:
        """stream_id -> highest seq durably in Parquet (see ingest.store)."""
        ...

    def stream_last_ms(self) -> dict[str, int]:
        """stream_id -> when its watermark was last saved (ms since epoch; 0: unknown)."""
        ...

    def save_stream_watermarks(
        self, watermarks: Mapping[str, int], last_ms: int | None = None
    ) -> None:
        """Raise each stream's watermark (never lower it), noting ``last_ms`` (default now)."""
        ...

    def expire_stream_watermarks(self, stream_ids: Sequence[str]) -> None:
        """Forget these streams (see ingest.store: only ids that carry their creation time)."""
        ...


class CompactionLeases(Protocol):
    """Named leases with an expiry, so that of several processes sharing the catalog only one
    compacts a given set of files at a time; a holder that dies frees it by expiring."""

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take (or, for its holder, renew) lease ``name`` for ``ttl_s``; True if now held."""
        ...

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s unexpired lease; False if it expired or is another's."""
        ...

    def release_lease(self, name: str, holder: str) -> None: ...

    def lease_holder(self, name: str) -> str | None: ...


class Catalog(
    ExperimentRepository,
    RunRepository,
    DatasetInputs,
    StreamWatermarks,
    CompactionLeases,
    Protocol,
):
    """Durable metadata store: the repositories above in one transactional store. Every write
    is committed before the method returns.

    Errors are ``steppe.errors`` exceptions: ResourceDoesNotExist for unknown ids,
    ResourceAlreadyExists for a taken experiment name, InvalidParameterValue for a param
    re-logged with a different value or a bad status. Inputs arrive already validated
    for names and lengths (steppe.validation); the catalog checks existence and conflicts.
    Code that needs one part takes that protocol (the store takes StreamWatermarks).
    """

    @property
    def version(self) -> int:
        """Grows with every committed write, by this process or another sharing the
        catalog, so readers (here or elsewhere) can cache derived tables."""
        ...

    def close(self) -> None: ...


class CatalogUnavailable(RuntimeError):
    """The catalog named by ``--catalog`` cannot be used: an unknown kind, its driver not
    installed, unreachable, or a schema newer than this steppe knows. The message shows the
    DSN with any password redacted."""


_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, in URL or ``key=value`` form.

    >>> redact_dsn("postgresql://steppe:hunter2@db:5432/steppe")
    'postgresql://steppe:***@db:5432/steppe'
    """
    if "://" not in dsn:
        return _PASSWORD_KV.sub(r"\1***", dsn)
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostinfo}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_catalog(dsn: str | None, sqlite_path: Path) -> Catalog:
    """The catalog ``dsn`` names (``postgresql://...``), or the SQLite file ``sqlite_path``
    when it is None (the embedded default). psycopg is imported only for PostgreSQL."""
    if dsn is None:
        from steppe.ingest.sqlite_catalog import SqliteCatalog

        return SqliteCatalog(sqlite_path)
    if not dsn.startswith(_POSTGRES_SCHEMES):
        scheme = dsn.split("://", 1)[0] if "://" in dsn else "(none)"
        raise CatalogUnavailable(
            f"--catalog: unsupported scheme {scheme!r}: expected postgresql://USER@HOST:PORT/DB"
        )
    try:
        from steppe.ingest.postgres_catalog import PostgresCatalog
    except ImportError as exc:
        raise CatalogUnavailable(
            f"--catalog postgresql://... needs psycopg and psycopg-pool ({exc}): "
            "pip install 'steppe[postgres]'"
        ) from exc
    return PostgresCatalog(dsn)
