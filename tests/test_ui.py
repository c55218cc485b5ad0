"""The browser's side: the playground at GET / and /docs without a CDN.

First the FastAPI app itself (no Ray): content negotiation on `/`, the docs page and its
assets, the API key. Then a real `zeroshot serve` on the tiny fixture model driven by a real
headless Chromium (Debian's `chromium` + `chromium-driver`, through selenium) with every host
but 127.0.0.1 unresolvable: the playground classifies and draws what the API answers, its curl
and Python snippets run and give the same answer, /docs renders the API's routes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serve.config import AppConfig
from serve.ingress import Service, create_api
from serve.ui import SWAGGER_FILES, swagger_dir, wants_html
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
    async def score(pairs):
        return clf.scorer.score(pairs)[0]

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
