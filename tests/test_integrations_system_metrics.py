"""System metrics: MLflow's ``system/*`` keys sampled on the sender's thread of local rank 0,
logged into the run as buffer appends, stopped by end_run; against a real server."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

import steppe
from steppe import system_metrics
from steppe.connection import connect
from tests.conftest import wait_until

INTERVAL_S = "0.1"
MLFLOW_KEYS = {
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "disk_usage_percentage",
    "disk_usage_megabytes",
    "disk_available_megabytes",
    "network_receive_megabytes",
    "network_transmit_megabytes",
}


@pytest.fixture(autouse=True)
def quick_samples(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "LOCAL_RANK",
        "GROUP_WORLD_SIZE",
        "SLURM_NNODES",
        "SLURM_LOCALID",
        "WORLD_SIZE",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",
        "STEPPE_ENABLE_SYSTEM_METRICS_LOGGING",
        "MLFLOW_SYSTEM_METRICS_NODE_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STEPPE_SYSTEM_METRICS_INTERVAL_S", INTERVAL_S)
    yield
    system_metrics.disable()
    system_metrics.set_node_id(None)
    system_metrics.set_samples_before_logging(None)
    system_metrics.set_sampling_interval(None)


def _points(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in steppe.Client().get_metric_history(run_id, key))


def _system_keys(run_id: str) -> set[str]:
    return {k for k in steppe.get_run(run_id).data.metrics if k.startswith("system/")}


def _wait_for_samples(run_id: str, key: str, count: int) -> None:
    wait_until(lambda: len(_points(run_id, key)) >= count, timeout_s=20, interval_s=0.1)


def test_log_system_metrics_samples_mlflows_keys_until_end_run(tracking: str) -> None:
    with steppe.start_run(log_system_metrics=True) as run:
        run_id = run.info.run_id
        _wait_for_samples(run_id, "system/cpu_utilization_percentage", 3)
        sampler, sender = system_metrics._running[run_id]
        assert sampler.tick in sender._tickers  # on the sender's thread: no thread of its own
    assert run_id not in system_metrics._running and sampler.stopped
    assert sampler.tick not in sender._tickers
    keys = _system_keys(run_id)
    assert {f"system/{k}" for k in MLFLOW_KEYS} | {"system/process_rss_megabytes"} <= keys
    # Steps 0, 1, 2, ... with no gap or repeat, every key logged at every step.
    cpu = _points(run_id, "system/cpu_utilization_percentage")
    assert [s for s, _ in cpu] == list(range(len(cpu)))
    assert all(0.0 <= v <= 100.0 for _, v in cpu)
    memory = _points(run_id, "system/system_memory_usage_percentage")
    assert len(memory) == len(cpu) and all(0.0 < v <= 100.0 for _, v in memory)
    assert all(v > 0 for _, v in _points(run_id, "system/process_rss_megabytes"))
    assert all(v >= 0 for _, v in _points(run_id, "system/network_receive_megabytes"))
    run_data = steppe.get_run(run_id).data
    assert run_data.tags[system_metrics.HOST_TAG] == socket.gethostname()


def test_the_sampling_costs_no_round_trip_per_sample(tracking: str) -> None:
    """Samples are buffer appends: one run tag at start, then only points on the stream."""
    calls: list[str] = []
    with steppe.start_run() as run:
        unary = connect(tracking).unary
        original = unary.set_tags

        def counting(*args: object, **kwargs: object) -> None:
            calls.append("set_tags")
            original(*args, **kwargs)  # type: ignore[arg-type]

        unary.set_tags = counting  # type: ignore[method-assign]
        try:
            system_metrics.start(run.info.run_id, tracking)
            _wait_for_samples(run.info.run_id, "system/disk_usage_percentage", 3)
        finally:
            del unary.set_tags
    assert calls == ["set_tags"]


@pytest.mark.parametrize(
    "variable", ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "STEPPE_ENABLE_SYSTEM_METRICS_LOGGING"]
)
def test_the_environment_turns_it_on_and_the_argument_off(
    tracking: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "true")
    with steppe.start_run() as run:
        _wait_for_samples(run.info.run_id, "system/cpu_utilization_percentage", 1)
    with steppe.start_run(log_system_metrics=False) as run:
        assert run.info.run_id not in system_metrics._running
        steppe.log_metric("loss", 1.0)
    assert _system_keys(run.info.run_id) == set()


def test_enable_system_metrics_logging_and_its_setters(tracking: str) -> None:
    steppe.enable_system_metrics_logging()
    steppe.set_system_metrics_node_id("node_0")
    steppe.set_system_metrics_samples_before_logging(2)
    with steppe.start_run() as run:
        _wait_for_samples(run.info.run_id, "system/node_0/cpu_utilization_percentage", 2)
        assert system_metrics._running[run.info.run_id][0]._samples == 2
    assert all(k.startswith("system/node_0/") for k in _system_keys(run.info.run_id))
    steppe.disable_system_metrics_logging()
    with steppe.start_run() as run:
        assert run.info.run_id not in system_metrics._running


def test_only_local_rank_0_samples(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    with steppe.start_run(log_system_metrics=True) as run:
        assert run.info.run_id not in system_metrics._running
        steppe.log_metric("loss", 1.0)
    assert _system_keys(run.info.run_id) == set()


def test_a_job_on_several_hosts_puts_the_host_in_the_key(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # torchrun: two agents, one per host
    host = socket.gethostname()
    with steppe.start_run(log_system_metrics=True) as run:
        _wait_for_samples(run.info.run_id, f"system/{host}/cpu_utilization_percentage", 1)
    assert all(k.startswith(f"system/{host}/") for k in _system_keys(run.info.run_id))
    assert system_metrics.HOST_TAG not in steppe.get_run(run.info.run_id).data.tags


def test_a_failing_ticker_is_dropped_and_the_sender_keeps_sending(tracking: str) -> None:
    def broken() -> None:
        raise RuntimeError("sampler bug")

    with steppe.start_run() as run:
        sender = connect(tracking).sender
        sender.add_ticker(broken)
        wait_until(lambda: broken not in sender._tickers, timeout_s=10)
        steppe.log_metric("after", 1.0)
        steppe.flush(timeout_s=30)
    assert _points(run.info.run_id, "after") == [(0, 1.0)]


class _FakeReader:
    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> dict[str, float]:
        self.reads += 1
        return {
            "cpu_utilization_percentage": 10.0 * self.reads,
            "network_receive_megabytes": 1.0 * self.reads,
        }


def test_the_sampler_averages_and_logs_totals_as_they_are() -> None:
    now = [0.0]
    logged: list[tuple[str, float, int]] = []
    reader = _FakeReader()
    sampler = system_metrics.Sampler(
        lambda key, value, step, ts: logged.append((key, value, step)),
        interval_s=5.0,
        samples_before_logging=2,
        readers=[reader],
        clock=lambda: now[0],
    )
    sampler.tick()
    assert reader.reads == 0  # not due yet
    for t in (5.0, 5.5, 10.0, 15.0, 20.0):
        now[0] = t
        sampler.tick()
    assert reader.reads == 4  # at 5, 10, 15, 20 (5.5 was not due)
    assert logged == [
        ("system/cpu_utilization_percentage", 15.0, 0),  # mean of 10 and 20
        ("system/network_receive_megabytes", 2.0, 0),  # a total: the latest
        ("system/cpu_utilization_percentage", 35.0, 1),
        ("system/network_receive_megabytes", 4.0, 1),
    ]
    sampler.stop()
    now[0] = 100.0
    sampler.tick()
    assert reader.reads == 4


def test_the_proc_reader_agrees_with_psutil() -> None:
    psutil = pytest.importorskip("psutil")
    proc = system_metrics.ProcReader().read()
    ps = system_metrics.PsutilReader(psutil).read()
    assert set(proc) == set(ps) == MLFLOW_KEYS | {"process_rss_megabytes"}
    assert proc["system_memory_usage_percentage"] == pytest.approx(
        ps["system_memory_usage_percentage"], abs=5
    )
    assert proc["disk_usage_percentage"] == pytest.approx(ps["disk_usage_percentage"], abs=1)
    assert proc["disk_available_megabytes"] == pytest.approx(
        ps["disk_available_megabytes"], rel=0.02
    )
    assert proc["process_rss_megabytes"] == pytest.approx(ps["process_rss_megabytes"], rel=0.2)
    assert 0.0 <= proc["cpu_utilization_percentage"] <= 100.0


class _FakeNvml:
    """The part of nvidia-ml-py's pynvml that the reader calls, for two GPUs."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:
        return type("Memory", (), {"used": 4e9 * (h + 1), "total": 16e9})()

    def nvmlDeviceGetUtilizationRates(self, h: int) -> object:
        return type("Rates", (), {"gpu": 50 + h})()

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 150_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return 300_000


def test_gpu_metrics_use_mlflows_names_and_skip_what_nvml_lacks() -> None:
    sample = system_metrics.NvmlReader(_FakeNvml()).read()
    assert sample == {
        "gpu_0_memory_usage_percentage": 25.0,
        "gpu_0_memory_usage_megabytes": 4000.0,
        "gpu_0_utilization_percentage": 50.0,
        "gpu_0_power_usage_watts": 150.0,
        "gpu_0_power_usage_percentage": 50.0,
        # GPU 1 has no power reading: its other figures are still logged
        "gpu_1_memory_usage_percentage": 50.0,
        "gpu_1_memory_usage_megabytes": 8000.0,
        "gpu_1_utilization_percentage": 51.0,
    }


def test_no_gpu_or_no_nvml_means_no_gpu_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(fail_init=True))
    readers = system_metrics.default_readers()
    assert readers and not any(isinstance(r, system_metrics.NvmlReader) for r in readers)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    readers = system_metrics.default_readers()
    assert readers and not any(isinstance(r, system_metrics.NvmlReader) for r in readers)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    assert any(isinstance(r, system_metrics.NvmlReader) for r in system_metrics.default_readers())
