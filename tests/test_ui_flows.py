"""The web UI's flows in a real browser: the runs table (MLflow filter, sort, columns, paging,
selection), the compare page, the chart toolbar (smoothing, log y, x mode, zoom in the URL), live
updates, the SQL console, and a run of 1M steps drawn within a second and zoomed to exact points.

Debian's headless Chromium through Playwright against the session's real `steppe server`
(conftest.py); data goes in through the real client. Screenshots land in tests/screenshots/.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator

    import steppe

from tests.browser import TIMEOUT_MS, UI, browser, ui  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

# What Chromium logs for every 4xx answer; expected where a test sends a bad filter or query.
HTTP_400 = "the server responded with a status of 400"

SWEEP_RUNS = 130  # more than one page of 100
MILLION = 1_000_000
SPIKE_STEP, SPIKE_VALUE = 654_321, 50.0
DRAW_BUDGET_MS = 1000


def _api(server: Any, path: str, body: object = None) -> Any:
    url = f"{server.http_url.rstrip('/')}/api/steppe/v1{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def _attr(value: str) -> str:
    """A string as a quoted CSS attribute value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _client(server: Any) -> steppe.Client:
    import steppe

    return steppe.Client(server.http_url)


# data ------------------------------------------------------------------------------------


@dataclass
class Sweep:
    experiment_id: str
    run_ids: list[str]  # index i is run "trial-{i:03d}"

    @staticmethod
    def final_loss(i: int) -> float:
        return 1 / 50 + i / 1000


@pytest.fixture(scope="module")
def sweep(steppe_server: Any) -> Sweep:
    """130 finished runs: optimizer adam/sgd (even/odd i), lr by i % 3, a constant dataset
    param, and 50-step loss/accuracy series whose final loss grows with i (a unique order)."""
    import numpy as np

    client = _client(steppe_server)
    exp = client.set_experiment("ui-flows-sweep").experiment_id
    start = int(time.time() * 1000) - SWEEP_RUNS * 1000
    steps = np.arange(50, dtype=np.int64)
    ids = []
    for i in range(SWEEP_RUNS):
        run = client.create_run(exp, run_name=f"trial-{i:03d}", start_time=start + i * 1000)
        rid = run.info.run_id
        for key, value in {
            "optimizer": ["adam", "sgd"][i % 2],
            "lr": [0.1, 0.01, 0.001][i % 3],
            "seed": i,
            "dataset": "cifar10",
        }.items():
            client.log_param(rid, key, value)
        loss = 1 / (steps + 1) + i / 1000
        client.log_series(rid, "loss", loss, steps=steps)
        client.log_series(rid, "accuracy", 1 - loss, steps=steps)
        ids.append(rid)
    client.flush()
    for rid in ids:
        client.set_terminated(rid)
    return Sweep(exp, ids)


@dataclass
class BigRun:
    run_id: str
    experiment_id: str


@pytest.fixture(scope="module")
def million_step_run(steppe_server: Any) -> BigRun:
    """One run with 1M steps of "loss" (one spike) logged through the client's bulk path."""
    import numpy as np

    client = _client(steppe_server)
    exp = client.set_experiment("ui-flows-million").experiment_id
    run = client.create_run(exp, run_name="million-steps")
    steps = np.arange(MILLION, dtype=np.int64)
    loss = 2.0 * np.exp(-steps / 250_000) + 0.05 * np.sin(steps / 50.0)
    loss[SPIKE_STEP] = SPIKE_VALUE
    client.log_series(run.info.run_id, "loss", loss, steps=steps)
    client.flush()
    client.set_terminated(run.info.run_id)
    return BigRun(run.info.run_id, exp)


def _rows(ui: UI) -> Locator:
    return ui.page.get_by_test_id("runs-table").locator("tbody tr[data-run-id]")


def _run_names(ui: UI) -> list[str]:
    return _rows(ui).locator("[data-testid=run-link]").all_inner_texts()


# runs table ------------------------------------------------------------------------------


