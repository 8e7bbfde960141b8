"""The one write side for experiments, runs, params and tags: MLflow's rules and limits.

The gRPC servicer (ingest/service.py) and the MLflow REST handlers (query/mlflow_api.py) only
convert their wire form to these calls and back; neither validates on its own. No I/O here
beyond the catalog; blocking (SQLite commits fsync): call from a worker thread.

Rules, where the two doors stood before this module, and the rule now (MLflow's, read from
mlflow/utils/validation.py, mlflow/server/handlers.py, mlflow/store/tracking/sqlalchemy_store.py):

rule                                 gRPC before        REST before         now (both doors)
-----------------------------------  -----------------  ------------------  -----------------
experiment name empty                refused            refused             refused
experiment name all spaces           refused            accepted            accepted (MLflow)
experiment name > 500 chars          refused            refused             refused
experiment tag value > 8,000         cut at 8,000       kept                kept (MLflow)
experiment tag value > 20,000        cut at 8,000       refused             refused (MLflow)
key names (regex, 250, path-safe)    check_name         check_name          check_name
run tag / param value too long       cut 8,000 / 6,000  cut 8,000 / 6,000   cut (MLflow)
run_name != mlflow.runName tag       accepted           refused             refused (MLflow)
write to a deleted run (param, tag,  accepted           refused             refused (MLflow's
  delete-tag, update-run)                                                   _check_run_is_active)
delete a tag the run does not have   not found          not found           not found
param re-logged, another value       refused (catalog)  refused (catalog)   refused (catalog)
tags of a deleted experiment         refused (catalog)  refused (catalog)   refused (catalog)
set_experiment on a deleted name     refused            (no endpoint)       refused
MAX_EXPERIMENT_TAG_VAL_LENGTH        steppe.validation  a second copy       steppe.validation

The limits table is ``steppe.validation`` (client/validation.py): the client checks at the
call site with it and this module imports it, so there is one table and one experiment-name
rule (``check_experiment_name``: MLflow's, on both sides; an all-spaces name is a name).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence

from steppe.errors import InvalidParameterValue, SteppeError
from steppe.ingest.catalog import (
    DEFAULT_EXPERIMENT_ID,
    Catalog,
    ExperimentRecord,
    RunRecord,
)
from steppe.validation import (
    MAX_EXPERIMENT_TAG_VAL_LENGTH,
    check_experiment_id,
    check_experiment_name,
    check_name,
    check_param_value,
    check_run_id,
    check_tag_value,
    check_timestamp,
)

__all__ = [
    "RUN_NAME_TAG",
    "ExperimentService",
    "RunService",
    "run_params",
    "run_tags",
]

#: The tag MLflow keeps a run's name in.
RUN_NAME_TAG = "mlflow.runName"


def _experiment_tag(key_field: str, key: object, value_field: str, value: str) -> tuple[str, str]:
    if key is None or key == "":
        raise InvalidParameterValue(key_field, key, "is a required parameter")
    key = check_name(key_field, key, "tag key")
    if len(value) > MAX_EXPERIMENT_TAG_VAL_LENGTH:
        raise InvalidParameterValue(
            value_field,
            value,
            f"exceeds the maximum length of {MAX_EXPERIMENT_TAG_VAL_LENGTH} characters",
        )
    return key, value


def run_tags(tags: Iterable[tuple[object, object]], field: str = "tags") -> list[tuple[str, str]]:
    """Checked run tags: MLflow's key rule, values cut at MAX_TAG_VAL_LENGTH (as MLflow does)."""
    pairs = []
    for i, (key, value) in enumerate(tags):
        if key is None or key == "":
            raise InvalidParameterValue(f"{field}[{i}].key", key, "is a required parameter")
        pairs.append(
            (
                check_name(f"{field}[{i}].key", key, "tag key"),
                check_tag_value(f"{field}[{i}].value", value),
            )
        )
    return pairs


def run_params(
    params: Iterable[tuple[object, object]], field: str = "params"
) -> list[tuple[str, str]]:
    """Checked params: MLflow's key rule, values cut at MAX_PARAM_VAL_LENGTH (as MLflow does)."""
    checked = []
    for i, (key, value) in enumerate(params):
        if key is None or key == "":
            raise InvalidParameterValue(f"{field}[{i}].key", key, "is a required parameter")
        checked.append(
            (
                check_name(f"{field}[{i}].key", key, "param key"),
                check_param_value(f"{field}[{i}].value", value),
            )
        )
    return checked


