"""The models domain service: the rules of MLflow's LoggedModels and Model Registry (names,
statuses, version numbers, aliases, stages). REST handlers call it; it calls the repository.

Blocking (SQLite commits): call it from a thread. It knows nothing of HTTP or JSON.
"""

from __future__ import annotations

import posixpath
import re
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence

from steppe import validation
from steppe.errors import InvalidParameterValue, ResourceDoesNotExist
from steppe.ingest.catalog import Catalog
from steppe.ingest.models_catalog import (
    LoggedModelRecord,
    ModelMetricRecord,
    ModelRepository,
    ModelVersionRecord,
    RegisteredModelRecord,
)

__all__ = ["LOGGED_MODEL_STATUSES", "STAGES", "ModelService"]

LOGGED_MODEL_STATUSES = (
    "LOGGED_MODEL_PENDING",
    "LOGGED_MODEL_READY",
    "LOGGED_MODEL_UPLOAD_FAILED",
)
#: MLflow's stages, in their canonical spelling (input is case-insensitive).
STAGES = ("None", "Staging", "Production", "Archived")
MAX_ALIAS_LENGTH = 255
#: MLflow's registry tag limits (mlflow.utils.validation); keys as run tag keys otherwise.
MAX_REGISTRY_TAG_KEY_LENGTH = 250
MAX_REGISTRY_TAG_VALUE_LENGTH = 100_000
#: MLflow's logged_model_tags / logged_model_params key column; values are unbounded TEXT.
MAX_LOGGED_MODEL_KEY_LENGTH = 255
_LOGGED_MODEL_NAME_BAD = ("/", ":", ".", "%", '"', "'")
_ALIAS_RE = re.compile(r"[\w\-]*")
_VERSION_ALIAS_RE = re.compile(r"[vV]\d+")


def _now_ms() -> int:
    return int(time.time() * 1000)


def check_model_name(name: str, field: str = "name") -> str:
    """MLflow's registered model name rule: non-empty, no '/' or ':'."""
    if not name.strip():
        raise InvalidParameterValue(field, name, "is a required parameter")
    if "/" in name or ":" in name:
        raise InvalidParameterValue(field, name, "names cannot contain '/' or ':'")
    if posixpath.normpath(name) != name or name.startswith(".."):
        raise InvalidParameterValue(field, name, "names must not resolve to other names as paths")
    return name


def check_registry_tag(key: str, value: str, field: str = "key") -> tuple[str, str]:
    """MLflow's registered-model / model-version tag rule: a key as a run tag key (at most
    250 characters), a value of at most 100,000."""
    validation.check_name(field, key, "tag key")
    if len(value) > MAX_REGISTRY_TAG_VALUE_LENGTH:
        value_field = field.removesuffix("key") + "value" if field.endswith("key") else "value"
        raise InvalidParameterValue(
            value_field,
            value,
            f"tag value exceeds the maximum length of {MAX_REGISTRY_TAG_VALUE_LENGTH} characters",
        )
    return key, value


def check_registry_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    return dict(check_registry_tag(k, v, f"tags[{k!r}].key") for k, v in (tags or {}).items())


def _within(uri: str, root: str) -> bool:
    root = root.rstrip("/")
    return uri == root or uri.startswith(root + "/")


def check_source_path(source: str) -> str:
    """No '..' segment or NUL, even percent-encoded: a source never walks out of its root."""
    text = source
    while (unquoted := urllib.parse.unquote_plus(text)) != text:
        text = unquoted
    if "\x00" in text or ".." in text.split("/"):
        raise InvalidParameterValue(
            "source", source, "must be an absolute location without '..' path segments"
        )
    return source


def check_logged_model_name(name: str) -> str:
    """MLflow's LoggedModel name rule (empty: the server picks one)."""
    if any(c in name for c in _LOGGED_MODEL_NAME_BAD):
        raise InvalidParameterValue(
            "name", name, f"must not contain any of {' '.join(_LOGGED_MODEL_NAME_BAD)}"
        )
    return name


def check_logged_model_pairs(field: str, pairs: Mapping[str, str] | None) -> dict[str, str]:
    """LoggedModel tags or params: non-empty keys of at most 255 characters."""
    for key in pairs or {}:
        if not key or len(key) > MAX_LOGGED_MODEL_KEY_LENGTH:
            raise InvalidParameterValue(
                f"{field}.key", key, f"must be 1 to {MAX_LOGGED_MODEL_KEY_LENGTH} characters"
            )
    return dict(pairs or {})


