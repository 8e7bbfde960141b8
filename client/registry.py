"""The Model Registry and LoggedModels for ``steppe.Client`` (MlflowClient's names and
signatures) and ``steppe.register_model``, over plain HTTP to the server's MLflow REST
routes (``/api/2.0/mlflow/registered-models/...``, ``model-versions/...``,
``logged-models/...``). The server's ``{"error_code", "message"}`` comes back as the steppe
error of that code (ResourceDoesNotExist, InvalidParameterValue, ...).

Standard library only; imported by ``steppe.tracking``, never loads the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from steppe import config, errors, http
from steppe.errors import InvalidParameterValue
from steppe.model_entities import LoggedModel, LoggedModelStatus, ModelVersion, RegisteredModel

if TYPE_CHECKING:
    from steppe.connection import Connection

__all__ = [
    "PagedList",
    "RegistryMixin",
    "delete_logged_model_tag",
    "finalize_logged_model",
    "get_logged_model",
    "register_model",
    "search_logged_models",
    "search_model_versions",
    "search_registered_models",
    "set_logged_model_tags",
    "set_model_version_tag",
]

API = "/api/2.0/mlflow"
#: mlflow.register_model's default; steppe's versions are READY at once, so it is unused.
DEFAULT_AWAIT_MAX_SLEEP_SECONDS = 300
_MODEL_ID_RE = re.compile(r"m-[0-9a-f]{32}")
_T = TypeVar("_T")


class PagedList(list[_T]):
    """One page of results (a list) and ``token``, the next page's ``page_token`` (None on
    the last page), as MLflow's PagedList."""

    def __init__(self, items: Iterable[_T], token: str | None) -> None:
        super().__init__(items)
        self.token = token


def _tag_list(tags: Mapping[str, Any] | None) -> list[dict[str, str]]:
    return [{"key": str(k), "value": str(v)} for k, v in (tags or {}).items()]


def _status(status: str) -> str:
    """ "READY"/"FAILED" (or the full LOGGED_MODEL_* names) -> the REST enum name."""
    full = {"READY": LoggedModelStatus.READY, "FAILED": LoggedModelStatus.FAILED}
    canonical = full.get(str(status).upper(), str(status).upper())
    if canonical not in (LoggedModelStatus.READY, LoggedModelStatus.FAILED):
        raise InvalidParameterValue("status", status, "must be READY or FAILED")
    return canonical


