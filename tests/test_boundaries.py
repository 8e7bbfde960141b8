"""Architecture held by tests: generated code is fresh, imports point one way, __all__ is stable."""

from __future__ import annotations

import filecmp
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import steppe

ROOT = Path(__file__).resolve().parents[1]


def test_generated_proto_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True, cwd=ROOT)
    generated = tmp_path / "steppe" / "v1"
    names = sorted(p.name for p in generated.iterdir())
    assert names == [
        "steppe_pb2.py",
        "steppe_pb2.pyi",
        "steppe_pb2_grpc.py",
        "tensorboard_pb2.py",
        "tensorboard_pb2.pyi",
        "wandb_records_pb2.py",
        "wandb_records_pb2.pyi",
    ]
    for name in names:
        committed = ROOT / "proto" / "steppe" / "v1" / name
        assert filecmp.cmp(generated / name, committed, shallow=False), (
            f"{committed} is stale: run scripts/gen-proto and commit the result"
        )


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_the_training_process_imports_neither_server_nor_duckdb() -> None:
    loaded = _modules_after("import steppe")
    assert "grpc" in loaded
    forbidden = {m for m in loaded if m.split(".")[0] in {"duckdb", "pyarrow", "aiohttp"}}
    forbidden |= {m for m in loaded if m.startswith(("steppe.ingest", "steppe.query"))}
    assert not forbidden


def test_the_model_libraries_load_only_when_models_are_used() -> None:
    """``import steppe`` stays light; the sklearn extra's libraries load with steppe.sklearn."""
    heavy = {"sklearn", "yaml", "pandas", "skops", "cloudpickle", "mlflow"}
    loaded = _modules_after("import steppe")
    assert not {m for m in loaded if m.split(".")[0] in heavy}
    loaded = _modules_after("import steppe; steppe.sklearn.save_model")
    assert "steppe.sklearn" in loaded


def test_the_client_reaches_the_server_side_only_lazily() -> None:
    """The training-process package (client/) imports ingest and query only inside functions
    (the CLI starting a server, steppe.sql reading a data dir in-process); the composition
    root of the server lives at the top of the graph, in query/server.py."""
    import ast

    for path in sorted((ROOT / "client").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module level, including `if TYPE_CHECKING:` blocks' bodies
            if isinstance(node, ast.If):
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            bad = [n for n in names if n.startswith(("steppe.ingest", "steppe.query"))]
            assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad} eagerly"
    assert not (ROOT / "client" / "server.py").exists()
    loaded = _modules_after("import steppe.cli")
    assert not {m for m in loaded if m.startswith(("steppe.ingest", "steppe.query"))}


def test_the_training_frameworks_load_only_with_their_integration() -> None:
    """``import steppe`` (and a run with system metrics) never loads torch, Lightning,
    transformers, Keras or the system-metrics readers' libraries; each integration loads its
    own framework only."""
    frameworks = {"torch", "lightning", "transformers", "keras", "psutil", "pynvml", "tensorflow"}
    loaded = _modules_after("import steppe, steppe.integration, steppe.system_metrics")
    assert not {m for m in loaded if m.split(".")[0] in frameworks}
    for framework, other in [("lightning", "keras"), ("transformers", "keras"), ("keras", "")]:
        if importlib.util.find_spec(framework) is None:
            continue  # not installed here (the integration extras are optional)
        backend = "import os; os.environ.setdefault('KERAS_BACKEND', 'torch')"
        loaded = _modules_after(f"{backend}; import steppe.{framework}")
        assert framework in loaded and other not in loaded, framework


def test_ingest_does_not_import_query() -> None:
    loaded = _modules_after("import steppe.ingest.service")
    assert not {m for m in loaded if m.startswith("steppe.query")}


def test_the_metric_rules_sit_below_both_doors() -> None:
    """steppe.ingest.metrics owns the metric rules; it knows neither door (the servicer and
    its wire codecs, the REST API) nor the store it is handed."""
    loaded = _modules_after("import steppe.ingest.metrics")
    doors = {"steppe.ingest.service", "steppe.ingest.wire", "steppe.ingest.store"}
    assert not {m for m in loaded if m in doors or m.startswith("steppe.query")}


def test_the_store_sits_on_its_parts_and_they_not_on_it() -> None:
    """ingest's write side in layers: metrics_files <- latest <- recovery <- store; each
    module imports only those below it."""
    layers = ["metrics_files", "latest", "recovery", "store"]
    for i, name in enumerate(layers):
        loaded = _modules_after(f"import steppe.ingest.{name}")
        above = {f"steppe.ingest.{upper}" for upper in layers[i + 1 :]}
        assert not loaded & above, (name, loaded & above)


def test_the_query_app_sits_on_its_parts_and_they_not_on_it() -> None:
    """make_app wires the read side; what it wires never imports it (no app <-> mlflow_api
    cycle), and the shared app keys import no handlers."""
    parts = ["context", "middleware", "requests", "documents", "static_files", "mlflow_api"]
    for name in parts:
        loaded = _modules_after(f"import steppe.query.{name}")
        assert "steppe.query.app" not in loaded, name
    loaded = _modules_after("import steppe.query.context")
    assert not {
        m for m in loaded if m.startswith(("steppe.query.mlflow", "steppe.query.artifacts"))
    }


def test_every_package_folder_is_installed() -> None:
    """pyproject lists packages by hand (package-dir maps folders to steppe.*): a new folder
    with an __init__.py that is not listed would be missing from `pip install .`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    roots = {"client": "steppe", "ingest": "steppe.ingest", "query": "steppe.query"}
    found = set()
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found <= listed, sorted(found - listed)


def test_only_wire_modules_touch_generated_code() -> None:
    users = {
        str(p.relative_to(ROOT))
        for folder in ("client", "ingest", "query")
        for p in (ROOT / folder).rglob("*.py")
        if re.search(r"^\s*(from|import) steppe\.v1", p.read_text(), re.MULTILINE)
    }
    # client/importers/tfevents.py and wandb_wire.py are the doors to TensorBoard's event
    # records and W&B's run records (formats we read, not steppe's wire).
    doors = {"client/importers/tfevents.py", "client/importers/wandb_wire.py"}
    assert users <= {"client/wire.py", "ingest/wire.py", *doors}


def test_public_api_is_stable() -> None:
    assert "start_run" in steppe.__all__ and "log_metric" in steppe.__all__
    for name in steppe.__all__:
        assert hasattr(steppe, name), name
