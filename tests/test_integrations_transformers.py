"""steppe.transformers.SteppeCallback: a 2-layer GPT-2 with a 32-token vocabulary, built in the
test (nothing downloaded), trained a few steps on CPU by the real Trainer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import steppe

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers loads: nothing downloaded
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
SteppeCallback = pytest.importorskip("steppe.transformers").SteppeCallback

STEPS = 6


class Tokens(torch.utils.data.Dataset):
    def __init__(self, rows: int = 16, length: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 32, (rows, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(tmp_path: Path, callback: Any, **args: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=32
    )
    model = transformers.GPT2LMHeadModel(config)
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        **args,
    )
    return transformers.Trainer(
        model=model, args=arguments, train_dataset=Tokens(), callbacks=[callback]
    )


def _steps(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in steppe.Client().get_metric_history(run_id, key))


def test_the_trainer_logs_args_config_and_every_step(tracking: str, tmp_path: Path) -> None:
    callback = SteppeCallback(experiment_name="hf-test")
    _trainer(tmp_path, callback, run_name="gpt2-tiny").train()
    assert callback.run_id is not None
    run = steppe.get_run(callback.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "gpt2-tiny"
    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["max_steps"] == str(STEPS)
    assert params["n_layer"] == "2" and params["vocab_size"] == "32"  # the model's config
    assert _steps(callback.run_id, "loss") == list(range(1, STEPS + 1))
    assert _steps(callback.run_id, "learning_rate") == list(range(1, STEPS + 1))
    assert "train_runtime" in run.data.metrics  # the summary Trainer logs at the end
    assert steppe.active_run() is None


def test_an_active_run_is_used_and_left_open(tracking: str, tmp_path: Path) -> None:
    callback = SteppeCallback()
    with steppe.start_run(run_name="outer") as outer:
        _trainer(tmp_path, callback).train()
        assert callback.run_id == outer.info.run_id
        assert steppe.active_run() is outer
    run = steppe.get_run(outer.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "outer"
    assert _steps(outer.info.run_id, "loss") == list(range(1, STEPS + 1))


def test_values_that_are_not_numbers_are_skipped(tracking: str, tmp_path: Path) -> None:
    callback = SteppeCallback()
    trainer = _trainer(tmp_path, callback)
    state = trainer.state
    callback.on_train_begin(trainer.args, state, trainer.control, model=trainer.model)
    state.global_step = 3
    callback.on_log(
        trainer.args,
        state,
        trainer.control,
        logs={"loss": 0.5, "note": "text", "bad key!": 1, "../up": 2.0, "a//b": 3.0},
    )
    callback.on_train_end(trainer.args, state, trainer.control)
    assert callback.run_id is not None
    metrics = steppe.get_run(callback.run_id).data.metrics
    # Not a number: skipped; keys MLflow refuses: made valid, never raised from the loop.
    assert metrics == {"loss": 0.5, "bad key_": 1.0, "_up": 2.0, "a__b": 3.0}
