"""Every STEPPE_* environment variable, read in one place.

Values are read when asked for (not at import), so tests and users can change them
before the first run starts. MLflow's own variables are honoured where they mean the same.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "steppe-data"
DEFAULT_HTTP_PORT = 5000
DEFAULT_GRPC_PORT = 5001


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def token() -> str | None:
    """STEPPE_TOKEN, else MLFLOW_TRACKING_TOKEN: the bearer token for a server that wants one."""
    return os.environ.get("STEPPE_TOKEN") or os.environ.get("MLFLOW_TRACKING_TOKEN") or None


def catalog() -> str | None:
    """STEPPE_CATALOG: the catalog database (``postgresql://...``); None: the data dir's SQLite."""
    return os.environ.get("STEPPE_CATALOG") or None


def storage() -> str | None:
    """STEPPE_STORAGE: where artifacts go (``s3://bucket/prefix``); None: the data dir."""
    return os.environ.get("STEPPE_STORAGE") or None


def tls_ca_file() -> str | None:
    """STEPPE_TLS_CA: a CA bundle (PEM) to trust for https:// servers; default: the system's."""
    return os.environ.get("STEPPE_TLS_CA") or None


def tracking_uri() -> str | None:
    """STEPPE_TRACKING_URI, else MLFLOW_TRACKING_URI; None means the local data dir."""
    return os.environ.get("STEPPE_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI") or None


def data_dir() -> Path:
    """STEPPE_DATA_DIR, else ./steppe-data (like MLflow's ./mlruns), made absolute."""
    return Path(os.environ.get("STEPPE_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


def take_run_id() -> str | None:
    """STEPPE_RUN_ID, else MLFLOW_RUN_ID: the run a launcher (``mlflow run``) made for this
    process. Taken, as MLflow does: removed from the environment, so only the first
    ``start_run()`` without a run_id resumes it."""
    for name in ("STEPPE_RUN_ID", "MLFLOW_RUN_ID"):
        value = os.environ.get(name)
        if value:
            for other in ("STEPPE_RUN_ID", "MLFLOW_RUN_ID"):
                os.environ.pop(other, None)
            return value
    return None


def experiment_name() -> str | None:
    return os.environ.get("STEPPE_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_NAME")


def experiment_id() -> str | None:
    return os.environ.get("STEPPE_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_ID")


def flush_timeout_s() -> float:
    """How long flush()/end_run()/interpreter exit wait for acks."""
    return _float("STEPPE_FLUSH_TIMEOUT_S", 60.0)


def buffer_points() -> int:
    """Points the training thread may queue before it encodes them itself."""
    return _int("STEPPE_BUFFER_POINTS", 200_000)


def batch_points() -> int:
    """Points per MetricBatch on the wire."""
    return _int("STEPPE_BATCH_POINTS", 32_768)


def send_interval_s() -> float:
    """How often the sender ships a partial batch (freshness of live charts)."""
    return _float("STEPPE_SEND_INTERVAL_S", 0.1)


def max_inflight_bytes() -> int:
    """Encoded, unacked batches kept in memory; beyond it they are re-read from the spool."""
    return _int("STEPPE_MAX_INFLIGHT_BYTES", 64 << 20)


def system_metrics_requested() -> bool:
    """MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING (or STEPPE_...) asks for system metrics."""
    raw = os.environ.get("STEPPE_ENABLE_SYSTEM_METRICS_LOGGING") or os.environ.get(
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", ""
    )
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def allow_pickle_deserialization() -> bool:
    """STEPPE_ALLOW_PICKLE_DESERIALIZATION (or MLflow's MLFLOW_ALLOW_PICKLE_DESERIALIZATION)
    set to true: load pickle/cloudpickle models, which can run arbitrary code. Off unless set."""
    raw = os.environ.get("STEPPE_ALLOW_PICKLE_DESERIALIZATION") or os.environ.get(
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION", ""
    )
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def offline() -> bool:
    """STEPPE_MODE=offline: log to the local spool only; `steppe sync` sends it later."""
    mode = (os.environ.get("STEPPE_MODE") or "online").strip().lower()
    if mode not in ("online", "offline"):
        raise ValueError(f"STEPPE_MODE={mode!r}: must be 'online' or 'offline'")
    return mode == "offline"


def spool_dir() -> Path:
    """STEPPE_SPOOL_DIR, else $XDG_CACHE_HOME/steppe/spool (~/.cache/steppe/spool)."""
    raw = os.environ.get("STEPPE_SPOOL_DIR")
    if raw:
        return Path(raw).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "steppe" / "spool"


def spool_max_bytes() -> int:
    """STEPPE_SPOOL_MAX_BYTES: the most the spool dir may hold before an artifact logged
    while the server is away is refused (points are never refused); default 10 GiB."""
    value = _int("STEPPE_SPOOL_MAX_BYTES", 10 << 30)
    if value <= 0:
        raise ValueError(f"STEPPE_SPOOL_MAX_BYTES={value}: must be a positive number of bytes")
    return value


def send_window_batches() -> int:
    """Batches sent but not yet acked on the stream (bounds memory in gRPC's queues)."""
    return _int("STEPPE_SEND_WINDOW_BATCHES", 32)


def server_start_timeout_s() -> float:
    """How long a client waits for a server it started in the background."""
    return _float("STEPPE_SERVER_START_TIMEOUT_S", 30.0)


def idle_timeout_s() -> float:
    """A server started in the background by a client stops after this long idle."""
    return _float("STEPPE_IDLE_TIMEOUT_S", 600.0)


def connect_timeout_s() -> float:
    """How long a run-lifecycle call (start_run, log_param, ...) retries an unreachable server."""
    return _float("STEPPE_CONNECT_TIMEOUT_S", 10.0)


# --- system metrics and the ranks of a distributed job ------------------------------------


def system_metrics_interval_s() -> float:
    """STEPPE_SYSTEM_METRICS_INTERVAL_S, else MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL:
    seconds between two system-metrics samples (default 5)."""
    name = "STEPPE_SYSTEM_METRICS_INTERVAL_S"
    if not os.environ.get(name):
        name = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
    value = _float(name, 5.0)
    if not value > 0:
        raise ValueError(f"{name}={value}: must be a positive number of seconds")
    return value


def system_metrics_samples_before_logging() -> int:
    """MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING (or STEPPE_...): samples averaged into one
    logged point (default 1)."""
    name = "STEPPE_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"
    if not os.environ.get(name):
        name = "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"
    value = _int(name, 1)
    if value < 1:
        raise ValueError(f"{name}={value}: must be at least 1")
    return value


def system_metrics_node_id() -> str | None:
    """STEPPE_SYSTEM_METRICS_NODE_ID, else MLFLOW_SYSTEM_METRICS_NODE_ID: the name system
    metrics are logged under (``system/<node id>/...``)."""
    return (
        os.environ.get("STEPPE_SYSTEM_METRICS_NODE_ID")
        or os.environ.get("MLFLOW_SYSTEM_METRICS_NODE_ID")
        or None
    )


def launcher_run_id() -> str | None:
    """STEPPE_RUN_ID, else MLFLOW_RUN_ID, read without taking it (see ``take_run_id``)."""
    return os.environ.get("STEPPE_RUN_ID") or os.environ.get("MLFLOW_RUN_ID") or None


def local_rank() -> int:
    """This process's rank on its host, from torchrun/Lightning (LOCAL_RANK), Slurm
    (SLURM_LOCALID), Open MPI or MPICH; 0 for a single process."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"):
        raw = os.environ.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return 0


def world_size() -> int:
    """How many processes the job has, from torchrun/Lightning (WORLD_SIZE), Slurm
    (SLURM_NTASKS), Open MPI (OMPI_COMM_WORLD_SIZE) or MPICH (PMI_SIZE); 1 on its own."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        raw = os.environ.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return 1


#: The variables a job key comes from, in order (for error messages and docs).
JOB_KEY_VARIABLES = ("STEPPE_JOB_KEY", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")


def job_key() -> str | None:
    """What names this distributed job, the same on every one of its processes: STEPPE_JOB_KEY;
    else torchrun's TORCHELASTIC_RUN_ID (not when empty or ``none``, which multi-node launches
    without ``--rdzv-id`` give); else, for a Slurm job step of several tasks, SLURM_JOB_ID with
    the step and the array task (so every step and array task is a job of its own). None for a
    process on its own."""
    explicit = os.environ.get("STEPPE_JOB_KEY", "").strip()
    if explicit:
        return explicit
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic.lower() != "none":
        return f"torchelastic:{elastic}"
    slurm_job = os.environ.get("SLURM_JOB_ID", "").strip()
    tasks = os.environ.get("SLURM_NTASKS", "").strip()
    # A one-task allocation is a process on its own: two scripts run in one salloc must not
    # share a run.
    if slurm_job and tasks.isdigit() and int(tasks) > 1:
        parts = [
            "slurm",
            os.environ.get("SLURM_ARRAY_JOB_ID", "").strip() or slurm_job,
            os.environ.get("SLURM_ARRAY_TASK_ID", "").strip(),
            os.environ.get("SLURM_STEP_ID", "").strip(),
        ]
        return ":".join(parts)
    return None


def spans_several_hosts() -> bool:
    """Whether the job runs on more than one host: Slurm's node count, or torchrun's and Open
    MPI's world size above their per-host size."""
    nodes = os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or ""
    if nodes.strip().isdigit() and int(nodes) > 1:
        return True
    groups = os.environ.get("GROUP_WORLD_SIZE", "").strip()  # torchrun: agents, one per host
    if groups.isdigit() and int(groups) > 1:
        return True
    for world, local in (
        ("WORLD_SIZE", "LOCAL_WORLD_SIZE"),
        ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ):
        w, lo = os.environ.get(world, "").strip(), os.environ.get(local, "").strip()
        if w.isdigit() and lo.isdigit() and int(w) > int(lo) > 0:
            return True
    return False


def print_run_urls() -> bool:
    """False when STEPPE_SUPPRESS_PRINTING_URL (or MLflow's MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT)
    is true: then ``end_run`` does not say where the run went."""
    raw = os.environ.get("STEPPE_SUPPRESS_PRINTING_URL") or os.environ.get(
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", ""
    )
    return raw.strip().lower() not in {"1", "true", "yes", "on"}