class ExperimentService:
    """Experiments: create, find or create by name, rename, delete/restore, tags.

    Example::

        experiments = ExperimentService(catalog)
        record = experiments.create("iris", "", [("team", "vision")])
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def create(
        self, name: object, artifact_location: str, tags: Sequence[tuple[object, str]]
    ) -> ExperimentRecord:
        name = check_experiment_name("name", name)
        checked = dict(
            _experiment_tag(f"tags[{i}].key", k, f"tags[{i}].value", v)
            for i, (k, v) in enumerate(tags)
        )
        return self._catalog.create_experiment(name, artifact_location, checked)

    def get_or_create(self, name: object) -> ExperimentRecord:
        """The active experiment of this name, created if there is none (set_experiment)."""
        name = check_experiment_name("name", name)
        record = self._catalog.get_experiment_by_name(name)
        if record is None:
            try:
                record = self._catalog.create_experiment(name)
            except SteppeError:
                # Lost a race with another creator: take theirs.
                record = self._catalog.get_experiment_by_name(name)
                if record is None:
                    raise
        if record.lifecycle_stage != "active":
            raise InvalidParameterValue(
                "name", name, "the experiment is deleted; restore it or choose another name"
            )
        return record

    def get(self, experiment_id: object) -> ExperimentRecord:
        return self._catalog.get_experiment(check_experiment_id("experiment_id", experiment_id))

    def rename(self, experiment_id: object, new_name: object) -> None:
        experiment_id = check_experiment_id("experiment_id", experiment_id)
        new_name = check_experiment_name("new_name", new_name)
        self._catalog.rename_experiment(experiment_id, new_name)

    def delete(self, experiment_id: object) -> list[str]:
        """Delete the experiment and its runs; returns the ids of the runs it deleted."""
        return self._catalog.delete_experiment(check_experiment_id("experiment_id", experiment_id))

    def restore(self, experiment_id: object) -> None:
        self._catalog.restore_experiment(check_experiment_id("experiment_id", experiment_id))

    def set_tag(self, experiment_id: object, key: object, value: str) -> None:
        experiment_id = check_experiment_id("experiment_id", experiment_id)
        key, value = _experiment_tag("key", key, "value", value)
        self._catalog.set_experiment_tag(experiment_id, key, value)

    def delete_tag(self, experiment_id: object, key: str) -> None:
        experiment_id = check_experiment_id("experiment_id", experiment_id)
        self._catalog.delete_experiment_tag(experiment_id, key)


class RunService:
    """Runs and their params and tags. Every write but create and restore needs an active
    run (MLflow's _check_run_is_active): a deleted run answers INVALID_PARAMETER_VALUE.

    Example::

        runs = RunService(catalog)
        run = runs.create(experiment_id="0", run_name="r", start_time=None, tags=[], user_id="")
        runs.log_params(run.run_id, [("lr", "0.1")])
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def active(self, run_id: object) -> RunRecord:
        """The run, which must exist (404) and be active (400), as MLflow checks before writes."""
        run = self._catalog.get_run(check_run_id("run_id", run_id))
        if run.lifecycle_stage != "active":
            raise InvalidParameterValue(
                "run_id",
                run.run_id,
                f"the run must be in the 'active' state; it is {run.lifecycle_stage}",
            )
        return run

    def create(
        self,
        *,
        experiment_id: str,
        run_name: str,
        start_time: int | None,
        tags: Sequence[tuple[object, str]],
        user_id: str,
        run_id: str = "",
    ) -> RunRecord:
        run_id = check_run_id("run_id", run_id or uuid.uuid4().hex)
        experiment_id = check_experiment_id("experiment_id", experiment_id or DEFAULT_EXPERIMENT_ID)
        start = check_timestamp("start_time", start_time if start_time else _now_ms())
        checked = dict(run_tags(tags, "tags"))
        tag_name = checked.get(RUN_NAME_TAG)
        if run_name and tag_name and run_name != tag_name:
            raise InvalidParameterValue(
                "run_name",
                run_name,
                f"both run_name and the {RUN_NAME_TAG} tag are given, with different values "
                f"(tag: {tag_name!r})",
            )
        return self._catalog.create_run(
            run_id, experiment_id, run_name or tag_name or "", start, checked, user_id
        )

    def get(self, run_id: object) -> RunRecord:
        return self._catalog.get_run(check_run_id("run_id", run_id))

    def update(
        self, run_id: object, *, status: str | None, end_time: int | None, run_name: str | None
    ) -> RunRecord:
        run = self.active(run_id)
        end = check_timestamp("end_time", end_time) if end_time is not None else None
        return self._catalog.update_run(run.run_id, status=status, end_time=end, run_name=run_name)

    def delete(self, run_id: object) -> None:
        self._catalog.delete_run(check_run_id("run_id", run_id))

    def restore(self, run_id: object) -> None:
        self._catalog.restore_run(check_run_id("run_id", run_id))

    def log_params(
        self, run_id: object, params: Sequence[tuple[object, object]], field: str = "params"
    ) -> None:
        """Log params (a re-log with another value is refused whole, as MLflow does)."""
        checked = run_params(params, field)
        run = self.active(run_id)
        if checked:
            self._catalog.log_params(run.run_id, checked)

    def set_tags(
        self, run_id: object, tags: Sequence[tuple[object, object]], field: str = "tags"
    ) -> None:
        checked = run_tags(tags, field)
        run = self.active(run_id)
        if checked:
            self._catalog.set_tags(run.run_id, checked)

    def delete_tag(self, run_id: object, key: str) -> None:
        """Delete a run's tag; a tag the run does not have is RESOURCE_DOES_NOT_EXIST."""
        run = self.active(run_id)
        self._catalog.delete_tag(run.run_id, key)


def _now_ms() -> int:
    return int(time.time() * 1000)
