"""The web UI in a real browser: Debian's headless Chromium driven by Playwright, against a real
`steppe server` (the `steppe_server` and `logged_run` fixtures in conftest.py).

Needs /usr/bin/chromium (`apt-get install chromium`); never uses Playwright's own browser builds.
Screenshots land in tests/screenshots/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.browser import TIMEOUT_MS, UI, browser, ui  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def _api(server: Any, path: str) -> Any:
    url = f"{server.http_url.rstrip('/')}/api/steppe/v1{path}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _attr(value: str) -> str:
    """A string as a quoted CSS attribute value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def test_run_page_shows_name_params_and_a_chart_per_metric(
    ui: UI, steppe_server: Any, logged_run: Any
) -> None:
    from playwright.sync_api import expect

    run = _api(steppe_server, f"/runs/{_q(logged_run.run_id)}")["run"]
    ui.goto(f"/runs/{_q(logged_run.run_id)}")
    page = ui.page

    expect(page.get_by_test_id("run-name")).to_have_text(
        run["info"]["run_name"] or logged_run.run_id
    )
    expect(page.get_by_test_id("run-status")).to_have_text(run["info"]["status"])

    params = page.get_by_test_id("params-table")
    for key, value in logged_run.params.items():
        row = params.locator(f"tbody tr[data-key={_attr(key)}]")
        expect(row.locator("th")).to_have_text(key)
        expect(row.locator("td")).to_have_text(str(value))
    expect(page.get_by_test_id("tags-table")).to_be_visible()

    # In sections by key prefix (one here: the keys have none).
    expect(page.locator("[data-testid=charts] .chart-card[data-key]")).to_have_count(
        len(logged_run.metric_keys)
    )
    for key in logged_run.metric_keys:
        chart = page.get_by_test_id(f"chart-{key}")
        expect(chart).to_have_attribute("data-key", key)
        chart.scroll_into_view_if_needed()  # charts load when they come into view
        expect(chart.locator("canvas")).to_have_count(1)
        # data-mode is set once the series answer is drawn, exact or bucketed.
        expect(chart).to_have_attribute("data-mode", re.compile(r"^(exact|bucketed)$"))
        expect(chart.get_by_test_id("chart-error")).to_have_count(0)
    expect(page.get_by_test_id("error")).to_have_count(0)

    page.evaluate("window.scrollTo(0, 0)")
    ui.screenshot("run-page")
    ui.assert_no_console_errors()


def test_experiments_page_lists_the_experiment_and_runs_table_links_to_the_run(
    ui: UI, steppe_server: Any, logged_run: Any
) -> None:
    from playwright.sync_api import expect

    exp_id = logged_run.experiment_id
    exp_name = _api(steppe_server, f"/experiments/{_q(exp_id)}")["experiment"]["name"]
    page = ui.page
    ui.goto("/")

    row = page.get_by_test_id("experiments-table").locator(
        f"tbody tr[data-experiment-id={_attr(exp_id)}]"
    )
    link = row.get_by_role("link", name=exp_name, exact=True)
    expect(link).to_have_attribute("href", f"/experiments/{_q(exp_id)}")

    search = page.get_by_test_id("experiments-search")
    search.fill(exp_name + " no such experiment")
    expect(row).to_have_count(0)
    search.fill(exp_name)
    expect(row).to_have_count(1)
    ui.screenshot("experiments-page")

    link.click()  # an in-app link: pushState, no reload
    expect(page).to_have_url(f"{ui.base_url}/experiments/{_q(exp_id)}")
    runs = page.get_by_test_id("runs-table")
    for key in logged_run.params:
        expect(runs.locator(f"thead th[data-col={_attr('p:' + key)}]")).to_have_count(1)
    for key in logged_run.metric_keys:
        expect(runs.locator(f"thead th[data-col={_attr('m:' + key)}]")).to_have_count(1)

    header = runs.locator("thead th[data-col=name]")
    header.get_by_role("button").click()
    expect(runs.locator("thead th[data-col=name]")).to_have_attribute("aria-sort", "ascending")
    runs.locator("thead th[data-col=name]").get_by_role("button").click()
    expect(runs.locator("thead th[data-col=name]")).to_have_attribute("aria-sort", "descending")
    ui.screenshot("runs-table")

    run_link = runs.locator(f"a[data-run-id={_attr(logged_run.run_id)}]")
    expect(run_link).to_have_attribute("href", f"/runs/{_q(logged_run.run_id)}")
    run_link.click()
    expect(page).to_have_url(f"{ui.base_url}/runs/{_q(logged_run.run_id)}")
    expect(page.get_by_test_id("run-name")).not_to_be_empty()

    page.go_back()
    expect(page.get_by_test_id("runs-table")).to_be_visible()
    ui.assert_no_console_errors()


