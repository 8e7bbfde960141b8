"""Take the README's screenshot (docs/ui.png): a sweep's runs table, grouped by a param, with
child runs folded under their parent and the Explore panel open. Usage:

    python scripts/ui_screenshot.py [docs/ui.png]

Starts its own `steppe server` on a temp data dir and stops it; needs /usr/bin/chromium.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import Server  # noqa: E402 (the benchmarks folder is not a package)


def main() -> int:
    import numpy as np
    from playwright.sync_api import sync_playwright

    import steppe

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "ui.png"
    with tempfile.TemporaryDirectory(prefix="steppe-shot-") as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp  # its spool, if any, goes with the temp dir
        server = Server.start(Path(tmp) / "data")
        try:
            client = steppe.Client(server.http_url)
            exp = client.create_experiment("resnet-sweep")
            start = int(time.time() * 1000) - 3_600_000
            steps = np.arange(2000, dtype=np.int64)
            rng = np.random.default_rng(1)
            parent = client.create_run(exp, run_name="sweep", start_time=start).info.run_id
            for i in range(8):
                lr, opt = [0.1, 0.03, 0.01, 0.003][i % 4], ["adam", "sgd"][i // 4]
                rid = client.create_run(
                    exp,
                    run_name=f"{opt}-lr{lr}",
                    start_time=start + 60_000 * (i + 1),
                    tags={"mlflow.parentRunId": parent, "team": "vision"},
                ).info.run_id
                client.log_param(rid, "lr", lr)
                client.log_param(rid, "optimizer", opt)
                client.log_param(rid, "batch_size", [64, 128][i % 2])
                floor = 0.2 + abs(np.log10(lr) + 2) * 0.15 + (0.1 if opt == "sgd" else 0)
                loss = (
                    floor + 2.0 * np.exp(-steps / (300 + 40 * i)) + rng.normal(0, 0.04, steps.size)
                )
                client.log_series(rid, "train/loss", loss, steps=steps)
                client.log_series(rid, "val/loss", (loss * 1.08)[::50], steps=steps[::50])
                client.log_metric(rid, "val/accuracy", 0.95 - floor / 3, step=1999)
                client.set_terminated(rid)
            client.flush()
            client.set_terminated(parent)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 1280})
                page.goto(f"{server.http_url}/experiments/{exp}?group=p:optimizer")
                page.wait_for_selector("[data-testid=groups-table] tbody tr")
                page.locator("[data-testid=tree-toggle]").click()
                page.get_by_test_id("explore").locator("summary").click()
                page.get_by_test_id("explore-metric").select_option("val/accuracy")
                page.get_by_test_id("scatter-x").select_option("p:lr")
                for box in page.get_by_test_id("select-run").all()[2:4]:
                    box.check()
                page.wait_for_selector("[data-testid=parallel-coordinates] path.selected")
                page.evaluate("window.scrollTo(0, 0)")
                page.mouse.move(0, 0)
                page.screenshot(path=str(out), full_page=False)
                browser.close()
        finally:
            server.stop()
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
