"""The browser's side: the playground at GET / and /docs without a CDN.

First the FastAPI app itself (no Ray): content negotiation on `/`, the docs page and its
assets, the API key. Then a real `zeroshot serve` on the tiny fixture model driven by a real
headless Chromium (Debian's `chromium` + `chromium-driver`, through selenium) with every host
but 127.0.0.1 unresolvable: the playground classifies and draws what the API answers, its curl
and Python snippets run and give the same answer, /docs renders the API's routes.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from serve.config import AppConfig
from serve.ingress import Service, create_api
from serve.ui import SWAGGER_FILES, swagger_dir, wants_html
from tests.procs import Server
from zeroshot.classifier import ZeroShotClassifier

REPO = Path(__file__).resolve().parent.parent
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
KEY = "playground-key"
# An absolute URL in src/href/url(): anything a page would fetch from elsewhere.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//""")


def test_content_negotiation_prefers_html_only_for_browsers():
    assert wants_html(BROWSER_ACCEPT)
    assert wants_html("text/html")
    for accept in ("", "*/*", "application/json", "application/json, text/html;q=0.5",
                   "text/html;q=0"):  # fmt: skip
        assert not wants_html(accept), accept


# --- the app, in process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def clf(tiny_model) -> ZeroShotClassifier:
    return ZeroShotClassifier.from_pretrained(tiny_model, dtype="float32")


def make_app(clf: ZeroShotClassifier, tiny_model: str, api_key: str | None = None):
    async def score(model_id, pairs, counts):
        return clf.scorer.score(pairs)[0], {}

    async def info():
        return {"device": "cpu", "dtype": "float32", "batching": {}}

    cfg = AppConfig(model=tiny_model, dtype="float32", api_key=api_key)
    return create_api(Service(cfg, clf.frontend, score, info))


def client(app) -> TestClient:
    return TestClient(app, base_url="http://test")


def test_a_browser_gets_the_playground_and_api_clients_get_the_api(clf, tiny_model):
    with client(make_app(clf, tiny_model)) as http:
        page = http.get("/", headers={"accept": BROWSER_ACCEPT})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "zeroshot playground" in page.text and 'content="/"' in page.text
        assert not EXTERNAL.search(page.text)  # self-contained
        assert page.headers["vary"] == "Accept"
        # GET / without HTML in Accept: the API's 405, as before the playground existed
        for accept in ("*/*", "application/json"):
            refused = http.get("/", headers={"accept": accept})
            assert refused.status_code == 405
            assert refused.json()["error"]["type"] == "method_not_allowed"
        body = {"inputs": "a text", "parameters": {"candidate_labels": "x, y"}}
        answer = http.post("/", json=body, headers={"accept": BROWSER_ACCEPT})
        assert answer.status_code == 200 and {r["label"] for r in answer.json()} == {"x", "y"}


def test_docs_load_every_asset_from_the_app(clf, tiny_model):
    with client(make_app(clf, tiny_model)) as http:
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert not EXTERNAL.search(docs.text), "the docs page names another host"
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", docs.text)
        assert len(assets) == len(SWAGGER_FILES)
        for url in assets:
            assert url.startswith(f"/docs/assets/{swagger_dir().name}/")
            served = http.get(url)
            assert served.status_code == 200
            name = url.rsplit("/", 1)[1]
            assert served.headers["content-type"] == SWAGGER_FILES[name]
            assert served.content == (swagger_dir() / name).read_bytes()
        assert http.get(f"/docs/assets/{swagger_dir().name}/index.html").status_code == 404
        assert '"validatorUrl": null' in docs.text  # no badge from validator.swagger.io


def test_without_the_swagger_package_the_app_still_starts(clf, tiny_model, monkeypatch):
    # a stale environment (pyproject's new dependency not installed): nothing breaks
    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", None)  # import -> ImportError
    with client(make_app(clf, tiny_model)) as http:
        assert http.get("/", headers={"accept": BROWSER_ACCEPT}).status_code == 200
        assert http.get("/docs").status_code == 200  # FastAPI's own page, from its CDN


