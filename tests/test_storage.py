"""The storage seam (steppe.ingest.storage) on the local disk and on a real S3-compatible
server (moto's server mode on 127.0.0.1): streamed round trips, listing and deleting, keys
that try to leave the root, DuckDB reading Parquet through the same filesystem, the artifact
store over it, and ``steppe server --storage s3://...`` storing an uploaded artifact in the
bucket."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steppe.ingest.storage import CHUNK_BYTES, StorageError, open_storage, s3_filesystem
from steppe.query.artifacts import ArtifactStore
from tests.conftest import S3Server, clean_env, start_server


def test_default_is_the_data_dir_itself(tmp_path: Path) -> None:
    storage = open_storage(None, tmp_path / "data")
    assert storage.is_local
    assert storage.root == str((tmp_path / "data").resolve())
    assert storage.key("metrics/part-1.parquet") == f"{storage.root}/metrics/part-1.parquet"


def test_streamed_round_trip_list_and_delete(storage_uri: str | None, tmp_path: Path) -> None:
    storage = open_storage(storage_uri, tmp_path / "data")
    source = tmp_path / "big.bin"
    blob = os.urandom(CHUNK_BYTES) * 3 + b"tail"
    source.write_bytes(blob)
    assert storage.put_file(source, "artifacts/0/big.bin") == len(blob)
    chunks = list(storage.read_chunks("artifacts/0/big.bin"))
    assert max(len(c) for c in chunks) <= CHUNK_BYTES
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(blob).digest()
    assert storage.write_stream("artifacts/0/small.txt", iter([b"a", b"b"])) == 2
    assert storage.list("artifacts/0") == [("big.bin", len(blob)), ("small.txt", 2)]
    assert storage.list("artifacts/missing") == []
    storage.delete("artifacts/0/big.bin")
    storage.delete("artifacts/0/big.bin")  # already gone: not an error
    assert not storage.exists("artifacts/0/big.bin")
    assert storage.exists("artifacts/0/small.txt")


@pytest.mark.parametrize(
    "key", ["../outside", "a/../../b", "/etc/passwd", "a//b", "a/./b", "a\\b", "a\x00b", ""]
)
def test_keys_cannot_leave_the_root(storage_uri: str | None, tmp_path: Path, key: str) -> None:
    storage = open_storage(storage_uri, tmp_path / "data")
    with pytest.raises(StorageError, match="storage key"):
        storage.key(key)


def test_a_symlink_out_of_a_local_root_is_refused(tmp_path: Path) -> None:
    storage = open_storage(None, tmp_path / "data")
    (tmp_path / "secret").mkdir()
    (tmp_path / "data" / "artifacts").mkdir()
    (tmp_path / "data" / "artifacts" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(StorageError, match="resolves outside"):
        storage.key("artifacts/link/x")


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("gs://bucket/x", "must be s3://"),
        ("s3://Bad_Bucket/x", "lowercase"),
        ("s3://key:secret@bucket/x", "lowercase"),
        ("s3://bucket/a/../b", "prefix"),
        ("s3://bucket/x?versionId=1", "no credentials, query"),
    ],
)
def test_bad_storage_uris_name_the_rule(tmp_path: Path, uri: str, rule: str) -> None:
    with pytest.raises(StorageError, match=rule):
        open_storage(uri, tmp_path)


def test_a_bad_endpoint_is_named() -> None:
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL"):
        s3_filesystem({"AWS_ENDPOINT_URL": "localhost:9000"})


def test_duckdb_reads_parquet_through_the_same_filesystem(
    storage_uri: str | None, tmp_path: Path
) -> None:
    storage = open_storage(storage_uri, tmp_path / "data")
    table = pa.table({"run_id": ["r"] * 1000, "step": list(range(1000))})
    for i in range(2):
        local = tmp_path / f"part-{i}.parquet"
        pq.write_table(table, local)
        storage.put_file(local, f"metrics/part-{i}.parquet")
    con = duckdb.connect()
    storage.register_duckdb(con)
    urls = [storage.url(f"metrics/part-{i}.parquet") for i in range(2)]
    count, total = con.execute(
        "SELECT count(*), sum(step) FROM read_parquet($urls)", {"urls": urls}
    ).fetchone() or (0, 0)
    assert (count, total) == (2000, 2 * sum(range(1000)))
    footer = pq.read_metadata(storage.open_input("metrics/part-1.parquet"))
    assert footer.num_rows == 1000
    # DuckDB's adapter remembers file infos; a file deleted since is still found missing.
    storage.delete("metrics/part-1.parquet")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT count(*) FROM read_parquet($urls)", {"urls": urls}).fetchall()
    assert con.execute("SELECT count(*) FROM read_parquet($url)", {"url": urls[0]}).fetchone() == (
        1000,
    )


def test_artifact_store_over_storage(storage_uri: str | None, tmp_path: Path) -> None:
    storage = open_storage(storage_uri, tmp_path / "data")
    store = ArtifactStore(
        storage.sub("artifacts"), Path(storage.key("artifacts")) if storage.is_local else None
    )
    upload = store.begin_write("0/run/artifacts/model/weights.bin")
    for _ in range(3):
        upload.write(b"x" * CHUNK_BYTES)
    upload.commit()
    names = [e.name for e in store.list("0/run/artifacts/model")]
    assert names == ["weights.bin"]
    assert store.size("0/run/artifacts/model/weights.bin") == 3 * CHUNK_BYTES
    with store.open_read("0/run/artifacts/model/weights.bin") as handle:
        assert len(handle.read(CHUNK_BYTES)) == CHUNK_BYTES


def test_server_with_s3_storage_keeps_artifacts_in_the_bucket(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    server = start_server(tmp_path / "data", "--storage", f"s3://{bucket}/steppe")
    try:
        body = json.dumps({"experiment_id": "0"}).encode()
        request = urllib.request.Request(
            f"{server.http_url}/api/2.0/mlflow/runs/create",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            run_id = json.load(response)["run"]["info"]["run_id"]
        payload = os.urandom(3 * CHUNK_BYTES + 17)
        upload = urllib.request.Request(
            f"{server.http_url}/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts/w.bin",
            data=payload,
            method="PUT",
        )
        with urllib.request.urlopen(upload, timeout=30) as response:
            assert response.status == 200
        key = f"steppe/artifacts/0/{run_id}/artifacts/w.bin"
        stored = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        assert stored == payload
        assert not (tmp_path / "data" / "artifacts" / "0" / run_id).exists()
        download = (
            f"{server.http_url}/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts/w.bin"
        )
        with urllib.request.urlopen(download, timeout=30) as response:
            assert response.read() == payload
    finally:
        assert server.stop() == 0


def test_a_missing_bucket_is_named_at_startup(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    storage = open_storage("s3://no-such-bucket-here/x", tmp_path)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        storage.check()
    open_storage(f"s3://{s3_server.new_bucket()}/x", tmp_path).check()


def test_server_refuses_a_bad_storage_uri_before_serving(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "steppe", "server", "--data-dir", str(tmp_path / "d")),
            *("--http-port", "0", "--grpc-port", "0", "--storage", "gs://bucket/x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 2
    assert "--storage 'gs://bucket/x': must be s3://bucket/prefix" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_uri_is_another_local_folder(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "elsewhere").as_uri(), tmp_path / "data")
    assert storage.is_local
    storage.write_stream("artifacts/a.txt", iter([b"hi"]))
    assert (tmp_path / "elsewhere" / "artifacts" / "a.txt").read_bytes() == b"hi"
    assert not (tmp_path / "data").exists()
