"""The dashboard of issue #15 in a real browser: links mlflow prints, the runs table's tag
columns, min/max metric columns, nested runs, groups, filtered total and narrow layout; run
management through MLflow's REST API; chart sections, several keys in one chart, single-point
metrics, window smoothing and many overlaid runs.

Debian's headless Chromium through Playwright against the session's real `steppe server`
(conftest.py); data goes in through the real client. Screenshots land in tests/screenshots/.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from tests.browser import UI, browser, ui  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

CHILDREN = 6
OTHERS = 3  # top-level runs besides the parent


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _mlflow(server: Any, path: str, body: object | None = None) -> Any:
    url = f"{server.http_url.rstrip('/')}/api/2.0/mlflow{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


@dataclass
class Sweep:
    experiment_id: str
    parent: str
    children: list[str]  # child-0 .. child-5
    others: list[str]  # solo-0 .. solo-2

    @staticmethod
    def loss(i: int, step: int) -> float:
        """Child i's train/loss at step: its min is at step 0 for odd i (a rising curve)."""
        return (1 + i) / (step + 1) if i % 2 == 0 else 0.1 * (i + 1) + step / 100


@pytest.fixture(scope="module")
def sweep(steppe_server: Any) -> Sweep:
    """A parent run with 6 children (lr 0.1/0.01 alternating, team tag vision/nlp), and 3 more
    runs; metrics under train/, val/ and system/ prefixes; val/acc is one point."""
    import numpy as np

    import steppe

    client = steppe.Client(steppe_server.http_url)
    exp = client.set_experiment(f"dash-{time.monotonic_ns()}").experiment_id
    start = int(time.time() * 1000) - 100_000
    parent = client.create_run(exp, run_name="sweep-parent", start_time=start).info.run_id
    steps = np.arange(100, dtype=np.int64)
    children = []
    for i in range(CHILDREN):
        rid = client.create_run(
            exp,
            run_name=f"child-{i}",
            start_time=start + 1000 * (i + 1),
            tags={"mlflow.parentRunId": parent, "team": ["vision", "nlp"][i % 2]},
        ).info.run_id
        client.log_param(rid, "lr", [0.1, 0.01][i % 2])
        client.log_param(rid, "layers", i)
        client.log_series(rid, "train/loss", [Sweep.loss(i, int(s)) for s in steps], steps=steps)
        client.log_series(
            rid, "val/loss", [Sweep.loss(i, int(s)) * 1.1 for s in steps], steps=steps
        )
        client.log_metric(rid, "val/acc", 0.5 + i / 20, step=99)
        client.log_series(rid, "system/gpu", [50.0 + (s % 7) for s in steps], steps=steps)
        children.append(rid)
    others = []
    for i in range(OTHERS):
        rid = client.create_run(
            exp, run_name=f"solo-{i}", start_time=start + 20_000 + i, tags={"team": "solo"}
        ).info.run_id
        client.log_param(rid, "lr", 0.5)
        client.log_metric(rid, "train/loss", 9.0 + i, step=0)
        others.append(rid)
    client.flush()
    for rid in [parent, *children, *others]:
        client.set_terminated(rid)
    return Sweep(exp, parent, children, others)


def _runs_rows(ui: UI) -> Any:
    return ui.page.get_by_test_id("runs-table").locator("tbody tr[data-run-id]")


def _visible_names(ui: UI) -> list[str]:
    names: list[str] = _runs_rows(ui).evaluate_all(
        "rows => rows.filter(r => !r.hidden)"
        ".map(r => r.querySelector('[data-testid=run-link]').textContent)"
    )
    return names


# links from MLflow ---------------------------------------------------------------------


def test_links_mlflow_prints_land_on_the_same_pages(
    ui: UI, sweep: Sweep, steppe_server: Any
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    base = ui.base_url
    exp, run = sweep.experiment_id, sweep.children[0]
    # mlflow's _log_url: f"{host}/#/experiments/{experiment_id}" and f"{...}/runs/{run_id}".
    for mlflow_route, steppe_path in [
        (f"/#/experiments/{exp}", f"/experiments/{exp}"),
        (f"/#/experiments/{exp}/runs", f"/experiments/{exp}"),
        (f"/#/experiments/{exp}/runs/{run}", f"/runs/{run}"),
        (f"/#/experiments/{exp}/runs/{run}/artifacts", f"/runs/{run}"),
        ("/#/models", "/models"),
    ]:
        ui.goto(mlflow_route)
        expect(page).to_have_url(base + steppe_path)
    expect(page.get_by_role("heading", name="Registered models")).to_be_visible()

    # MLflow's compare link: JSON lists in the hash's query string.
    runs = json.dumps(sweep.children[:3])
    ui.goto(f"/#/compare-runs?runs={_q(runs)}&experiments={_q(json.dumps([exp]))}")
    expect(page).to_have_url(base + "/compare?runs=" + ",".join(sweep.children[:3]))
    expect(page.get_by_test_id("compare-legend").locator("li")).to_have_count(3)

    # A model version: the model's page with that version's row marked.
    name = f"dash-model-{time.monotonic_ns()}"
    _mlflow(steppe_server, "/registered-models/create", {"name": name})
    for _ in range(2):
        _mlflow(
            steppe_server,
            "/model-versions/create",
            {"name": name, "source": f"runs:/{run}/model", "run_id": run},
        )
    ui.goto(f"/#/models/{_q(name)}/versions/2")
    expect(page).to_have_url(base + f"/models/{_q(name)}?version=2")
    rows = page.get_by_test_id("versions-table").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("tr[data-version='2']")).to_have_attribute("aria-current", "true")
    expect(page.locator("tr[data-version='1']")).not_to_have_attribute("aria-current", "true")
    ui.goto(f"/#/models/{_q(name)}")
    expect(page).to_have_url(base + f"/models/{_q(name)}")
    ui.assert_no_console_errors()
