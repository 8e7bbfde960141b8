"""The tiers' write-side cost in process (issue 15): for one flush-sized file of noisy
curves, the time to compute and write its tier file beside the time to sort and write the
metrics file itself (the baseline, measured in the same run), and both files' sizes.

    python benchmarks/tiers.py                   # 1M points of 10 series, 5 repeats
    python benchmarks/tiers.py --smoke           # seconds; CI checks it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from steppe.ingest.layout import tiers_path
from steppe.ingest.metrics_files import sort_metrics, write_metrics_file
from steppe.ingest.tiers import compute_tiers, write_tiers


def points(total: int, series: int) -> pa.Table:
    rng = np.random.default_rng(0)
    steps = total // series
    step = np.tile(np.arange(steps, dtype=np.int64), series)
    value = 2.0 / (1.0 + step * 1e-4) + rng.normal(0.0, 0.05, steps * series)
    return pa.table(
        {
            "run_id": ["run"] * (steps * series),
            "key": np.repeat([f"loss/{i}" for i in range(series)], steps),
            "step": step,
            "timestamp": 1_700_000_000_000 + np.arange(steps * series, dtype=np.int64) * 3,
            "value": value,
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    total, repeats = (50_000, 1) if args.smoke else (args.points, args.repeats)
    raw = points(total, args.series)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics" / "part-000000000001-000000000001.parquet"
        path.parent.mkdir()
        base, compute, write = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sorted_points = sort_metrics(raw)
            write_metrics_file(sorted_points, path)
            t1 = time.perf_counter()
            compute_tiers(sorted_points)
            t2 = time.perf_counter()
            write_tiers(sorted_points, path)  # computes again, then writes
            t3 = time.perf_counter()
            base.append(t1 - t0)
            compute.append(t2 - t1)
            write.append((t3 - t2) - (t2 - t1))
        size, tier_size = path.stat().st_size, tiers_path(path).stat().st_size
    med = {name: statistics.median(v) * 1e3 for name, v in
           (("base", base), ("compute", compute), ("write", write))}  # fmt: skip
    print(f"{total:,} points in {args.series} series, median of {repeats}")
    print(f"  sort + write metrics file (baseline): {med['base']:8.1f} ms  {size / 1e6:.2f} MB")
    print(f"  compute tiers:                        {med['compute']:8.1f} ms")
    print(f"  write tier file:                      {max(med['write'], 0):8.1f} ms  "
          f"{tier_size / 1e6:.2f} MB")  # fmt: skip
    tiers_ms = med["compute"] + max(med["write"], 0)
    print(f"  tiers / baseline: time x {tiers_ms / med['base']:.2f}, size x {tier_size / size:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
