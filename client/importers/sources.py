"""Which reader reads a SOURCE argument, and one import from start to report.

``steppe import mlflow|tensorboard SOURCE`` call ``run``; the readers are imported only
for the kind asked for.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steppe import errors
from steppe.importers.records import Source

if TYPE_CHECKING:
    from steppe.tracking import Client

KINDS = ("mlflow", "tensorboard", "wandb", "neptune", "steppe")


def open_source(kind: str, location: str) -> Source:
    """The reader for ``location``: for mlflow a file store folder, a database URI
    (``sqlite:///...``, ``postgresql://...``) or a server URL (``http(s)://``)."""
    if kind == "mlflow":
        if location.startswith(("http://", "https://")):
            from steppe.importers.mlflow_rest import RestSource

            return RestSource(location, os.environ.get("MLFLOW_TRACKING_TOKEN"))
        if "://" in location and not location.startswith("file://"):
            from steppe.importers.mlflow_sql import SqlSource

            return SqlSource(location)
        from steppe.importers.mlflow_files import FileStoreSource

        root = Path(location[len("file://") :] if location.startswith("file://") else location)
        if not root.is_dir():
            raise errors.InvalidParameterValue(
                "SOURCE", location, "is not a folder, a database URI or an http(s):// URL"
            )
        return FileStoreSource(root)
    if kind == "tensorboard":
        from steppe.importers.tensorboard import TensorBoardSource

        root = Path(location)
        if not root.exists():
            raise errors.InvalidParameterValue("LOGDIR", location, "does not exist")
        return TensorBoardSource(root)
    if kind == "wandb":
        from steppe.importers.wandb_runs import WandbSource

        root = Path(location)
        if not root.exists():
            raise errors.InvalidParameterValue("PATH", location, "does not exist")
        return WandbSource(root)
    if kind == "neptune":
        from steppe.importers.neptune import NeptuneSource

        root = Path(location)
        if not root.is_dir():
            raise errors.InvalidParameterValue("PATH", location, "is not a folder")
        return NeptuneSource(root)
    if kind == "steppe":
        from steppe.importers.export import ExportSource

        return ExportSource(Path(location))
    raise errors.InvalidParameterValue("kind", kind, f"must be one of {', '.join(KINDS)}")


def run(
    client: Client,
    source: Source,
    *,
    progress: bool = True,
    artifacts: bool = True,
    batch_points: int | None = None,
) -> dict[str, Any]:
    """Import ``source`` into the server ``client`` talks to; the fidelity report.

    Example::

        report = run(steppe.Client("http://127.0.0.1:5000"), open_source("mlflow", "mlruns"))
    """
    from steppe.importers import fidelity
    from steppe.importers.target import BATCH_POINTS, Importer

    started = time.monotonic()
    importer = Importer(
        client,
        source,
        progress=progress,
        artifacts=artifacts,
        batch_points=batch_points or BATCH_POINTS,
    )
    outcome = importer.run()
    elapsed = time.monotonic() - started
    census = importer.census
    unread: set[str] = set()
    observed = getattr(source, "observed", None)
    if observed is not None:  # a server's counts are the points it sent
        census = observed()
        unread = set(outcome.skipped_runs)
    return fidelity.build(
        client,
        f"{source.kind}:{source.location}",
        importer.runs,
        census,
        outcome,
        importer.models,
        elapsed,
        unread,
    )
