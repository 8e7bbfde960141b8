"""log_model + load_model of a large scikit-learn model (100 MiB by default): steppe's client
into a steppe server, against MLflow's client into MLflow's own server (sqlite backend,
artifacts proxied to a local folder), both started here on 127.0.0.1, same model, same format
(skops), each client's defaults. Also MLflow's client into steppe's server.

    python benchmarks/models.py [--size-mib 100] [--repeat 3] [--smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import MlflowServer, Server, table


def _model(size_mib: int) -> tuple[Any, Any]:
    """A KNeighborsClassifier keeps its training data: ``size_mib`` of float64."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    columns = 128
    rows = max(size_mib * (1 << 20) // (8 * columns), 10)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, columns))
    y = (X[:, 0] > 0).astype(int)
    return KNeighborsClassifier(n_neighbors=3).fit(X, y), X[:5]


def _time(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _steppe(url: str, model: Any, probe: Any, folder: Path) -> tuple[float, float, Any]:
    import steppe
    import steppe.sklearn

    steppe.set_tracking_uri(url)
    with steppe.start_run():
        log_s, info = _time(lambda: steppe.sklearn.log_model(model, name="model"))
    target = Path(tempfile.mkdtemp(dir=folder))
    load_s, loaded = _time(lambda: steppe.sklearn.load_model(info.model_uri, dst_path=target))
    steppe.set_tracking_uri(None)
    return log_s, load_s, loaded.predict(probe)


def _mlflow(url: str, model: Any, probe: Any, folder: Path) -> tuple[float, float, Any]:
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(url)
    with mlflow.start_run():
        log_s, info = _time(lambda: mlflow.sklearn.log_model(model, name="model"))
    target = Path(tempfile.mkdtemp(dir=folder))
    load_s, loaded = _time(lambda: mlflow.sklearn.load_model(info.model_uri, dst_path=str(target)))
    return log_s, load_s, loaded.predict(probe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a 2 MiB model, once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.size_mib, args.repeat = 2, 1
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    model, probe = _model(args.size_mib)
    expected = model.predict(probe)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steppe-bench-models-") as tmp:
        root = Path(tmp)
        steppe_server = Server.start(root / "steppe-data")
        mlflow_server = MlflowServer.start(root / "mlflow")
        try:
            runs = {
                "steppe -> steppe": lambda: _steppe(steppe_server.http_url, model, probe, root),
                "mlflow -> mlflow": lambda: _mlflow(mlflow_server.http_url, model, probe, root),
                "mlflow -> steppe": lambda: _mlflow(steppe_server.http_url, model, probe, root),
            }
            # One unmeasured round with a tiny model: imports and first connections.
            small, small_probe = _model(1)
            _steppe(steppe_server.http_url, small, small_probe, root)
            _mlflow(mlflow_server.http_url, small, small_probe, root)
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            for _ in range(args.repeat):  # interleaved, so drift hits every side alike
                for name, run in runs.items():
                    log_s, load_s, predicted = run()
                    assert (predicted == expected).all(), f"{name}: predictions differ"
                    timings[name].append((log_s, load_s))
        finally:
            steppe_server.stop()
            mlflow_server.stop()
    base_log = statistics.median(t[0] for t in timings["mlflow -> mlflow"])
    base_load = statistics.median(t[1] for t in timings["mlflow -> mlflow"])
    for name, samples in timings.items():
        log_s = statistics.median(t[0] for t in samples)
        load_s = statistics.median(t[1] for t in samples)
        rows.append(
            {
                "client -> server": name,
                "model_mib": args.size_mib,
                "log_s": round(log_s, 3),
                "load_s": round(load_s, 3),
                "log_vs_mlflow": round(base_log / log_s, 2),
                "load_vs_mlflow": round(base_load / load_s, 2),
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"median of {args.repeat}; *_vs_mlflow = MLflow's time / this time (>1: faster)")
        print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
