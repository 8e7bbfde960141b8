"""steppe.keras.SteppeCallback: a tiny Sequential model on Keras 3's torch backend, on CPU."""

from __future__ import annotations

import os

import pytest

import steppe

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras loads; torch is on the disk
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")
SteppeCallback = pytest.importorskip("steppe.keras").SteppeCallback

ROWS, BATCH, EPOCHS = 32, 8, 3  # 4 batches an epoch

pytestmark = pytest.mark.filterwarnings(
    # Keras 3.15's torch variables under NumPy 2 (inside optimizer.get_config): not ours.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
)


def _fit(callback: object, validation: bool = False) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    x = np.random.default_rng(0).normal(size=(ROWS, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[callback],
        validation_data=(x, y) if validation else None,
    )


def _history(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in steppe.Client().get_metric_history(run_id, key))


def test_epoch_logs_params_and_the_model_summary(tracking: str) -> None:
    assert keras.backend.backend() == "torch"
    callback = SteppeCallback(run_name="keras-tiny")
    _fit(callback, validation=True)
    run_id = callback.run_id
    run = steppe.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "keras-tiny"
    assert float(run.data.params["optimizer_learning_rate"]) == pytest.approx(0.01)  # float32
    assert run.data.params["optimizer_name"] == "sgd"
    assert _history(run_id, "loss") == list(range(EPOCHS))
    assert _history(run_id, "val_loss") == list(range(EPOCHS))
    # evaluation at each epoch's end, at the batch count so far
    assert _history(run_id, "validation_loss") == [4, 8, 12]
    summary = steppe.Client().download_artifacts(run_id, "model_summary.txt")
    with open(summary) as f:
        assert "dense" in f.read().lower()


def test_every_n_steps(tracking: str) -> None:
    callback = SteppeCallback(log_every_epoch=False, log_every_n_steps=2)
    with steppe.start_run() as outer:
        _fit(callback)
        assert callback.run_id == outer.info.run_id and steppe.active_run() is outer
    assert _history(outer.info.run_id, "loss") == [2, 4, 6, 8, 10, 12]


def test_mlflows_argument_rules() -> None:
    with pytest.raises(ValueError, match="log_every_n_steps"):
        SteppeCallback(log_every_epoch=True, log_every_n_steps=5)
    with pytest.raises(ValueError, match="log_every_n_steps"):
        SteppeCallback(log_every_epoch=False)
