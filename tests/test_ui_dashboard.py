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


# runs table ------------------------------------------------------------------------------


def test_runs_table_folds_children_under_their_parent_and_counts_the_filtered_runs(
    ui: UI, sweep: Sweep
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/experiments/{sweep.experiment_id}")
    total = 1 + CHILDREN + OTHERS
    expect(page.get_by_test_id("runs-count")).to_have_text(f"{total} runs")
    expect(_runs_rows(ui)).to_have_count(total)
    # Children start later than their parent but fold under it, hidden until opened.
    assert _visible_names(ui) == ["solo-2", "solo-1", "solo-0", "sweep-parent"]
    parent_row = page.locator(f"tr[data-run-id='{sweep.parent}']")
    toggle = parent_row.get_by_test_id("tree-toggle")
    expect(toggle).to_have_text("▸6")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    names = [f"child-{i}" for i in reversed(range(CHILDREN))]
    assert _visible_names(ui) == ["solo-2", "solo-1", "solo-0", "sweep-parent", *names]
    expect(page.locator("tr[data-depth='1']:not([hidden])")).to_have_count(CHILDREN)
    ui.screenshot("dashboard-runs-tree")
    toggle.click()
    expect(page.locator("tr[data-depth='1']:not([hidden])")).to_have_count(0)

    # A filter: "3 of 10 runs"; children whose parent is not on the page link to it.
    page.get_by_test_id("runs-filter").fill("params.lr = '0.1'")
    page.get_by_test_id("runs-filter").press("Enter")
    expect(page.get_by_test_id("runs-count")).to_have_text(f"3 of {total} runs")
    expect(page.get_by_test_id("page-info")).to_have_count(1)
    assert _visible_names(ui) == ["child-4", "child-2", "child-0"]
    expect(page.get_by_test_id("parent-link")).to_have_count(3)
    assert page.get_by_test_id("parent-link").first.get_attribute("href") == f"/runs/{sweep.parent}"

    # A sort keeps the filter's total: the server is not asked to count again.
    bodies: list[Any] = []
    page.on(
        "request",
        lambda r: bodies.append(r.post_data_json) if r.url.endswith("/runs/search") else None,
    )
    name = page.get_by_test_id("runs-table").locator("th[data-col=name]")
    name.get_by_role("button").click()
    expect(name).to_have_attribute("aria-sort", "ascending")
    assert _visible_names(ui) == ["child-0", "child-2", "child-4"]
    assert len(bodies) == 1 and "count" not in bodies[0], bodies
    expect(page.get_by_test_id("runs-count")).to_have_text(f"3 of {total} runs")
    ui.assert_no_console_errors()


def test_runs_table_tag_columns_min_max_metric_columns_and_groups(ui: UI, sweep: Sweep) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/experiments/{sweep.experiment_id}?filter=params.layers != ''")
    expect(_runs_rows(ui)).to_have_count(CHILDREN)

    # Tags are in the column chooser (not mlflow.* ones).
    page.get_by_test_id("columns-button").click()
    menu = page.locator(".columns-menu")
    expect(menu.locator("label[data-key=team]")).to_have_count(1)
    expect(menu.locator(f"label[data-key='{'mlflow.parentRunId'}']")).to_have_count(0)
    menu.locator("input[data-col='t:team']").check()
    page.keyboard.press("Escape")
    team = page.locator(f"tr[data-run-id='{sweep.children[1]}'] td[data-col='t:team']")
    expect(team).to_have_text("nlp")
    assert "team" in (ui.query().get("cols") or "")

    # train/loss: child-1 rises from 0.2 to 1.19; min shows 0.2, and the sort follows it.
    cell = page.locator(f"tr[data-run-id='{sweep.children[1]}'] td[data-col='m:train/loss']")
    expect(cell).to_have_text("1.19")
    head = page.locator("th[data-col='m:train/loss']")
    head.get_by_test_id("metric-agg").select_option("min")
    expect(cell).to_have_text("0.2")
    assert ui.query()["agg"] == "train/loss:min"
    head.get_by_role("button").click()  # sort: descending first for a metric
    expect(head).to_have_attribute("aria-sort", "descending")
    # mins: child-i even -> (1+i)/100, odd -> 0.1*(i+1): 0.6, 0.4, 0.2, 0.05, 0.03, 0.01
    expect(_runs_rows(ui).first).to_have_attribute("data-run-id", sweep.children[5])
    assert _visible_names(ui) == ["child-5", "child-3", "child-1", "child-4", "child-2", "child-0"]
    head.get_by_test_id("metric-agg").select_option("max")
    # maxes: odd -> 0.1*(i+1) + 0.99 at step 99; even -> (1+i) at step 0
    expect(_runs_rows(ui).first).to_have_attribute("data-run-id", sweep.children[4])

    # Group by a param: every matching run, mean ± standard deviation per metric column.
    head.get_by_test_id("metric-agg").select_option("latest")
    page.get_by_test_id("group-by").select_option("p:lr")
    table = page.get_by_test_id("groups-table")
    expect(table.locator("tbody tr")).to_have_count(2)
    group = table.locator("tr[data-group='0.1']")
    expect(group.locator("td").first).to_have_text("3")
    # latest train/loss of children 0, 2, 4: 0.01, 0.03, 0.05
    expect(group.locator("td[data-key='train/loss']")).to_have_text("0.03 ± 0.02")
    assert ui.query()["group"] == "p:lr"
    ui.screenshot("dashboard-runs-groups")
    # A shared link with the default columns: the groups follow the columns once known.
    ui.goto(f"/experiments/{sweep.experiment_id}?filter=params.layers != ''&group=p:lr")
    group = page.get_by_test_id("groups-table").locator("tr[data-group='0.1']")
    expect(group.locator("td[data-key='train/loss']")).to_have_text("0.03 ± 0.02")
    group.get_by_role("button", name="0.1").click()
    expect(page.get_by_test_id("runs-filter")).to_have_value(
        "params.layers != '' and params.`lr` = '0.1'"
    )
    expect(_runs_rows(ui)).to_have_count(3)
    expect(table.locator("tbody tr")).to_have_count(1)
    ui.assert_no_console_errors()


def test_runs_table_in_a_narrow_window_scrolls_inside_its_frame(ui: UI, sweep: Sweep) -> None:
    from playwright.sync_api import expect

    page = ui.page
    page.set_viewport_size({"width": 420, "height": 800})
    ui.goto(f"/experiments/{sweep.experiment_id}")
    expect(_runs_rows(ui)).to_have_count(1 + CHILDREN + OTHERS)
    # The page itself does not scroll sideways (nothing is cut off the right edge)...
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    wrap = page.locator(".runs-wrap")
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")
    # ...the table does, and its last column can be brought into view.
    last = page.locator("[data-testid=runs-table] thead tr:last-child th").last
    last.scroll_into_view_if_needed()
    box = last.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 420 + 1
    ui.screenshot("dashboard-runs-narrow", full_page=False)


# run management ------------------------------------------------------------------------

EVIL_NOTE = """# Plan
**bold** and *calm* with `code` <img src=x onerror="window.__pwned=1">
- [docs](https://example.com/docs)
- [trap](javascript:window.__pwned=2)
"""


def _get_run(server: Any, run_id: str) -> Any:
    return _mlflow(server, f"/runs/get?run_id={run_id}")["run"]


def test_run_page_renames_describes_tags_deletes_and_restores_through_mlflows_api(
    ui: UI, steppe_server: Any
) -> None:
    from playwright.sync_api import expect

    import steppe

    client = steppe.Client(steppe_server.http_url)
    exp = client.set_experiment(f"dash-manage-{time.monotonic_ns()}").experiment_id
    rid = client.create_run(exp, run_name="to-edit", tags={"keep": "1", "drop": "x"}).info.run_id
    client.set_terminated(rid)
    page = ui.page
    ui.goto(f"/runs/{rid}")
    expect(page.get_by_test_id("run-name")).to_have_text("to-edit")

    page.get_by_test_id("rename-run").click()
    page.get_by_test_id("rename-input").fill("renamed")
    page.get_by_test_id("rename-input").press("Enter")
    expect(page.get_by_test_id("run-name")).to_have_text("renamed")
    assert _get_run(steppe_server, rid)["info"]["run_name"] == "renamed"

    # The description is Markdown, rendered from nodes: no HTML of the text gets in.
    page.get_by_test_id("edit-description").click()
    page.get_by_test_id("description-input").fill(EVIL_NOTE)
    page.get_by_test_id("save-description").click()
    note = page.get_by_test_id("run-description")
    expect(note.locator("h3")).to_have_text("Plan")
    expect(note.locator("strong")).to_have_text("bold")
    expect(note.locator("em")).to_have_text("calm")
    expect(note.locator("li")).to_have_count(2)
    expect(note.locator("a")).to_have_count(1)
    assert note.locator("a").get_attribute("href") == "https://example.com/docs"
    expect(note).to_contain_text("[trap](javascript:window.__pwned=2)")
    expect(note).to_contain_text('<img src=x onerror="window.__pwned=1">')
    assert note.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    tags = {t["key"]: t["value"] for t in _get_run(steppe_server, rid)["data"]["tags"]}
    assert tags["mlflow.note.content"] == EVIL_NOTE
    expect(page.get_by_test_id("edit-description")).to_have_text("Edit description")

    # Tags: add one, remove one.
    page.get_by_test_id("tag-key").fill("owner")
    page.get_by_test_id("tag-value").fill("ann")
    page.get_by_test_id("add-tag").get_by_role("button", name="Add tag").click()
    table = page.get_by_test_id("tags-table")
    expect(table.locator("tr[data-key=owner] td")).to_have_text("ann\u00d7")  # and its button
    table.locator("tr[data-key=drop]").get_by_test_id("remove-tag").click()
    expect(table.locator("tr[data-key=drop]")).to_have_count(0)
    tags = {t["key"]: t["value"] for t in _get_run(steppe_server, rid)["data"]["tags"]}
    assert tags["owner"] == "ann" and "drop" not in tags and tags["keep"] == "1"

    # Delete asks once more, then the run is deleted; restore brings it back.
    delete = page.get_by_test_id("delete-run")
    delete.click()
    expect(delete).to_have_text("Delete this run?")
    assert _get_run(steppe_server, rid)["info"]["lifecycle_stage"] == "active"
    delete.click()
    expect(page.get_by_test_id("run-deleted")).to_be_visible()
    assert _get_run(steppe_server, rid)["info"]["lifecycle_stage"] == "deleted"
    ui.screenshot("dashboard-run-managed")
    page.get_by_test_id("restore-run").click()
    expect(page.get_by_test_id("run-deleted")).to_be_hidden()
    assert _get_run(steppe_server, rid)["info"]["lifecycle_stage"] == "active"

    # The experiment: delete and restore from its page.
    ui.goto(f"/experiments/{exp}")
    page.get_by_test_id("delete-experiment").click()
    page.get_by_test_id("delete-experiment").click()
    expect(page.get_by_test_id("experiment-deleted")).to_be_visible()
    got = _mlflow(steppe_server, f"/experiments/get?experiment_id={exp}")["experiment"]
    assert got["lifecycle_stage"] == "deleted"
    page.get_by_test_id("restore-experiment").click()
    expect(page.get_by_test_id("delete-experiment")).to_be_visible()
    got = _mlflow(steppe_server, f"/experiments/get?experiment_id={exp}")["experiment"]
    assert got["lifecycle_stage"] == "active"
    ui.assert_no_console_errors()


def test_writes_a_server_refuses_show_its_message_and_change_nothing(
    ui: UI, browser: Any, steppe_server: Any, tmp_path: Any
) -> None:
    from playwright.sync_api import Route, expect

    import steppe
    from tests.conftest import start_server

    client = steppe.Client(steppe_server.http_url)
    rid = client.create_run("0", run_name="stays").info.run_id
    client.set_terminated(rid)
    page = ui.page

    # A read-only app (no ingest) answers every write 501 NOT_IMPLEMENTED with this message.
    def read_only(route: Route) -> None:
        body = {
            "error_code": "NOT_IMPLEMENTED",
            "message": "this steppe HTTP app is read-only (it was started without ingest)",
        }
        route.fulfill(status=501, content_type="application/json", body=json.dumps(body))

    page.route("**/api/2.0/mlflow/runs/**", read_only)
    ui.goto(f"/runs/{rid}")
    page.get_by_test_id("rename-run").click()
    page.get_by_test_id("rename-input").fill("changed")
    page.get_by_test_id("rename-input").press("Enter")
    error = page.get_by_test_id("action-error")
    expect(error).to_contain_text("This server is read-only")
    expect(error).to_contain_text("NOT_IMPLEMENTED")
    expect(page.get_by_test_id("rename-input")).to_have_value("changed")  # kept for a retry
    assert _get_run(steppe_server, rid)["info"]["run_name"] == "stays"
    ui.assert_no_console_errors("status of 501")

    # A server with a token, and a browser that lost its cookie: 401, said so.
    server = start_server(tmp_path / "data", "--token", "s3cret")
    context = browser.new_context()
    try:
        created = urllib.request.Request(
            f"{server.http_url}/api/2.0/mlflow/runs/create",
            data=json.dumps({"experiment_id": "0", "run_name": "guarded"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer s3cret"},
        )
        with urllib.request.urlopen(created, timeout=30) as r:
            guarded = json.load(r)["run"]["info"]["run_id"]
        tab = context.new_page()
        tab.goto(f"{server.http_url}/?token=s3cret")  # the login: an HttpOnly cookie
        tab.goto(f"{server.http_url}/runs/{guarded}")
        expect(tab.get_by_test_id("run-name")).to_have_text("guarded")
        context.clear_cookies()
        tab.get_by_test_id("delete-run").click()
        tab.get_by_test_id("delete-run").click()
        error = tab.get_by_test_id("action-error")
        expect(error).to_contain_text("The server needs a token")
        expect(error).to_contain_text("Deletion not saved")
        expect(tab.get_by_test_id("run-deleted")).to_be_hidden()
        check = urllib.request.Request(
            f"{server.http_url}/api/2.0/mlflow/runs/get?run_id={guarded}",
            headers={"Authorization": "Bearer s3cret"},
        )
        with urllib.request.urlopen(check, timeout=30) as r:
            assert json.load(r)["run"]["info"]["lifecycle_stage"] == "active"
    finally:
        context.close()
        assert server.stop() == 0


# charts ----------------------------------------------------------------------------------


def _sections(ui: UI) -> list[str]:
    prefixes: list[str] = ui.page.get_by_test_id("chart-section").evaluate_all(
        "els => els.filter(e => !e.hidden).map(e => e.dataset.prefix)"
    )
    return prefixes


def test_run_page_charts_in_sections_by_prefix_one_value_and_keys_combined(
    ui: UI, sweep: Sweep
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/runs/{sweep.children[0]}")
    expect(page.get_by_test_id("chart-section")).to_have_count(3)
    assert _sections(ui) == ["system", "train", "val"]
    val = page.locator("[data-testid=chart-section][data-prefix=val]")
    expect(val.locator("summary")).to_have_text("val/2")
    # A single point is its value, not a dot on an axis.
    acc = page.get_by_test_id("chart-val/acc")
    acc.scroll_into_view_if_needed()  # charts load as they come near the viewport
    expect(acc).to_have_attribute("data-mode", "single")
    expect(acc.get_by_test_id("single-value")).to_have_text("0.5")
    expect(acc.locator(".chart-plot")).to_be_hidden()
    expect(page.get_by_test_id("chart-val/loss")).to_have_attribute("data-mode", "exact")

    # Collapsing a section: kept in the URL, its charts out of the page.
    system = page.locator("[data-testid=chart-section][data-prefix=system]")
    system.locator("summary").click()
    expect(page.get_by_test_id("chart-system/gpu")).to_be_hidden()
    page.wait_for_function("() => new URLSearchParams(location.search).get('closed') === 'system'")

    # The key search filters across sections.
    page.get_by_test_id("metrics-search").fill("loss")
    expect(val.locator("summary")).to_have_text("val/1 of 2")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=chart-section]')]"
        ".filter(e => !e.hidden).map(e => e.dataset.prefix).join() === 'train,val'"
    )
    expect(page.get_by_test_id("chart-val/acc")).to_be_hidden()
    page.get_by_test_id("metrics-search").fill("")

    # Several keys in one chart, kept in the URL.
    page.get_by_test_id("combine-keys").fill("train/loss, val/loss")
    page.get_by_test_id("combine-form").get_by_role("button", name="Add chart").click()
    combined = page.get_by_test_id("combined-train/loss:val/loss")
    combined.scroll_into_view_if_needed()
    expect(combined.get_by_test_id("chart-legend").locator(".legend-row")).to_have_count(2)
    expect(combined).to_have_attribute("data-points", "200")
    assert ui.query()["combine"] == "train/loss:val/loss"
    page.get_by_test_id("combine-keys").fill("train/loss, nope")
    page.get_by_test_id("combine-keys").press("Enter")
    expect(page.get_by_test_id("combine-form")).to_contain_text("No key “nope” in this run.")
    ui.screenshot("dashboard-run-sections")
    page.reload()
    expect(page.get_by_test_id("combined-train/loss:val/loss")).to_have_attribute(
        "data-points", "200"
    )
    expect(page.locator("[data-testid=chart-section][data-prefix=system]")).not_to_have_attribute(
        "open", ""
    )
    page.get_by_test_id("remove-combined").click()
    expect(page.get_by_test_id("combined-train/loss:val/loss")).to_have_count(0)
    ui.assert_no_console_errors()


SMOOTHED_SPREAD = """el => {
  const c = el.steppeChart, lay = c.layout[0], ys = c.u.data[lay.sm];
  const mid = ys.slice(Math.floor(ys.length / 4), Math.floor(3 * ys.length / 4));
  return Math.sqrt(mid.reduce((a, y) => a + (y - 1) ** 2, 0) / mid.length);
}"""


def test_window_smoothing_is_smooth_on_a_long_noisy_series(ui: UI, steppe_server: Any) -> None:
    import numpy as np
    from playwright.sync_api import expect

    import steppe

    client = steppe.Client(steppe_server.http_url)
    exp = client.set_experiment(f"dash-smooth-{time.monotonic_ns()}").experiment_id
    rid = client.create_run(exp, run_name="noisy").info.run_id
    steps = np.arange(20_000, dtype=np.int64)
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, steps.size)
    client.log_series(rid, "loss", 1.0 + noise, steps=steps)
    client.flush()
    client.set_terminated(rid)
    page = ui.page
    ui.goto(f"/runs/{rid}?smooth=0.99")
    chart = page.get_by_test_id("chart-loss")
    expect(chart).to_have_attribute("data-points", "20000")
    expect(chart).to_have_attribute("data-mode", "exact")
    ema = chart.evaluate(SMOOTHED_SPREAD)
    page.get_by_test_id("smoothing-mode").select_option("window")
    page.wait_for_function("() => new URLSearchParams(location.search).get('smode') === 'window'")
    window = chart.evaluate(SMOOTHED_SPREAD)
    # EMA 0.99 averages ~100 points of 20,000; the window ~2,000: about 4x less noise left.
    assert ema > 0.012, ema
    assert window < ema / 2.5, (window, ema)
    ui.screenshot("dashboard-window-smoothing", full_page=False)
    ui.assert_no_console_errors()


def test_many_overlaid_runs_draw_bold_means_on_faint_bands_and_hover_picks_one(
    ui: UI, steppe_server: Any
) -> None:
    import numpy as np
    from playwright.sync_api import expect

    import steppe

    client = steppe.Client(steppe_server.http_url)
    exp = client.set_experiment(f"dash-many-{time.monotonic_ns()}").experiment_id
    steps = np.arange(30_000, dtype=np.int64)
    rng = np.random.default_rng(3)
    ids = []
    for i in range(5):
        rid = client.create_run(exp, run_name=f"seed-{i}").info.run_id
        client.log_series(rid, "loss", i + rng.uniform(-0.2, 0.2, steps.size), steps=steps)
        ids.append(rid)
    client.flush()
    for rid in ids:
        client.set_terminated(rid)
    page = ui.page
    ui.goto(f"/compare?runs={','.join(ids)}")
    chart = page.get_by_test_id("compare-charts").get_by_test_id("chart-loss")
    expect(chart).to_have_attribute("data-mode", "bucketed")
    look = chart.evaluate(
        """el => { const c = el.steppeChart, u = c.u;
          const fill = (b) => (typeof b.fill === "function" ? b.fill(u, b.series[0]) : b.fill);
          return { fill: u.bands.map(fill), width: c.layout.map(l => u.series[l.mid].width),
                   edge: c.layout.map(l => u.series[l.hi].stroke()) }; }"""
    )
    assert all(f.endswith(", 0.05)") for f in look["fill"]), look
    assert look["width"] == [2] * 5, look
    assert all(e.endswith(", 0)") for e in look["edge"]), look
    # Hover on run 3's mean line: that run comes forward, its legend row is marked.
    x, y = chart.evaluate(
        """el => { const u = el.steppeChart.u, r = u.over.getBoundingClientRect();
          return [r.left + u.valToPos(15000, 'x'), r.top + u.valToPos(3, 'y')]; }"""
    )
    page.mouse.move(x, y)
    expect(chart).to_have_attribute("data-focused-run", ids[3])
    expect(chart.locator(".legend-row.focused")).to_have_attribute("data-run-id", ids[3])
    ui.screenshot("dashboard-compare-many", full_page=False)
    page.mouse.move(x, y + 400)
    ui.assert_no_console_errors()


# explore ---------------------------------------------------------------------------------


def test_parallel_coordinates_and_scatter_follow_and_drive_the_selection(
    ui: UI, sweep: Sweep
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/experiments/{sweep.experiment_id}?filter=params.layers != ''")
    expect(_runs_rows(ui)).to_have_count(CHILDREN)
    page.get_by_test_id("explore").locator("summary").click()
    page.get_by_test_id("explore-metric").select_option("train/loss")
    parallel = page.get_by_test_id("parallel-coordinates")
    lines = parallel.locator("path[data-run-id]")
    expect(lines).to_have_count(CHILDREN)
    # Axes layers, lr, then the metric; child-5 has the highest latest train/loss: the top.
    labels = parallel.locator("text.pc-label").all_text_contents()
    assert labels == ["layers", "lr", "train/loss"]
    top = parallel.locator(f"path[data-run-id='{sweep.children[5]}']").get_attribute("d")
    assert top is not None and top.endswith(",26.0"), top

    # A click on a line selects its run in the table; the table's checkbox drives the plots.
    parallel.locator(f"path[data-run-id='{sweep.children[2]}']").dispatch_event("click")
    expect(page.get_by_test_id("selection-count")).to_have_text("1 run selected")
    row = page.locator(f"tr[data-run-id='{sweep.children[2]}']")
    expect(row.get_by_test_id("select-run")).to_be_checked()
    expect(parallel.locator(f"path[data-run-id='{sweep.children[2]}']")).to_have_class(
        "pc-line selected"
    )
    page.locator(f"tr[data-run-id='{sweep.children[3]}']").get_by_test_id("select-run").check()
    expect(parallel.locator("path.selected")).to_have_count(2)

    scatter = page.get_by_test_id("scatter")
    page.get_by_test_id("scatter-x").select_option("p:layers")
    points = scatter.locator("circle[data-run-id]")
    expect(points).to_have_count(CHILDREN)
    first = scatter.locator(f"circle[data-run-id='{sweep.children[0]}']")
    last = scatter.locator(f"circle[data-run-id='{sweep.children[5]}']")
    assert first.get_attribute("cx") == "48.0" and last.get_attribute("cx") == "704.0"
    expect(scatter.locator("circle.selected")).to_have_count(2)
    scatter.locator(f"circle[data-run-id='{sweep.children[3]}']").dispatch_event("click")
    expect(page.get_by_test_id("selection-count")).to_have_text("1 run selected")
    assert ui.query()["sel"] == sweep.children[2]
    page.get_by_test_id("explore").scroll_into_view_if_needed()
    ui.screenshot("dashboard-explore")
    ui.assert_no_console_errors()


# artifacts -------------------------------------------------------------------------------

EVIL_HTML = (
    "<script>parent.__pwned = 1</script><h1>Report</h1>"
    '<img src="http://127.0.0.1:9/pixel.png" onerror="parent.__pwned = 2">'
)


def _wav(path: Any) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x10" * 8000)  # one second


def test_artifact_previews_tables_sandboxed_html_and_audio(
    ui: UI, tracking: str, tmp_path: Any
) -> None:
    from playwright.sync_api import expect

    import steppe

    with steppe.start_run(run_name="with-previews") as run:
        steppe.log_table({"epoch": [1, 2, 3], "label": ["cat", "dog", "<b>x</b>"]}, "results.json")
        steppe.log_text(EVIL_HTML, "report.html")
        _wav(tmp_path / "beep.wav")
        steppe.log_artifact(str(tmp_path / "beep.wav"))
    page = ui.page
    ui.goto(f"/runs/{run.info.run_id}")
    section = page.get_by_test_id("artifacts")
    section.scroll_into_view_if_needed()

    section.locator("li[data-path='results.json'] > button").click()
    table = page.get_by_test_id("artifact-table")
    expect(table.locator("thead th")).to_have_text(["epoch", "label"])
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("tbody tr").nth(2).locator("td").nth(1)).to_have_text("<b>x</b>")
    expect(page.get_by_test_id("artifact-table-size")).to_have_text("3 rows \u00d7 2 columns")

    section.locator("li[data-path='report.html'] > button").click()
    frame = page.get_by_test_id("artifact-html")
    expect(frame).to_have_attribute("sandbox", "")
    expect(page.frame_locator("[data-testid=artifact-html]").locator("h1")).to_have_text("Report")
    assert page.evaluate("window.__pwned") is None  # neither the script nor the onerror ran

    section.locator("li[data-path='beep.wav'] > button").click()
    audio = page.get_by_test_id("artifact-audio")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=artifact-audio]')?.duration > 0.9"
    )
    assert audio.evaluate("el => Math.round(el.duration)") == 1
    ui.screenshot("dashboard-artifact-previews")
    # What Chromium reports is the proof: the script was blocked, and so was the pixel.
    assert any("Blocked script execution in 'about:srcdoc'" in e for e in ui.console_errors)
    assert any("img-src data:" in e for e in ui.console_errors)
    ui.assert_no_console_errors("about:srcdoc")


