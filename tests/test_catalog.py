"""The catalog itself on each backend (SQLite file, real PostgreSQL): the same records and the
same MLflow errors, and what two connections (or processes) sharing one catalog must get right:
version numbers, run creation, params, watermarks, compaction leases, migrations."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from steppe.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from steppe.ingest.catalog import Catalog, CatalogUnavailable, open_catalog, redact_dsn
from steppe.ingest.models_catalog import ModelVersionRecord, RegisteredModelRecord
from steppe.ingest.sql_catalog import SqlCatalog
from tests.conftest import PostgresServer, clean_env, start_server, wait_until

Opener = Callable[[], SqlCatalog]


@pytest.fixture
def opener(catalog_dsn: str | None, tmp_path: Path) -> Iterator[Opener]:
    """Opens another connection (its own catalog object) to this test's one catalog."""
    opened: list[SqlCatalog] = []

    def open_one() -> SqlCatalog:
        catalog = open_catalog(catalog_dsn, tmp_path / "catalog.db")
        assert isinstance(catalog, SqlCatalog)
        opened.append(catalog)
        return catalog

    yield open_one
    for catalog in opened:
        catalog.close()


def _in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released at once; results (or exceptions) by i."""
    results: list[object] = [None] * count
    start = threading.Barrier(count)

    def body(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected for the test to assert on
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,), name=f"test-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_records_and_errors_are_the_same_on_every_backend(opener: Opener) -> None:
    catalog: Catalog = opener()
    experiment = catalog.create_experiment("exp", tags={"team": "a"})
    assert experiment.tags == {"team": "a"}
    with pytest.raises(ResourceAlreadyExists, match="'exp' already exists"):
        catalog.create_experiment("exp")
    run = catalog.create_run("r1", experiment.experiment_id, "", 1_700_000_000_000, user_id="u")
    assert run.tags == {"mlflow.runName": run.run_name, "mlflow.user": "u"}
    assert run.start_time == 1_700_000_000_000  # ms since epoch: more than 32 bits
    catalog.log_params("r1", [("lr", "0.1"), ("lr", "0.1")])
    with pytest.raises(InvalidParameterValue, match=r"already logged with value '0\.1'"):
        catalog.log_params("r1", [("depth", "3"), ("lr", "0.2")])
    catalog.set_tags("r1", [("mlflow.runName", "renamed"), ("k", "v")])
    catalog.update_run("r1", status="FINISHED", end_time=1_700_000_000_500)
    got = catalog.get_run("r1")
    assert (got.run_name, got.status, got.end_time) == ("renamed", "FINISHED", 1_700_000_000_500)
    assert got.params == {"lr": "0.1"}  # the rejected request wrote nothing, depth included
    assert got.tags["k"] == "v"
    with pytest.raises(ResourceDoesNotExist):
        catalog.get_run("nope")
    with pytest.raises(ResourceDoesNotExist):
        catalog.delete_tag("r1", "absent")
    with pytest.raises(InvalidParameterValue, match="status"):
        catalog.update_run("r1", status="DONE")
    assert [r.run_id for r in catalog.list_runs([experiment.experiment_id])] == ["r1"]
    assert catalog.delete_experiment(experiment.experiment_id) == ["r1"]
    assert catalog.get_run("r1").lifecycle_stage == "deleted"
    with pytest.raises(InvalidParameterValue, match="deleted"):
        catalog.create_run("r2", experiment.experiment_id, "", 0)


def test_model_versions_from_two_connections_never_collide(opener: Opener) -> None:
    first, second = opener(), opener()
    first.models.create_registered_model(RegisteredModelRecord("m", "", "", 1, 1))
    with pytest.raises(ResourceAlreadyExists, match="name=m"):
        second.models.create_registered_model(RegisteredModelRecord("m", "", "", 1, 1))
    record = ModelVersionRecord("m", 0, "src", "src", "", "", "", "", "", "None", "READY", 1, 1)

    def create(i: int) -> list[int]:
        catalog = (first, second)[i % 2]
        return [catalog.models.create_model_version(record) for _ in range(15)]

    results = _in_threads(4, create)
    versions = [v for result in results for v in result]  # type: ignore[union-attr]
    assert sorted(versions) == list(range(1, 61))
    # An alias move is one write: whichever connection moved it last, it points at one version.
    _in_threads(2, lambda i: (first, second)[i].models.set_alias("m", "champion", i + 1))
    assert first.models.get_registered_model("m").aliases["champion"] in (1, 2)


def test_one_run_and_one_param_value_when_two_connections_race(opener: Opener) -> None:
    first, second = opener(), opener()
    runs = _in_threads(2, lambda i: (first, second)[i].create_run("same", "0", "n", 5))
    assert [getattr(r, "run_id", r) for r in runs] == ["same", "same"]
    assert len(first.list_runs(["0"])) == 1

    outcomes = _in_threads(2, lambda i: (first, second)[i].log_params("same", [("p", str(i))]))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], InvalidParameterValue), outcomes
    assert first.get_run("same").params["p"] in ("0", "1")


def test_stream_watermarks_are_shared_and_never_lowered(opener: Opener) -> None:
    first, second = opener(), opener()
    first.save_stream_watermarks({"s1": 10, "s2": 3}, last_ms=100)
    version = second.version
    second.save_stream_watermarks({"s1": 7, "s2": 4}, last_ms=50)
    assert first.stream_watermarks() == {"s1": 10, "s2": 4}
    assert first.stream_last_ms() == {"s1": 100, "s2": 100}
    assert first.version != version  # another connection's commit shows in ``version``
    first.expire_stream_watermarks(["s1"])
    assert second.stream_watermarks() == {"s2": 4}


def test_a_compaction_lease_has_one_holder_until_released_or_expired(opener: Opener) -> None:
    first, second = opener(), opener()
    assert first.acquire_lease("compact:a", "ingest-1", ttl_s=60)
    assert not second.acquire_lease("compact:a", "ingest-2", ttl_s=60)
    assert not second.renew_lease("compact:a", "ingest-2", ttl_s=60)
    assert second.lease_holder("compact:a") == "ingest-1"
    assert first.renew_lease("compact:a", "ingest-1", ttl_s=60)
    assert second.acquire_lease("compact:b", "ingest-2", ttl_s=60)  # another name: free
    second.release_lease("compact:a", "ingest-2")  # not its lease: nothing happens
    assert first.lease_holder("compact:a") == "ingest-1"
    first.release_lease("compact:a", "ingest-1")
    assert second.acquire_lease("compact:a", "ingest-2", ttl_s=0.2)
    # The holder dies (stops renewing): once its lease expires another may take it.
    wait_until(lambda: first.acquire_lease("compact:a", "ingest-1", ttl_s=60), timeout_s=10)
    assert not second.renew_lease("compact:a", "ingest-2", ttl_s=60)


_HOLDER = """
import sys
from steppe.ingest.catalog import open_catalog
catalog = open_catalog(sys.argv[1] or None, sys.argv[2])
print(catalog.acquire_lease("compact:x", "other-process", ttl_s=60), flush=True)
sys.stdin.readline()
catalog.release_lease("compact:x", "other-process")
catalog.close()
"""


def test_a_lease_held_by_another_process(opener: Opener, catalog_dsn: str | None) -> None:
    catalog = opener()  # creates the catalog before the other process opens it
    db_file = str(Path(getattr(catalog, "_path", "unused")))
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, catalog_dsn or "", db_file],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "True"
            assert not catalog.acquire_lease("compact:x", "this-process", ttl_s=60)
            assert catalog.lease_holder("compact:x") == "other-process"
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(timeout=30) == 0
        finally:
            holder.kill()
    assert catalog.acquire_lease("compact:x", "this-process", ttl_s=60)


# -- PostgreSQL only: migrations, connection errors, DSNs ------------------------------------


def test_migrations_are_numbered_once_and_a_newer_schema_is_refused(
    postgres: PostgresServer,
) -> None:
    import psycopg

    from steppe.ingest.postgres_catalog import MIGRATIONS, PostgresCatalog

    dsn = postgres.dsn("postgres").rsplit("/", 1)[0] + "/postgres"
    fresh = f"steppe_migrate_{time.monotonic_ns()}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {fresh}")
    target = postgres.dsn(fresh)
    # Two processes' worth of opens at once on an empty database: one migrates, one waits.
    opened = _in_threads(2, lambda _: PostgresCatalog(target, pool_size=1))
    for catalog in opened:
        assert isinstance(catalog, PostgresCatalog), opened
        catalog.close()
    with psycopg.connect(target, autocommit=True) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (len(MIGRATIONS) + 1,))
    with_password = target.replace("postgres@", "postgres:s3cret@")
    with pytest.raises(CatalogUnavailable, match="newer than this steppe knows") as refused:
        PostgresCatalog(with_password)
    assert "s3cret" not in str(refused.value) and ":***@" in str(refused.value)


def test_a_lost_database_is_temporarily_unavailable(postgres: PostgresServer) -> None:
    import psycopg

    from steppe.errors import ServerUnavailable
    from steppe.ingest.postgres_catalog import PostgresCatalog

    dsn = postgres.fresh_dsn()
    catalog = PostgresCatalog(dsn, pool_size=1)
    try:
        catalog.create_experiment("before")
        with psycopg.connect(postgres.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
        with pytest.raises(ServerUnavailable, match="catalog database is unavailable"):
            catalog.create_experiment("after")
    finally:
        catalog.close()


def test_an_unreachable_catalog_fails_with_the_redacted_dsn() -> None:
    from tests.importing import free_port

    dsn = f"postgresql://steppe:hunter2@127.0.0.1:{free_port()}/steppe"
    with pytest.raises(CatalogUnavailable, match="cannot open the PostgreSQL catalog") as err:
        open_catalog(dsn, Path("unused"))
    assert "hunter2" not in str(err.value)
    with pytest.raises(CatalogUnavailable, match="unsupported scheme 'mysql'"):
        open_catalog("mysql://u:p@h/db", Path("unused"))


def test_the_server_shows_its_catalog_dsn_redacted(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = postgres.fresh_dsn().replace("postgres@", "postgres:s3cret@")  # trust: ignored
    server = start_server(tmp_path / "data", "--catalog", dsn)
    try:
        import steppe

        client = steppe.Client(server.http_url)
        experiment_id = client.create_experiment("on-postgres")
        assert client.get_experiment(experiment_id).name == "on-postgres"
    finally:
        assert server.stop() == 0
    output = "".join(server.output)
    assert "catalog: postgresql://postgres:***@127.0.0.1" in output, output
    assert "s3cret" not in output
    assert not (tmp_path / "data" / "catalog.sqlite").exists()


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h user=u password=pw dbname=db", "host=h user=u password=*** dbname=db"),
        ("host=h password='p w' dbname=db", "host=h password=*** dbname=db"),
    ],
)
def test_redact_dsn_hides_passwords(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_the_embedded_default_never_imports_psycopg() -> None:
    code = (
        "import sys, tempfile, pathlib\n"
        "import steppe.query.server\n"
        "from steppe.ingest.catalog import open_catalog\n"
        "open_catalog(None, pathlib.Path(tempfile.mkdtemp()) / 'c.db').close()\n"
        "assert not [m for m in sys.modules if m.startswith('psycopg')], 'psycopg imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=clean_env(), timeout=60)
