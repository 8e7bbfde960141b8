"""Autolog for scikit-learn: patches fit/fit_transform/fit_predict to log params, training
metrics, the model and the dataset into the active (or a new) run. Never breaks ``fit``."""

from __future__ import annotations

from typing import Any


def autolog(
    log_input_examples: bool = False,
    log_model_signatures: bool = True,
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    max_tuning_runs: int | None = 5,
    log_post_training_metrics: bool = True,
    serialization_format: str | None = None,
    registered_model_name: str | None = None,
    pos_label: Any = None,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """Enable (or with ``disable=True`` disable) autologging for scikit-learn."""
    raise NotImplementedError("steppe.sklearn.autolog is being built")
