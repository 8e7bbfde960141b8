"""Shared fixtures: a real ``steppe server`` subprocess on 127.0.0.1 with a temp data dir,
a run logged into it through the real client, and the catalog backends (SQLite, and a real
PostgreSQL started for the session) that the catalog, registry and tracking suites run on."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT_S = 30.0

# Spools (and anything else steppe caches) of this test session live in a folder of its own,
# never in the user's ~/.cache: child processes inherit it through clean_env.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="steppe-test-cache-")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process, without any tracking settings of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_", "MLFLOW_"))}
    env.update(extra)
    return env


def run_sync(env: dict[str, str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``steppe sync`` in a child process with ``env``; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "steppe", "sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    data_dir: Path
    http_url: str
    grpc_port: int
    output: list[str] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return self.http_url

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def start_server(data_dir: Path, *extra_args: str) -> ServerProcess:
    """Start ``steppe server`` on free ports and wait (with a deadline) for its ready line."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steppe",
            "server",
            "--data-dir",
            str(data_dir),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="server-output", daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise AssertionError("steppe server did not start:\n" + "".join(output))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError("steppe server exited:\n" + "".join(output))
        match = re.search(r"listening on (https?://\S+) \(gRPC port (\d+)\)", line)
        if match:
            return ServerProcess(proc, data_dir, match.group(1), int(match.group(2)), output)


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The session's server with the embedded default catalog (SQLite in its data dir)."""
    server = start_server(tmp_path_factory.mktemp("server") / "steppe-data")
    yield server
    assert server.stop() == 0, "".join(server.output)


@pytest.fixture(scope="session")
def steppe_server(sqlite_server: ServerProcess) -> ServerProcess:
    """The session's server (a module overrides this to run on ``catalog_server``)."""
    return sqlite_server


#: The catalog backends the catalog, registry and tracking suites run on.
CATALOG_BACKENDS = ("sqlite", "postgresql")


@dataclass
class PostgresServer:
    """The session's PostgreSQL: ``fresh_dsn()`` gives a new database with steppe's schema."""

    port: int
    template: str

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def fresh_dsn(self) -> str:
        """A new database copied from the migrated template (fast: a file copy)."""
        import psycopg

        name = f"steppe_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return self.dsn(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL for the session (tests.importing.start_postgres) holding a
    template database that has the catalog's migrations applied; skips without the binaries."""
    from tests.importing import start_postgres

    try:
        import psycopg_pool  # noqa: F401
    except ImportError:
        pytest.skip("psycopg-pool is not installed (pip install 'steppe[postgres]')")
    server = start_postgres()
    if server is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) or psycopg are not installed")
    try:
        import psycopg

        from steppe.ingest.postgres_catalog import PostgresCatalog

        pg = PostgresServer(server.port, "steppe_template")
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {pg.template}")
        PostgresCatalog(pg.dsn(pg.template), pool_size=1).close()
        yield pg
    finally:
        server.stop()


@pytest.fixture(params=CATALOG_BACKENDS)
def catalog_backend(request: pytest.FixtureRequest) -> str:
    """Each catalog backend in turn, for tests that build their own catalog or Ingestor."""
    return str(request.param)


@pytest.fixture
def catalog_dsn(catalog_backend: str, request: pytest.FixtureRequest) -> str | None:
    """``--catalog`` for this test: None (the data dir's SQLite) or a fresh PostgreSQL database."""
    if catalog_backend == "sqlite":
        return None
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.fresh_dsn()


@pytest.fixture(scope="session", params=CATALOG_BACKENDS)
def catalog_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A session server per catalog backend: for SQLite the session's ``steppe_server``, for
    PostgreSQL one started with ``--catalog`` on a database of its own."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_server")
        return
    pg: PostgresServer = request.getfixturevalue("postgres")
    server = start_server(
        tmp_path_factory.mktemp("server-pg") / "steppe-data", "--catalog", pg.fresh_dsn()
    )
    yield server
    assert server.stop() == 0, "".join(server.output)


@pytest.fixture
def tracking(steppe_server: ServerProcess) -> Iterator[str]:
    """Point the fluent API at the session server; end any run a test left open."""
    import steppe

    steppe.set_tracking_uri(steppe_server.http_url)
    yield steppe_server.http_url
    while steppe.active_run() is not None:
        steppe.end_run()
    steppe.set_tracking_uri(None)


@dataclass
class LoggedRun:
    run_id: str
    experiment_id: str
    params: dict[str, str]
    metric_keys: list[str]


@pytest.fixture
def logged_run(tracking: str) -> LoggedRun:
    """A finished run with two params and two metric series (100 steps each)."""
    import steppe

    steppe.set_experiment("ui-test")
    with steppe.start_run(run_name="ui-run") as run:
        steppe.log_params({"learning_rate": 0.01, "n_estimators": 100})
        for step in range(100):
            steppe.log_metrics({"accuracy": 0.5 + step / 250, "loss": 1.0 / (step + 1)}, step=step)
    return LoggedRun(
        run.info.run_id,
        run.info.experiment_id,
        {"learning_rate": "0.01", "n_estimators": "100"},
        ["accuracy", "loss"],
    )


def wait_until(predicate: object, timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Poll ``predicate()`` until true, failing at the deadline (no sleeps as sync)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {predicate}")
        time.sleep(interval_s)


@dataclass(frozen=True)
class S3Server:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 and its AWS_* settings."""

    endpoint: str
    env: dict[str, str]

    def client(self) -> Any:
        """A boto3 client on the server: an independent view of what was stored."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"steppe-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's ThreadedMotoServer on a free port of 127.0.0.1, for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield S3Server(endpoint, env)
    finally:
        server.stop()


STORAGE_BACKENDS = ("local", "s3")


@pytest.fixture(params=STORAGE_BACKENDS)
def storage_uri(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str | None:
    """None (the data dir on local disk, the default) or ``s3://<fresh bucket>/prefix`` on
    the session's S3 server, with the AWS_* variables set for this test."""
    if request.param == "local":
        return None
    s3: S3Server = request.getfixturevalue("s3_server")
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3.new_bucket()}/team/steppe"


@pytest.fixture(scope="session")
def s3_steppe_server(
    s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A ``steppe server --storage s3://<bucket>/steppe`` on the session's S3 server."""
    bucket = s3_server.new_bucket()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        server = start_server(
            tmp_path_factory.mktemp("s3-data"), "--storage", f"s3://{bucket}/steppe"
        )
    yield server
    server.stop()


@pytest.fixture(params=STORAGE_BACKENDS)
def storage_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The session's server with artifacts in its data dir, then the one with them on S3."""
    name = "steppe_server" if request.param == "local" else "s3_steppe_server"
    server: ServerProcess = request.getfixturevalue(name)
    return server
