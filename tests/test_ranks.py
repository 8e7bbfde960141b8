"""Distributed training: the ranks of one job share one run (issue #14). Real processes with
torchrun's (and Slurm's) environment variables against a real server; one real torchrun test
with the gloo backend when torch is installed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import steppe
from steppe import job, launcher
from tests.conftest import ServerProcess, clean_env, run_sync, start_server, wait_until

WORKER = str(Path(__file__).with_name("rank_worker.py"))
#: The server declares a writer lost after this long without a live stream.
WRITER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("ranks") / "steppe-data",
        "--writer-timeout-s",
        str(WRITER_TIMEOUT_S),
    )
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def torchrun_env(
    server: ServerProcess, job_id: str, rank: int, world: int, attempt: int = 0, **extra: str
) -> dict[str, str]:
    """What torchrun gives one worker on a single node."""
    return clean_env(
        STEPPE_TRACKING_URI=server.http_url,
        TORCHELASTIC_RUN_ID=job_id,
        TORCHELASTIC_RESTART_COUNT=str(attempt),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        GROUP_RANK="0",
        LOCAL_WORLD_SIZE=str(world),
        GROUP_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",
        **extra,
    )


@dataclass
class Rank:
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    def read_until(self, event: str, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                self.events.append(json.loads(line))
                if self.events[-1]["event"] == event:
                    return self.events[-1]
        raise AssertionError(f"no {event!r} from rank: {self.events} rc={self.proc.poll()}")

    def kill(self) -> None:
        """kill -9, as an OOM killer or a launcher tearing down the group does."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def finish(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        out, _ = self.proc.communicate(timeout=timeout_s)
        self.events += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return self.events


