"""``steppe.search_runs``: MLflow's run search returning a pandas DataFrame (or Runs).

Filtering and ordering happen on the server (steppe.query.search); this module pages
through the results and shapes them like MLflow. pandas is imported only when asked for.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from steppe import errors
from steppe.entities import Run

if TYPE_CHECKING:
    from steppe.connection import Connection

#: MLflow's ViewType values -> the server's names.
VIEW_TYPES = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}
#: Default max_results of the DataFrame search (MLflow's SEARCH_MAX_RESULTS_PANDAS).
MAX_RESULTS_PANDAS = 100_000
_PAGE_SIZE = 10_000
_INFO_COLUMNS = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")


def search_pages(
    conn: Connection,
    experiment_ids: Sequence[str] | None,
    filter_string: str | None,
    max_results: int,
    order_by: Sequence[str] | None,
    run_view_type: int,
) -> list[Run]:
    """Ask the server page by page until ``max_results`` runs or the last page."""
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise errors.InvalidParameterValue("max_results", max_results, "must be an integer >= 1")
    if run_view_type not in VIEW_TYPES:
        raise errors.InvalidParameterValue(
            "run_view_type", run_view_type, "must be 1 (ACTIVE_ONLY), 2 (DELETED_ONLY) or 3 (ALL)"
        )
    if isinstance(order_by, str):
        raise errors.InvalidParameterValue(
            "order_by", order_by, 'must be a list of strings, e.g. ["metrics.loss ASC"]'
        )
    runs: list[Run] = []
    token: str | None = None
    while len(runs) < max_results:
        body: dict[str, Any] = {
            "experiment_ids": None if experiment_ids is None else [str(e) for e in experiment_ids],
            "filter_string": filter_string or "",
            "order_by": None if order_by is None else list(order_by),
            "run_view_type": VIEW_TYPES[run_view_type],
            "max_results": min(max_results - len(runs), _PAGE_SIZE),
            "page_token": token,
        }
        raw = conn.post_json("/api/steppe/v1/runs/search", body)
        runs.extend(Run.from_json(r) for r in raw["runs"])
        token = raw.get("next_page_token")
        if not token:
            break
    return runs


def search_runs(
    experiment_ids: Sequence[str] | None = None,
    filter_string: str = "",
    run_view_type: int = 1,
    max_results: int = MAX_RESULTS_PANDAS,
    order_by: Sequence[str] | None = None,
    output_format: str = "pandas",
    search_all_experiments: bool = False,
    experiment_names: Sequence[str] | None = None,
) -> Any:
    """Search runs with MLflow's filter grammar; a pandas DataFrame shaped like MLflow's.

    Columns: run_id, experiment_id, status, artifact_uri, start_time, end_time (UTC
    datetimes), then ``metrics.<key>`` (latest value; NaN when absent), ``params.<key>`` and
    ``tags.<key>`` (None when absent). With no ids and no names, the active experiment is
    searched (every experiment with ``search_all_experiments``). ``output_format="list"``
    returns Run objects instead.

    Example::

        df = steppe.search_runs(filter_string="metrics.loss < 0.1", order_by=["metrics.loss"])
        df[["run_id", "metrics.loss", "params.lr", "tags.mlflow.runName"]]
    """
    from steppe import fluent
    from steppe.tracking import Client

    if output_format not in ("pandas", "list"):
        raise errors.InvalidParameterValue(
            "output_format", output_format, 'must be "pandas" or "list"'
        )
    if output_format == "pandas":
        _pandas()  # fail before any network call when pandas is missing
    if experiment_ids and experiment_names:
        raise errors.InvalidParameterValue(
            "experiment_names",
            list(experiment_names),
            "give experiment_ids or experiment_names, not both",
        )
    client = Client()
    ids: list[str] | None
    if experiment_ids:
        ids = [str(e) for e in experiment_ids]
    elif experiment_names:
        found = [client.get_experiment_by_name(name) for name in experiment_names]
        ids = [e.experiment_id for e in found if e is not None]
    elif search_all_experiments:
        ids = None
    else:
        ids = [fluent._resolve_experiment_id(client)]
    runs: list[Run] = []
    if ids != []:
        runs = client.search_runs(ids, filter_string, max_results, order_by, run_view_type)
    return runs if output_format == "list" else runs_dataframe(runs)


def _pandas() -> Any:
    try:
        # import_module: pandas is optional, and its type stubs are not a dependency.
        pandas = importlib.import_module("pandas")
    except ImportError:
        raise ImportError(
            "steppe.search_runs returns a pandas DataFrame and pandas is not installed: "
            "pip install pandas (or pass output_format='list' for Run objects)"
        ) from None
    return pandas


def runs_dataframe(runs: Sequence[Run]) -> Any:
    """Runs as MLflow's search_runs DataFrame (see ``search_runs``)."""
    pd = _pandas()

    def times(values: list[int | None]) -> Any:
        series = pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
        return pd.to_datetime(series, unit="ms", utc=True)

    data: dict[str, Any] = {
        "run_id": [run.info.run_id for run in runs],
        "experiment_id": [run.info.experiment_id for run in runs],
        "status": [run.info.status for run in runs],
        "artifact_uri": [run.info.artifact_uri for run in runs],
        "start_time": times([run.info.start_time for run in runs]),
        "end_time": times([run.info.end_time for run in runs]),
    }
    metric_keys = sorted({key for run in runs for key in run.data.metrics})
    param_keys = sorted({key for run in runs for key in run.data.params})
    tag_keys = sorted({key for run in runs for key in run.data.tags})
    for key in metric_keys:
        data[f"metrics.{key}"] = pd.Series(
            [run.data.metrics.get(key, math.nan) for run in runs], dtype="float64"
        )
    for key in param_keys:
        data[f"params.{key}"] = pd.Series([run.data.params.get(key) for run in runs], dtype=object)
    for key in tag_keys:
        data[f"tags.{key}"] = pd.Series([run.data.tags.get(key) for run in runs], dtype=object)
    return pd.DataFrame(data, columns=[*_INFO_COLUMNS, *list(data)[len(_INFO_COLUMNS) :]])
