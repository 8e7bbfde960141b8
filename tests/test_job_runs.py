"""One run for a whole distributed job (steppe.job): every process of a torchrun, Slurm or
STEPPE_JOB_KEY job joins one run, created once without a race, on both catalog backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import steppe
from steppe import errors, fluent
from steppe.job import JobRuns, run_id_for
from tests.conftest import ServerProcess, clean_env

# One rank of a job: starts a run (twice, as a sweep in a loop would), logs a shared param, a
# param of its own and 50 points of "loss" at steps every rank logs, prints what it joined.
RANK = textwrap.dedent(
    """
    import json, os, sys
    import steppe
    rank = int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
    ids = []
    for sweep in range(int(os.environ.get("SWEEPS", "1"))):
        with steppe.start_run(run_name=f"rank-{rank}", tags={"made_by": str(rank)}) as run:
            steppe.log_param("lr", "0.1")
            steppe.log_param(f"rank_{rank}", str(rank))
            for step in range(50):
                steppe.log_metric("loss", rank + step / 100, step=step)
            ids.append(run.info.run_id)
    print(json.dumps(ids))
    """
)


def _job(server: ServerProcess, envs: list[dict[str, str]], tmp_path: Path) -> list[list[str]]:
    """Every rank at once (they race to create the run); each one's run ids."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=clean_env(
                STEPPE_TRACKING_URI=server.http_url,
                MLFLOW_EXPERIMENT_NAME=f"job-{tmp_path.name}",
                PYTHONPATH=os.getcwd(),
                **env,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _torchrun_env(rank: int, world: int, job: str) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "GROUP_WORLD_SIZE": "1",
        "TORCHELASTIC_RUN_ID": job,
    }


def test_every_rank_of_a_torchrun_job_logs_into_one_run(
    catalog_server: ServerProcess, tmp_path: Path
) -> None:
    job = uuid.uuid4().hex
    runs = _job(catalog_server, [_torchrun_env(r, 4, job) for r in range(4)], tmp_path)
    assert len({ids[0] for ids in runs}) == 1, runs
    (run_id,) = {ids[0] for ids in runs}
    client = steppe.Client(catalog_server.http_url)
    run = client.get_run(run_id)
    experiment = client.get_experiment_by_name(f"job-{tmp_path.name}")
    assert experiment is not None
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    # The creator's name and tags won, as one: never a name of one rank with another's tags.
    creator = run.data.tags["made_by"]
    assert run.info.run_name == f"rank-{creator}"
    assert run.data.params == {"lr": "0.1", **{f"rank_{r}": str(r) for r in range(4)}}
    history = client.get_metric_history(run_id, "loss")
    assert len(history) == 4 * 50  # every rank's points, two ranks at one step both kept
    assert sorted({round(m.value - m.step / 100) for m in history}) == [0, 1, 2, 3]


def test_a_job_that_starts_runs_in_a_loop_shares_each_one(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    job = uuid.uuid4().hex
    envs = [{**_torchrun_env(r, 2, job), "SWEEPS": "2"} for r in range(2)]
    first, second = _job(steppe_server, envs, tmp_path)
    assert first == second and len(set(first)) == 2


def test_slurm_tasks_share_a_run_per_job_step_and_array_task(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    def task(procid: int, array_task: str) -> dict[str, str]:
        return {
            "SLURM_JOB_ID": "4242",
            "SLURM_ARRAY_JOB_ID": "4240",
            "SLURM_ARRAY_TASK_ID": array_task,
            "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(procid),
            "SLURM_NNODES": "1",
        }

    runs = _job(steppe_server, [task(0, "1"), task(1, "1"), task(0, "2"), task(1, "2")], tmp_path)
    assert runs[0] == runs[1] and runs[2] == runs[3] and runs[0] != runs[2]


def test_a_one_task_slurm_allocation_is_a_process_on_its_own(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    alone = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    first, second = _job(steppe_server, [alone, alone], tmp_path)
    assert first != second  # two scripts in one salloc: two runs, as without Slurm


@pytest.fixture
def fresh_job(tracking: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a new rank of a job (its own count of the runs it started)."""
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "STEPPE_JOB_KEY", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(fluent, "_job_runs", JobRuns())
    yield


def test_another_rank_relogging_a_param_with_another_value_is_mlflows_error(
    fresh_job: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPPE_JOB_KEY", uuid.uuid4().hex)
    with steppe.start_run() as run:
        steppe.log_param("lr", "0.1")
    monkeypatch.setattr(fluent, "_job_runs", JobRuns())  # the job's second rank
    with steppe.start_run() as again:
        assert again.info.run_id == run.info.run_id
        steppe.log_param("lr", "0.1")  # the same value: accepted
        with pytest.raises(errors.SteppeError) as bad:
            steppe.log_param("lr", "0.2")
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"
    assert steppe.Client().get_run(run.info.run_id).data.params == {"lr": "0.1"}


def test_the_id_of_a_job_run_depends_on_the_experiment_the_key_and_the_count() -> None:
    ids = {run_id_for(e, k, n) for e in ("1", "2") for k in ("a", "b") for n in (0, 1)}
    assert len(ids) == 8 and run_id_for("1", "a", 0) == run_id_for("1", "a", 0)


def test_several_processes_without_a_job_key_get_an_error_naming_what_to_set(
    fresh_job: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(errors.SteppeError, match="STEPPE_JOB_KEY") as no_key:
        steppe.start_run()
    assert "--rdzv-id" in str(no_key.value) and steppe.active_run() is None


def test_a_multi_node_job_without_a_server_address_is_told_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("STEPPE_TRACKING_URI", "MLFLOW_TRACKING_URI", "STEPPE_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NNODES", "2")
    steppe.set_tracking_uri(None)
    with pytest.raises(errors.SteppeError, match="STEPPE_TRACKING_URI"):
        steppe.start_run()
    assert steppe.active_run() is None


TORCHRUN_RANK = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    import steppe
    dist.init_process_group("gloo")
    with steppe.start_run(run_name="ddp") as run:
        steppe.log_metric("loss", float(dist.get_rank()), step=0)
    print(json.dumps([run.info.run_id]))
    dist.destroy_process_group()
    """
)


def test_a_real_torchrun_job_of_two_processes_is_one_run(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    pytest.importorskip("torch.distributed")
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_RANK)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*torchrun, "--nproc_per_node=2", str(script)],
        env=clean_env(STEPPE_TRACKING_URI=steppe_server.http_url, PYTHONPATH=os.getcwd()),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and len(set(lines)) == 1, done.stdout
    ids = set(lines)
    (run_id,) = json.loads(ids.pop())
    history = steppe.Client(steppe_server.http_url).get_metric_history(run_id, "loss")
    assert sorted(m.value for m in history) == [0.0, 1.0]