def test_a_run_of_many_keys_makes_only_the_charts_it_shows(ui: UI, steppe_server: Any) -> None:
    from playwright.sync_api import expect

    import steppe

    client = steppe.Client(steppe_server.http_url)
    exp = client.set_experiment(f"dash-wide-{time.monotonic_ns()}").experiment_id
    rid = client.create_run(exp, run_name="wide").info.run_id
    keys = [f"a/k{i:03d}" for i in range(70)] + [f"b/k{i:03d}" for i in range(190)]
    for key in keys:
        client.log_metric(rid, key, 1.0, step=0)
    client.flush()
    client.set_terminated(rid)
    page = ui.page
    ui.goto(f"/runs/{rid}")
    a = page.locator("[data-testid=chart-section][data-prefix=a]")
    b = page.locator("[data-testid=chart-section][data-prefix=b]")
    # More than 200 keys: the first section opens, 60 charts at a time; the others wait.
    expect(a.locator(".chart-card")).to_have_count(60)
    expect(a.get_by_test_id("section-more")).to_have_text("Show 10 more (10 not shown)")
    assert b.get_attribute("open") is None
    assert page.locator(".chart-card").count() == 60
    a.get_by_test_id("section-more").click()
    expect(a.locator(".chart-card")).to_have_count(70)
    expect(a.get_by_test_id("section-more")).to_be_hidden()
    b.locator("summary").click()
    expect(b.locator(".chart-card")).to_have_count(60)
    page.wait_for_function("() => new URLSearchParams(location.search).get('open') === 'b'")
    # The search makes what it finds, in closed sections too.
    page.get_by_test_id("metrics-search").fill("k18")
    expect(b.locator(".chart-card:not([hidden])")).to_have_count(10)
    expect(a).to_be_hidden()
    ui.assert_no_console_errors()


