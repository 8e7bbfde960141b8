"""Run artifacts: the store's path rules on a real folder, and a real steppe server driven by the
real mlflow client, steppe's client and raw HTTP (round trips byte for byte, an 8 MiB binary,
traversal and symlink escapes, safe content types); the server-side round trips run with the
artifacts in the data dir and on an S3-compatible server (`--storage s3://...`)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

import steppe
from steppe.errors import InvalidParameterValue, ResourceDoesNotExist
from steppe.query.artifacts import ArtifactStore, clean_path
from tests.conftest import ServerProcess

EIGHT_MIB = 8 << 20


# -- the store on a real folder ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("a.txt", "a.txt"),
        ("dir/sub/a.txt", "dir/sub/a.txt"),
        ("./a//b/", "a/b"),
        ("a b:c", "a b:c"),
    ],
)
def test_clean_path_normalises_relative_paths(path: str, clean: str) -> None:
    assert clean_path(path) == clean


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "C:/x",
        "a\\..\\x",
        "%2e%2e/x",
        "%252e%252e/x",
        "a#b",
        "a\x00b",
        "~/x",
        "",
        ".",
    ],
)
def test_clean_path_refuses_escapes(path: str) -> None:
    with pytest.raises(InvalidParameterValue):
        clean_path(path)


def _write(store: ArtifactStore, path: str, data: bytes) -> None:
    upload = store.begin_write(path)
    for start in range(0, len(data), 1000):
        upload.write(data[start : start + 1000])
    upload.commit()


def test_store_writes_lists_reads_and_deletes(tmp_path: Path) -> None:
    store = ArtifactStore.local(tmp_path / "artifacts")
    _write(store, "run/a.txt", b"hello")
    _write(store, "run/deep/b.bin", bytes(range(256)) * 10)
    assert [(e.name, e.is_dir, e.size) for e in store.list("run")] == [
        ("a.txt", False, 5),
        ("deep", True, None),
    ]
    assert store.list("run/a.txt") == [] and store.list("nothing") == []
    with store.open_read("run/deep/b.bin") as source:
        assert source.read() == bytes(range(256)) * 10
    _write(store, "run/a.txt", b"replaced")
    assert store.size("run/a.txt") == 8
    upload = store.begin_write("run/c.txt")
    upload.write(b"partial")
    assert [e.name for e in store.list("run")] == ["a.txt", "deep"]  # uploads in flight hide
    upload.abort()
    assert sorted(p.name for p in (tmp_path / "artifacts" / "run").iterdir()) == ["a.txt", "deep"]
    store.delete("run/deep")
    store.delete("run/never-there")
    assert [e.name for e in store.list("run")] == ["a.txt"]
    with pytest.raises(ResourceDoesNotExist):
        store.size("run/deep/b.bin")


def test_store_refuses_symlinks_out_of_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    store = ArtifactStore.local(tmp_path / "artifacts")
    (tmp_path / "artifacts" / "run").mkdir()
    (tmp_path / "artifacts" / "run" / "escape").symlink_to(outside)
    for action in (
        lambda: store.open_read("run/escape/secret.txt"),
        lambda: store.list("run/escape"),
        lambda: store.begin_write("run/escape/new.txt"),
        lambda: store.delete("run/escape"),
    ):
        with pytest.raises(InvalidParameterValue, match="outside"):
            action()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


# -- through a real server ---------------------------------------------------------------


@pytest.fixture
def mlflow_uri(storage_server: ServerProcess) -> Iterator[str]:
    mlflow.set_tracking_uri(storage_server.http_url)
    mlflow.set_experiment(f"artifacts-{uuid.uuid4().hex[:8]}")
    yield storage_server.http_url
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_mlflow_client_artifacts_round_trip(mlflow_uri: str, tmp_path: Path) -> None:
    blob = os.urandom(EIGHT_MIB)
    (tmp_path / "big.bin").write_bytes(blob)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.json").write_text('{"b": 2}')
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "big.bin"))
        mlflow.log_artifacts(str(folder), artifact_path="folder")
        mlflow.log_text("héllo wörld\n", "notes/hello.txt")
        mlflow.log_dict({"lr": 0.1, "layers": [1, 2]}, "config.json")
        mlflow.log_dict({"lr": 0.1}, "config.yaml")
    run_id = run.info.run_id
    assert run.info.artifact_uri == f"mlflow-artifacts:/{run.info.experiment_id}/{run_id}/artifacts"

    client = mlflow.MlflowClient()
    listed = {(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id)}
    assert listed == {
        ("big.bin", False, EIGHT_MIB),
        ("config.json", False, len(json.dumps({"lr": 0.1, "layers": [1, 2]}, indent=2))),
        ("config.yaml", False, len("lr: 0.1\n")),
        ("folder", True, None),
        ("notes", True, None),
    }
    assert [f.path for f in client.list_artifacts(run_id, "folder")] == [
        "folder/a.txt",
        "folder/sub",
    ]
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt") == "héllo wörld\n"
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json") == {
        "lr": 0.1,
        "layers": [1, 2],
    }
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml") == "lr: 0.1\n"

    got = Path(
        mlflow.artifacts.download_artifacts(
            f"runs:/{run_id}/big.bin", dst_path=str(tmp_path / "d1")
        )
    )
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(blob).digest()
    whole = Path(client.download_artifacts(run_id, "folder", str(tmp_path / "d2")))
    assert _tree(whole) == {"a.txt": b"alpha", "sub/b.json": b'{"b": 2}'}

    # The same files through steppe's client: one store behind both doors.
    mine = Path(steppe.Client(mlflow_uri).download_artifacts(run_id, "", tmp_path / "d3"))
    assert (mine / "big.bin").read_bytes() == blob
    assert (mine / "notes" / "hello.txt").read_text() == "héllo wörld\n"


def test_mlflow_log_figure(mlflow_uri: str, tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [2, 1, 3])
    with mlflow.start_run() as run:
        mlflow.log_figure(fig, "plots/curve.png")
    steppe.log_figure(fig, "plots/steppe.png", run_id=run.info.run_id)
    plt.close(fig)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"runs:/{run.info.run_id}/plots", dst_path=str(tmp_path)
        )
    )
    for name in ("curve.png", "steppe.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steppe_client_artifacts_and_mlflow_reads_them(mlflow_uri: str, tmp_path: Path) -> None:
    blob = os.urandom(EIGHT_MIB + 123)
    (tmp_path / "weights.bin").write_bytes(blob)
    tree = tmp_path / "tree"
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "x" / "y" / "deep.txt").write_text("deep")
    (tree / "top.csv").write_text("a,b\n1,2\n")
    steppe.set_tracking_uri(mlflow_uri)
    try:
        with steppe.start_run() as run:
            steppe.log_artifact(tmp_path / "weights.bin", artifact_path="ckpt")
            steppe.log_artifacts(tree, artifact_path="tree")
            steppe.log_text("some text", "notes.txt")
            steppe.log_dict({"k": [1, 2]}, "cfg/params.json")
            assert [f.path for f in steppe.list_artifacts()] == [
                "cfg",
                "ckpt",
                "notes.txt",
                "tree",
            ]
        run_id = run.info.run_id
        client = steppe.Client()
        assert client.list_artifacts(run_id, "ckpt") == [
            steppe.FileInfo("ckpt/weights.bin", False, len(blob))
        ]
        local = client.download_artifacts(run_id, "ckpt/weights.bin", tmp_path / "down")
        assert Path(local).read_bytes() == blob
        everything = steppe.download_artifacts(f"runs:/{run_id}", dst_path=tmp_path / "all")
        assert _tree(Path(everything) / "tree") == {
            "top.csv": b"a,b\n1,2\n",
            "x/y/deep.txt": b"deep",
        }
        with pytest.raises(ResourceDoesNotExist):
            client.download_artifacts(run_id, "no/such/file", tmp_path / "none")
    finally:
        steppe.set_tracking_uri(None)

    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes.txt") == "some text"
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/cfg/params.json") == {"k": [1, 2]}
    got = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="ckpt/weights.bin", dst_path=str(tmp_path / "m")
    )
    assert Path(got).read_bytes() == blob


# -- raw HTTP: the proxy, steppe's JSON API and the path rules -----------------------------


def _request(
    base: str, method: str, route: str, data: bytes | None = None, **query: str
) -> tuple[int, dict[str, str], bytes]:
    url = base.rstrip("/") + route
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def test_proxy_upload_list_download_delete(storage_server: ServerProcess) -> None:
    base = storage_server.http_url
    folder = f"raw-{uuid.uuid4().hex}"
    assert _request(base, "PUT", f"{PROXY}/{folder}/a/b.txt", b"bee")[0] == 200
    assert _request(base, "PUT", f"{PROXY}/{folder}/c.txt", b"see")[0] == 200
    status, _, body = _request(base, "GET", PROXY, path=folder)
    assert status == 200
    assert json.loads(body) == {
        "files": [{"path": "a", "is_dir": True}, {"path": "c.txt", "is_dir": False, "file_size": 3}]
    }
    status, headers, body = _request(base, "GET", f"{PROXY}/{folder}/a/b.txt")
    assert (status, body) == (200, b"bee")
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert _request(base, "DELETE", f"{PROXY}/{folder}/a")[0] == 200
    assert json.loads(_request(base, "GET", PROXY, path=folder)[2])["files"] == [
        {"path": "c.txt", "is_dir": False, "file_size": 3}
    ]
    status, _, body = _request(base, "GET", f"{PROXY}/{folder}/a/b.txt")
    assert (status, json.loads(body)["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


def test_uploaded_html_is_never_served_as_html(steppe_server: ServerProcess) -> None:
    base = steppe_server.http_url
    path = f"{PROXY}/html-{uuid.uuid4().hex}/page.html"
    _request(base, "PUT", path, b"<script>alert(1)</script>")
    _, headers, _ = _request(base, "GET", path)
    assert headers["Content-Type"] == "application/octet-stream"
    assert "sandbox" in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "path",
    [
        "..%2f..%2fcatalog.sqlite",
        "%2e%2e/%2e%2e/catalog.sqlite",
        "a/%252e%252e/%252e%252e/x",
        "a%5c..%5cx",
    ],
)
def test_proxy_refuses_traversal(storage_server: ServerProcess, path: str) -> None:
    for method, data in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
        status, _, body = _request(storage_server.http_url, method, f"{PROXY}/{path}", data)
        assert (status, json.loads(body)["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), method
    assert (storage_server.data_dir / "catalog.sqlite").exists()


def test_steppe_api_lists_and_serves_a_runs_artifacts(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    base = steppe_server.http_url
    client = steppe.Client(base)
    run = client.create_run("0")
    run_id = run.info.run_id
    client.log_text(run_id, "text", "dir/t.txt")
    status, _, body = _request(base, "GET", "/api/steppe/v1/artifacts", run_id=run_id)
    assert status == 200
    assert json.loads(body) == {
        "run_id": run_id,
        "root_uri": run.info.artifact_uri,
        "path": "",
        "files": [{"path": "dir", "is_dir": True}],
    }
    listed = json.loads(
        _request(base, "GET", "/api/steppe/v1/artifacts", run_id=run_id, path="dir")[2]
    )
    assert listed["files"] == [{"path": "dir/t.txt", "is_dir": False, "file_size": 4}]
    assert (
        _request(base, "GET", "/api/steppe/v1/artifacts/raw", run_id=run_id, path="dir/t.txt")[2]
        == b"text"
    )
    tracking = json.loads(
        _request(base, "GET", "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="dir")[2]
    )
    assert tracking == {"root_uri": run.info.artifact_uri, "files": listed["files"]}

    # A symlink planted in the run's folder must not lead out of the artifact store.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    run_dir = steppe_server.data_dir / "artifacts" / "0" / run_id / "artifacts"
    (run_dir / "escape").symlink_to(outside)
    for query in ({"path": "escape/secret.txt"},):
        status, _, body = _request(
            base, "GET", "/api/steppe/v1/artifacts/raw", run_id=run_id, **query
        )
        assert (status, json.loads(body)["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    status, _, _ = _request(base, "GET", f"{PROXY}/0/{run_id}/artifacts/escape/secret.txt")
    assert status == 400
    status, _, _ = _request(
        base, "PUT", "/api/steppe/v1/artifacts/raw", b"x", run_id=run_id, path="escape/new.txt"
    )
    assert status == 400 and sorted(p.name for p in outside.iterdir()) == ["secret.txt"]

    for bad in ({"run_id": run_id, "path": "../../x"}, {"run_id": run_id, "path": "/etc/passwd"}):
        status, _, body = _request(base, "GET", "/api/steppe/v1/artifacts/raw", **bad)
        assert (status, json.loads(body)["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    status, _, body = _request(base, "GET", "/api/steppe/v1/artifacts", run_id=uuid.uuid4().hex)
    assert (status, json.loads(body)["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
