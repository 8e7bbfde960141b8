"""The MLmodel file and the folder around it (flavors, signature, input example, Python
environment files), written in MLflow's format so either client loads the other's models."""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from steppe.errors import MlflowException, SteppeError
from steppe.models.signature import ModelSignature, _is_dataframe

MLMODEL_FILE_NAME = "MLmodel"
_INPUT_EXAMPLE = "input_example.json"
_SERVING_INPUT = "serving_input_example.json"
_REQUIREMENTS = "requirements.txt"
_PYTHON_ENV = "python_env.yaml"
_CONDA_ENV = "conda.yaml"


def yaml_module() -> Any:
    """PyYAML, or an error saying which extra brings it."""
    try:
        import yaml
    except ImportError as exc:  # optional dependency: say how to get it
        raise SteppeError(
            "models need PyYAML for the MLmodel file: pip install 'steppe[sklearn]'"
        ) from exc
    return yaml


@dataclass
class Model:
    """An MLmodel file: the flavors that can load the model and what it takes and returns."""

    artifact_path: str | None = None
    run_id: str | None = None
    model_id: str | None = None
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)
    signature: ModelSignature | None = None
    saved_input_example_info: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    model_uuid: str = field(default_factory=lambda: uuid.uuid4().hex)
    utc_time_created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    )
    model_size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add_flavor(self, name: str, **params: Any) -> Model:
        self.flavors[name] = dict(params)
        return self

    def to_dict(self) -> dict[str, Any]:
        from steppe import __version__

        out: dict[str, Any] = dict(self.extra)
        if self.artifact_path is not None:
            out["artifact_path"] = self.artifact_path
        out["flavors"] = self.flavors
        out["model_id"] = self.model_id
        if self.model_size_bytes is not None:
            out["model_size_bytes"] = self.model_size_bytes
        out["model_uuid"] = self.model_uuid
        out.setdefault("mlflow_version", _mlflow_version())
        out["steppe_version"] = __version__
        if self.run_id is not None:
            out["run_id"] = self.run_id
        if self.saved_input_example_info is not None:
            out["saved_input_example_info"] = self.saved_input_example_info
        if self.signature is not None:
            out["signature"] = self.signature.to_dict()
        if self.metadata is not None:
            out["metadata"] = self.metadata
        out["utc_time_created"] = self.utc_time_created
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        yaml = yaml_module()
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, default_flow_style=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Read an MLmodel file (or the folder that holds one)."""
        target = Path(path)
        if target.is_dir():
            target = target / MLMODEL_FILE_NAME
        if not target.is_file():
            raise MlflowException(
                f"Could not find an 'MLmodel' configuration file at '{target.parent}'",
                error_code="RESOURCE_DOES_NOT_EXIST",
            )
        yaml = yaml_module()
        raw = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or not isinstance(raw.get("flavors"), dict):
            raise MlflowException(f"{target} is not an MLmodel file: it has no 'flavors'")
        known = {
            "artifact_path",
            "run_id",
            "model_id",
            "flavors",
            "signature",
            "saved_input_example_info",
            "metadata",
            "model_uuid",
            "utc_time_created",
            "model_size_bytes",
            "steppe_version",
        }
        signature = raw.get("signature")
        return cls(
            artifact_path=raw.get("artifact_path"),
            run_id=raw.get("run_id"),
            model_id=raw.get("model_id"),
            flavors=raw["flavors"],
            signature=ModelSignature.from_dict(signature) if signature else None,
            saved_input_example_info=raw.get("saved_input_example_info"),
            metadata=raw.get("metadata"),
            model_uuid=str(raw.get("model_uuid") or uuid.uuid4().hex),
            utc_time_created=str(raw.get("utc_time_created", "")),
            model_size_bytes=raw.get("model_size_bytes"),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def load_input_example(self, path: str | os.PathLike[str]) -> Any:
        """The saved input example (a DataFrame, numpy array or JSON value), or None."""
        info = self.saved_input_example_info
        if not info:
            return None
        raw = json.loads((Path(path) / info["artifact_path"]).read_text(encoding="utf-8"))
        if info.get("type") == "dataframe":
            import pandas as pd

            return pd.DataFrame(raw["data"], columns=raw["columns"])
        if info.get("type") == "ndarray":
            import numpy as np

            return np.asarray(raw)
        return raw


@dataclass(frozen=True)
class ModelInfo:
    """What ``log_model`` returns: where the model went and how to load it."""

    model_id: str
    model_uri: str
    run_id: str | None
    artifact_path: str
    name: str
    flavors: dict[str, Any]
    signature: ModelSignature | None
    model_uuid: str
    utc_time_created: str
    registered_model_version: int | None = None

    @property
    def artifact_uri(self) -> str:
        return self.artifact_path


def _mlflow_version() -> str:
    """The MLflow format version written into MLmodel: the installed mlflow's if any, else
    the 3.x release whose format steppe writes."""
    try:
        from importlib.metadata import version

        return version("mlflow")
    except Exception:  # mlflow not installed (the usual case for steppe's client)
        return "3.5.0"


# -- input examples ----------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def save_input_example(model: Model, example: Any, path: str | os.PathLike[str]) -> Any:
    """Write ``input_example.json`` and ``serving_input_example.json`` as MLflow does and
    record them in ``model``; returns the example as it will load (or None)."""
    import numpy as np

    if example is None:
        return None
    folder = Path(path)
    info: dict[str, Any] = {"artifact_path": _INPUT_EXAMPLE, "serving_input_path": _SERVING_INPUT}
    if _is_dataframe(example):
        split = json.loads(example.to_json(orient="split", index=False, date_format="iso"))
        document: Any = {"columns": split["columns"], "data": split["data"]}
        serving: Any = {"dataframe_split": document}
        info.update(type="dataframe", pandas_orient="split")
    elif isinstance(example, np.ndarray):
        document = example.tolist()
        serving = {"inputs": document}
        info["type"] = "ndarray"
    elif isinstance(example, Mapping) and any(isinstance(v, np.ndarray) for v in example.values()):
        document = _jsonable(example)
        serving = {"inputs": document}
        info["type"] = "ndarray"
    else:
        document = _jsonable(example)
        serving = {"inputs": document}
        info["type"] = "json_object"
    (folder / _INPUT_EXAMPLE).write_text(json.dumps(document), encoding="utf-8")
    (folder / _SERVING_INPUT).write_text(json.dumps(serving, indent=2), encoding="utf-8")
    model.saved_input_example_info = info
    return example


# -- Python environment ------------------------------------------------------------------------


def _installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def pinned(names: Sequence[str]) -> list[str]:
    """``name==version`` for each installed distribution of ``names`` (bare name otherwise)."""
    return [f"{n}=={v}" if (v := _installed(n)) else n for n in names]


def write_environment(
    path: str | os.PathLike[str],
    default_requirements: Sequence[str],
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
) -> None:
    """``requirements.txt``, ``python_env.yaml`` and ``conda.yaml`` for the model folder: what
    MLflow reads to rebuild the model's environment (``mlflow models serve``, Projects)."""
    yaml = yaml_module()
    folder = Path(path)
    if pip_requirements is not None and extra_pip_requirements is not None:
        raise MlflowException(
            "Only one of pip_requirements and extra_pip_requirements can be given",
            error_code="INVALID_PARAMETER_VALUE",
        )

    def listed(value: Sequence[str] | str) -> list[str]:
        if isinstance(value, str):  # a requirements file, as MLflow accepts
            lines = Path(value).read_text(encoding="utf-8").splitlines()
            return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        return [str(v) for v in value]

    if pip_requirements is not None:
        requirements = listed(pip_requirements)
    else:
        requirements = list(default_requirements) + listed(extra_pip_requirements or [])
    (folder / _REQUIREMENTS).write_text("\n".join(requirements), encoding="utf-8")
    python = platform.python_version()
    pip_version = _installed("pip")
    env = {
        "python": python,
        "build_dependencies": [
            f"pip=={pip_version}" if pip_version else "pip",
            "setuptools",
            "wheel",
        ],
        "dependencies": ["-r requirements.txt"],
    }
    with open(folder / _PYTHON_ENV, "w", encoding="utf-8") as f:
        yaml.safe_dump(env, f, default_flow_style=False, sort_keys=False)
    conda = {
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": requirements}],
        "name": "mlflow-env",
    }
    with open(folder / _CONDA_ENV, "w", encoding="utf-8") as f:
        yaml.safe_dump(conda, f, default_flow_style=False)


def folder_size(path: str | os.PathLike[str]) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
