"""Web UI benchmark (issue 15): the dashboard in headless Chromium against a real server, each
figure beside the HTTP call behind it asked from Python in the same run (the floor), as a ratio.

    python benchmarks/ui.py            # 10,000 runs; 20 runs x 1M steps; a run of 5,000 keys
    python benchmarks/ui.py --smoke    # 500 runs; 4 runs x 50k steps; a run of 300 keys

Reported (median of --repeats, after one warm-up): the runs table of the big experiment, from
navigation to its first page of rows rendered, and from a click (sort by Started, a param, a
metric; a filter) to the re-sorted rows rendered; the compare page of the long runs, from
navigation to every series drawn, and a zoom from setZoom to the finer data drawn; the run page
of many keys, from navigation to every chart section placed (past 200 keys only the first
opens) and its first chart drawn, a key search, and after opening every section and scrolling
through all of it: live uPlot instances and the JS heap.
Needs Debian's /usr/bin/chromium and the playwright package (the test extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, table
from throughput import curve

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update",
        "--enable-precise-memory-info"]  # fmt: skip

# From a click to the runs table's new rows in the DOM and painted (two frames later).
CLICK_TO_ROWS = """async (selector) => {
  const holder = document.querySelector(".runs-wrap");
  const before = holder.querySelector("table");
  const t0 = performance.now();
  const done = new Promise((resolve) => {
    const mo = new MutationObserver(() => {
      const t = holder.querySelector("table");
      const ready = t !== before && !holder.classList.contains("busy");
      if (ready && t.querySelector("tbody tr[data-run-id]")) {
        mo.disconnect();
        resolve();
      }
    });
    mo.observe(holder, { childList: true });
  });
  const el = document.querySelector(selector);
  if (el.tagName === "FORM") el.requestSubmit(); else el.click();
  await done;
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""

ZOOM = """async ([lo, hi]) => {
  const c = document.querySelector("[data-testid=compare-charts] .chart-card").steppeChart;
  const t0 = performance.now();
  c.group.setZoom([lo, hi]);
  await c.inflight;
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""


KEY_SEARCH = """async (needle) => {
  const f = document.querySelector("[data-testid=metrics-search]");
  const t0 = performance.now();
  f.value = needle;
  f.dispatchEvent(new Event("input"));
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def _timed_ms(fn: Any, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return _median(out)


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n_runs, n_long, long_steps, n_keys = (
        (500, 4, 50_000, 300) if args.smoke else (10_000, 20, 1_000_000, 5_000)
    )

    from playwright.sync_api import sync_playwright

    import steppe
    from steppe.entities import Param

    rows: list[dict[str, Any]] = []

    def row(name: str, ms: float, floor_ms: float, target: str, **extra: Any) -> None:
        rows.append(
            {
                "view": name,
                "ui_ms": ms,
                "http_floor_ms": floor_ms,
                "x_floor": ms / floor_ms if floor_ms else float("nan"),
                "target": target,
                **extra,
            }
        )

    with tempfile.TemporaryDirectory(prefix="steppe-ui-bench-") as tmp:
        server = Server.start(Path(tmp) / "data")
        try:
            client = steppe.Client(server.http_url)
            t0 = time.perf_counter()
            big = client.create_experiment("ui-bench-runs")
            start = int(time.time() * 1000) - n_runs * 1000
            for i in range(n_runs):
                rid = client.create_run(
                    big, start_time=start + i, run_name=f"run-{i:05d}", tags={"team": f"t{i % 7}"}
                ).info.run_id
                client.log_batch(
                    rid, params=[Param("lr", str(10 ** -(i % 4))), Param("seed", str(i))]
                )
                client.log_metric(rid, "loss", 1 / (1 + i % 997), step=0)
                client.log_metric(rid, "acc", (i % 101) / 100, step=0)
            compare = client.create_experiment("ui-bench-compare")
            long_ids = []
            step_col = array("q", range(long_steps))
            for i in range(n_long):
                rid = client.create_run(compare, run_name=f"long-{i}").info.run_id
                client.log_series(rid, "loss", curve(long_steps, seed=i), steps=step_col)
                long_ids.append(rid)
                client.flush()
            wide = client.create_run(compare, run_name="wide").info.run_id
            ten = array("q", range(10))
            for k in range(n_keys):
                client.log_series(
                    wide, f"layer_{k // 50:03d}/w{k % 50:02d}", curve(10, seed=k), steps=ten
                )
            client.flush()
            print(f"loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            base = server.http_url
            search = f"{base}/api/steppe/v1/runs/search"

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})

                # -- runs table of the big experiment
                first: list[float] = []
                for _ in range(args.repeats + 1):
                    page.goto(f"{base}/experiments/{big}")
                    page.wait_for_selector("[data-testid=runs-table] tbody tr[data-run-id]")
                    page.wait_for_function("() => !document.querySelector('.runs-wrap.busy')")
                    first.append(page.evaluate(
                        "() => new Promise(r => requestAnimationFrame(() => r(performance.now())))"
                    ))  # fmt: skip
                body = {"experiment_ids": [big], "max_results": 100, "page_token": None,
                        "order_by": ["attributes.start_time DESC"], "count": True}  # fmt: skip
                floor = _timed_ms(lambda: _post(search, body), args.repeats)
                row(f"runs table of {n_runs:,} runs: navigation -> first page", _median(first[1:]),
                    floor, "< 300 ms")  # fmt: skip
                clicks = [
                    ("sort by Started", "th[data-col=start] button", ["attributes.start_time ASC"]),
                    ("sort by a param", "th[data-col='p:lr'] button", ["params.`lr` ASC"]),
                    ("sort by a metric", "th[data-col='m:loss'] button", ["metrics.`loss` DESC"]),
                ]
                for name, selector, order in clicks:
                    samples = [
                        page.evaluate(CLICK_TO_ROWS, selector) for _ in range(args.repeats + 1)
                    ]
                    floor = _timed_ms(lambda o=order: _post(search, {**body, "order_by": o}),
                                      args.repeats)  # fmt: skip
                    row(
                        f"runs table: {name} (click -> rows)",
                        _median(samples[1:]),
                        floor,
                        "< 300 ms",
                    )
                page.fill("[data-testid=runs-filter]", "metrics.loss < 0.01 and params.lr = '0.1'")
                samples = [page.evaluate(CLICK_TO_ROWS, "[data-testid=runs-filter-form]")
                           for _ in range(args.repeats + 1)]  # fmt: skip
                filtered = {**body, "filter_string": "metrics.loss < 0.01 and params.lr = '0.1'"}
                floor = _timed_ms(lambda: _post(search, filtered), args.repeats)
                row(
                    "runs table: a filter (submit -> rows)", _median(samples[1:]), floor, "< 300 ms"
                )

                # -- compare page, long runs
                drawn: list[float] = []
                chart = "[data-testid=compare-charts] .chart-card"
                for _ in range(args.repeats + 1):
                    page.goto(f"{base}/compare?runs={','.join(long_ids)}")
                    page.wait_for_function(
                        f"() => document.querySelector('{chart}')?.dataset.drawnMs && "
                        f"document.querySelector('{chart}').dataset.mode"
                    )
                    drawn.append(float(page.eval_on_selector(chart, "el => el.dataset.drawnMs")))
                width = page.eval_on_selector(chart, "el => el.steppeChart.pixelBuckets()")
                series = {"series": [{"run_id": r, "key": "loss"} for r in long_ids],
                          "buckets": width}  # fmt: skip
                url = f"{base}/api/steppe/v1/series"
                aligned = {**series, "grid": "aligned"}
                even_ms = _timed_ms(lambda: _post(url, series), args.repeats)
                floor = _timed_ms(lambda: _post(url, aligned), args.repeats)
                row(f"compare {n_long} runs x {long_steps:,} steps: navigation -> drawn",
                    _median(drawn[1:]), floor, "< 1500 ms")  # fmt: skip
                # The same answer's HTTP call before the tiers (the even grid, from the points)
                # and with them (the aligned grid the page asks for): x_floor is after/before.
                row("compare: POST /series, even grid from the points (before)", even_ms,
                    float("nan"), "")  # fmt: skip
                row("compare: POST /series, aligned grid from the tiers (after)", floor,
                    even_ms, "")  # fmt: skip
                zooms = []
                for i in range(args.repeats + 1):
                    lo = long_steps // 4 + i * 1000
                    zooms.append(page.evaluate(ZOOM, [lo, lo + long_steps // 10]))
                zoomed = {
                    **series,
                    "x_min": long_steps // 4,
                    "x_max": long_steps // 4 + long_steps // 10,
                }
                even_ms = _timed_ms(lambda: _post(url, zoomed), args.repeats)
                floor = _timed_ms(lambda: _post(url, {**zoomed, "grid": "aligned"}), args.repeats)
                row(
                    "compare: zoom (setZoom -> finer data drawn)",
                    _median(zooms[1:]),
                    floor,
                    "< 150 ms",
                )
                row("compare: zoom POST, even grid from the points (before)", even_ms,
                    float("nan"), "")  # fmt: skip
                row("compare: zoom POST, aligned grid from the tiers (after)", floor, even_ms,
                    "")  # fmt: skip

                # -- run page of many keys
                ready: list[float] = []
                for _ in range(args.repeats + 1):
                    page.goto(f"{base}/runs/{wide}")
                    page.wait_for_function(
                        "() => document.querySelectorAll('[data-testid=chart-section]').length"
                        f" === {n_keys // 50} && document.querySelector('.chart-card[data-draws]')"
                    )
                    ready.append(page.evaluate("() => performance.now()"))
                floor = _timed_ms(lambda: _get(f"{base}/api/steppe/v1/runs/{wide}"), args.repeats)
                row(
                    f"run of {n_keys:,} keys: navigation -> interactive",
                    _median(ready[1:]),
                    floor,
                    "< 1000 ms",
                )
                search_ms = page.evaluate(KEY_SEARCH, "w07")
                row(f"run of {n_keys:,} keys: key search -> shown", search_ms, float("nan"), "")
                page.evaluate(KEY_SEARCH, "")
                # Open every section, scroll through every chart, then count what the page holds.
                page.evaluate(
                    "() => document.querySelectorAll('[data-testid=chart-section]')"
                    ".forEach((d) => { d.open = true; })"
                )
                page.wait_for_function(
                    f"() => document.querySelectorAll('.chart-card').length >= {n_keys}"
                )
                height = page.evaluate("document.documentElement.scrollHeight")
                for y in range(0, height, 800):
                    page.evaluate(f"window.scrollTo(0, {y})")
                    page.wait_for_timeout(15)  # let the observers report: not a sync point
                page.wait_for_function(
                    "() => document.querySelector('.chart-card[data-draws] .uplot')"
                )
                live = page.evaluate("document.querySelectorAll('.uplot').length")
                heap = page.evaluate("performance.memory.usedJSHeapSize / 1048576")
                row(f"run of {n_keys:,} keys: after scrolling all", float("nan"), float("nan"),
                    "bounded", uplots_live=live, heap_mib=round(heap, 1))  # fmt: skip
                browser.close()
        finally:
            server.stop()
    if args.json:
        for r in rows:
            print(json.dumps(r))
    print(
        table(
            rows, ["view", "ui_ms", "http_floor_ms", "x_floor", "target", "uplots_live", "heap_mib"]
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
