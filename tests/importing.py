"""Helpers of the import/export tests: real MLflow stores written by mlflow itself (in a
child process, so mlflow's global state and warnings stay out of the test process), an
MLflow server and a PostgreSQL on loopback ports, and dumps of both sides to compare."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import steppe
from tests.conftest import clean_env

#: Writes a known history with mlflow's own client into the store at argv[1]; experiment
#: names start with argv[2]. Prints the run ids as JSON.
WRITER = r"""
import json, math, sys, tempfile, os
from mlflow import MlflowClient

uri, prefix = sys.argv[1], sys.argv[2]
c = MlflowClient(uri, registry_uri=uri)
a = c.create_experiment(prefix + "-a", tags={"team": "vision"})
b = c.create_experiment(prefix + "-b")
r1 = c.create_run(a, run_name="first", tags={"mlflow.user": "ann", "kind": "base"})
rid = r1.info.run_id
c.log_param(rid, "lr", "0.01")
c.log_param(rid, "layers/depth", "12")
c.log_param(rid, "long", "x" * 5000)
t0 = 1_700_000_000_000
for step in range(300):
    c.log_metric(rid, "loss", 1.0 / (step + 1), timestamp=t0 + step * 7, step=step)
    c.log_metric(rid, "eval/acc", step / 300, timestamp=t0 + step * 7 + 1, step=step)
# odd values, a repeated step, a step logged twice with another time
c.log_metric(rid, "odd", float("nan"), timestamp=t0, step=0)
c.log_metric(rid, "odd", float("inf"), timestamp=t0 + 1, step=1)
c.log_metric(rid, "odd", -float("inf"), timestamp=t0 + 2, step=2)
c.log_metric(rid, "odd", -0.5, timestamp=t0 + 3, step=2)
c.log_metric(rid, "odd", 2.5, timestamp=t0 + 4, step=-3)
with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "model", "sub"))
    open(os.path.join(tmp, "model", "MLmodel"), "w").write("flavors: {}\n")
    open(os.path.join(tmp, "model", "sub", "weights.bin"), "wb").write(bytes(range(256)) * 4)
    c.log_artifacts(rid, os.path.join(tmp, "model"), "model")
c.log_text(rid, "hello", "notes/a.txt")
c.set_terminated(rid, "FINISHED", end_time=t0 + 10_000)
r2 = c.create_run(a, run_name="second")
c.log_param(r2.info.run_id, "lr", "0.1")
c.log_metric(r2.info.run_id, "loss", 0.25, timestamp=t0, step=0)
c.set_terminated(r2.info.run_id, "FAILED", end_time=t0 + 5)
r3 = c.create_run(b, run_name="deleted-one")
c.log_metric(r3.info.run_id, "loss", 3.0, timestamp=t0, step=0)
c.set_terminated(r3.info.run_id, "KILLED", end_time=t0 + 9)
c.delete_run(r3.info.run_id)
r4 = c.create_run(b, run_name="still-running")
c.set_tag(r4.info.run_id, "note", "no metrics yet")
name = prefix + "-model"
c.create_registered_model(name, tags={"stage": "dev"}, description="a model")
v1 = c.create_model_version(name, r1.info.artifact_uri + "/model", run_id=rid, tags={"k": "v"})
v2 = c.create_model_version(name, r1.info.artifact_uri + "/model", run_id=rid)
c.set_registered_model_alias(name, "champion", v2.version)
c.set_registered_model_alias(name, "old", v1.version)
print(json.dumps([rid, r2.info.run_id, r3.info.run_id, r4.info.run_id]))
"""

#: Dumps a store through mlflow's own client (the reference): argv[1] uri, argv[2] prefix.
DUMPER = r"""
import json, sys, os, tempfile
from mlflow import MlflowClient
from mlflow.entities import ViewType

uri, prefix = sys.argv[1], sys.argv[2]
c = MlflowClient(uri, registry_uri=uri)
runs = {}
for exp in c.search_experiments(view_type=ViewType.ALL):
    if not exp.name.startswith(prefix):
        continue
    for run in c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
        info = run.info
        hist = {}
        for key in run.data.metrics:
            hist[key] = sorted(
                (m.step, m.timestamp, repr(m.value)) for m in c.get_metric_history(info.run_id, key)
            )
        files = {}
        with tempfile.TemporaryDirectory() as tmp:
            local = c.download_artifacts(info.run_id, "", tmp)
            for root, _, names in os.walk(local):
                for n in names:
                    p = os.path.join(root, n)
                    files[os.path.relpath(p, local)] = open(p, "rb").read().hex()
        runs[info.run_id] = {
            "experiment": exp.name, "name": info.run_name, "status": info.status,
            "start_time": info.start_time, "end_time": info.end_time,
            "lifecycle_stage": info.lifecycle_stage, "params": run.data.params,
            "tags": run.data.tags, "history": hist, "files": files,
        }
