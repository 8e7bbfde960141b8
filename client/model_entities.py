"""MLflow-shaped records of the Model Registry and of LoggedModels: RegisteredModel,
ModelVersion, LoggedModel, ... with MLflow's attribute names, built from the MLflow REST
API's JSON (the server's ``/api/2.0/mlflow`` routes); no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from steppe.entities import Metric, number

__all__ = [
    "LoggedModel",
    "LoggedModelStatus",
    "ModelVersion",
    "ModelVersionTag",
    "RegisteredModel",
    "RegisteredModelAlias",
    "RegisteredModelTag",
]


def _pairs(raw: object) -> dict[str, str]:
    items: Sequence[Mapping[str, Any]] = raw if isinstance(raw, list) else []
    return {str(t["key"]): str(t.get("value", "")) for t in items}


@dataclass(frozen=True)
class RegisteredModelTag:
    key: str
    value: str


@dataclass(frozen=True)
class ModelVersionTag:
    key: str
    value: str


@dataclass(frozen=True)
class RegisteredModelAlias:
    alias: str
    version: str


class LoggedModelStatus:
    """MLflow's LoggedModel statuses, as strings."""

    PENDING = "LOGGED_MODEL_PENDING"
    READY = "LOGGED_MODEL_READY"
    FAILED = "LOGGED_MODEL_UPLOAD_FAILED"
    ALL = (PENDING, READY, FAILED)


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model. ``version`` is a string ("1", "2", ...) as in
    MLflow's REST client; ``tags`` a dict; ``aliases`` the aliases pointing at it."""

    name: str
    version: str
    creation_timestamp: int
    last_updated_timestamp: int | None = None
    description: str = ""
    user_id: str = ""
    current_stage: str = "None"
    source: str = ""
    run_id: str | None = None
    status: str = "READY"
    status_message: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_link: str | None = None
    aliases: list[str] = field(default_factory=list)
    model_id: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelVersion:
        return cls(
            name=str(raw["name"]),
            version=str(raw["version"]),
            creation_timestamp=int(raw.get("creation_timestamp", 0)),
            last_updated_timestamp=_int_or_none(raw.get("last_updated_timestamp")),
            description=str(raw.get("description", "")),
            user_id=str(raw.get("user_id", "")),
            current_stage=str(raw.get("current_stage", "None")),
            source=str(raw.get("source", "")),
            run_id=raw.get("run_id") or None,
            status=str(raw.get("status", "READY")),
            status_message=raw.get("status_message") or None,
            tags=_pairs(raw.get("tags")),
            run_link=raw.get("run_link") or None,
            aliases=[str(a) for a in raw.get("aliases", [])],
            model_id=raw.get("model_id") or None,
        )


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model: ``tags`` a dict, ``aliases`` alias -> version (strings),
    ``latest_versions`` the newest version per stage."""

    name: str
    creation_timestamp: int
    last_updated_timestamp: int | None = None
    description: str = ""
    latest_versions: list[ModelVersion] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RegisteredModel:
        return cls(
            name=str(raw["name"]),
            creation_timestamp=int(raw.get("creation_timestamp", 0)),
            last_updated_timestamp=_int_or_none(raw.get("last_updated_timestamp")),
            description=str(raw.get("description", "")),
            latest_versions=[ModelVersion.from_json(v) for v in raw.get("latest_versions", [])],
            tags=_pairs(raw.get("tags")),
            aliases={str(a["alias"]): str(a["version"]) for a in raw.get("aliases", [])},
        )


@dataclass(frozen=True)
class LoggedModel:
    """An MLflow 3 LoggedModel: its files live under ``artifact_location``; ``metrics`` are
    the points logged with its ``model_id``."""

    experiment_id: str
    model_id: str
    name: str
    artifact_location: str
    creation_timestamp: int
    last_updated_timestamp: int
    status: str = LoggedModelStatus.PENDING
    model_type: str | None = None
    source_run_id: str | None = None
    status_message: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LoggedModel:
        info, data = raw["info"], raw.get("data", {})
        return cls(
            experiment_id=str(info["experiment_id"]),
            model_id=str(info["model_id"]),
            name=str(info.get("name", "")),
            artifact_location=str(info.get("artifact_uri", "")),
            creation_timestamp=int(info.get("creation_timestamp_ms", 0)),
            last_updated_timestamp=int(info.get("last_updated_timestamp_ms", 0)),
            status=str(info.get("status", LoggedModelStatus.PENDING)),
            model_type=info.get("model_type") or None,
            source_run_id=info.get("source_run_id") or None,
            status_message=info.get("status_message") or None,
            tags=_pairs(info.get("tags")),
            params=_pairs(data.get("params")),
            metrics=[
                Metric(
                    str(m["key"]),
                    number(m["value"]),
                    int(m.get("timestamp", 0)),
                    int(m.get("step", 0)),
                )
                for m in data.get("metrics", [])
            ],
        )


def _int_or_none(raw: object) -> int | None:
    return None if raw is None else int(raw)  # type: ignore[call-overload]
