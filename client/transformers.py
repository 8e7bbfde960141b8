"""Hugging Face ``Trainer``'s callback for steppe: ``Trainer(callbacks=[SteppeCallback()])``.

Imported only by ``import steppe.transformers`` (it imports transformers); ``on_log`` costs
a buffer append per value, never a network round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from steppe.integration import TrainingRun, flatten

__all__ = ["SteppeCallback"]


class SteppeCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]  # Any to mypy
    """Log a ``Trainer`` run to steppe, as transformers' ``MLflowCallback`` does to MLflow:
    the ``TrainingArguments`` and the model's config as params (once, from the main process),
    each ``on_log`` dict's numbers as metrics at ``state.global_step``, and the run ended at
    ``on_train_end`` if the callback started it (a run already active is used and left open).

    Pass it yourself and keep ``report_to="none"`` (transformers 5's default), or MLflow's
    callback logs the same values a second time. Under ``torchrun`` every process joins the
    run (rank 0 creates it), so each host's local rank 0 can sample system metrics; only the
    main process logs the Trainer's metrics, which the Trainer has already averaged across
    processes.

    Example::

        from steppe.transformers import SteppeCallback

        trainer = Trainer(model, args, train_dataset=data, callbacks=[SteppeCallback()])
        trainer.train()
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        log_system_metrics: bool | None = None,
        flatten_params: bool = False,
    ) -> None:
        self._run = TrainingRun(
            experiment_name=experiment_name,
            run_name=run_name,
            tags=tags,
            run_id=run_id,
            tracking_uri=tracking_uri,
            log_system_metrics=log_system_metrics,
        )
        self._flatten_params = flatten_params
        self._set_up = False

    @property
    def run_id(self) -> str | None:
        """The run logged to, once training began."""
        return self._run.run_id

    def _setup(self, args: Any, state: Any, model: Any) -> None:
        self._set_up = True
        if self._run.run_name is None:
            self._run.run_name = getattr(args, "run_name", None)
        self._run.join()
        if not state.is_world_process_zero:
            return
        params: dict[str, Any] = dict(args.to_dict())
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            params = {**config.to_dict(), **params}  # the Trainer's arguments win, as in MLflow's
        self._run.log_params(flatten(params) if self._flatten_params else params)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if not self._set_up:
            self._setup(args, state, model)

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not self._set_up:
            self._setup(args, state, model)
        if state.is_world_process_zero and logs:
            self._run.log_metrics(logs, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """End the run if this callback started it (on every process)."""
        if self._set_up:
            self._set_up = False
            self._run.end("FINISHED")
