"""steppe: experiment tracking built for throughput, with MLflow's names.

    import steppe as mlflow
    with mlflow.start_run():
        mlflow.log_param("learning_rate", 0.01)
        mlflow.log_metric("accuracy", 0.8)

Importing steppe loads grpcio and protobuf, never DuckDB or the server.
"""

from steppe.entities import (
    Experiment,
    FileInfo,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
)
from steppe.errors import (
    FlushTimeout,
    InvalidParameterValue,
    MlflowException,
    ResourceAlreadyExists,
    ResourceDoesNotExist,
    ServerUnavailable,
    SteppeError,
)
from steppe.fluent import (
    ActiveRun,
    active_run,
    create_experiment,
    delete_tag,
    download_artifacts,
    end_run,
    flush,
    get_experiment,
    get_experiment_by_name,
    get_run,
    get_tracking_uri,
    last_active_run,
    list_artifacts,
    log_artifact,
    log_artifacts,
    log_dict,
    log_figure,
    log_metric,
    log_metrics,
    log_param,
    log_params,
    log_text,
    search_experiments,
    set_experiment,
    set_tag,
    set_tags,
    set_tracking_uri,
    start_run,
)
from steppe.search import search_runs
from steppe.tracking import Client

MlflowClient = Client

__version__ = "0.1.0"
VERSION = __version__

__all__ = [
    "VERSION",
    "ActiveRun",
    "Client",
    "Experiment",
    "FileInfo",
    "FlushTimeout",
    "InvalidParameterValue",
    "Metric",
    "MlflowClient",
    "MlflowException",
    "Param",
    "ResourceAlreadyExists",
    "ResourceDoesNotExist",
    "Run",
    "RunData",
    "RunInfo",
    "RunStatus",
    "RunTag",
    "ServerUnavailable",
    "SteppeError",
    "__version__",
    "active_run",
    "create_experiment",
    "delete_tag",
    "download_artifacts",
    "end_run",
    "flush",
    "get_experiment",
    "get_experiment_by_name",
    "get_run",
    "get_tracking_uri",
    "last_active_run",
    "list_artifacts",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_text",
    "search_experiments",
    "search_runs",
    "set_experiment",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]

# --- Model Registry and LoggedModels (steppe.registry) ----------------------------------------
from steppe.model_entities import (  # noqa: E402
    LoggedModel,
    LoggedModelStatus,
    ModelVersion,
    RegisteredModel,
)
from steppe.registry import (  # noqa: E402
    create_external_model,
    delete_logged_model_tag,
    finalize_logged_model,
    get_logged_model,
    initialize_logged_model,
    last_logged_model,
    log_inputs,
    log_model_params,
    log_outputs,
    register_model,
    search_logged_models,
    search_model_versions,
    search_registered_models,
    set_logged_model_tags,
    set_model_version_tag,
)

__all__ += [
    "LoggedModel",
    "LoggedModelStatus",
    "ModelVersion",
    "RegisteredModel",
    "create_external_model",
    "delete_logged_model_tag",
    "finalize_logged_model",
    "get_logged_model",
    "initialize_logged_model",
    "last_logged_model",
    "log_inputs",
    "log_model_params",
    "log_outputs",
    "register_model",
    "search_logged_models",
    "search_model_versions",
    "search_registered_models",
    "set_logged_model_tags",
    "set_model_version_tag",
]

# --- managing experiments and runs, images and tables (steppe.manage) ------------------------
from steppe.manage import (  # noqa: E402
    delete_experiment,
    delete_experiment_tag,
    delete_run,
    disable_system_metrics_logging,
    enable_system_metrics_logging,
    flush_artifact_async_logging,
    flush_async_logging,
    get_artifact_uri,
    get_parent_run,
    get_registry_uri,
    is_tracking_uri_set,
    load_table,
    log_image,
    log_table,
    restore_experiment,
    restore_run,
    set_experiment_tag,
    set_experiment_tags,
    set_registry_uri,
    set_system_metrics_node_id,
    set_system_metrics_samples_before_logging,
    set_system_metrics_sampling_interval,
)

__all__ += [
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

# --- the model flavors and other subpackages, imported on first use as ``mlflow.<name>`` -------
#: ``steppe.sklearn`` works after a bare ``import steppe`` (as ``mlflow.sklearn`` does), without
#: making ``import steppe`` load scikit-learn, PyYAML or pandas.
#: The training-framework integrations (lightning, transformers, keras) load their framework.
_LAZY_SUBMODULES = frozenset(
    {
        "artifacts",
        "data",
        "keras",
        "lightning",
        "models",
        "projects",
        "pyfunc",
        "sklearn",
        "transformers",
    }
)


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"steppe.{name}")
    raise AttributeError(f"module 'steppe' has no attribute {name!r}")


def run(uri: str, entry_point: str = "main", *args: object, **kwargs: object) -> object:
    """Run an MLflow Project as a steppe run: ``steppe.projects.run`` (``mlflow.run``)."""
    from steppe import projects

    return projects.run(uri, entry_point, *args, **kwargs)  # type: ignore[arg-type]


__all__ += ["run"]


# --- autologging and datasets (steppe.autolog, steppe.data) ----------------------------------
from steppe.autolog import autolog  # noqa: E402
from steppe.data import log_input  # noqa: E402

__all__ += ["autolog", "log_input"]
