"""The sklearn flavor: save/log/load scikit-learn estimators in MLflow's model format."""

from __future__ import annotations

from typing import Any

FLAVOR_NAME = "sklearn"
SERIALIZATION_FORMAT_SKOPS = "skops"
SERIALIZATION_FORMAT_PICKLE = "pickle"
SERIALIZATION_FORMAT_CLOUDPICKLE = "cloudpickle"
SUPPORTED_SERIALIZATION_FORMATS = [
    SERIALIZATION_FORMAT_SKOPS,
    SERIALIZATION_FORMAT_PICKLE,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
]


def get_default_pip_requirements(include_cloudpickle: bool = False) -> list[str]:
    raise NotImplementedError


def save_model(sk_model: Any, path: str, **kwargs: Any) -> None:
    raise NotImplementedError


def log_model(sk_model: Any, name: str | None = None, **kwargs: Any) -> Any:
    raise NotImplementedError


def load_model(model_uri: str, dst_path: str | None = None) -> Any:
    raise NotImplementedError
