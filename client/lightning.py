"""PyTorch Lightning's logger for steppe: every rank streams its own points into one run.

Imported only by ``import steppe.lightning`` (it imports lightning); logging a metric is a
buffer append on each rank, never a network round trip.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from steppe.integration import TrainingRun, flatten
from steppe.tracking import Client

__all__ = ["SteppeLogger"]

#: Lightning's finalize statuses -> MLflow's run statuses.
_STATUS = {
    "success": "FINISHED",
    "finished": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "killed": "KILLED",
}


class SteppeLogger(Logger):  # type: ignore[misc,unused-ignore]  # Logger is Any to mypy
    """Log a Lightning run to steppe, from every rank (MLFlowLogger logs rank 0 only).

    Every rank logs its own ``self.log(...)`` values (``sync_dist=False`` keeps them per rank);
    hyperparameters are logged once, from rank 0. Under DDP the ranks share one run: rank 0
    creates it and broadcasts its id when Lightning first calls the logger (on every rank).
    With a steppe run already active (``with steppe.start_run():``) the logger logs into it
    and leaves it open.

    Example::

        from steppe.lightning import SteppeLogger

        logger = SteppeLogger(experiment_name="mnist", run_name="ddp-2")
        trainer = L.Trainer(logger=logger, strategy="ddp", devices=2, accelerator="cpu")
        trainer.fit(model, data)
        print(logger.run_id)
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        prefix: str = "",
        log_system_metrics: bool | None = None,
    ) -> None:
        super().__init__()
        self._run = TrainingRun(
            experiment_name=experiment_name,
            run_name=run_name,
            tags=tags,
            run_id=run_id,
            tracking_uri=tracking_uri,
            log_system_metrics=log_system_metrics,
        )
        self._experiment_name = experiment_name
        self._prefix = prefix + self.LOGGER_JOIN_CHAR if prefix else ""

    # --- what Lightning asks about the logger -----------------------------------------------

    @property
    def experiment(self) -> Client:
        """A ``steppe.Client`` (MLflow's ``MlflowClient`` API) for this run: on every rank.

        Starts or joins the run first, which under DDP is a collective call: touch it on every
        rank (e.g. in ``training_step``), never inside ``if self.global_rank == 0``.
        """
        self._run.join()
        return self._run.client

    @property
    def run_id(self) -> str:
        """The run's id (starts or joins the run if it has none yet, see ``experiment``)."""
        return self._run.run_id or self._run.join()

    @property
    def experiment_id(self) -> str | None:
        self._run.join()
        return self._run.experiment_id

    @property
    def name(self) -> str | None:
        """The experiment's id once the run is joined, else its name (never a network call:
        Lightning asks for it on rank 0 only, e.g. in the progress bar)."""
        return self._run.experiment_id or self._experiment_name

    @property
    def version(self) -> str | None:
        """The run id once known, else None (never a collective: see ``name``)."""
        return self._run.run_id

    @property
    def save_dir(self) -> str | None:
        return None  # nothing is written locally; checkpoints go to Trainer.default_root_dir

    # --- what Lightning calls (on every rank) -------------------------------------------------

    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """Log hyperparameters once, from rank 0 (the other ranks only join the run)."""
        self._run.join()
        if getattr(rank_zero_only, "rank", 0) != 0:  # set by Lightning on every rank
            return
        raw = vars(params) if isinstance(params, Namespace) else dict(params)
        self._run.log_params(flatten(raw))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log this rank's values at ``step``: a buffer append per key."""
        self._run.log_metrics(metrics, step or 0, prefix=self._prefix)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        # Lightning calls this on every rank at the start of fit: a safe point to join the
        # run (a collective under DDP), before the rank-0-only callers of version/name.
        self._run.join()

    def save(self) -> None:
        """Nothing to save: points are streamed as they are logged."""

    def finalize(self, status: str) -> None:
        """End the run this logger started (on every rank): Lightning's "success" is
        FINISHED, "failed" FAILED. A run that was already active is left open."""
        self._run.end(_STATUS.get(status, "FAILED"))
