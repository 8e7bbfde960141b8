"""`import steppe as mlflow` is a drop-in: every public name of the installed mlflow's fluent
module and of MlflowClient exists in steppe, except those listed here as deliberately absent
(mirrored in README, "Coming from MLflow"). A new mlflow release that adds a name fails this
test until the name is built or listed."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

import steppe

#: Module-level names of mlflow that steppe does not have, by reason.
ABSENT_FUNCTIONS: dict[str, set[str]] = {
    "tracing and GenAI observability": {
        "add_trace",
        "delete_trace_tag",
        "flush_trace_async_logging",
        "get_active_trace_id",
        "get_current_active_span",
        "get_last_active_trace_id",
        "get_trace",
        "log_trace",
        "maybe_hint_tracing_skill",
        "search_sessions",
        "search_traces",
        "set_trace_tag",
        "start_span",
        "start_span_no_context",
        "trace",
        "update_current_trace",
        "IS_TRACING_SDK_ONLY",
    },
    "GenAI assessments and evaluation": {
        "delete_assessment",
        "evaluate",
        "get_assessment",
        "log_assessment",
        "log_expectation",
        "log_feedback",
        "log_issue",
        "override_feedback",
        "update_assessment",
        "validate_evaluation_results",
    },
    "prompt registry": {
        "delete_prompt_alias",
        "load_prompt",
        "register_prompt",
        "search_prompts",
        "set_prompt_alias",
    },
    "active model (links GenAI traces to a LoggedModel)": {
        "ActiveModel",
        "clear_active_model",
        "get_active_model_id",
        "set_active_model",
    },
    "workspaces (multi-tenant MLflow servers)": {
        "create_workspace",
        "delete_workspace",
        "get_workspace",
        "list_workspaces",
        "set_workspace",
        "update_workspace",
    },
    "Databricks, telemetry and mlflow's own tooling": {
        "doctor",
        "import_checkpoints",
        "login",
        "log_stream",
        "set_telemetry_client",
        "Image",
        "MLFLOW_CONFIGURE_LOGGING",
        "test",  # @mlflow.test, for mlflow's pytest plugin (GenAI evaluation in tests)
    },
    "mlflow's internals, not API": {"LazyLoader", "RunOperations", "TYPE_CHECKING", "context"},
}

#: mlflow's submodules that steppe has (flavors beyond these: use the real mlflow.<flavor>
#: client against steppe's server, see README "Models and the Model Registry").
SUBMODULES = {"artifacts", "data", "models", "projects", "pyfunc", "sklearn"}

#: MlflowClient methods that steppe.Client does not have, by reason.
ABSENT_METHODS: dict[str, set[str]] = {
    "tracing and GenAI observability": {
        "delete_trace_tag",
        "delete_traces",
        "end_span",
        "end_trace",
        "get_trace",
        "link_traces_to_run",
        "search_traces",
        "set_trace_tag",
        "start_span",
        "start_trace",
        "unlink_traces_from_run",
    },
    "prompt registry": {
        "create_prompt",
        "create_prompt_version",
        "delete_prompt",
        "delete_prompt_alias",
        "delete_prompt_tag",
        "delete_prompt_version",
        "delete_prompt_version_tag",
        "detach_prompt_from_run",
        "get_prompt",
        "get_prompt_version",
        "get_prompt_version_by_alias",
        "link_prompt_version_to_model",
        "link_prompt_version_to_run",
        "link_prompt_versions_to_trace",
        "list_logged_prompts",
        "load_prompt",
        "parse_prompt_uri",
        "register_prompt",
        "search_prompt_versions",
        "search_prompts",
        "set_prompt_alias",
        "set_prompt_tag",
        "set_prompt_version_tag",
    },
    "GenAI evaluation datasets": {
        "add_dataset_to_experiments",
        "create_dataset",
        "delete_dataset",
        "delete_dataset_tag",
        "get_dataset",
        "remove_dataset_from_experiments",
        "search_datasets",
        "set_dataset_tags",
    },
    "MCP servers and gateway endpoints": {
        "create_mcp_access_endpoint",
        "create_mcp_server",
        "create_mcp_server_version",
        "delete_mcp_access_endpoint",
        "delete_mcp_server",
        "delete_mcp_server_alias",
        "delete_mcp_server_tag",
        "delete_mcp_server_version",
        "delete_mcp_server_version_tag",
        "get_latest_mcp_server_version",
        "get_mcp_access_endpoint",
        "get_mcp_server",
        "get_mcp_server_version",
        "get_mcp_server_version_by_alias",
        "refresh_mcp_server_version_tools",
        "search_mcp_access_endpoints",
        "search_mcp_server_versions",
        "search_mcp_servers",
        "set_mcp_server_alias",
        "set_mcp_server_tag",
        "set_mcp_server_version_tag",
        "update_mcp_access_endpoint",
        "update_mcp_server",
        "update_mcp_server_version",
    },
    "registry webhooks": {
        "create_webhook",
        "delete_webhook",
        "get_webhook",
        "list_webhooks",
        "test_webhook",
        "update_webhook",
    },
    "workspaces (multi-tenant MLflow servers)": {
        "create_workspace",
        "delete_workspace",
        "get_workspace",
        "get_workspace_store_uri",
        "list_workspaces",
        "update_workspace",
    },
    "Databricks": {"log_stream"},
}


def _public(obj: Any) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _absent(table: dict[str, set[str]]) -> set[str]:
    return set().union(*table.values())


def test_every_mlflow_function_exists_in_steppe_or_is_listed_as_absent() -> None:
    names = {n for n in _public(mlflow) if not inspect.ismodule(getattr(mlflow, n, None))}
    ours = _public(steppe) | set(steppe._LAZY_SUBMODULES)
    missing = names - ours - _absent(ABSENT_FUNCTIONS)
    assert not missing, f"mlflow has these, steppe has not (build them or list them): {missing}"


def test_the_absent_lists_hold_only_names_mlflow_has_and_steppe_lacks() -> None:
    for absent, ours, theirs in (
        (_absent(ABSENT_FUNCTIONS), _public(steppe), _public(mlflow)),
        (_absent(ABSENT_METHODS), _public(steppe.Client), _public(MlflowClient)),
    ):
        assert not absent & ours, f"listed as absent but steppe has them: {absent & ours}"
        assert absent <= theirs, f"listed but mlflow no longer has them: {absent - theirs}"


def test_steppe_has_the_submodules_a_tracking_user_imports() -> None:
    import importlib

    for name in SUBMODULES:
        assert inspect.ismodule(getattr(mlflow, name))
        assert importlib.import_module(f"steppe.{name}") is getattr(steppe, name)


def test_every_mlflowclient_method_exists_on_steppe_client_or_is_listed() -> None:
    missing = _public(MlflowClient) - _public(steppe.Client) - _absent(ABSENT_METHODS)
    assert not missing, f"MlflowClient has these, steppe.Client has not: {missing}"
    assert steppe.MlflowClient is steppe.Client


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in _public(MlflowClient) & _public(steppe.Client)
        if callable(getattr(MlflowClient, n))
    ),
)
def test_shared_client_methods_take_mlflows_leading_parameters(name: str) -> None:
    """Positional calls written for MlflowClient bind the same way on steppe.Client: every
    parameter MLflow's method has without a default, steppe's has at the same position."""
    theirs = [
        p
        for p in inspect.signature(getattr(MlflowClient, name)).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    ours = [
        p.name
        for p in inspect.signature(getattr(steppe.Client, name)).parameters.values()
        if p.name != "self"
    ]
    required = [p.name for p in theirs if p.default is p.empty]
    assert ours[: len(required)] == required, (name, ours, required)


def test_the_readme_names_the_absent_groups() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Coming from MLflow", 1)[1].split("\n## ", 1)[0]
    for group in {**ABSENT_FUNCTIONS, **ABSENT_METHODS}:
        assert group in section, f"README's 'Coming from MLflow' does not mention {group!r}"


def test_mlflow_artifacts_functions_against_a_real_server(tracking: str, tmp_path: Path) -> None:
    with steppe.start_run() as run:
        steppe.log_text("hello", "notes/a.txt")
        steppe.log_dict({"k": [1, 2]}, "config.json")
    uri = f"runs:/{run.info.run_id}"
    assert steppe.artifacts.load_text(f"{uri}/notes/a.txt") == "hello"
    assert steppe.artifacts.load_dict(f"{uri}/config.json") == {"k": [1, 2]}
    local = Path(steppe.artifacts.download_artifacts(f"{uri}/notes", dst_path=tmp_path))
    assert (local / "a.txt").read_text() == "hello"
    listed = {f.path for f in steppe.artifacts.list_artifacts(run_id=run.info.run_id)}
    assert listed == {"notes", "config.json"}
    # The run's mlflow-artifacts: URI works as well (what get_artifact_uri returns).
    artifact_uri = steppe.get_run(run.info.run_id).info.artifact_uri
    assert steppe.artifacts.load_text(f"{artifact_uri}/notes/a.txt") == "hello"
    with pytest.raises(steppe.InvalidParameterValue, match="artifact_uri"):
        steppe.artifacts.download_artifacts(f"{uri}/notes", run_id=run.info.run_id)
