"""steppe.sklearn: scikit-learn models in MLflow's format, and autolog.

    import steppe.sklearn
    steppe.sklearn.autolog()
    model_info = steppe.sklearn.log_model(model, name="model")
    loaded = steppe.sklearn.load_model(model_info.model_uri)

Needs the ``steppe[sklearn]`` extra (scikit-learn, PyYAML, skops, cloudpickle).
"""

from steppe.sklearn.autologging import autolog
from steppe.sklearn.flavor import (
    FLAVOR_NAME,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
    SERIALIZATION_FORMAT_PICKLE,
    SERIALIZATION_FORMAT_SKOPS,
    SUPPORTED_SERIALIZATION_FORMATS,
    get_default_pip_requirements,
    load_model,
    log_model,
    save_model,
)

__all__ = [
    "FLAVOR_NAME",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SERIALIZATION_FORMAT_PICKLE",
    "SERIALIZATION_FORMAT_SKOPS",
    "SUPPORTED_SERIALIZATION_FORMATS",
    "autolog",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "save_model",
]
