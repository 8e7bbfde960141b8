"""The writer rules (steppe.ingest.writers): a run's status from its writers', on a real
SQLite catalog; the order in which ranks join and end never changes the outcome."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from steppe.errors import InvalidParameterValue
from steppe.ingest.catalog import WriterInfo
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.ingest.tracking import RunService
from steppe.ingest.writers import WriterService, check_writer, run_status


@pytest.mark.parametrize(
    ("members", "status"),
    [
        ([(0, "RUNNING"), (0, "FINISHED")], "RUNNING"),
        ([(0, "FINISHED"), (0, "FINISHED")], "FINISHED"),
        ([(0, "FINISHED"), (0, "FAILED")], "FAILED"),
        ([(0, "FINISHED"), (0, "LOST")], "FAILED"),
        ([(0, "FINISHED"), (0, "KILLED")], "KILLED"),
        ([(0, "LOST"), (0, "LOST"), (1, "FINISHED"), (1, "FINISHED")], "FINISHED"),
        ([(0, "LOST"), (1, "RUNNING")], "RUNNING"),
        ([(1, "FINISHED"), (0, "RUNNING")], "FINISHED"),  # only the newest attempt counts
    ],
)
def test_run_status_from_its_writers(members: list[tuple[int, str]], status: str) -> None:
    assert run_status(members) == status


def writer(rank: int, attempt: int = 0) -> WriterInfo:
    return WriterInfo(f"key-{rank}-{attempt}", "h", 100 + rank, rank, rank, 2, 0, attempt, "env")


#: Every order in which two ranks join (j) and end (e), each ending after it joined.
ORDERS = [
    order
    for order in itertools.permutations(["j0", "j1", "e0", "e1"])
    if order.index("j0") < order.index("e0") and order.index("j1") < order.index("e1")
]


@pytest.mark.parametrize("order", ORDERS)
def test_any_order_of_joins_and_ends_gives_the_same_run_status(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    """Rank 1 fails, rank 0 finishes: FAILED, whichever joins or ends first."""
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    runs = RunService(catalog, WriterService(catalog))
    run = runs.create(
        experiment_id="0", run_name="job", start_time=1, tags=[], user_id="", run_id="r"
    )
    for step in order:
        rank = int(step[1])
        if step[0] == "j":
            runs.create(
                experiment_id="0",
                run_name="",
                start_time=1,
                tags=[],
                user_id="",
                run_id=run.run_id,
                writer=writer(rank),
            )
        else:
            status = "FAILED" if rank == 1 else "FINISHED"
            runs.update(
                run.run_id, status=status, end_time=10 + rank, run_name=None, writer=writer(rank)
            )
    final = catalog.get_run(run.run_id)
    assert (final.status, final.end_time) == ("FAILED", 11)
    catalog.close()


def test_a_resume_gives_an_ended_run_a_new_life(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    runs = RunService(catalog, WriterService(catalog))
    run = runs.create(
        experiment_id="0", run_name="r", start_time=1, tags=[], user_id="", writer=writer(0)
    )
    runs.update(run.run_id, status="FAILED", end_time=5, run_name=None, writer=writer(0))
    assert catalog.get_run(run.run_id).status == "FAILED"
    # Another process resumes it (start_run(run_id=...)): its end decides.
    runs.update(run.run_id, status="RUNNING", end_time=None, run_name=None, writer=writer(1))
    assert catalog.get_run(run.run_id).status == "RUNNING"
    runs.update(run.run_id, status="FINISHED", end_time=9, run_name=None, writer=writer(1))
    assert (catalog.get_run(run.run_id).status, catalog.get_run(run.run_id).end_time) == (
        "FINISHED",
        9,
    )
    catalog.close()


def test_an_end_without_a_writer_ends_the_run_and_its_writers(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    runs = RunService(catalog, WriterService(catalog))
    run = runs.create(
        experiment_id="0", run_name="r", start_time=1, tags=[], user_id="", writer=writer(0)
    )
    runs.update(run.run_id, status="KILLED", end_time=7, run_name=None)  # e.g. MLflow's REST
    assert catalog.get_run(run.run_id).status == "KILLED"
    assert [m.status for m in catalog.list_run_writers()] == ["KILLED"]
    catalog.close()


def test_heartbeats_lose_and_revive_writers(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    writers = WriterService(catalog)
    runs = RunService(catalog, writers)
    run = runs.create(
        experiment_id="0", run_name="r", start_time=1, tags=[], user_id="", writer=writer(0)
    )
    assert writers.reap([], timeout_s=0.0, grace_until_ms=2**62) == []  # the grace period
    assert writers.reap([writer(0).writer_key], timeout_s=0.0, grace_until_ms=0) == []
    assert writers.reap([], timeout_s=-1.0, grace_until_ms=0) == [run.run_id]
    assert catalog.get_run(run.run_id).status == "FAILED"
    assert writers.reap([writer(0).writer_key], timeout_s=60.0, grace_until_ms=0) == [run.run_id]
    assert catalog.get_run(run.run_id).status == "RUNNING"
    catalog.close()


@pytest.mark.parametrize(
    ("field", "info"),
    [
        ("writer.writer_key", WriterInfo("")),
        ("writer.writer_key", WriterInfo("a b")),
        ("writer.rank", WriterInfo("k", rank=-1)),
        ("writer.host", WriterInfo("k", host="h" * 256)),
    ],
)
def test_bad_writers_are_refused_naming_the_field(field: str, info: WriterInfo) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        check_writer("writer", info)
    assert caught.value.field == field
