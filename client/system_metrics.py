"""System metrics (MLflow's ``system/*`` keys, plus process RSS and NVML GPUs), sampled on the
sender's thread of the host's local rank 0 and logged as buffer appends like any metric.

It never opens a thread or a connection of its own and never blocks the training loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from steppe import config

log = logging.getLogger("steppe.system_metrics")

#: MLflow's key names (mlflow/system_metrics/metrics/*.py), logged under ``system/``; GPUs add
#: gpu_<i>_memory_usage_percentage, _memory_usage_megabytes, _utilization_percentage,
#: _power_usage_watts and _power_usage_percentage. process_rss_megabytes is steppe's own.
KEYS = (
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "disk_usage_percentage",
    "disk_usage_megabytes",
    "disk_available_megabytes",
    "network_receive_megabytes",
    "network_transmit_megabytes",
    "process_rss_megabytes",
)
#: Keys MLflow logs as they are (totals since the sampler started), never averaged.
_TOTALS = frozenset({"network_receive_megabytes", "network_transmit_megabytes"})
#: The run tag naming the host whose metrics a single-host run's ``system/`` keys are.
HOST_TAG = "steppe.system_metrics.host"


class Reader(Protocol):
    def read(self) -> dict[str, float]: ...


class PsutilReader:
    """CPU, memory, disk, network and RSS through psutil (the ``system`` extra)."""

    def __init__(self, psutil: Any) -> None:
        self._psutil = psutil
        self._process = psutil.Process()
        psutil.cpu_percent()  # the first call only starts the measurement
        net = psutil.net_io_counters()
        self._net0 = (net.bytes_recv, net.bytes_sent)

    def read(self) -> dict[str, float]:
        ps = self._psutil
        memory = ps.virtual_memory()
        disk = ps.disk_usage(os.sep)
        net = ps.net_io_counters()
        return {
            "cpu_utilization_percentage": float(ps.cpu_percent()),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100,
            "disk_usage_percentage": float(disk.percent),
            "disk_usage_megabytes": disk.used / 1e6,
            "disk_available_megabytes": disk.free / 1e6,
            "network_receive_megabytes": (net.bytes_recv - self._net0[0]) / 1e6,
            "network_transmit_megabytes": (net.bytes_sent - self._net0[1]) / 1e6,
            "process_rss_megabytes": self._process.memory_info().rss / 1e6,
        }


class ProcReader:
    """The same figures from Linux's /proc and statvfs, for hosts without psutil (cluster
    images often lack it). psutil's definitions: used memory is total - available."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._cpu0 = self._cpu_times()
        self._net0 = self._net_bytes()

    def _cpu_times(self) -> tuple[int, int]:
        fields = (self._proc / "stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(f) for f in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        total = sum(ticks[:8])  # guest time is already inside user time
        return total, idle

    def _net_bytes(self) -> tuple[int, int]:
        recv = sent = 0
        for line in (self._proc / "net" / "dev").read_text().splitlines()[2:]:
            name, _, counters = line.partition(":")
            values = counters.split()
            if name.strip() != "lo" and len(values) >= 9:
                recv += int(values[0])
                sent += int(values[8])
        return recv, sent

    def read(self) -> dict[str, float]:
        total, idle = self._cpu_times()
        d_total, d_idle = total - self._cpu0[0], idle - self._cpu0[1]
        self._cpu0 = (total, idle)
        cpu = 100.0 * (d_total - d_idle) / d_total if d_total > 0 else 0.0
        meminfo = {}
        for line in (self._proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            meminfo[key] = int(rest.split()[0]) * 1024
        mem_total = meminfo["MemTotal"]
        used = mem_total - meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
        disk = os.statvfs(os.sep)
        disk_total = disk.f_blocks * disk.f_frsize
        disk_free = disk.f_bavail * disk.f_frsize
        disk_used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
        recv, sent = self._net_bytes()
        rss_pages = int((self._proc / "self" / "statm").read_text().split()[1])
        return {
            "cpu_utilization_percentage": cpu,
            "system_memory_usage_megabytes": used / 1e6,
            "system_memory_usage_percentage": used / mem_total * 100,
            "disk_usage_percentage": 100.0 * disk_used / (disk_used + disk_free)
            if disk_total
            else 0.0,
            "disk_usage_megabytes": disk_used / 1e6,
            "disk_available_megabytes": disk_free / 1e6,
            "network_receive_megabytes": (recv - self._net0[0]) / 1e6,
            "network_transmit_megabytes": (sent - self._net0[1]) / 1e6,
            "process_rss_megabytes": rss_pages * os.sysconf("SC_PAGE_SIZE") / 1e6,
        }


class NvmlReader:
    """Every GPU of the host through NVML (``pip install nvidia-ml-py``), MLflow's keys."""

    def __init__(self, pynvml: Any) -> None:
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]

    def read(self) -> dict[str, float]:
        nvml, out = self._nvml, {}
        for i, handle in enumerate(self._handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                out[f"gpu_{i}_memory_usage_percentage"] = memory.used / memory.total * 100
                out[f"gpu_{i}_memory_usage_megabytes"] = memory.used / 1e6
                out[f"gpu_{i}_utilization_percentage"] = float(
                    nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                )
                power_mw = nvml.nvmlDeviceGetPowerUsage(handle)
                out[f"gpu_{i}_power_usage_watts"] = power_mw / 1000
                limit_mw = nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
                out[f"gpu_{i}_power_usage_percentage"] = power_mw / limit_mw * 100
            except nvml.NVMLError as exc:  # one GPU's figure missing: log the others
                log.debug("steppe: NVML could not read GPU %d: %s", i, exc)
        return out


def default_readers() -> list[Reader]:
    """psutil if installed, else /proc on Linux; NVML when nvidia-ml-py is installed and
    finds a GPU (skipped quietly otherwise)."""
    readers: list[Reader] = []
    try:
        import psutil
    except ImportError:
        if Path("/proc/stat").exists():
            readers.append(ProcReader())
        else:
            log.warning("steppe: system metrics need psutil here: pip install 'steppe[system]'")
    else:
        readers.append(PsutilReader(psutil))
    try:
        import pynvml
    except ImportError:
        return readers
    try:
        readers.append(NvmlReader(pynvml))
    except Exception as exc:  # NVMLError and friends: no driver or no GPU, so no GPU metrics
        log.info("steppe: no GPU metrics (NVML: %s)", exc)
    return readers


#: Log one point: key, value, step, timestamp in ms.
LogPoint = Callable[[str, float, int, int], None]


class Sampler:
    """Reads every ``interval_s`` and logs the mean of ``samples_before_logging`` samples
    (totals: the latest) at steps 0, 1, 2, ... as MLflow does. ``tick`` is called often (by
    the sender's worker); it reads only when due."""

    def __init__(
        self,
        log_point: LogPoint,
        *,
        interval_s: float,
        samples_before_logging: int = 1,
        prefix: str = "system/",
        readers: list[Reader] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log_point
        self._interval_s = interval_s
        self._samples = samples_before_logging
        self._prefix = prefix
        self._readers = default_readers() if readers is None else readers
        self._clock = clock
        self._due = clock() + interval_s
        self._sums: dict[str, float] = {}
        self._count = 0
        self.step = 0
        self.stopped = False
        # Held while a sample is read and logged: stop() waits for it, so once end_run has
        # stopped the sampler no half-logged sample follows the run's last flush.
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            self.stopped = True

    def tick(self) -> None:
        if self.stopped or self._clock() < self._due:
            return
        with self._lock:
            if not self.stopped:
                self._sample()

    def _sample(self) -> None:
        now = self._clock()
        # The next sample is due one interval after this one was (never a burst to catch up).
        self._due = max(self._due + self._interval_s, now)
        sample: dict[str, float] = {}
        for reader in self._readers:
            sample.update(reader.read())
        for key, value in sample.items():
            self._sums[key] = value if key in _TOTALS else self._sums.get(key, 0.0) + value
        self._count += 1
        if self._count < self._samples:
            return
        timestamp_ms = time.time_ns() // 1_000_000
        for key, total in self._sums.items():
            value = total if key in _TOTALS else total / self._count
            self._log(self._prefix + key, round(value, 1), self.step, timestamp_ms)
        self._sums, self._count = {}, 0
        self.step += 1


# --- the fluent API's switch (MLflow's enable_system_metrics_logging and its setters) -------

_enabled = False
_interval_s: float | None = None
_samples_before_logging: int | None = None
_node_id: str | None = None
#: run id -> (its sampler, the sender it ticks on).
_running: dict[str, tuple[Sampler, Any]] = {}


def enable() -> None:
    global _enabled
    _enabled = True


def disable() -> None:
    global _enabled
    _enabled = False


def set_sampling_interval(interval_s: float | None) -> None:
    global _interval_s
    if interval_s is not None and not interval_s > 0:
        raise ValueError(f"sampling interval {interval_s!r}: must be a positive number of seconds")
    _interval_s = interval_s


def set_samples_before_logging(samples: int | None) -> None:
    global _samples_before_logging
    if samples is not None and samples < 1:
        raise ValueError(f"samples_before_logging {samples!r}: must be at least 1")
    _samples_before_logging = samples


def set_node_id(node_id: str | None) -> None:
    global _node_id
    _node_id = node_id


def wanted(log_system_metrics: bool | None) -> bool:
    """start_run's argument, else enable_system_metrics_logging(), else the environment."""
    if log_system_metrics is not None:
        return log_system_metrics
    return _enabled or config.system_metrics_requested()


def prefix_and_host() -> tuple[str, str | None]:
    """``system/`` and the host to tag the run with, or ``system/<node id>/`` when a node id is
    set or the job spans several hosts (the host name then), so hosts never share a key."""
    node_id = _node_id or config.system_metrics_node_id()
    if node_id is None and config.spans_several_hosts():
        node_id = socket.gethostname()
    if node_id:
        return f"system/{node_id}/", None
    return "system/", socket.gethostname()


def start(run_id: str, tracking_uri: str | None) -> Sampler | None:
    """Sample for ``run_id`` on this process's sender, if this is the host's local rank 0
    (one sampler per host); the sampler is stopped by ``stop(run_id)`` (end_run)."""
    if run_id in _running or config.local_rank() != 0:
        return None
    from steppe.connection import connect
    from steppe.tracking import Client

    client = Client(tracking_uri)
    prefix, host = prefix_and_host()
    if host is not None:
        client.set_tag(run_id, HOST_TAG, host)

    def log_point(key: str, value: float, step: int, timestamp_ms: int) -> None:
        client.log_metric(run_id, key, value, timestamp_ms, step)

    sampler = Sampler(
        log_point,
        interval_s=_interval_s or config.system_metrics_interval_s(),
        samples_before_logging=_samples_before_logging
        or config.system_metrics_samples_before_logging(),
        prefix=prefix,
    )
    sender = connect(tracking_uri).sender
    _running[run_id] = (sampler, sender)
    sender.add_ticker(sampler.tick)
    return sampler


def stop(run_id: str) -> None:
    entry = _running.pop(run_id, None)
    if entry is not None:
        sampler, sender = entry
        sender.remove_ticker(sampler.tick)
        sampler.stop()


def _forget_after_fork() -> None:
    _running.clear()  # the parent's samplers tick on the parent's sender, not ours


os.register_at_fork(after_in_child=_forget_after_fork)