def launch(env: dict[str, str], *args: str) -> Rank:
    proc = subprocess.Popen(
        [sys.executable, WORKER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return Rank(proc)


def client(server: ServerProcess) -> steppe.Client:
    return steppe.Client(server.http_url)


def sql(server: ServerProcess, query: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = client(server).sql(query).to_pylist()
    return rows


def run_status(server: ServerProcess, run_id: str) -> str:
    return client(server).get_run(run_id).info.status


def test_the_ranks_of_a_job_join_one_run(server: ServerProcess) -> None:
    job_id = uuid.uuid4().hex
    ranks = [
        launch(torchrun_env(server, job_id, r, 4), "--steps", "30", "--param", "lr=0.1")
        for r in range(4)
    ]
    events = [rank.finish() for rank in ranks]
    assert all(rank.proc.returncode == 0 for rank in ranks), events
    run_ids = {e["run_id"] for evs in events for e in evs if e["event"] == "started"}
    assert len(run_ids) == 1, events
    (run_id,) = run_ids
    assert all(e["ok"] for evs in events for e in evs if e["event"] == "param")
    run = client(server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    # The creator's name and tags won, whoever it was: one rank's, both from the same rank.
    creator = run.data.tags["started_by"]
    assert run.info.run_name == f"rank-{creator}" and run.data.params == {"lr": "0.1"}
    counts = sql(
        server,
        f"SELECT rank, attempt, count(*) AS n, min(value) AS lo, max(value) AS hi FROM metrics "
        f"WHERE run_id = '{run_id}' AND key = 'loss' GROUP BY ALL ORDER BY rank",
    )
    assert counts == [
        {"rank": r, "attempt": 0, "n": 30, "lo": float(r), "hi": float(r + 29)} for r in range(4)
    ]
    writers = sql(
        server,
        f"SELECT rank, status, host, last_step, points, launcher, world_size FROM writers "
        f"WHERE run_id = '{run_id}' ORDER BY rank",
    )
    assert [w["rank"] for w in writers] == [0, 1, 2, 3]
    assert {w["status"] for w in writers} == {"FINISHED"}
    assert {(w["last_step"], w["points"], w["launcher"], w["world_size"]) for w in writers} == {
        (29, 60, "torchrun", 4)
    }
    assert all(w["host"] for w in writers)
    # Ranks logging the same step: one row per step across ranks.
    by_step = sql(
        server,
        f"SELECT * FROM metrics_by_step WHERE run_id = '{run_id}' AND key = 'loss' AND step = 7",
    )
    assert len(by_step) == 1
    row = by_step[0]
    assert (row["n_ranks"], row["mean"], row["min"], row["max"]) == (4, 8.5, 7.0, 10.0)
    assert (row["rank_of_min"], row["rank_of_max"]) == (0, 3)
    assert row["std"] == pytest.approx(1.118033988749895)
    assert 0 <= row["timestamp_skew_ms"] < 60_000


def test_a_param_relogged_with_another_value_is_mlflows_error(server: ServerProcess) -> None:
    job_id = uuid.uuid4().hex
    first = launch(torchrun_env(server, job_id, 0, 2), "--steps", "2", "--param", "seed=1")
    assert first.finish()[-1]["event"] == "ended"
    second = launch(torchrun_env(server, job_id, 1, 2), "--steps", "2", "--param", "seed=2")
    (param,) = [e for e in second.finish() if e["event"] == "param"]
    assert param["ok"] is False and param["code"] == "INVALID_PARAMETER_VALUE"
    assert "seed" in param["error"] and "'1'" in param["error"]


def test_a_rank_finishing_late_keeps_the_run_running(server: ServerProcess, tmp_path: Path) -> None:
    job_id = uuid.uuid4().hex
    go = tmp_path / "go"
    late = launch(torchrun_env(server, job_id, 1, 2), "--steps", "20", "--wait-file", str(go))
    run_id = late.read_until("waiting") and late.events[0]["run_id"]
    early = launch(torchrun_env(server, job_id, 0, 2), "--steps", "20")
    early_events = early.finish()
    assert early_events[0]["run_id"] == run_id and early.proc.returncode == 0
    # Rank 0 ended; rank 1 still runs (its stream is open: its heartbeat), well past the
    # writer timeout: the run is RUNNING.
    deadline = time.monotonic() + 3 * WRITER_TIMEOUT_S
    while time.monotonic() < deadline:
        assert run_status(server, run_id) == "RUNNING"
        time.sleep(0.1)
    status = sql(server, f"SELECT rank, status FROM writers WHERE run_id = '{run_id}' ORDER BY 1")
    assert status == [{"rank": 0, "status": "FINISHED"}, {"rank": 1, "status": "RUNNING"}]
    go.touch()
    assert late.finish()[-1]["event"] == "ended"
    assert run_status(server, run_id) == "FINISHED"


def test_a_killed_rank_is_lost_and_an_elastic_restart_continues_the_run(
    server: ServerProcess, tmp_path: Path
) -> None:
    job_id = uuid.uuid4().hex
    go = tmp_path / "go"
    ranks = [
        launch(torchrun_env(server, job_id, r, 2), "--steps", "20", "--wait-file", str(go))
        for r in range(2)
    ]
    run_id = ranks[0].read_until("started")["run_id"]
    for rank in ranks:
        rank.read_until("waiting")
    ranks[1].kill()
    # Rank 1 is lost once silent past the timeout; rank 0 still runs, so the run does too.
    wait_until(
        lambda: (
            sql(server, f"SELECT status FROM writers WHERE run_id = '{run_id}' AND rank = 1")
            == [{"status": "LOST"}]
        ),
        timeout_s=30,
    )
    assert run_status(server, run_id) == "RUNNING"
    # The launcher tears down the rest of the group (kill -9): the run FAILED.
    ranks[0].kill()
    wait_until(lambda: run_status(server, run_id) == "FAILED", timeout_s=30)
    # torchrun restarts the group: attempt 1, same job id, resuming from step 5 (a checkpoint).
    restarted = [
        launch(torchrun_env(server, job_id, r, 2, attempt=1), "--steps", "20", "--first-step", "5")
        for r in range(2)
    ]
    events = [rank.finish() for rank in restarted]
    assert {e["run_id"] for evs in events for e in evs if e["event"] == "started"} == {run_id}
    assert run_status(server, run_id) == "FINISHED"
    attempts = sql(
        server,
        f"SELECT attempt, min(step) AS lo, max(step) AS hi, count(DISTINCT rank) AS ranks "
        f"FROM metrics WHERE run_id = '{run_id}' AND key = 'loss' GROUP BY attempt ORDER BY 1",
    )
    assert attempts == [
        {"attempt": 0, "lo": 0, "hi": 9, "ranks": 2},
        {"attempt": 1, "lo": 5, "hi": 24, "ranks": 2},
    ]
    # Steps both attempts logged read as the newest attempt's.
    step7 = sql(
        server,
        f"SELECT attempt, n_ranks FROM metrics_by_step WHERE run_id = '{run_id}' "
        "AND key = 'loss' AND step = 7",
    )
    assert step7 == [{"attempt": 1, "n_ranks": 2}]
    writers = sql(
        server, f"SELECT attempt, status FROM writers WHERE run_id = '{run_id}' ORDER BY 1, 2"
    )
    assert [(w["attempt"], w["status"]) for w in writers] == [
        (0, "LOST"),
        (0, "LOST"),
        (1, "FINISHED"),
        (1, "FINISHED"),
    ]


def test_a_failed_rank_fails_the_run(server: ServerProcess) -> None:
    job_id = uuid.uuid4().hex
    ok = launch(torchrun_env(server, job_id, 0, 2), "--steps", "3")
    bad = launch(torchrun_env(server, job_id, 1, 2), "--steps", "3", "--status", "FAILED")
    events = ok.finish() + bad.finish()
    (run_id,) = {e["run_id"] for e in events if e["event"] == "started"}
    assert run_status(server, run_id) == "FAILED"


def test_slurm_ranks_join_one_run_by_job_id(server: ServerProcess) -> None:
    job_id = str(int(time.time() * 1000) % 10**9)
    ranks = [
        launch(
            clean_env(
                STEPPE_TRACKING_URI=server.http_url,
                SLURM_JOB_ID=job_id,
                SLURM_STEP_ID="0",
                SLURM_PROCID=str(r),
                SLURM_LOCALID=str(r),
                SLURM_NTASKS="3",
                SLURM_NODEID="0",
                SLURM_NNODES="1",
                RANK=str(r),
            ),
            "--steps",
            "5",
        )
        for r in range(3)
    ]
    events = [e for rank in ranks for e in rank.finish()]
    (run_id,) = {e["run_id"] for e in events if e["event"] == "started"}
    writers = sql(server, f"SELECT rank, launcher FROM writers WHERE run_id = '{run_id}'")
    assert sorted((w["rank"], w["launcher"]) for w in writers) == [
        (0, "slurm"),
        (1, "slurm"),
        (2, "slurm"),
    ]
    assert run_status(server, run_id) == "FINISHED"


def test_ranks_without_a_job_key_get_an_error_naming_what_to_set(server: ServerProcess) -> None:
    env = clean_env(STEPPE_TRACKING_URI=server.http_url, RANK="1", WORLD_SIZE="2")
    rank = launch(env, "--steps", "1")
    (error,) = [e for e in rank.finish() if e["event"] == "error"]
    assert rank.proc.returncode == 3
    assert "STEPPE_JOB_KEY" in error["error"] and "--rdzv-id" in error["error"]


def test_a_multi_node_job_without_a_server_address_is_told_to_set_one(tmp_path: Path) -> None:
    identity = launcher.detect(
        {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2"}
    )
    with pytest.raises(steppe.errors.SteppeError, match="STEPPE_TRACKING_URI=http://"):
        job.resolve("id:0", identity, str(tmp_path / "steppe-data"), {"TORCHELASTIC_RUN_ID": "x"})
    found = job.resolve("id:0", identity, "http://h:5000", {"TORCHELASTIC_RUN_ID": "x"})
    assert found.run_id == launcher.job_run_id("id:0", "torchelastic:x", 1)


def test_single_processes_are_unchanged(server: ServerProcess) -> None:
    """No launcher: each start_run makes its own run, and ends it (one writer, rank NULL)."""
    rank = launch(clean_env(STEPPE_TRACKING_URI=server.http_url), "--steps", "4")
    other = launch(clean_env(STEPPE_TRACKING_URI=server.http_url), "--steps", "4")
    run_ids = {e["run_id"] for r in (rank, other) for e in r.finish() if e["event"] == "started"}
    assert len(run_ids) == 2
    for run_id in run_ids:
        assert run_status(server, run_id) == "FINISHED"
        ranks = sql(server, f"SELECT DISTINCT rank, attempt FROM metrics WHERE run_id = '{run_id}'")
        assert ranks == [{"rank": None, "attempt": 0}]


def test_offline_ranks_keep_their_identity_through_steppe_sync(
    server: ServerProcess, tmp_path: Path
) -> None:
    job_id = uuid.uuid4().hex
    spools = [tmp_path / f"spool-{r}" for r in range(2)]  # one per node-local disk
    run_ids = set()
    for r in range(2):
        env = torchrun_env(server, job_id, r, 2, STEPPE_MODE="offline")
        env["STEPPE_SPOOL_DIR"] = str(spools[r])
        events = launch(env, "--steps", "6").finish()
        assert events[-1]["event"] == "ended"
        run_ids.add(events[0]["run_id"])
    (run_id,) = run_ids  # offline, both derived the job's run id
    for r in range(2):
        done = run_sync(clean_env(STEPPE_SPOOL_DIR=str(spools[r])))
        assert done.returncode == 0, done.stdout + done.stderr
    rows = sql(
        server,
        f"SELECT rank, count(*) AS n FROM metrics WHERE run_id = '{run_id}' GROUP BY 1 ORDER BY 1",
    )
    assert rows == [{"rank": 0, "n": 12}, {"rank": 1, "n": 12}]
    assert run_status(server, run_id) == "FINISHED"


def _torchrun() -> Sequence[str] | None:
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.parametrize("broadcast", [False, True], ids=["job-key", "broadcast"])
def test_real_torchrun_with_gloo(server: ServerProcess, broadcast: bool) -> None:
    torchrun = _torchrun()
    if torchrun is None:
        pytest.skip("torch is not installed: pip install torch==2.13.0 (the CPU wheel)")
    env = clean_env(STEPPE_TRACKING_URI=server.http_url, OMP_NUM_THREADS="1")
    if broadcast:
        env["WORKER_FORGET_JOB_KEY"] = "1"
    done = subprocess.run(
        # --standalone: a rendezvous on a free port, and a fresh TORCHELASTIC_RUN_ID
        [*torchrun, "--standalone", "--nproc_per_node=2", WORKER, "--torch", "--steps", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    (run_id,) = {e["run_id"] for e in events if e["event"] == "started"}
    assert run_status(server, run_id) == "FINISHED"
    writers = sql(server, f"SELECT rank, launcher FROM writers WHERE run_id = '{run_id}'")
    assert sorted((w["rank"], w["launcher"]) for w in writers) == [(0, "torchrun"), (1, "torchrun")]
    counts = sql(
        server,
        f"SELECT rank, count(*) AS n FROM metrics WHERE run_id = '{run_id}' GROUP BY 1 ORDER BY 1",
    )
    assert counts == [{"rank": 0, "n": 20}, {"rank": 1, "n": 20}]


def test_mlflow_reads_a_multi_rank_run_as_the_mean_plus_per_rank_keys(
    server: ServerProcess,
) -> None:
    """The real mlflow client: the bare key is the cross-rank mean per step, each rank's
    series is ``<key>/rank_<n>``; a single-process run reads as logged."""
    from mlflow import MlflowClient

    job_id = uuid.uuid4().hex
    args = ("--steps", "10", "--experiment", f"mlflow-reads-{job_id}")
    ranks = [launch(torchrun_env(server, job_id, r, 3), *args) for r in range(3)]
    (run_id,) = {e["run_id"] for rank in ranks for e in rank.finish() if e["event"] == "started"}
    single = launch(clean_env(STEPPE_TRACKING_URI=server.http_url), *args).finish()
    single_id = single[0]["run_id"]
    mlflow_client = MlflowClient(server.http_url)
    metrics = mlflow_client.get_run(run_id).data.metrics
    # loss = step + rank, ranks 0..2, steps 0..9: the mean at step 9 is 10.
    assert metrics == {
        "loss": 10.0,
        "loss/rank_0": 9.0,
        "loss/rank_1": 10.0,
        "loss/rank_2": 11.0,
        "acc": 1.0,
        "acc/rank_0": 0.0,
        "acc/rank_1": 1.0,
        "acc/rank_2": 2.0,
    }
    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, s + 1.0) for s in range(10)]
    rank2 = mlflow_client.get_metric_history(run_id, "loss/rank_2")
    assert sorted((m.step, m.value) for m in rank2) == [(s, s + 2.0) for s in range(10)]
    assert mlflow_client.get_run(single_id).data.metrics == {"loss": 9.0, "acc": 0.0}
    experiment_id = mlflow_client.get_run(run_id).info.experiment_id
    found = {r.info.run_id for r in mlflow_client.search_runs([experiment_id], "metrics.loss = 10")}
    assert run_id in found and single_id not in found
    found_rank = mlflow_client.search_runs([experiment_id], "metrics.`loss/rank_2` > 10.5")
    assert [r.info.run_id for r in found_rank] == [run_id]
    sampled = http_get(
        server.http_url,
        "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
        run_ids=[run_id, single_id],
        metric_key="loss",
        max_results=5,
    )
    by_run: dict[str, list[tuple[int, float]]] = {}
    for m in sampled["metrics"]:
        by_run.setdefault(m["run_id"], []).append((m["step"], m["value"]))
    assert all(value == step + 1.0 for step, value in by_run[run_id])
    assert all(value == float(step) for step, value in by_run[single_id])
    assert by_run[run_id][-1] == (9, 10.0) and len(by_run[run_id]) == 5


def http_get(base: str, path: str, **query: Any) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(query, doseq=True)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def http_post(base: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_series_api_reads_one_rank_every_rank_or_across_ranks(server: ServerProcess) -> None:
    job_id = uuid.uuid4().hex
    ranks = [launch(torchrun_env(server, job_id, r, 2), "--steps", "30") for r in range(2)]
    (run_id,) = {e["run_id"] for rank in ranks for e in rank.finish() if e["event"] == "started"}
    path = "/api/steppe/v1/series"

    def post(*ranked: object, buckets: int = 1000) -> list[dict[str, Any]]:
        series = [{"run_id": run_id, "key": "loss", "rank": r} for r in ranked]
        entries: list[dict[str, Any]] = http_post(
            server.http_url, path, {"series": series, "buckets": buckets}
        )["series"]
        return entries

    steps = list(range(30))
    one, mean, low, high = post(1, "mean", "min", "max")
    assert (one["rank"], one["bucketed"], one["x"]) == (1, False, steps)
    assert one["value"] == [s + 1.0 for s in steps]
    assert mean["rank"] == "mean" and mean["value"] == [s + 0.5 for s in steps]
    assert low["value"] == [float(s) for s in steps]
    assert high["value"] == [s + 1.0 for s in steps]
    every = post("all")
    assert [(e["rank"], e["value"][:2]) for e in every] == [(0, [0.0, 1.0]), (1, [1.0, 2.0])]
    (bucketed,) = post("mean", buckets=5)  # 30 points > 2 x 5: bucketed like any series
    assert bucketed["bucketed"] is True and len(bucketed["x"]) == 5
    assert bucketed["min"][0] == 0.5 and bucketed["max"][-1] == 29.5
    (plain,) = http_post(server.http_url, path, {"series": [{"run_id": run_id, "key": "loss"}]})[
        "series"
    ]
    assert "rank" not in plain and len(plain["x"]) == 60  # every point, as logged
    got = http_get(server.http_url, path, run_id=run_id, key="loss", rank="mean")
    assert got["value"] == [s + 0.5 for s in steps]


def test_steppe_job_key_joins_processes_no_launcher_started(server: ServerProcess) -> None:
    key = uuid.uuid4().hex
    env = clean_env(STEPPE_TRACKING_URI=server.http_url, STEPPE_JOB_KEY=key)
    procs = [launch(env, "--steps", "3") for _ in range(2)]
    run_ids = {e["run_id"] for p in procs for e in p.finish() if e["event"] == "started"}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    writers = sql(server, f"SELECT rank, status FROM writers WHERE run_id = '{run_id}'")
    assert writers == [{"rank": None, "status": "FINISHED"}] * 2


def test_nested_runs_of_a_job_meet_too(server: ServerProcess) -> None:
    job_id = uuid.uuid4().hex
    ranks = [
        launch(torchrun_env(server, job_id, r, 2), "--steps", "2", "--nested") for r in range(2)
    ]
    events = [e for rank in ranks for e in rank.finish()]
    (parent,) = {e["run_id"] for e in events if e["event"] == "started"}
    (nested,) = {e["run_id"] for e in events if e["event"] == "nested"}
    assert nested != parent
    child = client(server).get_run(nested)
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    assert run_status(server, parent) == "FINISHED"