models = {}
for m in c.search_registered_models():
    if not m.name.startswith(prefix):
        continue
    versions = c.search_model_versions(f"name='{m.name}'")
    models[m.name] = {
        "tags": m.tags, "description": m.description,
        "aliases": {a: int(v) for a, v in m.aliases.items()},
        "versions": sorted(int(v.version) for v in versions),
    }
print(json.dumps({"runs": runs, "models": models}))
"""


def mlflow_env(**extra: str) -> dict[str, str]:
    return clean_env(MLFLOW_ALLOW_FILE_STORE="true", GIT_PYTHON_REFRESH="quiet", **extra)


def write_history(uri: str, prefix: str, cwd: Path) -> list[str]:
    """Write WRITER's history into ``uri`` with mlflow; the four run ids."""
    done = subprocess.run(
        [sys.executable, "-c", WRITER, uri, prefix],
        capture_output=True,
        text=True,
        timeout=180,
        env=mlflow_env(),
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return ids


def dump_mlflow(uri: str, prefix: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", DUMPER, uri, prefix],
        capture_output=True,
        text=True,
        timeout=180,
        env=mlflow_env(),
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def dump_steppe(client: steppe.Client, run_ids: list[str], tmp: Path) -> dict[str, Any]:
    """The same shape as DUMPER's, read from steppe through its client."""
    runs = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        info = run.info
        keys = (
            client.sql(f"SELECT DISTINCT key FROM metrics WHERE run_id = '{run_id}'")
            .column("key")
            .to_pylist()
        )
        hist = {  # lists, as in DUMPER's JSON
            key: sorted(
                [m.step, m.timestamp, repr(m.value)] for m in client.get_metric_history(run_id, key)
            )
            for key in keys
        }
        files = {}
        if info.lifecycle_stage == "active":
            local = Path(client.download_artifacts(run_id, "", tmp / run_id))
            files = {
                str(p.relative_to(local)): p.read_bytes().hex()
                for p in local.rglob("*")
                if p.is_file()
            }
        exp = client.get_experiment(info.experiment_id)
        runs[run_id] = {
            "experiment": exp.name,
            "name": info.run_name,
            "status": info.status,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "lifecycle_stage": info.lifecycle_stage,
            "params": run.data.params,
            "tags": run.data.tags,
            "history": hist,
            "files": files,
        }
    return {"runs": runs}


def assert_same_runs(source: dict[str, Any], imported: dict[str, Any]) -> None:
    """Every source run in steppe with the same fields, params, tags (steppe may add its
    own), every metric point (step, timestamp, value) and every artifact byte."""
    assert set(imported["runs"]) == set(source["runs"])
    for run_id, want in source["runs"].items():
        got = imported["runs"][run_id]
        for field in ("experiment", "name", "status", "start_time", "end_time"):
            assert got[field] == want[field], (run_id, field, got[field], want[field])
        assert got["lifecycle_stage"] == want["lifecycle_stage"], run_id
        assert got["params"] == want["params"], run_id
        missing = {k: v for k, v in want["tags"].items() if got["tags"].get(k) != v}
        assert not missing, (run_id, missing)
        assert set(got["history"]) == set(want["history"]), run_id
        for key, points in want["history"].items():
            assert [tuple(p) for p in got["history"][key]] == [tuple(p) for p in points], key
        if want["lifecycle_stage"] == "active":
            assert got["files"] == want["files"], run_id


def steppe_import(*args: str, uri: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steppe", "import", *args, "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=mlflow_env(),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # polling a starting server: no event to wait on
    proc.kill()
    raise AssertionError(f"{url}: not up within {timeout_s} s")


@dataclass
class MlflowServer:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_mlflow_server(root: Path) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and proxied artifacts."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=mlflow_env(),
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(url, proc, 120)
    return MlflowServer(proc, url)


@dataclass
class Postgres:
    data: Path
    port: int
    pg_ctl: str = "pg_ctl"

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the image has a postgres user for it.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(*, fsync: bool = False) -> Postgres | None:
    """A throwaway PostgreSQL (initdb + pg_ctl) on a free loopback port, or None when the
    binaries (or psycopg) are not installed. Its folder is directly in the temp dir: the
    postgres user cannot traverse pytest's (0700) temp folders. ``fsync=False`` (tests):
    commits are not flushed to disk; benchmarks ask for it on."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian's layout
    search = os.pathsep.join([os.environ.get("PATH", ""), *map(str, bins)])
    initdb, pg_ctl = shutil.which("initdb", path=search), shutil.which("pg_ctl", path=search)
    if initdb is None or pg_ctl is None:
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="steppe-test-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync={'on' if fsync else 'off'}"
    )
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Postgres(data, port, pg_ctl)


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
