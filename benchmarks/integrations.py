"""Training-framework integrations (issue 14): ms per training step of a tiny model with
steppe's native logger against MLflow's logger pointed at the same steppe server, and with
no logger at all, measured in one run.

    python benchmarks/integrations.py               # 300 steps per mode
    python benchmarks/integrations.py --steps 10    # seconds; CI checks it completes
    python benchmarks/integrations.py --only lightning --keys 50

Frameworks: Lightning (steppe.lightning.SteppeLogger vs lightning's MLFlowLogger), Hugging
Face Trainer (steppe.transformers.SteppeCallback vs transformers' MLflowCallback) and Keras 3
on the torch backend (steppe.keras.SteppeCallback vs mlflow.keras.MlflowCallback); each one
whose packages are installed. Every mode runs in its own process on one `steppe server`
(127.0.0.1, started here): ``none`` trains without logging, ``steppe`` and ``mlflow`` log
every step (Lightning: the loss plus ``--keys`` - 1 extra values; HF: the Trainer's own loss,
grad_norm, learning_rate and epoch; Keras: the batch's loss). ``ms_per_step`` is the median
gap between consecutive training steps after the first ``--warmup`` (then the median over
``--rounds`` interleaved rounds); ``fit_s`` the whole ``fit``/``train`` call (run start and
the final wait for acks included). Every run must hold each step's loss exactly once.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, table

FRAMEWORKS = {
    "lightning": ("torch", "lightning"),
    "transformers": ("torch", "transformers", "accelerate"),
    "keras": ("torch", "keras"),
}
TOOLS = ("none", "steppe", "mlflow")
BATCH = 8


def _gaps_ms(stamps: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in itertools.pairwise(stamps)][warmup:]
    return statistics.median(gaps) * 1000 if gaps else float("nan")


# --- the client processes ---------------------------------------------------------------------


def lightning_client(tool: str, uri: str, steps: int, keys: int) -> dict[str, Any]:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    stamps: list[float] = []

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            for k in range(keys - 1):
                self.log(f"extra_{k}", float(batch_idx + k))
            return loss

        def on_train_batch_end(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    logger: Any = False
    if tool == "steppe":
        from steppe.lightning import SteppeLogger

        logger = SteppeLogger(tracking_uri=uri, experiment_name="bench-lightning")
    elif tool == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name="bench-lightning", tracking_uri=uri)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(steps * BATCH, 8), torch.randn(steps * BATCH, 1))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t0 = time.perf_counter()
    trainer.fit(Tiny(), DataLoader(data, batch_size=BATCH))
    fit_s = time.perf_counter() - t0
    run_id = None if tool == "none" else logger.run_id
    return {"stamps": stamps, "fit_s": fit_s, "run_id": run_id, "key": "train_loss"}


def transformers_client(tool: str, uri: str, steps: int, keys: int) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    stamps: list[float] = []

    class Stamp(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    class Rows(torch.utils.data.Dataset):  # type: ignore[misc]
        def __init__(self) -> None:
            self.x = torch.randn(steps * BATCH, 8)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": self.x[i]}

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": self.layer(x).pow(2).mean()}

    callbacks: list[Any] = [Stamp()]
    if tool == "steppe":
        from steppe.transformers import SteppeCallback

        callbacks.append(SteppeCallback(tracking_uri=uri, experiment_name="bench-hf"))
    elif tool == "mlflow":
        import mlflow
        from transformers.integrations import MLflowCallback

        mlflow.set_tracking_uri(uri)
        os.environ["MLFLOW_EXPERIMENT_NAME"] = "bench-hf"
        callbacks.append(MLflowCallback())
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"),
        max_steps=steps,
        logging_steps=1,
        per_device_train_batch_size=BATCH,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = transformers.Trainer(
        model=Tiny(), args=args, train_dataset=Rows(), callbacks=callbacks
    )
    t0 = time.perf_counter()
    trainer.train()
    fit_s = time.perf_counter() - t0
    run_id = None
    if tool == "steppe":
        run_id = callbacks[1].run_id
    elif tool == "mlflow":
        import mlflow

        mlflow.flush_async_logging()
        last = mlflow.last_active_run()
        run_id = last.info.run_id if last is not None else None
    return {"stamps": stamps, "fit_s": fit_s, "run_id": run_id, "key": "loss"}


def keras_client(tool: str, uri: str, steps: int, keys: int) -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # keras 3.15 on NumPy 2: not ours
    import keras
    import numpy as np

    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            stamps.append(time.perf_counter())

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    x = np.random.default_rng(0).normal(size=(steps * BATCH, 8)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    callbacks: list[Any] = [Stamp()]
    run_id = None
    t0 = time.perf_counter()
    if tool == "steppe":
        from steppe.keras import SteppeCallback

        steppe_cb = SteppeCallback(
            log_every_epoch=False,
            log_every_n_steps=1,
            tracking_uri=uri,
            experiment_name="bench-keras",
        )
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[*callbacks, steppe_cb])
        run_id = steppe_cb.run_id
    elif tool == "mlflow":
        import mlflow
        import mlflow.keras

        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench-keras")
        with mlflow.start_run() as run:
            cb = mlflow.keras.MlflowCallback(log_every_epoch=False, log_every_n_steps=1)
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[*callbacks, cb])
            run_id = run.info.run_id
    else:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)
    fit_s = time.perf_counter() - t0
    return {"stamps": stamps, "fit_s": fit_s, "run_id": run_id, "key": "loss"}


CLIENTS = {
    "lightning": lightning_client,
    "transformers": transformers_client,
    "keras": keras_client,
}


# --- the driver ---------------------------------------------------------------------------------


def run_client(framework: str, tool: str, uri: str, steps: int, keys: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
    env["KERAS_BACKEND"] = "torch"
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, __file__, "--child", framework, tool, uri, str(steps), str(keys)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{framework}/{tool} failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def stored(server: Server, run_id: str, key: str) -> int:
    run = server.get(f"/api/steppe/v1/runs/{run_id}")["run"]
    metric = run["data"]["metrics"].get(key)
    return int(metric["count"]) if metric else 0


def measure(server: Server, framework: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each tool once per round, rounds interleaved (the machine is shared and noisy): the
    median over rounds of each tool's median step time, and the points stored each time."""
    warmup = min(args.warmup, max(0, args.steps - 3))
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for _ in range(args.rounds):
        for tool in TOOLS:
            result = run_client(framework, tool, server.http_url, args.steps, args.keys)
            result["ms_per_step"] = _gaps_ms(result["stamps"], warmup)
            result["stored"] = (
                stored(server, result["run_id"], result["key"]) if result["run_id"] else 0
            )
            runs[tool].append(result)
    by_tool: dict[str, dict[str, Any]] = {}
    for tool, results in runs.items():
        by_tool[tool] = {
            "framework": framework,
            "tool": tool,
            "rounds": len(results),
            "steps": min(len(r["stamps"]) for r in results),
            "ms_per_step": statistics.median(r["ms_per_step"] for r in results),
            "fit_s": statistics.median(r["fit_s"] for r in results),
            # each round's run must hold every step's point, exactly once
            "stored": min(r["stored"] for r in results) if tool != "none" else 0,
            "stored_max": max(r["stored"] for r in results) if tool != "none" else 0,
        }
    base = by_tool["none"]["ms_per_step"]
    for tool in ("steppe", "mlflow"):
        by_tool[tool]["overhead_ms"] = by_tool[tool]["ms_per_step"] - base
    steppe_row, mlflow_row = by_tool["steppe"], by_tool["mlflow"]
    # Step time against step time: steppe's overhead is within the noise of the baseline, so a
    # ratio of overheads would only divide by noise.
    steppe_row["mlflow_over_steppe"] = mlflow_row["ms_per_step"] / steppe_row["ms_per_step"]
    return by_tool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="first steps not timed")
    parser.add_argument("--keys", type=int, default=10, help="values logged per step")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per mode")
    parser.add_argument("--only", default=",".join(FRAMEWORKS), help="comma-separated")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        framework, tool, uri, steps, keys = args.child
        result = CLIENTS[framework](tool, uri, int(steps), int(keys))
        print(json.dumps(result), flush=True)
        return 0
    wanted = [f for f in args.only.split(",") if f]
    present = [f for f in wanted if all(importlib.util.find_spec(m) for m in FRAMEWORKS[f])]
    for missing in sorted(set(wanted) - set(present)):
        print(f"skipped {missing}: needs {', '.join(FRAMEWORKS[missing])}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steppe-bench-integrations-") as tmp:
        server = Server.start(Path(tmp) / "steppe-data")
        try:
            for framework in present:
                by_tool = measure(server, framework, args)
                for row in by_tool.values():
                    rows.append(row)
                    if args.json:
                        print(json.dumps(row), flush=True)
        finally:
            server.stop()
    print(
        table(
            rows,
            [
                "framework",
                "tool",
                "steps",
                "ms_per_step",
                "overhead_ms",
                "fit_s",
                "stored",
                "mlflow_over_steppe",
            ],
        )
    )
    bad = [
        r for r in rows if r["tool"] != "none" and not r["stored"] == r["stored_max"] == r["steps"]
    ]
    for row in bad:
        print(f"{row['framework']}/{row['tool']}: stored {row['stored']} of {row['steps']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
