"""Query-side hardening (issue #10) against a real server over raw HTTP: each bad input is a
4xx with MLflow's error body, and the server answers normally afterwards."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from steppe import wire
from steppe.query.search import MAX_FILTER_COMPARISONS
from steppe.v1 import steppe_pb2 as pb
from tests.conftest import ServerProcess

SQL = "/api/steppe/v1/sql"
MLFLOW = "/api/2.0/mlflow"


def _request(
    server: ServerProcess, path: str, body: bytes | None = None, timeout: float = 120
) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.http_url + path,
        data=body,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(server: ServerProcess, path: str, document: object) -> tuple[int, Any]:
    return _request(server, path, json.dumps(document).encode())


def _assert_rejected(status: int, body: Any, *words: str) -> None:
    assert 400 <= status < 500, (status, body)
    assert set(body) == {"error_code", "message"}, body
    for word in words:
        assert word in body["message"], body


def _still_works(server: ServerProcess) -> None:
    status, body = _post(server, SQL, {"query": "SELECT 41 + 1 AS answer"})
    assert status == 200 and body["rows"] == [[42]], body
    status, body = _request(server, "/api/steppe/v1/experiments")
    assert status == 200 and "experiments" in body


# -- user SQL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (
            "WITH a AS (SELECT * FROM pg_settings), pg_settings AS (SELECT 1) SELECT * FROM a",
            ["pg_settings"],
        ),
        ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", ["'b'"]),
        ("SELECT current_setting('temp_directory')", ["current_setting()"]),
        ("SELECT getvariable('x')", ["getvariable()"]),
        ("SELECT main.abs(1)", ["plain name"]),
    ],
)
def test_sql_sandbox_refuses_settings_and_shadowing_ctes(
    steppe_server: ServerProcess, query: str, words: list[str]
) -> None:
    status, body = _post(steppe_server, SQL, {"query": query})
    _assert_rejected(status, body, *words)
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "/" not in json.dumps(body).replace("/api", "")  # no absolute paths leak
    _still_works(steppe_server)


def test_ctes_still_work_in_duckdbs_scope(steppe_server: ServerProcess) -> None:
    query = (
        "WITH b AS (SELECT 2 AS n), a AS (SELECT n * 3 AS n FROM b) "
        "SELECT n FROM a UNION ALL SELECT * FROM (WITH RECURSIVE t(n) AS "
        "(SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 2) SELECT n FROM t) ORDER BY 1"
    )
    status, body = _post(steppe_server, SQL, {"query": query})
    assert status == 200, body
    assert body["rows"] == [[1], [2], [6]]


def test_sql_results_past_the_byte_cap_are_refused(steppe_server: ServerProcess) -> None:
    # ~80 MB of strings: within max_rows, past the JSON cap (32 MiB) and the Arrow cap
    # for a doubled width would be the same rule.
    query = "SELECT repeat('x', 800) AS s FROM range(100000)"
    status, body = _post(steppe_server, SQL, {"query": query, "max_rows": 100_000})
    _assert_rejected(status, body, "bytes", "result size limit")
    _still_works(steppe_server)


def test_using_sample_and_deep_subqueries_are_answered_not_500(
    steppe_server: ServerProcess,
) -> None:
    status, body = _post(
        steppe_server, SQL, {"query": "SELECT count(*) AS n FROM range(10) USING SAMPLE 100%"}
    )
    assert status == 200 and body["rows"] == [[10]], body
    deep = "SELECT 1 AS x"
    for _ in range(400):
        deep = f"SELECT * FROM ({deep})"
    status, body = _post(steppe_server, SQL, {"query": deep})
    _assert_rejected(status, body, "nests too deeply")
    _still_works(steppe_server)


def test_heavy_sql_does_not_starve_the_ui(steppe_server: ServerProcess) -> None:
    heavy = "SELECT count(*) FROM range(300000000) a WHERE a.range % 7 = hash(a.range) % 5"
    results: list[tuple[int, Any]] = []
    first_done = threading.Event()

    def run() -> None:
        results.append(_post(steppe_server, SQL, {"query": heavy}))
        first_done.set()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    answered = 0
    try:
        # While the heavy queries run, the experiments list keeps answering: many times
        # before the first of them finishes (before the fix, the 4 heavy queries took all
        # 4 query threads, so the list waited for one of them: a handful at most).
        while not first_done.is_set():
            status, body = _request(steppe_server, "/api/steppe/v1/experiments")
            assert status == 200 and "experiments" in body
            if not first_done.is_set():
                answered += 1
    finally:
        for thread in threads:
            thread.join(timeout=120)
    assert answered >= 50, f"the UI's reads waited for SQL: {answered} answered meanwhile"
    for status, body in results:
        assert status in (200, 400, 429), (status, body)
        if status != 200:
            assert body["error_code"] in ("RESOURCE_EXHAUSTED", "INVALID_PARAMETER_VALUE")


# -- MLflow REST ----------------------------------------------------------------------


def test_runs_search_caps_the_comparisons(steppe_server: ServerProcess) -> None:
    many = " and ".join(f"metrics.m{i} > 0" for i in range(MAX_FILTER_COMPARISONS + 1))
    status, body = _post(
        steppe_server, f"{MLFLOW}/runs/search", {"experiment_ids": ["0"], "filter": many}
    )
    _assert_rejected(status, body, str(MAX_FILTER_COMPARISONS), "comparisons")
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    ok = " and ".join(f"metrics.m{i} > 0" for i in range(MAX_FILTER_COMPARISONS))
    status, body = _post(
        steppe_server, f"{MLFLOW}/runs/search", {"experiment_ids": ["0"], "filter": ok}
    )
    assert status == 200, body
    _still_works(steppe_server)


@pytest.mark.parametrize("path", [f"{MLFLOW}/runs/search", "/api/steppe/v1/runs/search", SQL])
def test_json_nested_deep_is_a_400(steppe_server: ServerProcess, path: str) -> None:
    body = b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    status, document = _request(steppe_server, path, body)
    _assert_rejected(status, document, "nested too deeply")
    _still_works(steppe_server)


def test_lone_surrogates_are_a_400(steppe_server: ServerProcess) -> None:
    status, body = _post(steppe_server, f"{MLFLOW}/experiments/create", {"name": "\ud800x"})
    _assert_rejected(status, body, "lone surrogate", "name")
    status, body = _request(
        steppe_server, f"{MLFLOW}/runs/create", b'{"experiment_id": "0", "run_name": "a\\udfff"}'
    )
    _assert_rejected(status, body, "lone surrogate", "run_name")
    _still_works(steppe_server)


# -- names and ids are matched whole ----------------------------------------------------


def test_a_trailing_newline_is_not_a_valid_run_id(steppe_server: ServerProcess) -> None:
    status, info = _request(steppe_server, "/api/steppe/v1/server-info")
    channel = grpc.insecure_channel(f"127.0.0.1:{info['grpc_port']}")
    try:
        stub = wire.IngestStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateRun(pb.CreateRunRequest(run_id="x\n"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "run ids" in (caught.value.details() or "")
    finally:
        channel.close()
    status, body = _request(steppe_server, f"{MLFLOW}/runs/get?run_id=abc%0A")
    _assert_rejected(status, body, "run ids")
    status, body = _post(steppe_server, f"{MLFLOW}/experiments/create", {"name": "newline-tags"})
    assert status == 200, body
    status, run = _post(
        steppe_server, f"{MLFLOW}/runs/create", {"experiment_id": body["experiment_id"]}
    )
    run_id = run["run"]["info"]["run_id"]
    status, body = _post(
        steppe_server,
        f"{MLFLOW}/runs/log-parameter",
        {"run_id": run_id, "key": "k\n", "value": "v"},
    )
    _assert_rejected(status, body, "names may only contain")
    _still_works(steppe_server)


# -- artifacts ------------------------------------------------------------------------

PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def _put(server: ServerProcess, path: str, data: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(server.http_url + PROXY + "/" + path, data=data, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("hardening/" + "n" * 250, ["at most 200 bytes"]),
        ("hardening/" + "/".join(["d" * 150] * 40) + "/f", ["at most 1024 bytes"]),
    ],
)
def test_artifact_names_the_os_cannot_hold_are_a_400(
    steppe_server: ServerProcess, path: str, words: list[str]
) -> None:
    status, body = _put(steppe_server, path, b"data")
    _assert_rejected(status, body, *words)
    assert _put(steppe_server, "hardening/ok.txt", b"ok")[0] == 200
    _still_works(steppe_server)


def test_a_file_where_a_folder_is_needed_is_a_400(steppe_server: ServerProcess) -> None:
    assert _put(steppe_server, "hardening-file/a", b"a file")[0] == 200
    status, body = _put(steppe_server, "hardening-file/a/b/c.txt", b"under a file")
    _assert_rejected(status, body, "is a file, not a folder")
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert _put(steppe_server, "hardening-file/d/c.txt", b"ok")[0] == 200
    _still_works(steppe_server)
