"""The Models UI in a real browser: registered models (search, paging, tags, description), a
model's versions (stages, aliases, links to the source run and LoggedModel), the LoggedModel page
(flavors and signature from its MLmodel file, params, files), the run and experiment pages' models
sections, and the user's example (`mlflow.sklearn.autolog()`) seen on the run page.

Debian's headless Chromium through Playwright against the session's real `steppe server`; the data
comes from the real mlflow client pointed at it.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import UI, browser, ui  # noqa: F401 (fixtures)
from tests.conftest import start_server

pytestmark = [
    pytest.mark.browser,
    # mlflow's own model code warns (pickle, stages, pydantic, ...): not ours to fix.
    pytest.mark.filterwarnings(
        "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
    ),
]

EVIL_TAG = "<script>window.__pwned = 1</script>"
HTTP_404 = "the server responded with a status of 404"
HTTP_400 = "the server responded with a status of 400"


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@dataclass
class Registry:
    prefix: str
    name: str  # the registered model with two versions
    run_id: str  # the source run of version 1
    experiment_id: str
    model_id: str  # the LoggedModel behind version 1
    model_id_2: str
    others: list[str]  # more registered models, for search and paging


@pytest.fixture(scope="module")
def mlflow_client(steppe_server: Any) -> Iterator[Any]:
    import mlflow

    mlflow.set_tracking_uri(steppe_server.http_url)
    mlflow.set_registry_uri(steppe_server.http_url)
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def registry(mlflow_client: Any) -> Registry:
    """Iris LogisticRegression logged twice with a signature, registered as two versions of one
    model (version 1 @champion in Staging, a <script> tag, a description), and three more models."""
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow = mlflow_client
    prefix = f"uim{uuid.uuid4().hex[:6]}"
    x, y = load_iris(return_X_y=True, as_frame=True)
    mlflow.set_experiment(f"{prefix}-iris")
    model = LogisticRegression(max_iter=300).fit(x, y)
    signature = infer_signature(x, model.predict(x))
    with mlflow.start_run(run_name="iris-train") as run:
        mlflow.log_param("max_iter", 300)
        info = mlflow.sklearn.log_model(model, name="model", signature=signature)
    with mlflow.start_run(run_name="iris-retrain"):
        info2 = mlflow.sklearn.log_model(model, name="model", signature=signature)
    name = f"{prefix}-iris-clf"
    client = mlflow.MlflowClient()
    v1 = mlflow.register_model(f"models:/{info.model_id}", name)
    mlflow.register_model(f"models:/{info2.model_id}", name)
    client.set_registered_model_alias(name, "champion", v1.version)
    client.transition_model_version_stage(name, v1.version, "Staging")
    client.set_registered_model_tag(name, "team", EVIL_TAG)
    client.update_registered_model(name, description="Iris <b>classifier</b>, v1 is live")
    others = [f"{prefix}-other-{i}" for i in range(3)]
    for other in others:
        client.create_registered_model(other)
    return Registry(
        prefix,
        name,
        run.info.run_id,
        run.info.experiment_id,
        info.model_id,
        info2.model_id,
        others,
    )


def _models_rows(ui: UI) -> Any:
    return ui.page.get_by_test_id("models-table").locator("tbody tr[data-model-name]")


def test_models_page_lists_searches_and_pages_registered_models(ui: UI, registry: Registry) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto("/")
    page.locator(".topnav a", has_text="Models").click()
    expect(page).to_have_url(ui.base_url + "/models")

    # MLflow's filter syntax in the search box.
    box = page.get_by_test_id("models-search")
    box.fill(f"name LIKE '{registry.prefix}-%'")
    box.press("Enter")
    expect(_models_rows(ui)).to_have_count(4)
    row = page.locator(f"tr[data-model-name='{registry.name}']")
    expect(row.locator("td[data-col=latest]")).to_have_text("Version 2")
    expect(row.locator("td[data-col=aliases]")).to_have_text("@champion v1")
    # The tag is user input: shown as text, never run.
    expect(row.locator("td[data-col=tags]")).to_have_text(f"team={EVIL_TAG}")
    expect(row.locator("td[data-col=description]")).to_have_text(
        "Iris <b>classifier</b>, v1 is live"
    )
    assert page.evaluate("window.__pwned") is None
    assert page.locator("td[data-col=tags] script").count() == 0

    # A bare word searches names; the filter survives a reload.
    box.fill(f"{registry.prefix}-other")
    box.press("Enter")
    expect(_models_rows(ui)).to_have_count(3)
    assert ui.query()["q"] == f"{registry.prefix}-other"
    page.reload()
    expect(_models_rows(ui)).to_have_count(3)

    # Paging with next_page_token, two per page.
    ui.goto(f"/models?q={_q(registry.prefix)}&size=2")
    expect(_models_rows(ui)).to_have_count(2)
    first = _models_rows(ui).locator("[data-testid=model-link]").all_inner_texts()
    expect(page.get_by_test_id("page-info")).to_have_text("Models 1\u20132")
    page.get_by_test_id("next-page").click()
    expect(page.get_by_test_id("page-info")).to_have_text("Models 3\u20134")
    expect(_models_rows(ui)).to_have_count(2)
    second = _models_rows(ui).locator("[data-testid=model-link]").all_inner_texts()
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    assert sorted(first + second) == sorted([registry.name, *registry.others])
    page.get_by_test_id("prev-page").click()
    expect(_models_rows(ui).locator("[data-testid=model-link]")).to_have_text(first)

    # A bad filter: the server's message, naming the field.
    box = page.get_by_test_id("models-search")
    box.fill("name = ")
    box.press("Enter")
    expect(page.get_by_test_id("filter-error")).to_contain_text("filter")
    box.fill("name = 'no-such-model-anywhere'")
    box.press("Enter")
    expect(page.get_by_test_id("models-table").locator("tr.empty")).to_have_text(
        "No registered model matches the search."
    )
    ui.assert_no_console_errors(HTTP_400)


def test_model_page_shows_versions_with_stages_aliases_and_links_run_and_model(
    ui: UI, registry: Registry
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/models?q={_q(registry.name)}")
    page.get_by_test_id("model-link").filter(has_text=registry.name).click()
    expect(page.get_by_test_id("model-name")).to_have_text(registry.name)
    expect(page.get_by_test_id("model-description")).to_have_text(
        "Iris <b>classifier</b>, v1 is live"
    )
    expect(page.get_by_test_id("model-tags").locator("tr[data-key=team] td")).to_have_text(EVIL_TAG)
    versions = page.get_by_test_id("versions-table")
    expect(versions.locator("tbody tr[data-version]")).to_have_count(2)
    v1 = versions.locator("tr[data-version='1']")
    expect(v1.get_by_test_id("version-stage")).to_have_text("Staging")
    expect(v1.get_by_test_id("version-aliases")).to_have_text("@champion")
    expect(versions.locator("tr[data-version='2']").get_by_test_id("version-stage")).to_have_text(
        "None"
    )
    expect(v1.get_by_test_id("version-model-link")).to_have_attribute(
        "href", f"/logged-models/{registry.model_id}"
    )
    run_link = v1.get_by_test_id("version-run-link")
    expect(run_link).to_have_attribute("href", f"/runs/{registry.run_id}")
    expect(run_link).to_have_text("iris-train")  # the run's name, filled in
    assert page.evaluate("window.__pwned") is None
    ui.screenshot("models-registered-model")

    # run -> model -> run: the version's source run lists the model it logged.
    run_link.click()
    expect(page).to_have_url(ui.base_url + f"/runs/{registry.run_id}")
    models = page.get_by_test_id("run-models-table")
    row = models.locator(f"tr[data-model-id='{registry.model_id}']")
    expect(row.get_by_test_id("run-model-version")).to_have_text(f"{registry.name} v1")
    expect(row.locator("[data-flavor=sklearn]")).to_have_count(1)
    expect(row.get_by_test_id("signature-summary")).to_contain_text("sepal length (cm): double")
    expect(row.get_by_test_id("signature-summary")).to_contain_text("tensor int64 (-1)")
    row.get_by_test_id("run-model-link").click()
    expect(page).to_have_url(ui.base_url + f"/logged-models/{registry.model_id}")
    page.get_by_test_id("logged-model-run-link").click()
    expect(page).to_have_url(ui.base_url + f"/runs/{registry.run_id}")
    ui.assert_no_console_errors()


def test_logged_model_page_shows_flavors_signature_params_registrations_and_files(
    ui: UI, registry: Registry
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/logged-models/{registry.model_id}")
    expect(page.get_by_test_id("logged-model-name")).to_have_text("model")
    expect(page.get_by_test_id("logged-model-status")).to_have_text("READY")
    expect(page.get_by_test_id("logged-model-run-link")).to_have_attribute(
        "href", f"/runs/{registry.run_id}"
    )
    flavors = page.get_by_test_id("flavors-table")
    expect(flavors.locator("tr[data-flavor=sklearn]")).to_contain_text("sklearn_version")
    expect(flavors.locator("tr[data-flavor=python_function]")).to_contain_text(
        "loader_module: mlflow.sklearn"
    )
    inputs = page.get_by_test_id("signature-inputs")
    expect(inputs.locator("tbody tr")).to_have_count(4)
    expect(inputs.locator("tr[data-name='petal width (cm)'] td[data-col=type]")).to_have_text(
        "double"
    )
    expect(page.get_by_test_id("signature-outputs").locator("td[data-col=type]")).to_have_text(
        "tensor int64 (-1)"
    )
    regs = page.get_by_test_id("model-registrations")
    expect(regs.locator(f"tr[data-name='{registry.name}']")).to_contain_text("Version 1")
    expect(page.get_by_test_id("params-table")).to_be_visible()

    # The model's files through the artifact proxy: MLmodel previews as text, with a download.
    entry = page.locator("[data-testid=artifact-entry][data-path=MLmodel]")
    expect(entry).to_have_count(1)
    expect(page.locator("[data-testid=artifact-entry][data-path='model.skops']")).to_have_count(1)
    entry.locator("button").click()
    expect(page.get_by_test_id("artifact-text")).to_contain_text(f"model_id: {registry.model_id}")
    # No stray text (a null child shown as "null") between the page's parts.
    loose_text = "e => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.data).join('')"
    assert page.locator(".logged-model-page").evaluate(loose_text) == ""
    assert page.locator(".artifact-preview-body").evaluate(loose_text) == ""
    href = entry.locator("a.artifact-download").get_attribute("href")
    assert href is not None
    assert href.endswith(f"/models/{registry.model_id}/artifacts/MLmodel")
    response = page.request.get(ui.base_url + href)
    assert response.ok and b"flavors:" in response.body()
    ui.screenshot("models-logged-model")
    ui.assert_no_console_errors()


def test_experiment_page_lists_its_logged_models(ui: UI, registry: Registry) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto(f"/experiments/{_q(registry.experiment_id)}")
    table = page.get_by_test_id("experiment-models-table")
    expect(table.locator("tbody tr[data-model-id]")).to_have_count(2)
    row = table.locator(f"tr[data-model-id='{registry.model_id_2}']")
    expect(row).to_contain_text("READY")
    expect(row).to_contain_text(f"{registry.name} v2")
    row.get_by_test_id("experiment-model-link").click()
    expect(page).to_have_url(ui.base_url + f"/logged-models/{registry.model_id_2}")
    ui.assert_no_console_errors()


def test_unknown_model_and_logged_model_show_not_found(ui: UI, steppe_server: Any) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.goto("/models/no-such-model-here")
    error = page.get_by_test_id("error")
    expect(error).to_contain_text("Registered model not found")
    expect(error).to_contain_text("no-such-model-here")
    expect(error).to_contain_text("RESOURCE_DOES_NOT_EXIST")
    ui.goto("/logged-models/m-0000")
    expect(page.get_by_test_id("error")).to_contain_text("Logged model not found")
    ui.assert_no_console_errors(HTTP_404)


def test_empty_registry_says_how_to_register(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = start_server(tmp_path / "steppe-data")
    try:
        page = browser.new_page()
        try:
            page.goto(server.http_url.rstrip("/") + "/models")
            expect(page.get_by_test_id("models-empty")).to_contain_text(
                "No registered models yet. Register one with mlflow.register_model("
            )
            page.goto(server.http_url.rstrip("/") + "/experiments/0")
            expect(page.get_by_test_id("experiment-models-table").locator("tr.empty")).to_have_text(
                "No logged models in this experiment yet."
            )
        finally:
            page.close()
    finally:
        assert server.stop() == 0, "".join(server.output)


def test_autolog_run_shows_its_metrics_and_its_model_on_the_run_page(
    ui: UI, mlflow_client: Any
) -> None:
    """The user's example: mlflow.sklearn.autolog(), a fit inside start_run, then the run page."""
    from playwright.sync_api import expect
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow = mlflow_client
    mlflow.set_experiment(f"autolog-{uuid.uuid4().hex[:6]}")
    mlflow.sklearn.autolog()
    try:
        x, y = load_iris(return_X_y=True)
        with mlflow.start_run() as run:
            LogisticRegression(max_iter=300).fit(x, y)
    finally:
        mlflow.sklearn.autolog(disable=True)

    page = ui.page
    # The link mlflow prints ("View run at .../#/experiments/E/runs/R") lands on the run page.
    ui.goto(f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    expect(page).to_have_url(ui.base_url + f"/runs/{run.info.run_id}")
    chart = page.get_by_test_id("chart-training_accuracy_score")
    expect(chart).to_have_count(1)
    expect(page.get_by_test_id("chart-training_log_loss")).to_have_count(1)
    models = page.get_by_test_id("run-models-table").locator("tbody tr[data-model-id]")
    expect(models).to_have_count(1)
    expect(models.locator("[data-flavor=sklearn]")).to_have_count(1)
    expect(models.get_by_test_id("signature-summary")).to_contain_text("inputs")
    expect(models.get_by_test_id("signature-summary")).to_contain_text("tensor float64")
    ui.screenshot("models-autolog-run")
    ui.assert_no_console_errors()


def test_the_pages_yaml_reader_reads_what_pyyaml_writes(ui: UI) -> None:
    """MLmodel is PyYAML's safe_dump output; the page's reader must agree with safe_load on it
    (folded quoted strings, escapes, YAML 1.1 look-alikes such as 'yes' and '007', nesting)."""
    import random

    import yaml

    rng = random.Random(12)
    strings = [
        "yes",
        "no",
        "null",
        "~",
        "",
        " lead",
        "trail ",
        "a: b",
        "#x",
        "x #y",
        "1.0",
        "007",
        "1e5",
        "-.5",
        "it's",
        'say "hi"',
        "multi\nline\n\ntext",
        "tab\there",
        "ünï ✓",
        "\x07bell",
        "- x",
        "[a]",
        "{b}",
        "http://x:1/y",
        "*star",
        "!bang",
        "%p",
        "a" * 150,
        " ".join(["word"] * 40),
        "line\\back",
        "\n",
        "end\n",
        "'",
        '"',
        "C:\\path",
    ]
    keys = [s for s in strings if s and "\n" not in s and len(s) < 100]

    def value(depth: int) -> Any:
        r = rng.random()
        if depth > 3 or r < 0.45:
            return rng.choice([*strings, 0, -7, 10**12, 0.5, -1.25e-7, True, False, None])
        if r < 0.75:
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 4))}
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    ui.goto("/models")
    ui.page.wait_for_function("() => window.steppe && window.steppe.parseYaml")
    docs = [{f"k{i}": value(0) for i in range(rng.randint(1, 5))} for _ in range(150)]
    for width in (80, 25):
        texts = [yaml.safe_dump(d, default_flow_style=False, width=width) for d in docs]
        parsed = ui.page.evaluate("ts => ts.map((t) => window.steppe.parseYaml(t))", texts)
        for text, got in zip(texts, parsed, strict=True):
            assert got == yaml.safe_load(text), text
