"""``steppe.autolog()``: enable (or disable) autologging for every supported library,
scikit-learn today. Imports nothing heavy until called."""

from __future__ import annotations

import importlib.util
import logging

__all__ = ["SUPPORTED_FLAVORS", "autolog"]

#: The integrations ``steppe.autolog()`` turns on when their library is installed.
SUPPORTED_FLAVORS = ("sklearn",)
_logger = logging.getLogger("steppe.autolog")


def autolog(
    log_input_examples: bool = False,
    log_model_signatures: bool = True,
    log_models: bool = True,
    log_datasets: bool = True,
    log_traces: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    extra_tags: dict[str, str] | None = None,
    exclude_flavors: list[str] | None = None,
) -> None:
    """Enable (or with ``disable=True`` disable) autologging for each supported library
    that is installed, except ``exclude_flavors`` (MLflow's ``mlflow.autolog``).

    Example::

        steppe.autolog()
        LogisticRegression().fit(X, y)   # logged into a new run
    """
    from steppe.errors import InvalidParameterValue

    excluded = set(exclude_flavors or ())
    unknown = excluded - set(SUPPORTED_FLAVORS)
    if unknown:
        raise InvalidParameterValue(
            "exclude_flavors", sorted(unknown), f"must name flavors of {list(SUPPORTED_FLAVORS)}"
        )
    if "sklearn" not in excluded and importlib.util.find_spec("sklearn") is not None:
        from steppe.sklearn.autologging import autolog as sklearn_autolog

        sklearn_autolog(
            log_input_examples=log_input_examples,
            log_model_signatures=log_model_signatures,
            log_models=log_models,
            log_datasets=log_datasets,
            disable=disable,
            exclusive=exclusive,
            disable_for_unsupported_versions=disable_for_unsupported_versions,
            silent=silent,
            extra_tags=extra_tags,
        )
        if not silent and not disable:
            _logger.info("steppe autolog: sklearn enabled")