def check_version(version: str | int) -> int:
    try:
        number = int(version)
    except ValueError:
        raise InvalidParameterValue("version", version, "must be an integer") from None
    return number


def check_alias(alias: str) -> str:
    """MLflow's alias rule: letters, digits, '_' and '-'; at most 255; 'latest' and 'v<N>'
    are reserved."""
    if not alias:
        raise InvalidParameterValue("alias", alias, "is a required parameter")
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidParameterValue(
            "alias", alias, "may contain only letters, digits, underscores and dashes"
        )
    if len(alias) > MAX_ALIAS_LENGTH:
        raise InvalidParameterValue("alias", alias, f"must be at most {MAX_ALIAS_LENGTH} long")
    if alias.lower() == "latest":
        raise InvalidParameterValue("alias", alias, "'latest' (case insensitive) is reserved")
    if _VERSION_ALIAS_RE.fullmatch(alias):
        raise InvalidParameterValue("alias", alias, "version aliases v<N> are reserved")
    return alias


def check_stage(stage: str) -> str:
    for canonical in STAGES:
        if stage.lower() == canonical.lower():
            return canonical
    raise InvalidParameterValue("stage", stage, f"must be one of {', '.join(STAGES)}")


class ModelService:
    """LoggedModels and the registry over a ``ModelRepository`` and the run catalog."""

    def __init__(self, repository: ModelRepository, catalog: Catalog) -> None:
        self.repository = repository
        self._catalog = catalog

    # -- LoggedModels -------------------------------------------------------------------

    def create_logged_model(
        self,
        experiment_id: str,
        name: str,
        model_type: str = "",
        source_run_id: str = "",
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> LoggedModelRecord:
        """A PENDING model whose files go under the experiment's ``models/<id>/artifacts``."""
        check_logged_model_name(name)
        tags = check_logged_model_pairs("tags", tags)
        params = check_logged_model_pairs("params", params)
        experiment = self._catalog.get_experiment(experiment_id)
        if experiment.lifecycle_stage != "active":
            raise InvalidParameterValue(
                "experiment_id", experiment_id, "the experiment must be in the 'active' state"
            )
        if source_run_id:
            self._catalog.get_run(source_run_id)  # 404 for an unknown run
        model_id = f"m-{uuid.uuid4().hex}"
        now = _now_ms()
        record = LoggedModelRecord(
            model_id=model_id,
            experiment_id=experiment_id,
            name=name or f"model-{model_id[2:10]}",
            artifact_uri=f"{experiment.artifact_location.rstrip('/')}/models/{model_id}/artifacts",
            status="LOGGED_MODEL_PENDING",
            model_type=model_type,
            source_run_id=source_run_id,
            status_message="",
            lifecycle_stage="active",
            creation_time=now,
            last_update_time=now,
            tags=tags,
            params=params,
        )
        self.repository.create_logged_model(record)
        return record

    def search_logged_models(self, experiment_ids: Sequence[str]) -> list[LoggedModelRecord]:
        """The active LoggedModels of these experiments (the caller filters and sorts)."""
        if not experiment_ids:
            raise InvalidParameterValue(
                "experiment_ids", list(experiment_ids), "give at least one experiment id"
            )
        return self.repository.list_logged_models(experiment_ids)

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, str]) -> None:
        pairs = check_logged_model_pairs("tags", tags)
        self.repository.set_logged_model_tags(model_id, list(pairs.items()))

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        self.repository.delete_logged_model_tag(model_id, key)

    def log_logged_model_params(self, model_id: str, params: Mapping[str, str]) -> None:
        pairs = check_logged_model_pairs("params", params)
        self.repository.log_logged_model_params(model_id, list(pairs.items()))

    def get_logged_model(self, model_id: str, *, allow_deleted: bool = False) -> LoggedModelRecord:
        record = self.repository.get_logged_model(model_id)
        if record.lifecycle_stage != "active" and not allow_deleted:
            raise ResourceDoesNotExist(f"Logged model with ID '{model_id}' not found.")
        return record

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModelRecord:
        if status not in ("LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED"):
            raise InvalidParameterValue(
                "status", status, "must be LOGGED_MODEL_READY or LOGGED_MODEL_UPLOAD_FAILED"
            )
        self.repository.update_logged_model(model_id, status, _now_ms())
        return self.get_logged_model(model_id)

    def delete_logged_model(self, model_id: str) -> None:
        self.repository.delete_logged_model(model_id, _now_ms())

    def log_model_metrics(self, metrics: Sequence[ModelMetricRecord]) -> None:
        """Points logged with a ``model_id`` (already in the run's stream): the model's
        ``data.metrics``. An unknown model id is a 404, and nothing of the batch is kept."""
        if metrics:
            self.repository.log_model_metrics(metrics)

    def model_metrics(self, model_ids: Sequence[str]) -> dict[str, list[ModelMetricRecord]]:
        return self.repository.model_metrics(model_ids)

    def log_outputs(self, run_id: str, outputs: Sequence[tuple[str, int]]) -> None:
        run = self._catalog.get_run(run_id)
        if run.lifecycle_stage != "active":
            raise InvalidParameterValue("run_id", run_id, "the run must be in the 'active' state")
        self.repository.log_outputs(run_id, outputs)

    # -- registered models --------------------------------------------------------------

    def create_registered_model(
        self, name: str, description: str = "", tags: Mapping[str, str] | None = None
    ) -> RegisteredModelRecord:
        check_model_name(name)
        clean = check_registry_tags(tags)
        now = _now_ms()
        self.repository.create_registered_model(
            RegisteredModelRecord(name, description, "", now, now, clean)
        )
        return self.repository.get_registered_model(name)

    def get_registered_model(self, name: str) -> RegisteredModelRecord:
        return self.repository.get_registered_model(check_model_name(name))

    def search_registered_models(self) -> list[RegisteredModelRecord]:
        """Every registered model by name (the caller filters, sorts and pages)."""
        return self.repository.list_registered_models()

    def delete_registered_model(self, name: str) -> None:
        """With its versions, tags and aliases."""
        self.repository.delete_registered_model(check_model_name(name))

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        check_registry_tag(key, value)
        self.repository.set_registered_model_tag(check_model_name(name), key, value)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self.repository.delete_registered_model_tag(check_model_name(name), key)

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModelRecord:
        check_model_name(name)
        check_model_name(new_name, "new_name")
        self.repository.rename_registered_model(name, new_name, _now_ms())
        return self.repository.get_registered_model(new_name)

    def update_registered_model(self, name: str, description: str) -> RegisteredModelRecord:
        self.repository.update_registered_model(check_model_name(name), description, _now_ms())
        return self.repository.get_registered_model(name)

    def latest_versions(self, name: str, stages: Sequence[str] = ()) -> list[ModelVersionRecord]:
        """The newest version per stage (of ``stages``, or of every stage)."""
        self.repository.get_registered_model(name)
        wanted = {check_stage(s) for s in stages} if stages else set(STAGES)
        latest: dict[str, ModelVersionRecord] = {}
        for version in self.repository.list_model_versions(name):
            if version.current_stage in wanted:
                latest[version.current_stage] = version  # listed by ascending version
        return sorted(latest.values(), key=lambda v: v.version)

    # -- model versions -----------------------------------------------------------------

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str = "",
        model_id: str = "",
        description: str = "",
        run_link: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersionRecord:
        """READY at once (steppe copies nothing); numbered 1, 2, ... never reused."""
        check_model_name(name)
        if not source:
            raise InvalidParameterValue("source", source, "is a required parameter")
        clean_tags = check_registry_tags(tags)
        storage_location, run_id = self._check_source(check_source_path(source), run_id, model_id)
        now = _now_ms()
        version = self.repository.create_model_version(
            ModelVersionRecord(
                name=name,
                version=0,
                source=source,
                storage_location=storage_location,
                run_id=run_id,
                run_link=run_link,
                model_id=model_id,
                description=description,
                user_id="",
                current_stage="None",
                status="READY",
                creation_time=now,
                last_update_time=now,
                tags=clean_tags,
            )
        )
        return self.repository.get_model_version(name, version)

    def _check_source(self, source: str, run_id: str, model_id: str) -> tuple[str, str]:
        """MLflow 3's rule for a version's source (mlflow.server.handlers): ``runs:/<id>/...``
        needs that ``run_id``; ``models:/<model_id>`` that ``model_id``; a location under the
        artifact store must lie inside the run's (or the model's) artifact root; a local path
        is refused (steppe's artifacts are served, never read from the server's disk).
        Returns where the files are and the run id."""
        scheme = urllib.parse.urlsplit(source).scheme
        storage_location = source
        logged = self.get_logged_model(model_id) if model_id else None
        if logged is not None:
            run_id = run_id or logged.source_run_id
        if scheme == "models":
            target = source[len("models:/") :].strip("/")
            if target.startswith("m-") and "/" not in target:
                if logged is None or logged.model_id != target:
                    raise InvalidParameterValue(
                        "model_id", model_id, f"must be {target!r}, the model of source {source!r}"
                    )
                storage_location = logged.artifact_uri
            else:
                ref_name, _, ref = target.partition("/")
                if "@" in ref_name:
                    model_name, _, alias = ref_name.partition("@")
                    referenced = self.version_by_alias(model_name, alias)
                elif ref.lower() == "latest":
                    versions = self.repository.list_model_versions(check_model_name(ref_name))
                    if not versions:
                        raise ResourceDoesNotExist(f"Registered model {ref_name!r} has no versions")
                    referenced = versions[-1]
                else:
                    referenced = self.get_model_version(ref_name, ref)
                storage_location = referenced.storage_location
                run_id = run_id or referenced.run_id
        elif scheme == "runs":
            source_run = source[len("runs:/") :].split("/", 1)[0]
            if logged is not None or not run_id or run_id != source_run:
                raise InvalidParameterValue(
                    "run_id", run_id, f"must be {source_run!r}, the run of source {source!r}"
                )
            self._catalog.get_run(run_id)  # 404 for an unknown run
        elif scheme in ("", "file"):
            raise InvalidParameterValue(
                "source", source, "a local path cannot be a model version source on a server"
            )
        elif scheme == "mlflow-artifacts":
            roots = [logged.artifact_uri] if logged is not None else []
            if run_id and logged is None:
                roots.append(self._catalog.get_run(run_id).artifact_uri)
            if not any(_within(source, root) for root in roots):
                raise InvalidParameterValue(
                    "source",
                    source,
                    "must lie inside the artifact root of the run (run_id) or model (model_id)",
                )
        return storage_location, run_id

    def search_model_versions(self) -> list[ModelVersionRecord]:
        """Every version of every model (the caller filters, sorts and pages)."""
        return self.repository.list_model_versions()

    def get_model_version(self, name: str, version: str | int) -> ModelVersionRecord:
        return self.repository.get_model_version(check_model_name(name), check_version(version))

    def update_model_version(
        self, name: str, version: str | int, description: str
    ) -> ModelVersionRecord:
        number = check_version(version)
        self.repository.update_model_version(name, number, _now_ms(), description=description)
        return self.repository.get_model_version(name, number)

    def transition_stage(
        self, name: str, version: str | int, stage: str, archive_existing_versions: bool
    ) -> ModelVersionRecord:
        number = check_version(version)
        canonical = check_stage(stage)
        if archive_existing_versions and canonical not in ("Staging", "Production"):
            raise InvalidParameterValue(
                "archive_existing_versions",
                True,
                "applies only to a transition into Staging or Production",
            )
        self.repository.update_model_version(
            name,
            number,
            _now_ms(),
            stage=canonical,
            archive_others_in=canonical if archive_existing_versions else None,
        )
        return self.repository.get_model_version(name, number)

    def delete_model_version(self, name: str, version: str | int) -> None:
        self.repository.delete_model_version(check_model_name(name), check_version(version))

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        check_registry_tag(key, value)
        self.repository.set_model_version_tag(
            check_model_name(name), check_version(version), key, value
        )

    def delete_model_version_tag(self, name: str, version: str | int, key: str) -> None:
        self.repository.delete_model_version_tag(name, check_version(version), key)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self.repository.set_alias(
            check_model_name(name), check_alias(alias), check_version(version)
        )

    def delete_alias(self, name: str, alias: str) -> None:
        self.repository.delete_alias(check_model_name(name), alias)

    def version_by_alias(self, name: str, alias: str) -> ModelVersionRecord:
        model = self.repository.get_registered_model(check_model_name(name))
        if alias not in model.aliases:
            raise InvalidParameterValue(
                "alias", alias, f"registered model {name!r} has no alias {alias!r}"
            )
        return self.repository.get_model_version(name, model.aliases[alias])
