"""Keras 3's callback for steppe: ``model.fit(..., callbacks=[SteppeCallback()])``, on any
backend (torch, JAX, TensorFlow).

Imported only by ``import steppe.keras`` (it imports keras); a logged value costs a buffer
append, never a network round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from steppe.integration import TrainingRun

__all__ = ["MlflowCallback", "SteppeCallback"]


class SteppeCallback(keras.callbacks.Callback):  # type: ignore[misc,unused-ignore]  # Any to mypy
    """Log ``model.fit`` to steppe, as ``mlflow.keras.MlflowCallback`` does to MLflow: the
    optimizer's config as params (``optimizer_<name>``) and the model summary as the artifact
    ``model_summary.txt`` when training begins; the epoch's logs at ``step=epoch``
    (``log_every_epoch``) or the batch logs every ``log_every_n_steps`` training batches at
    the batch count; evaluation results as ``validation_<name>``. An active run is used and
    left open; otherwise the callback starts one and ends it when training ends.

    Example::

        from steppe.keras import SteppeCallback

        model.fit(x, y, epochs=3, callbacks=[SteppeCallback(log_every_n_steps=10,
                                                             log_every_epoch=False)])
    """

    def __init__(
        self,
        log_every_epoch: bool = True,
        log_every_n_steps: int | None = None,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        log_system_metrics: bool | None = None,
    ) -> None:
        super().__init__()
        if log_every_epoch and log_every_n_steps is not None:
            raise ValueError(
                "log_every_n_steps must be None when log_every_epoch=True (MLflow's rule), "
                f"got log_every_n_steps={log_every_n_steps}"
            )
        if not log_every_epoch and (log_every_n_steps is None or log_every_n_steps < 1):
            raise ValueError(
                "log_every_n_steps must be a positive number when log_every_epoch=False, "
                f"got {log_every_n_steps!r}"
            )
        self.log_every_epoch = log_every_epoch
        self.log_every_n_steps = log_every_n_steps
        self._run = TrainingRun(
            experiment_name=experiment_name,
            run_name=run_name,
            tags=tags,
            run_id=run_id,
            tracking_uri=tracking_uri,
            log_system_metrics=log_system_metrics,
        )
        self._batches = 0  # training batches since fit began: the step of batch logs

    @property
    def run_id(self) -> str | None:
        return self._run.run_id

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._run.join()
        self._batches = 0
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            config = optimizer.get_config()
            self._run.log_params({f"optimizer_{k}": v for k, v in config.items()})
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        assert self._run.run_id is not None
        self._run.client.log_text(self._run.run_id, "\n".join(lines), "model_summary.txt")

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._batches += 1
        n = self.log_every_n_steps
        if n is not None and logs and self._batches % n == 0:
            self._run.log_metrics(logs, self._batches)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.log_every_epoch and logs:
            self._run.log_metrics(logs, epoch)

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if logs and self._run.joined:
            self._run.log_metrics(logs, self._batches, prefix="validation_")

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """End the run if this callback started it."""
        self._run.end("FINISHED")


#: mlflow.keras's name, for ``import steppe as mlflow; mlflow.keras.MlflowCallback()``.
MlflowCallback = SteppeCallback
