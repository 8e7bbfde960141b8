"""Reads a TensorBoard log dir: every folder holding ``*tfevents*`` files is one run, its
scalars every point (TensorBoard's own loader keeps a sample by default), its hparams the
run's params, wall time the timestamps. The records' framing and CRCs are checked here
(``tfrecord``); a corrupt record is reported and skipped, never guessed at.

Why our own ``.proto`` subset (``proto/steppe/v1/tensorboard.proto``, generated code
committed) rather than a dependency: the protos ship only inside ``tensorboard`` (with
its web server and ~10 dependencies) or ``tensorflow``; tensorboardX carries copies but is a
writer library with numpy. Eight small messages of public, frozen field numbers cost less
than any of them, and the protobuf runtime is already steppe's.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from steppe.importers import tfrecord
from steppe.importers.records import (
    ExperimentRecord,
    Piece,
    RegisteredModelRecord,
    RunRecord,
)
from steppe.importers.tfevents import Decoder

_PIECE_POINTS = 65536
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and "tfevents" in p.name)


def run_id_for(root: Path, relative: str) -> str:
    """A stable id per event folder of this log dir (the same on every import of it)."""
    return hashlib.sha256(f"tensorboard\0{root}\0{relative}".encode()).hexdigest()[:32]


def _count(counts: dict[tuple[str, str], int], run_id: str, keys: list[str]) -> None:
    for key, n in Counter(keys).items():
        counts[(run_id, key)] = counts.get((run_id, key), 0) + n


class TensorBoardSource:
    """A TensorBoard log dir.

    Example::

        source = TensorBoardSource(Path("runs"))
    """

    kind = "tensorboard"

    def __init__(self, root: Path, experiment_name: str | None = None) -> None:
        self.root = root.resolve()
        self.location = str(self.root)
        self.experiment_name = experiment_name
        self._problems: list[str] = []
        self._runs: dict[str, RunRecord] = {}
        self._folders: dict[str, Path] = {}
        self._observed: dict[tuple[str, str], int] = {}
        self._renamed: dict[str, str] = {}

    def experiments(self) -> list[ExperimentRecord]:
        return [ExperimentRecord("tensorboard", self.experiment_name or self.root.name)]

    def runs(self) -> list[RunRecord]:
        if self._runs:
            return list(self._runs.values())
        folders = [self.root] if self.root.is_dir() else []
        folders += sorted(p for p in self.root.rglob("*") if p.is_dir())
        for folder in folders:
            files = event_files(folder)
            if not files:
                continue
            relative = folder.relative_to(self.root).as_posix()
            run_id = run_id_for(self.root, relative)
            self._folders[run_id] = folder
            self._runs[run_id] = RunRecord(
                run_id=run_id,
                experiment_id="tensorboard",
                run_name=self.root.name if relative == "." else relative,
                status="FINISHED",
                start_time=self._first_wall_ms(files[0]),
                tags={"tensorboard.logdir": relative},
            )
        return list(self._runs.values())

    def _first_wall_ms(self, path: Path) -> int:
        with path.open("rb") as f:
            for record in tfrecord.records(f):
                if isinstance(record, bytes):
                    return max(0, round(Decoder().decode(record).wall_time * 1000))
                break
        return max(0, round(path.stat().st_mtime * 1000))

    def census(self) -> dict[tuple[str, str], int]:
        """Event files hold no counts: the points are counted as they are read."""
        return {}

    def observed(self) -> dict[tuple[str, str], int]:
        return dict(self._observed)

    def _key(self, tag: str) -> str:
        key = self._renamed.get(tag)
        if key is None:
            key = _BAD_KEY_CHARS.sub("_", tag).strip("/") or "_"
            key = key.replace("..", "__")
            self._renamed[tag] = key
            if key != tag:
                self._problems.append(f"tag {tag!r} imported as metric key {key!r}")
        return key

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        self.runs()
        for run_id in sorted(run_ids & self._runs.keys()):
            yield from self._read_run(run_id)

    def _read_run(self, run_id: str) -> Iterator[Piece]:
        run = self._runs[run_id]
        decoder = Decoder()
        keys: list[str] = []
        steps: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        skipped = 0
        last_ms = run.start_time
        counts = self._observed
        renamed = self._renamed
        for path in event_files(self._folders[run_id]):
            with path.open("rb") as f:
                for record in tfrecord.records(f):
                    if isinstance(record, tfrecord.Corrupt):
                        self._problems.append(
                            f"{path}: corrupt record at byte {record.offset}: {record.reason}"
                        )
                        continue
                    try:
                        event = decoder.decode(record)
                    except Exception as exc:  # a record that frames right but will not parse
                        self._problems.append(f"{path}: undecodable event ({exc})")
                        continue
                    skipped += event.skipped
                    if event.hparams:
                        run.params.update(event.hparams)
                    if not event.scalars:
                        continue
                    wall = event.wall_time
                    ms = round(wall * 1000) if wall > 0 and math.isfinite(wall) else 0
                    if ms > last_ms:
                        last_ms = ms
                    step = event.step
                    for tag, value in event.scalars:
                        key = renamed.get(tag) or self._key(tag)
                        keys.append(key)
                        steps.append(step)
                        stamps.append(ms)
                        values.append(value)
                    if len(keys) >= _PIECE_POINTS:
                        _count(counts, run_id, keys)
                        yield Piece(run_id, keys, steps, stamps, values)
                        keys, steps, stamps, values = [], [], [], []
        if keys:
            _count(counts, run_id, keys)
            yield Piece(run_id, keys, steps, stamps, values)
        run.end_time = last_ms
        if skipped:
            self._problems.append(
                f"run {run.run_name!r}: {skipped} non-scalar summaries (images, histograms, "
                "text, ...) not imported"
            )

    def registered_models(self) -> list[RegisteredModelRecord]:
        return []

    def problems(self) -> list[str]:
        return list(self._problems)
