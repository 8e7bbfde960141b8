"""Writer identity and job keys from each launcher's environment (steppe.launcher)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from steppe import launcher


def test_no_launcher_is_a_single_process() -> None:
    identity = launcher.detect({"PATH": "/bin"})
    assert identity.rank is None and identity.world_size is None
    assert identity.launcher == "" and not identity.distributed
    assert identity.pid == os.getpid() and identity.host
    assert launcher.job_key({}) is None


def test_torchrun() -> None:
    env = {
        "TORCHELASTIC_RUN_ID": "a1b2",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "GROUP_RANK": "2",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_WORLD_SIZE": "4",
        "TORCHELASTIC_RESTART_COUNT": "3",
        # torchrun inside srun: torchrun's variables win over Slurm's
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_ID": "77",
    }
    identity = launcher.detect(env)
    assert (identity.rank, identity.local_rank, identity.world_size) == (5, 1, 8)
    assert (identity.node_rank, identity.attempt, identity.launcher) == (2, 3, "torchrun")
    assert launcher.nodes(identity) == 4
    assert launcher.job_key(env) == "torchelastic:a1b2"


@pytest.mark.parametrize("run_id", ["none", "", "None"])
def test_torchrun_without_rdzv_id_falls_back_to_slurm(run_id: str) -> None:
    env = {"TORCHELASTIC_RUN_ID": run_id, "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"}
    assert launcher.job_key(env) == "slurm:77.0"
    assert launcher.job_key({"TORCHELASTIC_RUN_ID": run_id}) is None


def test_slurm() -> None:
    env = {
        "SLURM_JOB_ID": "1234",
        "SLURM_STEP_ID": "2",
        "SLURM_PROCID": "6",
        "SLURM_LOCALID": "2",
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NODEID": "1",
        "SLURM_NNODES": "2",
        "SLURM_RESTART_COUNT": "1",
    }
    identity = launcher.detect(env)
    assert (identity.rank, identity.local_rank, identity.world_size) == (6, 2, 8)
    assert (identity.node_rank, identity.attempt, identity.launcher) == (1, 1, "slurm")
    assert launcher.nodes(identity) == 2
    assert launcher.job_key(env) == "slurm:1234.2"
    array = {"SLURM_JOB_ID": "1240", "SLURM_ARRAY_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "6"}
    assert launcher.job_key(array) == "slurm:1234_6"


def test_open_mpi() -> None:
    env = {
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    }
    identity = launcher.detect(env)
    assert (identity.rank, identity.local_rank, identity.world_size) == (3, 1, 4)
    assert identity.launcher == "openmpi" and identity.node_rank is None
    assert launcher.nodes(identity) == 2  # 4 ranks, 2 per node
    assert launcher.job_key(env) is None


def test_mpich() -> None:
    env = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    identity = launcher.detect(env)
    assert (identity.rank, identity.local_rank, identity.world_size) == (1, 1, 2)
    assert identity.launcher == "mpich" and launcher.nodes(identity) == 1


def test_lightning_and_generic_env() -> None:
    lightning = launcher.detect(
        {"NODE_RANK": "1", "LOCAL_RANK": "0", "RANK": "2", "WORLD_SIZE": "4"}
    )
    assert (lightning.rank, lightning.node_rank, lightning.launcher) == (2, 1, "lightning")
    assert launcher.nodes(lightning) >= 2
    generic = launcher.detect({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert (generic.rank, generic.world_size, generic.launcher) == (0, 2, "env")
    assert generic.distributed


def test_unreadable_values_count_as_unset() -> None:
    identity = launcher.detect({"RANK": "x", "WORLD_SIZE": "", "LOCAL_RANK": " 1 "})
    assert identity.rank is None and identity.world_size is None and identity.local_rank == 1


def test_explicit_job_key_wins() -> None:
    env = {"TORCHELASTIC_RUN_ID": "abc", "SLURM_JOB_ID": "1"}
    assert launcher.job_key(env, explicit="sweep-7") == "key:sweep-7"
    assert launcher.job_key(env) == "torchelastic:abc"


def test_job_run_ids_are_deterministic_per_experiment_and_ordinal() -> None:
    a = launcher.job_run_id("1", "torchelastic:abc", 1)
    assert a == launcher.job_run_id("1", "torchelastic:abc", 1)
    assert len(a) == 32 and int(a, 16) >= 0
    others = {
        launcher.job_run_id("2", "torchelastic:abc", 1),
        launcher.job_run_id("1", "torchelastic:abd", 1),
        launcher.job_run_id("1", "torchelastic:abc", 2),
    }
    assert a not in others and len(others) == 3


def test_writer_key_is_per_process() -> None:
    key = launcher.writer_key()
    assert key == launcher.writer_key() and len(key) == 32
    code = "from steppe import launcher; print(launcher.writer_key())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert child.stdout.strip() != key
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a key of its own
        os.write(write, launcher.writer_key().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != key