def test_unknown_run_shows_the_api_error_inline(ui: UI) -> None:
    from playwright.sync_api import expect

    ui.goto("/runs/" + "deadbeef" * 4)  # well formed, never logged
    expect(ui.page.get_by_test_id("error")).to_contain_text("Run not found")
    ui.screenshot("run-not-found")
    # The 404 itself shows in the console as a failed resource; nothing may throw.
    assert not ui.page_errors, ui.page_errors


def _png(width: int, height: int) -> bytes:
    """A small valid RGB PNG (a gradient), built with the standard library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 8 % 256, y * 8 % 256, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_run_page_lists_artifacts_and_previews_text_json_and_images(
    ui: UI, tracking: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    import steppe

    (tmp_path / "curve.png").write_bytes(_png(32, 24))
    with steppe.start_run(run_name="with-artifacts") as run:
        steppe.log_text("first line\nsecond <b>line</b>", "notes/readme.txt")
        steppe.log_dict({"lr": 0.1, "layers": [64, 64]}, "config.json")
        steppe.log_artifact(tmp_path / "curve.png", artifact_path="plots")
    ui.goto(f"/runs/{_q(run.info.run_id)}")
    page = ui.page

    section = page.get_by_test_id("artifacts")
    expect(section.get_by_role("heading", name="Artifacts")).to_be_visible()
    top = section.get_by_test_id("artifacts-list").locator(":scope > li")
    expect(top).to_have_count(3)  # folders first, then files
    expect(top.nth(0)).to_have_attribute("data-path", "notes")
    expect(top.nth(1)).to_have_attribute("data-path", "plots")
    expect(top.nth(2)).to_have_attribute("data-path", "config.json")

    section.locator("li[data-path=notes] > button").click()
    readme = section.locator("li[data-path='notes/readme.txt']")
    readme.get_by_role("button", name="readme.txt").click()
    # Shown as text: the markup in the file stays characters, never elements.
    expect(page.get_by_test_id("artifact-text")).to_have_text("first line\nsecond <b>line</b>")
    expect(page.get_by_test_id("artifact-preview").locator("b")).to_have_count(0)
    expect(page.get_by_test_id("artifact-preview-path")).to_have_text("notes/readme.txt")

    section.locator("li[data-path='config.json'] > button").click()
    expect(page.get_by_test_id("artifact-text")).to_have_text(
        json.dumps({"lr": 0.1, "layers": [64, 64]}, indent=2)
    )

    section.locator("li[data-path=plots] > button").click()
    section.locator("li[data-path='plots/curve.png'] > button").click()
    image = page.get_by_test_id("artifact-image")
    expect(image).to_be_visible()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=artifact-image]')?.naturalWidth === 32"
    )
    section.scroll_into_view_if_needed()
    ui.screenshot("run-artifacts")
    ui.assert_no_console_errors()


def test_images_logged_by_key_and_step_show_as_a_gallery_with_a_step_slider(
    ui: UI, tracking: str
) -> None:
    import numpy as np
    from playwright.sync_api import expect

    import steppe

    with steppe.start_run(run_name="with-images") as run:
        for step, width in ((0, 8), (5, 16), (10, 24)):
            steppe.log_image(
                np.zeros((6, width, 3), dtype=np.uint8), key="samples/digits", step=step
            )
        steppe.log_image(np.full((4, 4), 255, dtype=np.uint8), key="mask", step=1)
    with steppe.start_run(run_name="no-images") as plain:
        steppe.log_metric("loss", 1.0)

    ui.goto(f"/runs/{_q(run.info.run_id)}")
    page = ui.page
    section = page.get_by_test_id("images")
    expect(section.get_by_role("heading", name="Images")).to_be_visible()
    cards = section.get_by_test_id("gallery-card")
    expect(cards).to_have_count(2)
    digits = section.locator("[data-testid=gallery-card][data-key='samples/digits']")
    # The newest step first, its preview image, with the step named.
    expect(digits.get_by_test_id("gallery-step")).to_have_text("step 10 (3 of 3)")
    width = "el => el.complete && el.naturalWidth"
    assert (
        digits.get_by_test_id("gallery-image").evaluate(
            f"async el => {{ await el.decode(); return ({width})(el); }}"
        )
        == 24
    )
    digits.get_by_test_id("gallery-slider").focus()
    page.keyboard.press("Home")
    expect(digits.get_by_test_id("gallery-step")).to_have_text("step 0 (1 of 3)")
    page.wait_for_function(
        "() => document.querySelector(\"[data-key='samples/digits'] img\").naturalWidth === 8"
    )
    mask = section.locator("[data-testid=gallery-card][data-key=mask]")
    expect(mask.get_by_test_id("gallery-slider")).to_have_count(0)  # one step: no slider
    section.scroll_into_view_if_needed()
    ui.screenshot("run-images")
    ui.assert_no_console_errors()

    ui.goto(f"/runs/{_q(plain.info.run_id)}")
    expect(page.get_by_test_id("run-name")).to_have_text("no-images")
    expect(page.get_by_test_id("images")).to_be_hidden()
    ui.assert_no_console_errors()
