"""`steppe import tensorboard`: event files written by tensorboardX (simple_value and
tensor-encoded scalars, hparams, images and histograms beside them) arrive as runs with
every scalar point; corrupt records are found by their CRCs and reported; re-runs send
nothing."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from pathlib import Path

import pytest

import steppe
from steppe.importers import sources, tfevents, tfrecord
from steppe.importers.tensorboard import TensorBoardSource, run_id_for
from tests.conftest import ServerProcess
from tests.importing import steppe_import

tensorboardX = pytest.importorskip("tensorboardX")

T0 = 1_700_000_000.0


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _tensor_scalar(tag: str, value: float, first: bool) -> object:
    """A TensorBoard 2 style scalar: a one-element DT_DOUBLE tensor (its bytes in
    tensor_content), the scalars plugin named only with a tag's first value, as TF does."""
    from tensorboardX.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_DOUBLE,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        tensor_content=struct.pack("<d", value),
    )
    item = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if first:
        item.metadata.plugin_data.plugin_name = "scalars"
    return summary_pb2.Summary(value=[item])


def _write_logs(root: Path) -> dict[str, dict[str, list[tuple[int, int, float]]]]:
    """Two runs and tensorboardX's hparams child run; what each scalar key should hold."""
    import numpy as np

    expected: dict[str, dict[str, list[tuple[int, int, float]]]] = {}
    with tensorboardX.SummaryWriter(str(root / "run_a")) as w:
        for step in range(400):
            wall = T0 + step * 0.25
            w.add_scalar("train/loss", 1.0 / (step + 1), step, walltime=wall)
            w.file_writer.add_summary(_tensor_scalar("eval/acc", step / 400, step == 0), step, wall)
        w.add_histogram("weights", np.arange(10.0), 0, walltime=T0)
        w.add_text("notes", "hello", 0, walltime=T0)
        w.add_scalar("train/loss", float("nan"), 400, walltime=T0 + 100)
        w.add_hparams({"lr": 0.01, "opt": "adam", "layers": 4, "bn": True}, {"hp/acc": 0.875})
    expected["run_a"] = {
        "train/loss": [(s, round((T0 + s * 0.25) * 1000), f32(1.0 / (s + 1))) for s in range(400)]
        + [(400, round((T0 + 100) * 1000), float("nan"))],
        "eval/acc": [(s, round((T0 + s * 0.25) * 1000), s / 400) for s in range(400)],
    }
    with tensorboardX.SummaryWriter(str(root / "nested" / "run_b")) as w:
        for step in range(0, 1000, 10):
            w.add_scalar("acc(top1)", step / 1000, step, walltime=T0 + step)  # cleaned by tbX
    expected["nested/run_b"] = {
        "acc_top1_": [(s, round((T0 + s) * 1000), f32(s / 1000)) for s in range(0, 1000, 10)]
    }
    return expected


def _history(client: steppe.Client, run_id: str, key: str) -> list[tuple[int, int, str]]:
    return sorted(
        (m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, key)
    )


