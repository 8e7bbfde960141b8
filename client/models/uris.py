"""Model URIs to local folders: ``runs:/``, ``models:/<model_id>``, ``models:/name/<version>``,
``models:/name@alias``, ``models:/name/latest``, ``models:/name/<stage>``, ``mlflow-artifacts:``,
``file://`` and plain paths; and the MLflow 3 logging sequence that makes a LoggedModel."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from steppe import errors
from steppe.errors import InvalidParameterValue, MlflowException
from steppe.models.model import MLMODEL_FILE_NAME, Model, ModelInfo, folder_size

#: The LoggedModel this process logged last (``steppe.last_logged_model``).
last_model_id: str | None = None

_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
_STAGES = {"none", "staging", "production", "archived"}
_URI_RULE = "is models:/<name>/<version|stage|latest>, models:/<name>@<alias> or models:/<model_id>"


def _client() -> Any:
    from steppe.tracking import Client

    return Client()


def _download_uri(client: Any, artifact_uri: str, dst: Path, what: str) -> Path:
    from steppe import artifacts

    if artifact_uri.startswith("runs:/") or artifact_uri.startswith("models:/"):
        return resolve(artifact_uri, dst)
    if artifact_uri.startswith(("file:", "/")) or (
        "://" not in artifact_uri and ":" not in (artifact_uri.split("/", 1)[0])
    ):
        return _local(artifact_uri)
    return artifacts.download_folder(client._http_url, artifact_uri, dst, what)


def _local(uri: str) -> Path:
    path = (
        Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
        if uri.startswith("file:")
        else Path(uri)
    )
    if not path.exists():
        raise MlflowException(
            f"Model path '{uri}' does not exist", error_code="RESOURCE_DOES_NOT_EXIST"
        )
    return path


def _version_of(client: Any, name: str, selector: str) -> Any:
    """The ModelVersion a ``models:/name/<selector>`` or ``models:/name@alias`` points at."""
    if selector.startswith("@"):
        return client.get_model_version_by_alias(name, selector[1:])
    if selector.isdigit():
        return client.get_model_version(name, selector)
    if selector.lower() == "latest":
        versions = client.get_latest_versions(name)
        if not versions:
            raise errors.ResourceDoesNotExist(f"Registered model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    if selector.lower() in _STAGES:
        versions = client.get_latest_versions(name, stages=[selector])
        if not versions:
            raise errors.ResourceDoesNotExist(
                f"No versions of model with name {name!r} and stage {selector!r} found"
            )
        return versions[0]
    raise InvalidParameterValue("model_uri", f"models:/{name}/{selector}", _URI_RULE)


def resolve(model_uri: str, dst_path: str | os.PathLike[str] | None = None) -> Path:
    """A local folder holding the model at ``model_uri`` (downloaded when it is remote)."""
    if not isinstance(model_uri, str | os.PathLike) or not str(model_uri):
        raise InvalidParameterValue("model_uri", model_uri, "must be a non-empty string")
    uri = str(model_uri)
    if not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
        return _local(uri)
    client = _client()
    dst = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="steppe-model-"))
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].partition("/")
        path = path.strip("/")
        if not run_id or not path:
            raise InvalidParameterValue("model_uri", uri, "is runs:/<run_id>/<artifact_path>")
        files = {f.path for f in client.list_artifacts(run_id, path)}
        if f"{path}/{MLMODEL_FILE_NAME}" in files:  # an MLflow 2 model in the run's artifacts
            return Path(client.download_artifacts(run_id, path, dst))
        from steppe.registry import _logged_model_of_run

        run = client.get_run(run_id)
        model_id = _logged_model_of_run(client, run_id, run.info.experiment_id, path)
        return _download_model(client, model_id, dst)
    if uri.startswith("mlflow-artifacts:"):
        return _download_uri(client, uri, dst, uri)
    target = uri[len("models:/") :].strip("/")
    if _MODEL_ID.fullmatch(target):
        return _download_model(client, target, dst)
    name, sep, selector = target.partition("@")
    if sep:
        selector = "@" + selector
    else:
        name, _, selector = target.rpartition("/")
    if not name or not selector:
        raise InvalidParameterValue("model_uri", uri, _URI_RULE)
    version = _version_of(client, name, selector)
    if getattr(version, "model_id", None):
        return _download_model(client, version.model_id, dst)
    source = client.get_model_version_download_uri(name, version.version)
    return _download_uri(client, source, dst, f"model {name} version {version.version}")


def _download_model(client: Any, model_id: str, dst: Path) -> Path:
    model = client.get_logged_model(model_id)
    return _download_uri(client, model.artifact_location, dst, f"model {model_id}")


# -- logging (MLflow 3: a LoggedModel, its files, READY, linked to the run) -------------------


def log(
    name: str | None,
    save: Callable[[Path, Model], None],
    *,
    registered_model_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    artifact_path: str | None = None,
) -> ModelInfo:
    """Create the LoggedModel (or reuse ``model_id``), ``save`` the flavor into a temporary
    folder, upload it under the model's artifact location, mark it READY and record it as
    an output of the active run; FAILED if anything on the way fails."""
    from steppe import fluent

    name = name or artifact_path or "model"
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        raise InvalidParameterValue("name", name, "must be a model name without '/'")
    client = _client()
    run = fluent.active_run()
    run_id = run.info.run_id if run is not None else None
    if model_id is not None:
        logged = client.get_logged_model(model_id)
    else:
        experiment_id = (
            run.info.experiment_id if run is not None else fluent._resolve_experiment_id(client)
        )
        all_params = {**(client.get_run(run_id).data.params if run_id else {}), **(params or {})}
        logged = client.create_logged_model(
            experiment_id,
            name=name,
            source_run_id=run_id,
            tags={k: str(v) for k, v in (tags or {}).items()} or None,
            params={k: str(v) for k, v in all_params.items()},
            model_type=model_type,
        )
    try:
        if run_id is not None:
            client.log_outputs(run_id, [{"model_id": logged.model_id, "step": int(step)}])
        with tempfile.TemporaryDirectory(prefix="steppe-model-") as tmp:
            local = Path(tmp) / "model"
            mlmodel = Model(
                artifact_path=logged.artifact_location,
                run_id=run_id,
                model_id=logged.model_id,
                model_uuid=logged.model_id,
            )
            save(local, mlmodel)
            mlmodel = Model.load(local)
            from steppe import artifacts

            artifacts.upload_folder(
                client._http_url, logged.artifact_location, local, f"model {logged.model_id}"
            )
        client.finalize_logged_model(logged.model_id, "READY")
    except BaseException:
        # The original failure is the one to report, not a failed FAILED.
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    global last_model_id
    last_model_id = logged.model_id
    version = None
    if registered_model_name:
        from steppe.registry import register_model

        version = int(register_model(f"models:/{logged.model_id}", registered_model_name).version)
    return ModelInfo(
        model_id=logged.model_id,
        model_uri=f"models:/{logged.model_id}",
        run_id=run_id,
        artifact_path=logged.artifact_location,
        name=name,
        flavors=mlmodel.flavors,
        signature=mlmodel.signature,
        model_uuid=mlmodel.model_uuid,
        utc_time_created=mlmodel.utc_time_created,
        registered_model_version=version,
    )


def size_of(path: Path) -> int:
    return folder_size(path)