class RegistryMixin:
    """MlflowClient's registry and LoggedModel methods; ``steppe.Client`` inherits them."""

    if TYPE_CHECKING:

        @property
        def _conn(self) -> Connection: ...

    # --- transport ---------------------------------------------------------------------

    def _search(
        self,
        route: str,
        filter_string: str | None,
        max_results: int,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> dict[str, Any]:
        """One page of a registry search (GET with MLflow's filter, order_by, page_token)."""
        body = {
            "filter": filter_string,
            "max_results": max_results,
            "order_by": list(order_by or []),
            "page_token": page_token,
        }
        return self._call("GET", route, body)

    def _call(
        self, method: str, route: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One MLflow REST call: GET sends ``body`` as the query string (lists repeated),
        other methods as JSON."""
        url = self._conn._base_url().rstrip("/") + API + route
        data = None
        if method == "GET":
            if body:
                query = {k: v for k, v in body.items() if v is not None}
                url += "?" + urllib.parse.urlencode(query, doseq=True)
        elif body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with http.open_checked(request, config.connect_timeout_s()) as response:
            raw = response.read()
        answer: dict[str, Any] = json.loads(raw) if raw else {}
        return answer

    # --- registered models -------------------------------------------------------------

    def create_registered_model(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> RegisteredModel:
        raw = self._call(
            "POST",
            "/registered-models/create",
            {"name": name, "tags": _tag_list(tags), "description": description},
        )
        return RegisteredModel.from_json(raw["registered_model"])

    def get_registered_model(self, name: str) -> RegisteredModel:
        raw = self._call("GET", "/registered-models/get", {"name": name})
        return RegisteredModel.from_json(raw["registered_model"])

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        raw = self._call("POST", "/registered-models/rename", {"name": name, "new_name": new_name})
        return RegisteredModel.from_json(raw["registered_model"])

    def update_registered_model(self, name: str, description: str | None = None) -> RegisteredModel:
        raw = self._call(
            "PATCH", "/registered-models/update", {"name": name, "description": description}
        )
        return RegisteredModel.from_json(raw["registered_model"])

    def delete_registered_model(self, name: str) -> None:
        self._call("DELETE", "/registered-models/delete", {"name": name})

    def search_registered_models(
        self,
        filter_string: str | None = None,
        max_results: int = 100,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[RegisteredModel]:
        """Registered models matching e.g. ``name LIKE 'fraud%'`` or ``tags.team = 'a'``,
        sorted by ``order_by`` (``name``, ``creation_timestamp``, ``last_updated_timestamp``
        with ASC/DESC); one page of at most ``max_results``."""
        raw = self._search(
            "/registered-models/search", filter_string, max_results, order_by, page_token
        )
        return PagedList(
            [RegisteredModel.from_json(m) for m in raw.get("registered_models", [])],
            raw.get("next_page_token") or None,
        )

    def get_latest_versions(
        self, name: str, stages: Sequence[str] | None = None
    ) -> list[ModelVersion]:
        raw = self._call(
            "POST",
            "/registered-models/get-latest-versions",
            {"name": name, "stages": list(stages or [])},
        )
        return [ModelVersion.from_json(v) for v in raw.get("model_versions", [])]

    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None:
        self._call(
            "POST", "/registered-models/set-tag", {"name": name, "key": key, "value": str(value)}
        )

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self._call("DELETE", "/registered-models/delete-tag", {"name": name, "key": key})

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self._call(
            "POST",
            "/registered-models/alias",
            {"name": name, "alias": alias, "version": str(version)},
        )

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._call("DELETE", "/registered-models/alias", {"name": name, "alias": alias})

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        raw = self._call("GET", "/registered-models/alias", {"name": name, "alias": alias})
        return ModelVersion.from_json(raw["model_version"])

    # --- model versions ----------------------------------------------------------------

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_link: str | None = None,
        description: str | None = None,
        await_creation_for: int = DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
        model_id: str | None = None,
    ) -> ModelVersion:
        """A new version of ``name`` (READY at once: steppe copies no files, so
        ``await_creation_for`` is accepted and unused)."""
        raw = self._call(
            "POST",
            "/model-versions/create",
            {
                "name": name,
                "source": source,
                "run_id": run_id,
                "tags": _tag_list(tags),
                "run_link": run_link,
                "description": description,
                "model_id": model_id,
            },
        )
        return ModelVersion.from_json(raw["model_version"])

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        raw = self._call("GET", "/model-versions/get", {"name": name, "version": str(version)})
        return ModelVersion.from_json(raw["model_version"])

    def update_model_version(
        self, name: str, version: str | int, description: str | None = None
    ) -> ModelVersion:
        raw = self._call(
            "PATCH",
            "/model-versions/update",
            {"name": name, "version": str(version), "description": description},
        )
        return ModelVersion.from_json(raw["model_version"])

    def delete_model_version(self, name: str, version: str | int) -> None:
        self._call("DELETE", "/model-versions/delete", {"name": name, "version": str(version)})

    def search_model_versions(
        self,
        filter_string: str | None = None,
        max_results: int = 10_000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[ModelVersion]:
        """Versions matching e.g. ``name = 'fraud'``, ``run_id = '...'`` or
        ``tags.validated = 'yes'``; newest first unless ``order_by`` says otherwise."""
        raw = self._search(
            "/model-versions/search", filter_string, max_results, order_by, page_token
        )
        return PagedList(
            [ModelVersion.from_json(v) for v in raw.get("model_versions", [])],
            raw.get("next_page_token") or None,
        )

    def transition_model_version_stage(
        self, name: str, version: str | int, stage: str, archive_existing_versions: bool = False
    ) -> ModelVersion:
        raw = self._call(
            "POST",
            "/model-versions/transition-stage",
            {
                "name": name,
                "version": str(version),
                "stage": stage,
                "archive_existing_versions": archive_existing_versions,
            },
        )
        return ModelVersion.from_json(raw["model_version"])

    def _version_or_stage(self, name: str, version: str | int | None, stage: str | None) -> str:
        if (version is None) == (stage is None):
            raise InvalidParameterValue("version", version, "give exactly one of version, stage")
        if version is not None:
            return str(version)
        latest = self.get_latest_versions(name, [str(stage)])
        if not latest:
            raise InvalidParameterValue("stage", stage, f"model {name!r} has no version in it")
        return latest[0].version

    def set_model_version_tag(
        self,
        name: str,
        version: str | int | None = None,
        key: str | None = None,
        value: Any = None,
        stage: str | None = None,
    ) -> None:
        number = self._version_or_stage(name, version, stage)
        self._call(
            "POST",
            "/model-versions/set-tag",
            {"name": name, "version": number, "key": key, "value": str(value)},
        )

    def delete_model_version_tag(
        self,
        name: str,
        version: str | int | None = None,
        key: str | None = None,
        stage: str | None = None,
    ) -> None:
        number = self._version_or_stage(name, version, stage)
        self._call(
            "DELETE", "/model-versions/delete-tag", {"name": name, "version": number, "key": key}
        )

    def get_model_version_download_uri(self, name: str, version: str | int) -> str:
        raw = self._call(
            "GET", "/model-versions/get-download-uri", {"name": name, "version": str(version)}
        )
        return str(raw["artifact_uri"])

    # --- logged models -----------------------------------------------------------------

    def create_logged_model(
        self,
        experiment_id: str,
        name: str | None = None,
        source_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        model_type: str | None = None,
    ) -> LoggedModel:
        """A PENDING LoggedModel; its files go under ``artifact_location``."""
        raw = self._call(
            "POST",
            "/logged-models",
            {
                "experiment_id": str(experiment_id),
                "name": name,
                "source_run_id": source_run_id,
                "tags": _tag_list(tags),
                "params": _tag_list(params),
                "model_type": model_type,
            },
        )
        return LoggedModel.from_json(raw["model"])

    def get_logged_model(self, model_id: str) -> LoggedModel:
        raw = self._call("GET", f"/logged-models/{_model_id(model_id)}")
        return LoggedModel.from_json(raw["model"])

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel:
        """``status`` READY or FAILED (the upload's outcome)."""
        raw = self._call(
            "PATCH",
            f"/logged-models/{_model_id(model_id)}",
            {"model_id": model_id, "status": _status(status)},
        )
        return LoggedModel.from_json(raw["model"])

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, Any]) -> None:
        self._call("PATCH", f"/logged-models/{_model_id(model_id)}/tags", {"tags": _tag_list(tags)})

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        quoted = urllib.parse.quote(key, safe="")
        self._call("DELETE", f"/logged-models/{_model_id(model_id)}/tags/{quoted}")

    def log_model_params(self, model_id: str, params: Mapping[str, Any]) -> None:
        self._call(
            "POST", f"/logged-models/{_model_id(model_id)}/params", {"params": _tag_list(params)}
        )

    def delete_logged_model(self, model_id: str) -> None:
        self._call("DELETE", f"/logged-models/{_model_id(model_id)}")

    def log_model_artifacts(self, model_id: str, local_dir: str | os.PathLike[str]) -> None:
        """Upload a folder's files under the LoggedModel's artifact location, streamed."""
        from steppe import artifacts

        folder = Path(local_dir)
        if not folder.is_dir():
            raise InvalidParameterValue("local_dir", str(local_dir), "is not a directory")
        model = self.get_logged_model(model_id)
        artifacts.upload_folder(
            self._conn.endpoint.http_url, model.artifact_location, folder, f"model {model_id}"
        )

    def log_model_artifact(self, model_id: str, local_path: str | os.PathLike[str]) -> None:
        """Upload one file into the LoggedModel's artifact location."""
        import shutil
        import tempfile

        source = Path(local_path)
        if not source.is_file():
            raise InvalidParameterValue("local_path", str(local_path), "is not a file")
        with tempfile.TemporaryDirectory(prefix="steppe-model-file-") as tmp:
            shutil.copy2(source, Path(tmp) / source.name)
            self.log_model_artifacts(model_id, tmp)

    def list_logged_model_artifacts(self, model_id: str, path: str | None = None) -> list[Any]:
        """The files and folders directly inside the model's folder ``path``."""
        from steppe.entities import FileInfo

        raw = self._call(
            "GET",
            f"/logged-models/{_model_id(model_id)}/artifacts/directories",
            {"artifact_directory_path": path} if path else None,
        )
        return [
            FileInfo(f["path"], bool(f.get("is_dir")), f.get("file_size"))
            for f in raw.get("files", [])
        ]

    def get_model_version_stages(self, name: str, version: str | int) -> list[str]:
        """The stages a model version can move to, as MLflow lists them."""
        self.get_model_version(name, version)
        return ["None", "Staging", "Production", "Archived"]

    def copy_model_version(self, src_model_uri: str, dst_name: str) -> ModelVersion:
        """A new version of ``dst_name`` (created if needed) with the source version's files,
        run and model id; ``src_model_uri`` is ``models:/<name>/<version>`` or ``@<alias>``."""
        target = src_model_uri.removeprefix("models:/").strip("/")
        name, at, alias = target.partition("@")
        if at:
            source = self.get_model_version_by_alias(name, alias)
        else:
            name, _, number = target.rpartition("/")
            if not src_model_uri.startswith("models:/") or not name or not number.isdigit():
                raise InvalidParameterValue(
                    "src_model_uri", src_model_uri, "is models:/<name>/<version> or @<alias>"
                )
            source = self.get_model_version(name, number)
        # Copying into an existing model adds a version, as MLflow does.
        with contextlib.suppress(errors.ResourceAlreadyExists):
            self.create_registered_model(dst_name)
        copied: ModelVersion = self.create_model_version(
            dst_name,
            source.source,
            run_id=source.run_id or None,
            description=source.description or None,
            model_id=getattr(source, "model_id", None) or None,
        )
        return copied

    def search_logged_models(
        self,
        experiment_ids: Sequence[str],
        filter_string: str | None = None,
        datasets: Sequence[Mapping[str, Any]] | None = None,
        max_results: int | None = None,
        order_by: Sequence[Mapping[str, Any]] | None = None,
        page_token: str | None = None,
    ) -> PagedList[LoggedModel]:
        """LoggedModels of these experiments matching e.g. ``name = 'model'``,
        ``source_run_id = '...'`` or ``metrics.accuracy > 0.9``; ``order_by`` items are
        ``{"field_name": ..., "ascending": ...}`` as in MLflow."""
        raw = self._call(
            "POST",
            "/logged-models/search",
            {
                "experiment_ids": [str(e) for e in experiment_ids],
                "filter": filter_string,
                "datasets": [dict(d) for d in datasets] if datasets else None,
                "max_results": max_results,
                "order_by": [dict(o) for o in order_by] if order_by else None,
                "page_token": page_token,
            },
        )
        return PagedList(
            [LoggedModel.from_json(m) for m in raw.get("models", [])],
            raw.get("next_page_token") or None,
        )


def _model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not re.fullmatch(r"[\w\-]{1,64}", model_id):
        raise InvalidParameterValue("model_id", model_id, "is not a logged model id")
    return model_id


# --- fluent functions (mlflow's module-level names) -----------------------------------------


def _client() -> Any:
    from steppe.tracking import Client

    return Client()


def register_model(
    model_uri: str,
    name: str,
    await_registration_for: int = DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
    *,
    tags: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register the model at ``model_uri`` as a new version of ``name`` (created if needed),
    as ``mlflow.register_model``: ``runs:/<run_id>/<path>`` becomes the run's files at that
    path when they hold an MLmodel, else the run's LoggedModel called ``<path>``
    (``models:/<model_id>``); ``models:/<model_id>`` records the model id."""
    client = _client()
    try:
        client.create_registered_model(name)
        print(f"Successfully registered model '{name}'.", file=sys.stderr)
    except errors.ResourceAlreadyExists:
        print(
            f"Registered model {name!r} already exists. Creating a new version of this model...",
            file=sys.stderr,
        )
    run_id: str | None = None
    model_id: str | None = None
    source = model_uri
    if model_uri.startswith("runs:/"):
        run_id, _, artifact_path = model_uri[len("runs:/") :].partition("/")
        artifact_path = artifact_path.strip("/")
        if not run_id or not artifact_path:
            raise InvalidParameterValue(
                "model_uri", model_uri, "a runs URI is runs:/<run_id>/<artifact_path>"
            )
        run = client.get_run(run_id)
        files = {f.path for f in client.list_artifacts(run_id, artifact_path)}
        if f"{artifact_path}/MLmodel" in files:
            source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        else:
            model_id = _logged_model_of_run(client, run_id, run.info.experiment_id, artifact_path)
            source = f"models:/{model_id}"
    elif model_uri.startswith("models:/"):
        target = model_uri[len("models:/") :].strip("/")
        if _MODEL_ID_RE.fullmatch(target):
            model_id = target
    version: ModelVersion = client.create_model_version(
        name, source, run_id=run_id, tags=tags, model_id=model_id
    )
    print(f"Created version '{version.version}' of model '{version.name}'.", file=sys.stderr)
    return version


def _logged_model_of_run(client: Any, run_id: str, experiment_id: str, artifact_path: str) -> str:
    """The run's LoggedModel named ``artifact_path`` (the one logged at the largest step
    when there are several), as mlflow.register_model finds it."""
    found = client.search_logged_models(
        [experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{artifact_path}'",
    )
    if not found:
        raise errors.ResourceDoesNotExist(
            f"Unable to find a logged_model with artifact_path {artifact_path} under run {run_id}"
        )
    if len(found) == 1:
        return str(found[0].model_id)
    outputs = client._call("GET", "/runs/get", {"run_id": run_id})["run"].get("outputs", {})
    steps = {o["model_id"]: int(o.get("step", 0)) for o in outputs.get("model_outputs", [])}
    return str(max(found, key=lambda m: steps.get(m.model_id, -1)).model_id)


def search_registered_models(
    max_results: int | None = None,
    filter_string: str | None = None,
    order_by: Sequence[str] | None = None,
) -> list[RegisteredModel]:
    """Every matching registered model (all pages), or the first ``max_results``."""
    return _all_pages(
        lambda limit, token: _client().search_registered_models(
            filter_string, limit, order_by, token
        ),
        max_results,
        1000,
    )


def search_model_versions(
    max_results: int | None = None,
    filter_string: str | None = None,
    order_by: Sequence[str] | None = None,
) -> list[ModelVersion]:
    """Every matching model version (all pages), or the first ``max_results``."""
    return _all_pages(
        lambda limit, token: _client().search_model_versions(filter_string, limit, order_by, token),
        max_results,
        10_000,
    )


def search_logged_models(
    experiment_ids: Sequence[str] | None = None,
    filter_string: str | None = None,
    datasets: Sequence[Mapping[str, Any]] | None = None,
    max_results: int | None = None,
    order_by: Sequence[Mapping[str, Any]] | None = None,
    output_format: str = "list",
) -> list[LoggedModel]:
    """Every matching LoggedModel of these experiments (default: the active one). Only
    ``output_format="list"``: steppe's client does not depend on pandas."""
    if output_format != "list":
        raise InvalidParameterValue("output_format", output_format, "only 'list' is supported")
    if experiment_ids is None:
        from steppe import fluent

        experiment_ids = [fluent._resolve_experiment_id(_client())]
    ids = list(experiment_ids)
    return _all_pages(
        lambda limit, token: _client().search_logged_models(
            ids, filter_string, datasets, limit, order_by, token
        ),
        max_results,
        1000,
    )


def _all_pages(fetch: Any, max_results: int | None, page: int) -> list[Any]:
    out: list[Any] = []
    token: str | None = None
    while max_results is None or len(out) < max_results:
        limit = page if max_results is None else min(page, max_results - len(out))
        found = fetch(limit, token)
        out.extend(found)
        token = found.token
        if not token:
            break
    return out


def get_logged_model(model_id: str) -> LoggedModel:
    result: LoggedModel = _client().get_logged_model(model_id)
    return result


def set_logged_model_tags(model_id: str, tags: Mapping[str, Any]) -> None:
    _client().set_logged_model_tags(model_id, tags)


def delete_logged_model_tag(model_id: str, key: str) -> None:
    _client().delete_logged_model_tag(model_id, key)


def finalize_logged_model(model_id: str, status: str) -> LoggedModel:
    result: LoggedModel = _client().finalize_logged_model(model_id, status)
    return result


def set_model_version_tag(
    name: str,
    version: str | int | None = None,
    key: str | None = None,
    value: Any = None,
    stage: str | None = None,
) -> None:
    _client().set_model_version_tag(name, version, key, value, stage)


# --- MLflow 3 LoggedModel fluent functions ------------------------------------------------------


def _active_model_id(model_id: str | None) -> str:
    if model_id is not None:
        return model_id
    from steppe.models import uris

    if uris.last_model_id is None:
        raise InvalidParameterValue("model_id", None, "is required when no model was logged yet")
    return uris.last_model_id


def initialize_logged_model(
    name: str | None = None,
    source_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    model_type: str | None = None,
    experiment_id: str | None = None,
) -> LoggedModel:
    """A PENDING LoggedModel of the active run (or ``source_run_id``): add files with
    ``Client.log_model_artifacts``, or pass its id to a flavor's ``log_model(model_id=...)``."""
    from steppe import fluent
    from steppe.models import uris

    client = _client()
    if source_run_id is None and (run := fluent.active_run()) is not None:
        source_run_id = run.info.run_id
    if experiment_id is None:
        experiment_id = (
            client.get_run(source_run_id).info.experiment_id
            if source_run_id
            else fluent._resolve_experiment_id(client)
        )
    model: LoggedModel = client.create_logged_model(
        str(experiment_id), name, source_run_id, tags, params, model_type
    )
    uris.last_model_id = model.model_id
    return model


def create_external_model(
    name: str | None = None,
    source_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    model_type: str | None = None,
    experiment_id: str | None = None,
) -> LoggedModel:
    """A READY LoggedModel whose files live outside steppe (tag ``mlflow.model.isExternal``)."""
    import tempfile

    from steppe.models.model import MLMODEL_FILE_NAME, Model

    model = initialize_logged_model(
        name,
        source_run_id,
        {**(tags or {}), "mlflow.model.isExternal": "true"},
        params,
        model_type,
        experiment_id,
    )
    client = _client()
    with tempfile.TemporaryDirectory(prefix="steppe-external-") as tmp:
        Model(
            artifact_path=model.artifact_location,
            run_id=source_run_id,
            model_id=model.model_id,
            model_uuid=model.model_id,
        ).save(Path(tmp) / MLMODEL_FILE_NAME)
        client.log_model_artifacts(model.model_id, tmp)
    result: LoggedModel = client.finalize_logged_model(model.model_id, "READY")
    return result


def last_logged_model() -> LoggedModel | None:
    """The LoggedModel this process logged last, or None."""
    from steppe.models import uris

    return get_logged_model(uris.last_model_id) if uris.last_model_id else None


def log_model_params(params: Mapping[str, Any], model_id: str | None = None) -> None:
    """Params on a LoggedModel (the last one logged when ``model_id`` is None)."""
    _client().log_model_params(_active_model_id(model_id), params)


def log_outputs(models: Sequence[Any] | None = None) -> None:
    """Record models (``{"model_id": ..., "step": ...}`` or LoggedModelOutput-like objects)
    as outputs of the active run."""
    from steppe import fluent

    run = fluent._get_or_start_run()
    _client().log_outputs(run.info.run_id, list(models or []))


def log_inputs(
    datasets: Sequence[Any] | None = None,
    contexts: Sequence[str | None] | None = None,
    tags_list: Sequence[Mapping[str, str] | None] | None = None,
    models: Sequence[Any] | None = None,
) -> None:
    """Record datasets (each with its context and tags) and models as inputs of the active run."""
    from steppe import fluent

    run = fluent._get_or_start_run()
    inputs: list[Any] = []
    for i, dataset in enumerate(datasets or []):
        tags = dict((tags_list[i] if tags_list else None) or {})
        context = contexts[i] if contexts else None
        if hasattr(dataset, "to_input"):  # a steppe.data Dataset
            inputs.append(dataset.to_input(context, tags))
            continue
        if context:
            tags["mlflow.data.context"] = context
        if hasattr(dataset, "_to_mlflow_entity"):  # an mlflow.data Dataset
            from steppe.manage import _as_json

            raw: Any = _as_json(dataset._to_mlflow_entity(), "datasets")
        else:
            raw = dict(dataset)
        inputs.append(
            {"dataset": raw, "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]}
        )
    _client().log_inputs(
        run.info.run_id, datasets=inputs or None, models=list(models or []) or None
    )
