"""steppe.models: model signatures, input examples and the MLmodel format, as MLflow writes
them, so models move between steppe and MLflow in both directions.

    signature = steppe.models.infer_signature(X_train, model.predict(X_train))
    info = steppe.sklearn.log_model(model, name="model", signature=signature)
    steppe.models.get_model_info(info.model_uri).signature
"""

from __future__ import annotations

import os

from steppe.models.model import MLMODEL_FILE_NAME, Model, ModelInfo
from steppe.models.signature import (
    ColSpec,
    ModelSignature,
    ParamSpec,
    Schema,
    TensorSpec,
    infer_schema,
    infer_signature,
)
from steppe.models.uris import resolve


def get_model_info(model_uri: str | os.PathLike[str]) -> Model:
    """The MLmodel of the model at ``model_uri`` (flavors, signature, ids)."""
    return Model.load(resolve(str(model_uri)))


def set_signature(model_path: str | os.PathLike[str], signature: ModelSignature) -> None:
    """Replace the signature in a local model folder's MLmodel."""
    model = Model.load(model_path)
    model.signature = signature
    model.save(os.path.join(model_path, MLMODEL_FILE_NAME))


__all__ = [
    "MLMODEL_FILE_NAME",
    "ColSpec",
    "Model",
    "ModelInfo",
    "ModelSignature",
    "ParamSpec",
    "Schema",
    "TensorSpec",
    "get_model_info",
    "infer_schema",
    "infer_signature",
    "set_signature",
]
