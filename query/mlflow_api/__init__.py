"""MLflow's tracking REST API (2.0, as the mlflow 3.x client uses it) over steppe's data model.

A module per API surface: ``experiments``, ``runs``, ``metrics``, and ``common`` (request
fields, documents, limits) under them; this one registers the routes. The registry's and
LoggedModels' routes are steppe.query.mlflow_models, registered from here too.

Routes under ``/api/2.0/mlflow/`` and ``/ajax-api/2.0/mlflow/``, a validator per request, JSON
<-> domain converters and one error-code -> HTTP status table. Metric points go through the
``MetricWriter`` (the ingest pipeline: validated, WAL, fsync) and never straight to files;
experiments, runs, params, tags and dataset inputs go to the Catalog. Without a writer the API
is read-only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from steppe.query.mlflow_api.common import (
    _SERVER_INFO_PATHS,
    HTTP_STATUS,
    METRIC_WRITER,
    MLFLOW_PREFIXES,
    ApiError,
    MetricWriter,
    _json,
)
from steppe.query.mlflow_api.experiments import (
    _create_experiment,
    _delete_experiment,
    _delete_experiment_tag,
    _get_experiment,
    _get_experiment_by_name,
    _restore_experiment,
    _search_experiments,
    _set_experiment_tag,
    _update_experiment,
)
from steppe.query.mlflow_api.metrics import _get_metric_history, _get_metric_history_bulk_interval
from steppe.query.mlflow_api.runs import (
    _create_run,
    _delete_run,
    _delete_tag,
    _get_run,
    _log_batch,
    _log_inputs,
    _log_metric,
    _log_param,
    _restore_run,
    _search_runs,
    _set_tag,
    _update_run,
)
from steppe.query.mlflow_models import add_model_routes

__all__ = [
    "HTTP_STATUS",
    "MLFLOW_PREFIXES",
    "ApiError",
    "MetricWriter",
    "add_mlflow_routes",
]


async def _server_info(request: web.Request) -> web.Response:
    return _json(
        {
            "store_type": "SqlStore",
            "workspaces_enabled": False,
            "trace_archival_enabled": False,
            "multipart_uploads_enabled": False,
            "multipart_downloads_enabled": False,
            "presigned_upload_run_id_supported": False,
            "presigned_upload_model_id_supported": False,
            "features_enabled": {"gateway": False},
        }
    )


# -- registration -------------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROUTES: tuple[tuple[str, str, _Handler], ...] = (
    ("POST", "/experiments/create", _create_experiment),
    ("GET", "/experiments/get", _get_experiment),
    ("GET", "/experiments/get-by-name", _get_experiment_by_name),
    ("POST", "/experiments/search", _search_experiments),
    ("GET", "/experiments/search", _search_experiments),
    ("POST", "/experiments/update", _update_experiment),
    ("POST", "/experiments/delete", _delete_experiment),
    ("POST", "/experiments/restore", _restore_experiment),
    ("POST", "/experiments/set-experiment-tag", _set_experiment_tag),
    ("POST", "/experiments/delete-experiment-tag", _delete_experiment_tag),
    ("POST", "/runs/create", _create_run),
    ("GET", "/runs/get", _get_run),
    ("POST", "/runs/update", _update_run),
    ("POST", "/runs/delete", _delete_run),
    ("POST", "/runs/restore", _restore_run),
    ("POST", "/runs/log-metric", _log_metric),
    ("POST", "/runs/log-parameter", _log_param),
    ("POST", "/runs/set-tag", _set_tag),
    ("POST", "/runs/delete-tag", _delete_tag),
    ("POST", "/runs/log-batch", _log_batch),
    ("POST", "/runs/log-inputs", _log_inputs),
    ("POST", "/runs/search", _search_runs),
    ("GET", "/metrics/get-history", _get_metric_history),
    ("GET", "/metrics/get-history-bulk-interval", _get_metric_history_bulk_interval),
)


def add_mlflow_routes(app: web.Application, metric_writer: MetricWriter | None) -> None:
    """Register MLflow's tracking REST API on ``app`` (made by steppe.query.app.make_app,
    whose catalog, snapshot source and reader it uses). Without ``metric_writer`` every
    write answers 501 NOT_IMPLEMENTED."""
    app[METRIC_WRITER] = metric_writer
    for prefix in MLFLOW_PREFIXES:
        for method, path, handler in _ROUTES:
            app.router.add_route(method, prefix + path, handler)
    for path in _SERVER_INFO_PATHS:
        app.router.add_get(path, _server_info)
    add_model_routes(app)
