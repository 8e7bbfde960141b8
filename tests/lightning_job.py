"""A tiny Lightning job for tests/test_integrations_lightning.py, run as a script:

    python tests/lightning_job.py TRACKING_URI OUT_DIR DEVICES [fail]

With DEVICES > 1 it trains under DDP on CPU (gloo): Lightning re-runs this script once per
extra rank. Each rank writes OUT_DIR/rank<r>.json with the run id it logged to."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from steppe.lightning import SteppeLogger

ROWS, BATCH, EPOCHS = 32, 4, 2


class Tiny(L.LightningModule):
    def __init__(self, lr: float = 0.05, fail_at_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.hparams.fail_at_step:
            raise RuntimeError("planned failure")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        # Per rank (sync_dist=False): each rank's own value, at each step.
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        self.log(f"rank_{self.global_rank}_step", float(self.global_step), on_step=True)
        return loss

    def on_train_end(self) -> None:
        # The DDP test checks the host's system metrics: wait (with a deadline) until its
        # sampler has logged once, so a fit shorter than the sampling interval on a loaded
        # machine still leaves a sample. Only local rank 0 samples; the others return at once.
        from steppe import system_metrics

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            samplers = [sampler for sampler, _ in system_metrics._running.values()]
            if all(sampler.step > 0 for sampler in samplers):
                return
            time.sleep(0.02)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def train(uri: str, out: Path, devices: int, fail: bool) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(ROWS, 4), torch.randn(ROWS, 1))
    logger = SteppeLogger(
        tracking_uri=uri,
        experiment_name="lightning-test",
        run_name="tiny",
        log_system_metrics=devices > 1,  # the DDP test checks one sampler per host
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=EPOCHS,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Tiny(fail_at_step=3 if fail else -1)
    try:
        trainer.fit(model, DataLoader(data, batch_size=BATCH))
    finally:
        (out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"run_id": logger.version, "rank": trainer.global_rank})
        )


if __name__ == "__main__":
    train(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["fail"])
