"""Managing experiments and runs (MlflowClient's and the fluent module's names): delete and
restore, rename, experiment tags, parent runs, run inputs/outputs, images and tables.

``ManageMixin`` gives ``steppe.Client`` the methods; the functions below are the fluent
forms that act on the active run or experiment. Writes go to the server's MLflow REST
routes (one call each: these are rare, not on the hot path); images and tables are
artifacts written through ``Client.log_artifact``.

    steppe.set_experiment_tag("team", "vision")
    steppe.log_table({"input": ["a", "b"], "score": [0.1, 0.9]}, "eval/table.json")
    steppe.log_image(numpy_image, key="samples", step=100)
"""

from __future__ import annotations

import json
import posixpath
import re
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steppe import validation
from steppe.errors import InvalidParameterValue

if TYPE_CHECKING:
    import os

    from steppe.entities import FileInfo, Run

__all__ = [
    "ManageMixin",
    "delete_experiment",
    "delete_experiment_tag",
    "delete_run",
    "disable_system_metrics_logging",
    "enable_system_metrics_logging",
    "flush_artifact_async_logging",
    "flush_async_logging",
    "get_artifact_uri",
    "get_parent_run",
    "get_registry_uri",
    "is_tracking_uri_set",
    "load_table",
    "log_image",
    "log_table",
    "restore_experiment",
    "restore_run",
    "set_experiment_tag",
    "set_experiment_tags",
    "set_registry_uri",
    "set_system_metrics_node_id",
    "set_system_metrics_samples_before_logging",
    "set_system_metrics_sampling_interval",
]

#: The run tags MLflow's UI reads to find a run's tables and time-stepped images.
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
LOGGED_IMAGES_TAG = "mlflow.loggedImages"
PARENT_RUN_TAG = "mlflow.parentRunId"
_IMAGE_KEY_RE = re.compile(r"^[a-zA-Z0-9_\-./ ]+$")
#: Characters MLflow refuses in a table's artifact_file (they break its UI's table lookup).
_TABLE_FORBIDDEN = "\"',:[]{}"
#: The longest side of the compressed preview MLflow's UI shows next to each image.
_PREVIEW_PX = 256


