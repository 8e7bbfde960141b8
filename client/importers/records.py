"""What every reader yields, whatever the tracker it reads: experiments, runs, pieces of a
run's metric points, registered models. Plain data; no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: Tags steppe adds to what it imports (provenance and the completion marker); the
#: fidelity report leaves them out of the comparison with the source.
IMPORT_TAG_PREFIX = "steppe.import."
SOURCE_TAG = "steppe.import.source"
DONE_TAG = "steppe.import.points"


@dataclass
class ExperimentRecord:
    source_id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    lifecycle_stage: str = "active"


@dataclass
class RunRecord:
    run_id: str
    experiment_id: str  # the source's experiment id (mapped onto steppe's by name)
    run_name: str = ""
    status: str = "FINISHED"
    start_time: int = 0
    end_time: int | None = None
    lifecycle_stage: str = "active"
    user_id: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: The run's artifacts as a local folder, when the source has one.
    artifact_dir: Path | None = None
    #: Or a function that downloads them into the given folder (a server source).
    fetch_artifacts: Callable[[Path], None] | None = None
    #: The source's artifact root of the run (to map registry sources onto runs:/ URIs).
    artifact_uri: str = ""


@dataclass
class Piece:
    """Some of one run's points, in the source's deterministic order (parallel lists)."""

    run_id: str
    keys: list[str]
    steps: list[int]
    timestamps_ms: list[int]
    values: list[float]


@dataclass
class VersionRecord:
    version: int
    source: str
    run_id: str = ""
    description: str = ""
    stage: str = "None"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RegisteredModelRecord:
    name: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    versions: list[VersionRecord] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)  # alias -> source version


class Source(Protocol):
    """A tracker's store, read in bulk. ``points`` yields every run's pieces run after run
    (never interleaved), each run's in an order that is the same on every read."""

    #: Names the kind of source in stream ids and reports ("mlflow", "tensorboard").
    kind: str
    #: What was read, for the report (a path or URL, no credentials).
    location: str

    def experiments(self) -> list[ExperimentRecord]: ...

    def runs(self) -> list[RunRecord]: ...

    def census(self) -> dict[tuple[str, str], int]:
        """Points per (run id, key) in the source: the progress bar's total and the
        report's reference, counted apart from ``points``."""
        ...

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        """The points of these runs."""
        ...

    def registered_models(self) -> list[RegisteredModelRecord]: ...

    def problems(self) -> list[str]:
        """What the reader found wrong in the source (corrupt records, unreadable files)."""
        ...
