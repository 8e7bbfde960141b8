"""steppe.lightning.SteppeLogger: a tiny LightningModule on CPU, in process and under DDP with
two processes (gloo), against a real steppe server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

import steppe
from tests.conftest import ServerProcess, clean_env

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "lightning_job.py"
STEPS = 16

pytestmark = pytest.mark.filterwarnings(
    # Lightning 2.6 on torch 2.13: its own use of deprecated torch APIs, and its advice for
    # real jobs (more dataloader workers, a bigger dataset) that a 32-row test ignores.
    "ignore:.*LeafSpec.* is deprecated:FutureWarning",
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*number of training batches.*is smaller than the logging interval:UserWarning",
)  # 32 rows / batch 4 x 2 epochs on one device


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in steppe.Client().get_metric_history(run_id, key))


def test_one_process_logs_hparams_once_and_every_step(tracking: str, tmp_path: Path) -> None:
    from tests.lightning_job import train

    train(tracking, tmp_path, 1, fail=False)
    run_id = json.loads((tmp_path / "rank0.json").read_text())["run_id"]
    run = steppe.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny"
    assert run.data.params == {"lr": "0.05", "fail_at_step": "-1"}
    loss = _history(run_id, "train_loss")
    assert [step for step, _ in loss] == list(range(STEPS))
    assert _history(run_id, "rank_0_step") == [(s, float(s)) for s in range(STEPS)]
    assert steppe.active_run() is None  # the logger ended the run it started


def test_a_failed_fit_marks_the_run_failed(tracking: str, tmp_path: Path) -> None:
    from tests.lightning_job import train

    with pytest.raises(RuntimeError, match="planned failure"):
        train(tracking, tmp_path, 1, fail=True)
    run_id = json.loads((tmp_path / "rank0.json").read_text())["run_id"]
    assert steppe.get_run(run_id).info.status == "FAILED"
    assert [s for s, _ in _history(run_id, "train_loss")] == [0, 1, 2]


def test_an_active_run_is_used_and_left_open(tracking: str, tmp_path: Path) -> None:
    from tests.lightning_job import train

    with steppe.start_run(run_name="outer") as outer:
        train(tracking, tmp_path, 1, fail=False)
        assert steppe.active_run() is outer
        assert json.loads((tmp_path / "rank0.json").read_text())["run_id"] == outer.info.run_id
        assert steppe.get_run(outer.info.run_id).info.status == "RUNNING"
    run = steppe.get_run(outer.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "outer"
    assert len(_history(outer.info.run_id, "train_loss")) == STEPS


def test_finalize_maps_lightnings_statuses(tracking: str) -> None:
    from steppe.lightning import SteppeLogger

    for lightning_status, mlflow_status in [("success", "FINISHED"), ("failed", "FAILED")]:
        logger = SteppeLogger(run_name=lightning_status)
        logger.log_metrics({"x": 1.0}, step=0)
        logger.save()  # a no-op
        logger.finalize(lightning_status)
        assert steppe.get_run(logger.run_id).info.status == mlflow_status


@pytest.mark.timeout(300)  # two processes importing torch and Lightning on a shared machine
def test_ddp_two_processes_log_into_one_run_exactly_once(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, str(JOB), steppe_server.http_url, str(tmp_path), "2"],
        env=clean_env(PYTHONPATH=str(ROOT), STEPPE_SYSTEM_METRICS_INTERVAL_S="0.05"),
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    run_id = ranks[0]["run_id"]
    assert run_id and ranks[1]["run_id"] == run_id  # one run for the job
    steppe.set_tracking_uri(steppe_server.http_url)
    try:
        run = steppe.get_run(run_id)
        assert run.info.status == "FINISHED"
        experiment = steppe.get_experiment_by_name("lightning-test")
        assert experiment is not None and run.info.experiment_id == experiment.experiment_id
        assert run.data.params == {"lr": "0.05", "fail_at_step": "-1"}  # once, from rank 0
        per_rank = STEPS // 2  # the DistributedSampler gives each rank half the rows
        for rank in (0, 1):
            # Every point of each rank, exactly once, at its step.
            assert _history(run_id, f"rank_{rank}_step") == [(s, float(s)) for s in range(per_rank)]
        steps = [s for s, _ in _history(run_id, "train_loss")]
        assert steps == sorted(list(range(per_rank)) * 2)  # both ranks' losses at each step
        # System metrics: sampled by local rank 0 only, so one series of steps 0, 1, 2, ...
        # (two samplers on this host would log every step twice).
        cpu = [s for s, _ in _history(run_id, "system/cpu_utilization_percentage")]
        assert cpu and cpu == list(range(len(cpu)))
        assert run.data.tags["steppe.system_metrics.host"] == socket.gethostname()
    finally:
        steppe.set_tracking_uri(None)