def test_with_an_api_key_the_pages_load_and_the_api_still_needs_the_key(clf, tiny_model):
    with client(make_app(clf, tiny_model, api_key=KEY)) as http:
        assert http.get("/", headers={"accept": BROWSER_ACCEPT}).status_code == 200
        docs = http.get("/docs")
        assert docs.status_code == 200
        (js,) = re.findall(r"""src=["']([^"']+)["']""", docs.text)
        assert http.get(js).status_code == 200
        body = {"sequences": ["a text"], "candidate_labels": ["x", "y"]}
        assert http.post("/v1/classify", json=body).status_code == 401
        assert http.get("/v1/info").status_code == 401
        auth = {"authorization": f"Bearer {KEY}"}
        assert http.post("/v1/classify", json=body, headers=auth).status_code == 200


# --- a real `zeroshot serve` and a real browser --------------------------------------------------

TEXT = "The striker scored twice as the home team won the cup final."
LABELS = "sports, politics, technology, weather"
TEMPLATE = "This text is about {}."
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
    "--force-device-scale-factor=1",
    # Offline for sure, whatever the machine's network: nothing but 127.0.0.1 resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def server(tiny_model, second_model, tmp_path_factory):
    # Two models, as the playground's picker needs; the first is what a request naming none
    # gets.
    models = [f"tiny={tiny_model}", f"second={second_model}"]
    # Calls hedged from the first millisecond (until the delay follows the calls' p95): the
    # metrics test sees the hedge counter, and every answer here still comes out exact.
    srv = Server(models, tmp_path_factory.mktemp("serve") / "serve.log", "--hedge-after-s", "0.001")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver. Without them a developer's run skips with the
    install command; under CI (CI=true), which installs them, it fails."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        webdriver = None
    if webdriver is None or not (chromium and driver_path):
        why = "needs selenium (pip install -e '.[test]') and Debian's chromium + chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(f"{why}: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=DriverService(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def fill(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def drawn_bars(driver) -> list[tuple[str, float, str, str]]:
    """(label, score, shown value, bar width) of each drawn bar, top to bottom."""
    from selenium.webdriver.common.by import By

    bars = driver.find_elements(By.CSS_SELECTOR, "#results .bar")
    return [
        (
            bar.get_attribute("data-label"),
            float(bar.get_attribute("data-score")),
            bar.find_element(By.CSS_SELECTOR, ".value").text,
            bar.find_element(By.CSS_SELECTOR, ".fill").get_attribute("style"),
        )
        for bar in bars
    ]


def classify_in_page(driver, labels: str) -> None:
    from selenium.webdriver.common.by import By

    fill(driver, "labels", labels)
    driver.execute_script("document.body.dataset.state = ''")
    driver.find_element(By.ID, "classify").click()
    wait(
        driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    )


@pytest.mark.ray
def test_the_playground_draws_what_the_api_answers(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert browser.title == "zeroshot playground"
    # /v1/info answered: the model line names the served model and its device
    wait(browser, lambda d: "cpu" in d.find_element(By.ID, "model").text)
    fill(browser, "text", TEXT)
    fill(browser, "template", TEMPLATE)
    browser.find_element(By.CSS_SELECTOR, "label.switch").click()  # multi-label on
    assert browser.find_element(By.ID, "multi-label").is_selected()
    classify_in_page(browser, LABELS)

    body = {"sequences": [TEXT], "candidate_labels": LABELS, "multi_label": True,
            "hypothesis_template": TEMPLATE}  # fmt: skip
    expected = httpx.post(server.url + "/v1/classify", json=body, timeout=60).json()
    result = expected["results"][0]
    bars = drawn_bars(browser)
    assert [b[0] for b in bars] == result["labels"]  # the API's order: sorted by score
    for (_, score, shown, style), want in zip(bars, result["scores"]):
        assert score == pytest.approx(want, abs=1e-5)
        assert shown == f"{score:.4f}"
        (width,) = re.findall(r"width: ([\d.]+)%", style)
        assert float(width) == pytest.approx(100 * score, abs=0.01)
    assert [b[1] for b in bars] == sorted((b[1] for b in bars), reverse=True)
    assert re.fullmatch(r"\d+ ms", browser.find_element(By.ID, "latency").text)
    assert browser.find_element(By.ID, "usage").text.startswith(
        f"{expected['usage']['pairs']} pairs"
    )

    # The snippets are what was sent: run them, they get the same answer.
    curl = browser.find_element(By.ID, "curl").text
    assert curl.startswith(f"curl -s {server.url}/v1/classify")
    by_curl = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True,
                                        timeout=60, check=True).stdout)  # fmt: skip
    python = browser.find_element(By.ID, "python").text
    printed = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True,
                             timeout=60, check=True).stdout  # fmt: skip
    by_python = ast.literal_eval(printed)  # print(response.json()) writes a Python literal
    for answer in (by_curl, by_python):
        (got,) = answer["results"]
        assert got["labels"] == result["labels"]
        assert got["scores"] == pytest.approx(result["scores"], abs=1e-5)

    shot = tmp_path / "playground.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("ZEROSHOT_UPDATE_DOCS"):  # refresh the README's picture
        shutil.copy(shot, REPO / "docs" / "playground.png")