def test_runs_table_filters_sorts_pages_and_picks_columns(ui: UI, sweep: Sweep) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/experiments/{_q(sweep.experiment_id)}")
    # Newest start first, one page of 100 of the 130 runs.
    expect(_rows(ui)).to_have_count(100)
    assert _run_names(ui)[:2] == ["trial-129", "trial-128"]
    expect(page.get_by_test_id("page-info")).to_have_text("Runs 1\u2013100 of 130")

    page.get_by_test_id("next-page").click()
    expect(_rows(ui)).to_have_count(30)
    expect(page.get_by_test_id("page-info")).to_have_text("Runs 101\u2013130 of 130")
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    assert _run_names(ui)[-1] == "trial-000"
    page.get_by_test_id("prev-page").click()
    expect(_rows(ui)).to_have_count(100)

    # A bad filter: the server's message inline, naming the field and the character.
    box = page.get_by_test_id("runs-filter")
    box.fill("metrics.loss <= oops")
    box.press("Enter")
    error = page.get_by_test_id("filter-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("filter_string")
    expect(error).to_contain_text("character")
    expect(box).to_have_attribute("aria-invalid", "true")

    # A good one: adam runs (even i) with final loss < 0.05 (i < 30).
    box.fill("params.optimizer = 'adam' and metrics.loss < 0.05")
    box.press("Enter")
    expect(error).to_be_hidden()
    expected = [f"trial-{i:03d}" for i in range(28, -1, -2)]
    expect(_rows(ui)).to_have_count(len(expected))
    assert _run_names(ui) == expected
    assert ui.query()["filter"] == "params.optimizer = 'adam' and metrics.loss < 0.05"

    # Sorting is the server's (order_by): by the metric column, then reversed.
    loss_header = page.locator("[data-testid=runs-table] thead th[data-col='m:loss']")
    loss_header.get_by_role("button").click()
    expect(loss_header).to_have_attribute("aria-sort", "descending")
    expect(_rows(ui).first).to_have_attribute("data-run-id", sweep.run_ids[28])
    loss_header.get_by_role("button").click()
    expect(loss_header).to_have_attribute("aria-sort", "ascending")
    expect(_rows(ui).first).to_have_attribute("data-run-id", sweep.run_ids[0])
    assert ui.query()["sort"] == "m:loss"
    assert ui.query()["dir"] == "asc"

    # Columns: every param and metric key of the experiment is offered; unchecking one drops it.
    seed_header = page.locator("[data-testid=runs-table] thead th[data-col='p:seed']")
    expect(seed_header).to_have_count(1)
    page.get_by_test_id("columns-button").click()
    menu = page.locator(".columns-menu")
    for col in ("p:dataset", "p:lr", "p:optimizer", "p:seed", "m:accuracy", "m:loss"):
        expect(menu.locator(f"input[data-col={_attr(col)}]")).to_be_checked()
    menu.locator("input[data-col='p:seed']").uncheck()
    expect(seed_header).to_have_count(0)
    assert "p:seed" not in ui.query()["cols"].split(",")
    page.keyboard.press("Escape")
    expect(menu.locator(".popover-body")).to_be_hidden()

    # The URL holds it all: a reload shows the same table.
    page.reload()
    expect(_rows(ui)).to_have_count(len(expected))
    expect(_rows(ui).first).to_have_attribute("data-run-id", sweep.run_ids[0])
    expect(page.get_by_test_id("runs-filter")).to_have_value(
        "params.optimizer = 'adam' and metrics.loss < 0.05"
    )
    expect(seed_header).to_have_count(0)
    ui.screenshot("flows-runs-filtered")
    ui.assert_no_console_errors(HTTP_400)


def test_select_runs_and_compare_them(ui: UI, sweep: Sweep) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/experiments/{_q(sweep.experiment_id)}?sort=m:loss&dir=asc")
    expect(_rows(ui)).to_have_count(100)
    compare = page.get_by_test_id("compare-button")
    expect(compare).to_be_disabled()

    picked = sweep.run_ids[:3]
    for rid in picked[:2]:
        page.locator(f"tr[data-run-id={_attr(rid)}] [data-testid=select-run]").check()
    # Keyboard: focus the third box and press Space.
    third = page.locator(f"tr[data-run-id={_attr(picked[2])}] [data-testid=select-run]")
    third.focus()
    page.keyboard.press("Space")
    expect(third).to_be_checked()
    expect(page.get_by_test_id("selection-count")).to_have_text("3 runs selected")
    assert set(ui.query()["sel"].split(",")) == set(picked)

    # The selection survives paging.
    page.get_by_test_id("next-page").click()
    expect(_rows(ui)).to_have_count(30)
    expect(page.get_by_test_id("selection-count")).to_have_text("3 runs selected")

    compare.click()
    expect(page).to_have_url(re.compile(r"/compare\?runs="))
    assert ui.query()["runs"].split(",") == [r for r in sweep.run_ids if r in picked]

    legend = page.get_by_test_id("compare-legend")
    expect(legend.locator("li")).to_have_count(3)
    colors = {
        legend.locator(f"li[data-run-id={_attr(r)}] .swatch").evaluate(
            "e => getComputedStyle(e).backgroundColor"
        )
        for r in picked
    }
    assert len(colors) == 3, "one colour per run"

    charts = page.get_by_test_id("compare-charts")
    for key in ("accuracy", "loss"):
        chart = charts.get_by_test_id(f"chart-{key}")
        chart.scroll_into_view_if_needed()
        expect(chart).to_have_attribute("data-mode", "exact")
        expect(chart).to_have_attribute("data-points", str(3 * 50))
        expect(chart.locator("canvas")).to_have_count(1)
        expect(chart.locator(".legend-row")).to_have_count(3)

    # Hover: every run's value at the cursor.
    chart = charts.get_by_test_id("chart-loss")
    box = chart.locator(".u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    first_x = chart.locator(".legend-row .legend-x").first
    expect(first_x).to_have_text(re.compile(r"^step 2[45]$"))
    step = int(first_x.inner_text().removeprefix("step "))
    for i, rid in enumerate(picked):
        row = chart.locator(f".legend-row[data-run-id={_attr(rid)}]")
        expect(row.locator(".legend-x")).to_have_text(f"step {step}")
        # The UI shows 5 significant digits, as Python's "g" format does here.
        expect(row.locator(".legend-value")).to_have_text(f"{1 / (step + 1) + i / 1000:.5g}")
    page.mouse.move(0, 0)

    # Params diff: the rows that differ are marked; "only differences" hides the rest.
    diff = page.get_by_test_id("params-diff")
    expect(diff.locator("tr[data-key=optimizer]")).to_have_attribute("data-differs", "true")
    expect(diff.locator("tr[data-key=lr]")).to_have_attribute("data-differs", "true")
    expect(diff.locator("tr[data-key=dataset]")).to_have_attribute("data-differs", "false")
    expect(diff.locator("tr[data-key=optimizer] td")).to_have_text(["adam", "sgd", "adam"])
    page.get_by_test_id("only-diff").check()
    expect(diff.locator("tr[data-key=dataset]")).to_have_count(0)
    expect(diff.locator("tr[data-key=seed]")).to_have_count(1)
    assert ui.query()["diff"] == "1"
    ui.screenshot("flows-compare")

    # Keys: pick one; the URL keeps it.
    page.get_by_test_id("keys-button").click()
    page.locator(".keys-menu input[data-key=accuracy]").uncheck()
    expect(charts.locator("[data-key]")).to_have_count(1)
    assert ui.query()["keys"] == "loss"
    page.keyboard.press("Escape")

    # Removing a run from the comparison.
    legend.locator(f"li[data-run-id={_attr(picked[1])}] button").click()
    expect(legend.locator("li")).to_have_count(2)
    expect(charts.get_by_test_id("chart-loss")).to_have_attribute("data-points", str(2 * 50))
    ui.assert_no_console_errors()


# charts ----------------------------------------------------------------------------------


def test_million_step_run_draws_within_a_second_and_zooms_to_exact_points(
    ui: UI, million_step_run: BigRun
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    path = f"/runs/{_q(million_step_run.run_id)}"
    chart = page.get_by_test_id("chart-loss")
    # Milliseconds from navigation start to the chart's first draw, on the browser's clock
    # (data-drawn-ms). The first navigation is a fresh browser context and the series' first
    # query. Other work on a shared machine can stall any one attempt, so up to three
    # navigations are measured and one must make the budget; every attempt is reported.
    attempts: list[tuple[int, float]] = []
    for _ in range(3):
        started = time.monotonic()
        ui.goto(path)
        expect(chart).to_have_attribute("data-drawn-ms", re.compile(r"^\d+$"))
        drawn_ms = int(chart.get_attribute("data-drawn-ms") or "0")
        attempts.append((drawn_ms, time.monotonic() - started))
        if attempts[-1][0] <= DRAW_BUDGET_MS:
            break
    shown = ", ".join(f"{ms} ms ({wall:.2f} s wall in pytest)" for ms, wall in attempts)
    print(f"\n1M-step chart drawn after navigation: {shown}")
    assert min(ms for ms, _ in attempts) <= DRAW_BUDGET_MS, f"chart of 1M steps drawn: {shown}"

    expect(chart).to_have_attribute("data-mode", "bucketed")
    expect(chart).to_have_attribute("data-points", str(MILLION))
    # min/max per bucket: the single spike is still drawn.
    assert float(chart.get_attribute("data-y-max") or "nan") == SPIKE_VALUE
    expect(chart.get_by_test_id("chart-meta")).to_contain_text("of 1,000,000 points")
    ui.screenshot("flows-run-1m")

    # Drag across ~1% of the x axis: the server answers that window, every point of it.
    over = chart.locator(".u-over")
    box = over.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    x0 = box["x"] + box["width"] * 0.30
    x1 = x0 + box["width"] * 0.01
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, y)
    page.mouse.move(x1, y)
    page.mouse.up()
    expect(page).to_have_url(re.compile(r"zoom=\d+,\d+"))
    low, high = (int(v) for v in ui.query()["zoom"].split(","))
    assert 0.005 * MILLION <= high - low <= 0.02 * MILLION, (low, high)
    expect(chart).to_have_attribute("data-mode", "exact")
    expect(chart).to_have_attribute("data-points", str(high - low + 1))
    expect(page.get_by_test_id("reset-zoom")).to_be_visible()
    print(f"zoom to steps {low}-{high}: {chart.get_attribute('data-load-ms')} ms to exact points")
    ui.screenshot("flows-run-1m-zoomed")

    # Double-click resets the zoom: bucketed over the whole run again.
    over.dblclick()
    expect(chart).to_have_attribute("data-mode", "bucketed")
    expect(chart).to_have_attribute("data-points", str(MILLION))
    expect(page).not_to_have_url(re.compile(r"zoom="))  # the URL follows (polled, not raced)

    # A link with exactly 1% of the steps (10,000 points around the spike) opens zoomed.
    low = SPIKE_STEP - 5_000
    ui.goto(f"{path}?zoom={low},{low + MILLION // 100 - 1}")
    chart = page.get_by_test_id("chart-loss")
    expect(chart).to_have_attribute("data-mode", "exact")
    expect(chart).to_have_attribute("data-points", str(MILLION // 100))
    assert float(chart.get_attribute("data-y-max") or "nan") == SPIKE_VALUE
    expect(page.get_by_test_id("zoom-range")).to_contain_text(f"{low:,}")
    ui.assert_no_console_errors()


def test_toolbar_smoothing_log_y_and_x_axis_live_in_the_url(
    ui: UI, logged_run: Any, steppe_server: Any
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/runs/{_q(logged_run.run_id)}")
    chart = page.get_by_test_id("chart-loss")
    expect(chart).to_have_attribute("data-mode", "exact")
    expect(chart).to_have_attribute("data-points", "100")
    draws = chart.locator(".legend-row")
    expect(draws).to_have_count(1)
    expect(draws).not_to_contain_text("smoothed")

    # Smoothing: the EMA line over the faded raw one; both values in the legend.
    # The slider by keyboard: End is its maximum, each arrow one step of 0.01.
    slider = page.get_by_test_id("smoothing")
    slider.focus()
    page.keyboard.press("End")
    for _ in range(9):
        page.keyboard.press("ArrowLeft")
    expect(draws).to_contain_text("smoothed")
    expect(page).to_have_url(re.compile(r"smooth=0\.90"))

    page.get_by_test_id("log-y").check()
    expect(page).to_have_url(re.compile(r"logy=1"))
    expect(chart).to_have_attribute("data-mode", "exact")

    # x by relative time: every point was logged within the run, so x starts at 0.
    page.get_by_test_id("x-relative").check()
    expect(page).to_have_url(re.compile(r"x=relative"))
    expect(chart.locator(".legend-row .legend-x")).to_contain_text("latest · +")
    page.get_by_test_id("x-wall").check()
    expect(page).to_have_url(re.compile(r"x=wall"))
    expect(chart.locator(".legend-row .legend-x")).to_contain_text(
        re.compile(r"latest · \d{4}-\d\d-\d\d")
    )

    # A reload keeps the toolbar's state.
    page.reload()
    expect(page.get_by_test_id("smoothing")).to_have_value("0.9")
    expect(page.get_by_test_id("log-y")).to_be_checked()
    expect(page.get_by_test_id("x-wall")).to_be_checked()
    chart = page.get_by_test_id("chart-loss")
    expect(chart).to_have_attribute("data-mode", "exact")

    # Charts follow the window's width.
    width = chart.locator(".uplot").evaluate("e => e.offsetWidth")
    page.set_viewport_size({"width": 900, "height": 900})
    page.wait_for_function(
        "([el, w]) => el.offsetWidth !== w",
        arg=[chart.locator(".uplot").element_handle(), width],
    )
    ui.assert_no_console_errors()


def test_live_run_updates_every_second_and_keeps_the_zoom(
    ui: UI, tracking: str, sweep: Sweep
) -> None:
    from playwright.sync_api import expect

    import steppe

    steppe.set_experiment("ui-flows-live")
    with steppe.start_run(run_name="live") as run:
        for step in range(20):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
        steppe.flush()
        page = ui.page
        ui.goto(f"/runs/{_q(run.info.run_id)}?zoom=0,1000")
        chart = page.get_by_test_id("chart-loss")
        expect(page.get_by_test_id("run-status")).to_have_text("RUNNING")
        expect(chart).to_have_attribute("data-points", "20")

        for step in range(20, 60):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
        steppe.flush()
        # Polled within a second or two, with no reload, and still zoomed to 0-1000.
        expect(chart).to_have_attribute("data-points", "60", timeout=5_000)
        assert ui.query()["zoom"] == "0,1000"
        expect(page.get_by_test_id("zoom-range")).to_have_text("step 0 \u2013 1,000")
        expect(page.get_by_test_id("reset-zoom")).to_be_visible()

        # The compare page is live too, for the running run among finished ones.
        ui.goto(f"/compare?runs={run.info.run_id},{sweep.run_ids[0]}&keys=loss")
        chart = page.get_by_test_id("compare-charts").get_by_test_id("chart-loss")
        expect(chart).to_have_attribute("data-points", str(60 + 50))
        for step in range(60, 80):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
        steppe.flush()
        expect(chart).to_have_attribute("data-points", str(80 + 50), timeout=5_000)
    legend = page.get_by_test_id("compare-legend")
    expect(legend.locator(f"li[data-run-id={_attr(run.info.run_id)}] .status")).to_have_text(
        "FINISHED", timeout=5_000
    )
    ui.assert_no_console_errors()


# SQL console -----------------------------------------------------------------------------


def test_sql_console_shows_the_result_charts_two_columns_and_reports_errors(
    ui: UI, sweep: Sweep
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    query = (
        "SELECT r.run_name, m.step, m.value FROM metrics m JOIN runs r USING (run_id) "
        f"WHERE r.experiment_id = '{sweep.experiment_id}' AND m.key = 'loss' "
        "AND r.run_name IN ('trial-000', 'trial-001') ORDER BY r.run_name, m.step"
    )
    ui.goto("/sql?q=" + _q(query))
    # A ?q= link fills the editor but never runs by itself (another site could link here).
    expect(page.get_by_test_id("sql-editor")).to_have_value(query)
    expect(page.get_by_test_id("sql-status")).not_to_contain_text("rows")
    page.get_by_test_id("sql-run").click()
    result = page.get_by_test_id("sql-result")
    expect(result.locator("tbody tr")).to_have_count(100)
    expect(result.locator("thead th")).to_have_count(3)
    expect(page.get_by_test_id("sql-status")).to_contain_text("100 rows")

    # One click: step against value, one line per run name.
    expect(page.get_by_test_id("sql-chart-x")).to_have_value("1")
    expect(page.get_by_test_id("sql-chart-y")).to_have_value("2")
    page.get_by_test_id("sql-chart-button").click()
    chart = page.get_by_test_id("sql-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("canvas")).to_have_count(1)
    expect(chart).to_have_attribute("data-points", "100")
    expect(chart).to_have_attribute("data-lines", "2")
    assert ui.query()["cx"] == "step"
    ui.screenshot("flows-sql")

    # An error shows inline, with the server's message; Ctrl+Enter runs from the editor.
    editor = page.get_by_test_id("sql-editor")
    editor.fill("SELECT nope FROM metrics")
    editor.press("Control+Enter")
    error = page.get_by_test_id("sql-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("nope")
    expect(error).to_contain_text("INVALID_PARAMETER_VALUE")
    editor.fill("COPY runs TO '/tmp/x.csv'")
    page.get_by_test_id("sql-run").click()
    expect(error).to_contain_text("SELECT")

    editor.fill("SELECT count(*) AS n FROM runs")
    editor.press("Control+Enter")
    expect(error).to_have_count(0)
    expect(result.locator("tbody tr")).to_have_count(1)
    ui.assert_no_console_errors(HTTP_400)


# every page ------------------------------------------------------------------------------


def test_every_page_loads_without_console_errors(ui: UI, sweep: Sweep, logged_run: Any) -> None:
    from playwright.sync_api import expect

    page = ui.page
    pages = {
        "/": "experiments-table",
        f"/experiments/{_q(sweep.experiment_id)}": "runs-table",
        f"/runs/{_q(logged_run.run_id)}": "charts",
        f"/compare?runs={sweep.run_ids[0]},{sweep.run_ids[1]}": "compare-charts",
        "/sql": "sql-editor",
    }
    for path, testid in pages.items():
        ui.goto(path)
        expect(page.get_by_test_id(testid)).to_be_visible()
        expect(page.get_by_test_id("error")).to_have_count(0)
        expect(page.locator("[data-testid=chart-error]")).to_have_count(0)
    # The nav links are in-app: no reload (the page script's state survives).
    page.evaluate("window.__marker = 1")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="SQL").click()
    expect(page.get_by_test_id("sql-editor")).to_be_visible()
    assert page.evaluate("window.__marker") == 1
    page.go_back()
    expect(page.get_by_test_id("compare-charts")).to_be_visible()
    ui.assert_no_console_errors()


def test_ui_assets_are_local_and_small(steppe_server: Any) -> None:
    """Offline: every script and stylesheet comes from steppe; ours stay far below 300 KB."""
    base = steppe_server.http_url.rstrip("/")
    with urllib.request.urlopen(base + "/compare", timeout=10) as r:
        html = r.read().decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    own = 0
    for asset in assets:
        with urllib.request.urlopen(base + asset, timeout=10) as r:
            size = len(r.read())
        if "/vendor/" not in asset:
            own += size
    assert own < 300_000, f"{own} bytes of our own JS and CSS"
