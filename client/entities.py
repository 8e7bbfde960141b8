"""MLflow-shaped records returned to users: Experiment, Run, RunInfo, RunData, Metric, ...

Plain immutable data with MLflow's attribute names, built from the server's JSON; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def number(raw: object) -> float:
    """Decode a metric value from the JSON API ("NaN"/"Infinity"/"-Infinity" or a number)."""
    if isinstance(raw, str):
        return _NON_FINITE[raw]
    return float(raw)  # type: ignore[arg-type]


class RunStatus:
    """MLflow's run statuses, as strings."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    ALL = (RUNNING, SCHEDULED, FINISHED, FAILED, KILLED)


class Metric(NamedTuple):
    """One point of a metric (MLflow's attribute names). A NamedTuple, so a history of
    100k points is built in C: ``tuple.__new__(Metric, (key, value, timestamp, step))``."""

    key: str
    value: float
    timestamp: int
    step: int


@dataclass(frozen=True)
class Param:
    key: str
    value: str


@dataclass(frozen=True)
class RunTag:
    key: str
    value: str


@dataclass(frozen=True)
class FileInfo:
    """One artifact of a run (MLflow's FileInfo): ``path`` relative to the run's artifact
    root, ``file_size`` in bytes (None for folders)."""

    path: str
    is_dir: bool
    file_size: int | None = None


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    tags: Mapping[str, str] = field(default_factory=dict)
    creation_time: int | None = None
    last_update_time: int | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Experiment:
        return cls(
            experiment_id=str(raw["experiment_id"]),
            name=raw["name"],
            artifact_location=raw.get("artifact_location", ""),
            lifecycle_stage=raw.get("lifecycle_stage", "active"),
            tags=dict(raw.get("tags") or {}),
            creation_time=raw.get("creation_time"),
            last_update_time=raw.get("last_update_time"),
        )


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str
    status: str
    start_time: int
    end_time: int | None
    lifecycle_stage: str = "active"
    artifact_uri: str = ""
    user_id: str = ""

    @property
    def run_uuid(self) -> str:
        """MLflow's deprecated alias of run_id."""
        return self.run_id

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunInfo:
        return cls(
            run_id=raw["run_id"],
            experiment_id=str(raw["experiment_id"]),
            run_name=raw.get("run_name", ""),
            status=raw["status"],
            start_time=int(raw["start_time"]),
            end_time=None if raw.get("end_time") is None else int(raw["end_time"]),
            lifecycle_stage=raw.get("lifecycle_stage", "active"),
            artifact_uri=raw.get("artifact_uri", ""),
            user_id=raw.get("user_id", ""),
        )


@dataclass(frozen=True)
class RunData:
    """``metrics`` maps each key to its latest value (highest step, then newest timestamp)."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunData:
        metrics = {k: number(v["value"]) for k, v in (raw.get("metrics") or {}).items()}
        return cls(
            metrics=metrics, params=dict(raw.get("params") or {}), tags=dict(raw.get("tags") or {})
        )


@dataclass(frozen=True)
class Run:
    info: RunInfo
    data: RunData

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Run:
        return cls(RunInfo.from_json(raw["info"]), RunData.from_json(raw.get("data") or {}))