class ManageMixin:
    """MlflowClient's experiment/run management, inputs/outputs, images and tables."""

    if TYPE_CHECKING:

        def _call(
            self, method: str, route: str, body: Mapping[str, Any] | None = None
        ) -> dict[str, Any]: ...

        def get_run(self, run_id: str) -> Run: ...

        def set_tag(self, run_id: str, key: str, value: Any) -> None: ...

        def log_artifact(
            self,
            run_id: str,
            local_path: str | os.PathLike[str],
            artifact_path: str | None = None,
        ) -> None: ...

        def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]: ...

        def download_artifacts(
            self, run_id: str, path: str = "", dst_path: str | os.PathLike[str] | None = None
        ) -> str: ...

        def search_runs(self, experiment_ids: Sequence[str], *args: Any, **kwargs: Any) -> Any: ...

    # --- experiments -------------------------------------------------------------------

    def delete_experiment(self, experiment_id: str) -> None:
        """Move the experiment (and so its runs) to the deleted lifecycle stage."""
        self._call("POST", "/experiments/delete", {"experiment_id": str(experiment_id)})

    def restore_experiment(self, experiment_id: str) -> None:
        self._call("POST", "/experiments/restore", {"experiment_id": str(experiment_id)})

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        validation.check_experiment_name("new_name", new_name)
        self._call(
            "POST",
            "/experiments/update",
            {"experiment_id": str(experiment_id), "new_name": new_name},
        )

    def set_experiment_tag(self, experiment_id: str, key: str, value: Any) -> None:
        self._call(
            "POST",
            "/experiments/set-experiment-tag",
            {"experiment_id": str(experiment_id), "key": key, "value": str(value)},
        )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        self._call(
            "POST",
            "/experiments/delete-experiment-tag",
            {"experiment_id": str(experiment_id), "key": key},
        )

    # --- runs --------------------------------------------------------------------------

    def delete_run(self, run_id: str) -> None:
        """Mark the run deleted (hidden from searches; ``restore_run`` brings it back)."""
        self._call("POST", "/runs/delete", {"run_id": validation.check_run_id("run_id", run_id)})

    def restore_run(self, run_id: str) -> None:
        self._call("POST", "/runs/restore", {"run_id": validation.check_run_id("run_id", run_id)})

    def get_parent_run(self, run_id: str) -> Run | None:
        """The run whose child ``run_id`` is (tag ``mlflow.parentRunId``), or None."""
        parent = self.get_run(run_id).data.tags.get(PARENT_RUN_TAG)
        return self.get_run(parent) if parent else None

    def log_inputs(
        self,
        run_id: str,
        datasets: Sequence[Any] | None = None,
        models: Sequence[Any] | None = None,
    ) -> None:
        """Record what the run read: ``datasets`` are MLflow DatasetInput-like objects or
        dicts ``{"dataset": {...}, "tags": [...]}``; ``models`` are ``{"model_id": ...}``."""
        body: dict[str, Any] = {"run_id": validation.check_run_id("run_id", run_id)}
        if datasets:
            body["datasets"] = [_as_json(d, "datasets") for d in datasets]
        if models:
            body["models"] = [_as_json(m, "models") for m in models]
        self._call("POST", "/runs/log-inputs", body)

    def log_outputs(self, run_id: str, models: Sequence[Any]) -> None:
        """Record models the run produced: ``{"model_id": ..., "step": ...}`` each."""
        self._call(
            "POST",
            "/runs/outputs",
            {
                "run_id": validation.check_run_id("run_id", run_id),
                "models": [_as_json(m, "models") for m in models],
            },
        )

    # --- images and tables -------------------------------------------------------------

    def log_image(
        self,
        run_id: str,
        image: Any,
        artifact_file: str | None = None,
        key: str | None = None,
        step: int | None = None,
        timestamp: int | None = None,
        synchronous: bool | None = None,
    ) -> None:
        """Save a numpy array or PIL image: as ``artifact_file``, or time-stepped under
        ``key``/``step`` in MLflow's layout (``images/<key>+step+<n>+timestamp+<ms>+<uuid>``
        .png plus a .webp preview), which MLflow's UI and steppe's show as a gallery.
        Needs Pillow."""
        del synchronous  # artifacts are always written before this returns
        if artifact_file is not None and (key, step, timestamp) != (None, None, None):
            raise InvalidParameterValue(
                "artifact_file", artifact_file, "cannot be given with key, step or timestamp"
            )
        if artifact_file is None and key is None:
            raise InvalidParameterValue("key", "None", "give exactly one of artifact_file or key")
        picture = _to_pil(image)
        if artifact_file is not None:
            self._log_saved(run_id, artifact_file, picture.save)
            return
        assert key is not None
        if not _IMAGE_KEY_RE.match(key):
            raise InvalidParameterValue(
                "key", key, "may only contain letters, digits, '_', '-', '.', ' ' and '/'"
            )
        stamp = timestamp if timestamp is not None else time.time_ns() // 1_000_000
        base = f"images/{key.replace('/', '~')}+step+{step or 0}+timestamp+{stamp}+{uuid.uuid4()}"
        preview = picture.copy()
        preview.thumbnail((_PREVIEW_PX, _PREVIEW_PX))
        self._log_saved(run_id, base + ".png", picture.save)
        self._log_saved(run_id, base + "+compressed.webp", preview.save)
        self.set_tag(run_id, LOGGED_IMAGES_TAG, "True")

    def log_table(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Save a dict of columns or a pandas DataFrame as a table artifact (.json in
        pandas' "split" layout, or .parquet); a table already at ``artifact_file`` is
        appended to, as in MLflow. Needs pandas."""
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

        _check_table_file(artifact_file)
        if isinstance(data, dict):
            try:
                frame = pd.DataFrame(data)
            except ValueError:  # all scalars: one row
                frame = pd.DataFrame([data])
        elif isinstance(data, pd.DataFrame):
            frame = data
        else:
            raise InvalidParameterValue(
                "data", type(data).__name__, "must be a dict or a pandas.DataFrame"
            )
        folder = posixpath.dirname(posixpath.normpath(artifact_file)) or None
        if artifact_file in {f.path for f in self.list_artifacts(run_id, folder)}:
            frame = pd.concat([self._read_table(run_id, artifact_file), frame], ignore_index=True)

        def write(target: Path) -> None:
            if artifact_file.endswith(".json"):
                frame.to_json(target, orient="split", index=False, date_format="iso")
            else:
                frame.to_parquet(target, index=False)

        self._log_saved(run_id, artifact_file, write)
        run = self.get_run(run_id)
        listed = json.loads(run.data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            self.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*listed, entry]))

    def load_table(
        self,
        experiment_id: str,
        artifact_file: str,
        run_ids: Sequence[str] | None = None,
        extra_columns: Sequence[str] | None = None,
    ) -> Any:
        """The table ``artifact_file`` of every run of the experiment that has it (or of
        ``run_ids``), concatenated; ``extra_columns`` such as "run_id" are added per row."""
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

        _check_table_file(artifact_file)
        if run_ids is None:  # the runs whose tag lists this table (what MLflow searches)
            entry = f'"path"%:%"{artifact_file}",%"type"%:%"table"'
            found = self.search_runs(
                [str(experiment_id)], f"tags.`{LOGGED_ARTIFACTS_TAG}` LIKE '%{entry}%'"
            )
            run_ids = [r.info.run_id for r in found]
        frames = []
        folder = posixpath.dirname(posixpath.normpath(artifact_file)) or None
        for rid in run_ids:
            if artifact_file not in {f.path for f in self.list_artifacts(rid, folder)}:
                continue
            frame = self._read_table(rid, artifact_file)
            for column in extra_columns or ():
                if column != "run_id":
                    raise InvalidParameterValue("extra_columns", column, "only 'run_id' is known")
                frame[column] = rid
            frames.append(frame)
        if not frames:
            raise InvalidParameterValue(
                "artifact_file", artifact_file, "is not a table of any of the runs"
            )
        return pd.concat(frames, ignore_index=True)

    def _read_table(self, run_id: str, artifact_file: str) -> Any:
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

        with tempfile.TemporaryDirectory(prefix="steppe-table-") as folder:
            local = self.download_artifacts(run_id, artifact_file, folder)
            if artifact_file.endswith(".json"):
                return pd.read_json(local, orient="split")
            return pd.read_parquet(local)

    def _log_saved(self, run_id: str, artifact_file: str, save: Any) -> None:
        """Write a file with ``save(path)`` in a temporary folder, log it as ``artifact_file``."""
        folder_part, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory(prefix="steppe-artifact-") as folder:
            target = Path(folder) / name
            save(target)
            self.log_artifact(run_id, target, folder_part or None)


def _check_table_file(artifact_file: str) -> None:
    bad = [c for c in _TABLE_FORBIDDEN if c in artifact_file]
    if bad:
        raise InvalidParameterValue("artifact_file", artifact_file, f"must not contain {bad[0]!r}")
    if not artifact_file.endswith((".json", ".parquet")):
        raise InvalidParameterValue("artifact_file", artifact_file, "must end in .json or .parquet")


def _as_json(item: Any, field: str) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    to_proto = getattr(item, "to_proto", None)
    if to_proto is not None:  # an mlflow entity
        from google.protobuf.json_format import (  # type: ignore[import-untyped,unused-ignore]
            MessageToDict,
        )

        out: dict[str, Any] = MessageToDict(to_proto(), preserving_proto_field_name=True)
        return out
    to_dictionary = getattr(item, "to_dictionary", None) or getattr(item, "to_json", None)
    if to_dictionary is not None:
        value = to_dictionary()
        return dict(json.loads(value) if isinstance(value, str) else value)
    raise InvalidParameterValue(field, type(item).__name__, "must be a dict or an MLflow entity")


def _to_pil(image: Any) -> Any:
    try:
        import PIL.Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("steppe.log_image needs Pillow: pip install pillow") from exc
    if isinstance(image, PIL.Image.Image):
        return image
    to_pil = getattr(image, "to_pil", None)  # mlflow.Image
    if callable(to_pil):
        return to_pil()
    import numpy as np

    if not isinstance(image, np.ndarray):
        raise InvalidParameterValue(
            "image", type(image).__name__, "must be a numpy array or a PIL image"
        )
    array = image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidParameterValue(
            "image", f"shape {image.shape}", "must be H x W, H x W x 1, 3 or 4"
        )
    if array.dtype.kind == "f":
        if array.min() < 0 or array.max() > 1:
            raise InvalidParameterValue("image", "float array", "values must be in [0, 1]")
        array = (array * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise InvalidParameterValue("image", "integer array", "values must be in [0, 255]")
        array = array.astype(np.uint8)
    return PIL.Image.fromarray(array)


# --- the fluent forms -----------------------------------------------------------------------


def _client() -> Any:
    from steppe.tracking import Client

    return Client()


def _active_run_id(run_id: str | None = None) -> tuple[Any, str]:
    from steppe import fluent

    return fluent._artifact_run(run_id)


def _active_experiment_id() -> str:
    from steppe import fluent

    run = fluent.active_run()
    if run is not None:
        return str(run.info.experiment_id)
    return fluent._resolve_experiment_id(_client())


def delete_experiment(experiment_id: str) -> None:
    _client().delete_experiment(experiment_id)


def restore_experiment(experiment_id: str) -> None:
    _client().restore_experiment(experiment_id)


def set_experiment_tag(key: str, value: Any) -> None:
    """Tag the current experiment (the active run's, else the one set_experiment chose)."""
    _client().set_experiment_tag(_active_experiment_id(), key, value)


def set_experiment_tags(tags: Mapping[str, Any]) -> None:
    client, experiment_id = _client(), _active_experiment_id()
    for key, value in tags.items():
        client.set_experiment_tag(experiment_id, key, value)


def delete_experiment_tag(key: str) -> None:
    _client().delete_experiment_tag(_active_experiment_id(), key)


def delete_run(run_id: str) -> None:
    _client().delete_run(run_id)


def restore_run(run_id: str) -> None:
    _client().restore_run(run_id)


def get_parent_run(run_id: str) -> Run | None:
    parent: Run | None = _client().get_parent_run(run_id)
    return parent


def get_artifact_uri(artifact_path: str | None = None) -> str:
    """The artifact URI of the active run (starting one if none is), or of a path in it."""
    client, run_id = _active_run_id()
    root = client.get_run(run_id).info.artifact_uri
    return posixpath.join(root, artifact_path) if artifact_path else str(root)


def log_image(
    image: Any,
    artifact_file: str | None = None,
    key: str | None = None,
    step: int | None = None,
    timestamp: int | None = None,
    synchronous: bool | None = None,
) -> None:
    """Log an image in the active run; see ``Client.log_image``."""
    client, run_id = _active_run_id()
    client.log_image(run_id, image, artifact_file, key, step, timestamp, synchronous)


def log_table(data: Any, artifact_file: str, run_id: str | None = None) -> None:
    """Log (or append to) a table artifact of the active run; see ``Client.log_table``."""
    client, rid = _active_run_id(run_id)
    client.log_table(rid, data, artifact_file)


def load_table(
    artifact_file: str,
    run_ids: Sequence[str] | None = None,
    extra_columns: Sequence[str] | None = None,
) -> Any:
    """The table ``artifact_file`` over the current experiment's runs (or ``run_ids``)."""
    return _client().load_table(_active_experiment_id(), artifact_file, run_ids, extra_columns)


def is_tracking_uri_set() -> bool:
    """True when set_tracking_uri or STEPPE_TRACKING_URI/MLFLOW_TRACKING_URI chose a URI."""
    from steppe import fluent

    return fluent.get_tracking_uri() is not None


def get_registry_uri() -> str | None:
    """steppe's Model Registry lives in the tracking server: the tracking URI."""
    from steppe import fluent

    return fluent.get_tracking_uri()


def set_registry_uri(uri: str | None) -> None:
    """Accepted when it names the tracking server (MLflow's default); a separate registry
    server is not supported, and saying so beats writing models somewhere unexpected."""
    if uri is not None and uri != get_registry_uri():
        raise InvalidParameterValue(
            "uri", uri, "steppe's Model Registry is the tracking server's; use set_tracking_uri"
        )


def flush_async_logging() -> None:
    """Wait until every point this process logged is acked (MLflow's async logging)."""
    from steppe import fluent

    fluent.flush()


def flush_artifact_async_logging() -> None:
    """Nothing to wait for: log_artifact returns once the file is uploaded, or, with the
    server away, copied into the spool, whence the sender delivers it in order with the run's
    other calls (``flush()``/``end_run`` wait for that) or ``steppe sync`` does."""


def enable_system_metrics_logging() -> None:
    """Sample system metrics (``system/*``) for every run started from now on, as
    ``start_run(log_system_metrics=True)`` does (README "System metrics")."""
    from steppe import system_metrics

    system_metrics.enable()


def disable_system_metrics_logging() -> None:
    """Runs started from now on sample no system metrics (unless they ask for them)."""
    from steppe import system_metrics

    system_metrics.disable()


def set_system_metrics_sampling_interval(interval: float | None) -> None:
    """Seconds between two samples for runs started from now on (None: the default, 5 s or
    STEPPE_SYSTEM_METRICS_INTERVAL_S)."""
    from steppe import system_metrics

    system_metrics.set_sampling_interval(interval)


def set_system_metrics_samples_before_logging(samples: int | None) -> None:
    """Samples averaged into each logged point (None: 1), as MLflow does."""
    from steppe import system_metrics

    system_metrics.set_samples_before_logging(samples)


def set_system_metrics_node_id(node_id: str | None) -> None:
    """Log system metrics as ``system/<node_id>/...`` (MLflow's naming for several nodes)."""
    from steppe import system_metrics

    system_metrics.set_node_id(node_id)