def test_tensorboard_log_dir_round_trip(steppe_server: ServerProcess, tmp_path: Path) -> None:
    root = tmp_path / f"tb-{uuid.uuid4().hex[:8]}"
    before_ms = time.time_ns() // 1_000_000
    expected = _write_logs(root)
    after_ms = time.time_ns() // 1_000_000
    report_file = tmp_path / "report.json"
    done = steppe_import(
        "tensorboard", str(root), "--report", str(report_file), uri=steppe_server.http_url
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["ok"], report["differences"]
    assert report["runs"]["source"] == report["runs"]["in_steppe"] == 3  # + hparams child
    client = steppe.Client(steppe_server.http_url)
    root = root.resolve()
    for rel, keys in expected.items():
        run_id = run_id_for(root, rel)
        run = client.get_run(run_id)
        assert run.info.run_name == rel
        assert client.get_experiment(run.info.experiment_id).name == root.name
        for key, points in keys.items():
            want = sorted((s, t, repr(v)) for s, t, v in points)
            assert _history(client, run_id, key) == want, (rel, key)
        # the run starts when its writer opened the file (its first event's wall time)
        assert before_ms - 1 <= run.info.start_time <= after_ms + 1
        last = max(t for pts in keys.values() for _, t, _ in pts)
        assert run.info.end_time == max(run.info.start_time, last)  # the last wall time
    hp_runs = [
        r
        for r in client.search_runs(None)
        if r.data.params.get("opt") == "adam"
        and r.data.tags.get("tensorboard.logdir", "").startswith("run_a/")
    ]
    assert len(hp_runs) == 1
    assert hp_runs[0].data.params == {"lr": "0.01", "opt": "adam", "layers": "4", "bn": "True"}
    assert [m.value for m in client.get_metric_history(hp_runs[0].info.run_id, "hp/acc")] == [0.875]
    notes = "\n".join(report["differences"])
    assert "non-scalar summaries" in notes  # the histogram and the text

    again = steppe_import(
        "tensorboard", str(root), "--report", str(report_file), uri=steppe_server.http_url
    )
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(report_file.read_text())
    assert second["runs"]["complete_before"] == 3 and second["points"]["sent_now"] == 0
    assert second["points"]["in_steppe"] == report["points"]["in_steppe"] == 400 + 401 + 100 + 1


def test_corrupt_records_are_found_and_reported(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    """A flipped byte in one record's data: that record is skipped and named; a cut-off
    last record: named; every intact record is imported (written by our own framing, so
    the tag can break steppe's key rule too: it is renamed, and the rename listed)."""
    root = tmp_path / f"bad-{uuid.uuid4().hex[:8]}" / "run"
    root.mkdir(parents=True)
    frames = [
        tfrecord.frame(tfevents.encode_scalar_event(T0 + i, i, "x(a)", i * 1.5)) for i in range(50)
    ]
    data = bytearray(b"".join(frames))
    at = sum(len(f) for f in frames[:10]) + 14  # inside record 10's data
    data[at] ^= 0xFF
    data += frames[0][:20]  # a record cut off by a crash
    (root / "events.out.tfevents.1.host").write_bytes(bytes(data))
    source = TensorBoardSource(root.parent)
    report = sources.run(steppe.Client(steppe_server.http_url), source, progress=False)
    notes = "\n".join(report["differences"])
    assert f"corrupt record at byte {sum(len(f) for f in frames[:10])}: data CRC" in notes
    assert "file ends inside a record" in notes
    assert report["points"]["in_steppe"] == 49
    assert "tag 'x(a)' imported as metric key 'x_a_'" in notes  # steppe's key rule
    history = steppe.Client(steppe_server.http_url).get_metric_history(
        run_id_for(root.parent.resolve(), "run"), "x_a_"
    )
    assert sorted(m.step for m in history) == [i for i in range(50) if i != 10]


def test_framing_matches_the_crc32c_reference() -> None:
    # RFC 3720's check value, and the pure-Python fallback agrees with the C package
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    assert tfrecord._crc32c_python(b"123456789") == 0xE3069283
    blob = bytes(range(256)) * 9
    assert tfrecord._crc32c_python(blob) == tfrecord.crc32c(blob)
    framed = tfrecord.frame(b"payload")
    assert list(tfrecord.records(io.BytesIO(framed))) == [b"payload"]
    many = [bytes([i]) * (i * 7) for i in range(40)]
    blob = b"".join(tfrecord.frame(m) for m in many)
    for size in (1, 5, 12, 13, 100, 1 << 20):  # records cut by the read buffer anywhere
        assert list(tfrecord.records(io.BytesIO(blob), buffer_bytes=size)) == many, size
    bad = bytearray(framed)
    bad[3] ^= 1  # the length itself
    (only,) = tfrecord.records(io.BytesIO(bytes(bad)))
    assert isinstance(only, tfrecord.Corrupt) and "length CRC" in only.reason