# A clip made by the same Chromium: a canvas stream recorded with MediaRecorder, so the test
# needs no encoder and downloads nothing. Returns base64, or "" when it cannot record the type.
_RECORD = """async (types) => {
  if (typeof MediaRecorder === "undefined") return "";
  const type = types.find((t) => MediaRecorder.isTypeSupported(t));
  if (!type) return "";
  const canvas = Object.assign(document.createElement("canvas"), { width: 64, height: 48 });
  const g = canvas.getContext("2d");
  const stream = canvas.captureStream(25);
  const recorder = new MediaRecorder(stream, { mimeType: type });
  const parts = [];
  recorder.ondataavailable = (e) => e.data.size && parts.push(e.data);
  const stopped = new Promise((r) => { recorder.onstop = r; });
  recorder.start();
  for (let i = 0; i < 12; i++) {
    g.fillStyle = `hsl(${i * 30}, 80%, 50%)`;
    g.fillRect(0, 0, 64, 48);
    await new Promise((r) => setTimeout(r, 40));
  }
  recorder.stop();
  await stopped;
  const bytes = new Uint8Array(await new Blob(parts, { type }).arrayBuffer());
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}"""


@pytest.mark.parametrize(
    ("name", "types", "magic"),
    [
        # EBML header (Matroska/WebM)
        ("clip.webm", ["video/webm;codecs=vp8", "video/webm"], (0, b"\x1a\x45\xdf\xa3")),
        # ISO BMFF: the first box is "ftyp"
        ("clip.mp4", ["video/mp4;codecs=avc1", "video/mp4"], (4, b"ftyp")),
    ],
)
def test_a_logged_video_plays_in_the_artifact_preview(
    ui: UI, tracking: str, tmp_path: Any, name: str, types: list[str], magic: tuple[int, bytes]
) -> None:
    import base64

    import steppe

    page = ui.page
    ui.goto("/")
    recorded = page.evaluate(_RECORD, types)
    if not recorded:
        pytest.skip(f"this Chromium cannot record any of {types}")
    clip = tmp_path / name
    clip.write_bytes(base64.b64decode(recorded))
    at, header = magic
    assert clip.read_bytes()[at : at + len(header)] == header
    with steppe.start_run(run_name=f"with-{name}") as run:
        steppe.log_artifact(str(clip))
    ui.goto(f"/runs/{run.info.run_id}")
    section = page.get_by_test_id("artifacts")
    section.scroll_into_view_if_needed()
    section.locator(f"li[data-path='{name}'] > button").click()
    video = page.get_by_test_id("artifact-video")
    assert video.get_attribute("controls") is not None
    # Loaded and decoded: its metadata gives the recorded frame size, with no media error.
    page.wait_for_function(
        "() => { const v = document.querySelector('[data-testid=artifact-video]');"
        " return v && v.readyState >= 1 && v.videoWidth > 0; }"
    )
    assert video.evaluate("v => [v.videoWidth, v.videoHeight, v.error]") == [64, 48, None]
    assert video.evaluate("v => new URL(v.currentSrc).searchParams.get('path')") == name
    ui.screenshot(f"dashboard-artifact-video-{name.split('.')[-1]}")
    ui.assert_no_console_errors()