@pytest.mark.ray
def test_the_picker_sends_the_chosen_model(server, browser, second_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(server.url + "/")
    wait(browser, lambda d: d.find_element(By.ID, "model-row").is_displayed())
    picker = Select(browser.find_element(By.ID, "model-picker"))
    assert [o.get_attribute("value") for o in picker.options] == ["tiny", "second"]
    picker.select_by_value("second")
    assert second_model in browser.find_element(By.ID, "model").text
    fill(browser, "text", TEXT)
    classify_in_page(browser, LABELS)
    body = {"sequences": [TEXT], "candidate_labels": LABELS, "model": "second"}
    (result,) = httpx.post(server.url + "/v1/classify", json=body, timeout=60).json()["results"]
    bars = drawn_bars(browser)
    assert [b[0] for b in bars] == result["labels"]
    assert [b[1] for b in bars] == pytest.approx(result["scores"], abs=1e-5)
    assert '"model":"second"' in browser.find_element(By.ID, "curl").text
    picker.select_by_value("tiny")  # as the other tests of this page expect it


@pytest.mark.ray
def test_the_playground_shows_the_apis_refusal(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    classify_in_page(browser, "sports, sports")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text.startswith("invalid_labels: candidate label 'sports' is given more than once")
    assert browser.find_element(By.ID, "http-status").text == "HTTP 422"
    assert drawn_bars(browser) == []


@pytest.mark.ray
def test_docs_render_the_routes_offline(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/docs")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 4)
    paths = {el.text for el in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/", "/v1/classify", "/v1/info", "/healthz"} <= paths
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(server.url + "/") for url in loaded), loaded


@pytest.mark.ray
def test_metrics_are_where_serve_says_and_hold_the_dashboards_series(server):
    from dashboard import dashboard_series

    (printed,) = re.findall(r"^metrics: (http://[\d.]+:\d+/metrics) ", server.printed, re.M)
    info = httpx.get(server.url + "/v1/info", timeout=30).json()["metrics"]
    assert info["prometheus"] == [printed]  # what the CLI prints is what the API names
    assert info["series"] == "ray_zeroshot_*"
    assert (REPO / info["grafana_dashboard"]).is_file()

    # Traffic that touches every series: answers, and a refusal for the error counter.
    body = {"sequences": [TEXT, "Rain all week."], "candidate_labels": LABELS}
    for model in ("tiny", "second", "tiny"):
        r = httpx.post(server.url + "/v1/classify", json={**body, "model": model}, timeout=60)
        assert r.status_code == 200
    bad = {**body, "candidate_labels": "a, a"}
    assert httpx.post(server.url + "/v1/classify", json=bad, timeout=60).status_code == 422

    wanted = dashboard_series()
    deadline = time.monotonic() + 90  # Ray's agent exports every few seconds
    while True:
        text = httpx.get(printed, timeout=30).text
        exported = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines()}
        missing = wanted - exported
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not missing, f"the dashboard queries series Ray does not export: {sorted(missing)}"
    assert re.search(r'ray_zeroshot_request_errors_total\{[^}]*type="invalid_labels"', text)
    # Every series by model: each served model's own pairs, batches and phases.
    for model in ("tiny", "second"):
        for series in ("ray_zeroshot_pairs_total", "ray_zeroshot_encode_seconds_count",
                       "ray_zeroshot_inference_seconds_count"):  # fmt: skip
            assert re.search(rf'{series}\{{[^}}]*model="{model}"', text), (series, model)
