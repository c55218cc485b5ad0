"""The OpenAPI document is exact (serve/contract.py): the patterns it states are the code's own
rules, the document carries the live configuration (limits, served ids, the key's scheme), 405
names what is allowed, and schemathesis (pinned in the `test` extra) finds nothing against a
real `zeroshot serve` with all its checks, without and with an API key.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from serve.config import AppConfig
from serve.ingress import Service, create_api
from tests.procs import Server
from zeroshot.config import Limits
from zeroshot.errors import InvalidInputError
from zeroshot.fixtures import make_test_model
from zeroshot.requests import (
    LABEL_PATTERN,
    TEMPLATE_PATTERN,
    ClassificationRequest,
    check_labels,
    labels_string_pattern,
    parse_labels,
)

HERE = Path(__file__).resolve().parent
# Every character str.strip() removes, and the ones regex engines disagree on (U+FEFF is
# whitespace to ECMA's \s, not to Python's).
WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + "\ufeff"


def _labels_ok(text: str, most: int) -> bool:
    labels = parse_labels(text)
    return 1 <= len(labels) <= most and _list_ok(labels)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="ab," + WHITESPACE, max_size=16))
def test_the_label_string_pattern_is_the_code_rule(text):
    # 1 to 3 pieces with text, each once when stripped, blanks anywhere (re.search: how JSON
    # Schema validators apply a pattern)
    assert bool(re.search(labels_string_pattern(3), text)) == _labels_ok(text, 3), repr(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.text(alphabet="ab" + WHITESPACE, max_size=3), min_size=1, max_size=3))
def test_a_list_label_matches_the_pattern_exactly_when_it_has_text(labels):
    distinct = len(set(labels)) == len(labels)  # uniqueItems
    pattern_ok = all(re.search(LABEL_PATTERN, label) for label in labels)
    assert (pattern_ok and distinct) == _list_ok(labels), labels


def _list_ok(labels: list[str]) -> bool:
    try:
        check_labels(labels)
    except InvalidInputError:
        return False
    return True


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="{}0a .", max_size=10))
def test_the_template_pattern_is_the_code_rule_and_formatting_never_fails(template):
    try:
        ClassificationRequest.create("t", ["x"], template)
        accepted = True
    except InvalidInputError:
        accepted = False
    assert bool(re.search(TEMPLATE_PATTERN, template)) == accepted, repr(template)
    if accepted:
        assert "x" in template.format("x")


# --- the document, in process ----------------------------------------------------------------


def _app(tiny_model: str, second_model: str, key: str | None = None) -> TestClient:
    async def score(model_id, pairs, counts):  # never called here
        raise AssertionError

    async def info():
        return {}

    cfg = AppConfig(
        models=[{"id": "a", "model": tiny_model}, {"id": "org/b", "model": second_model}],
        limits=Limits(max_labels=7, max_sequences=5, max_chars=300),
        api_key=key,
    )
    from zeroshot.frontend import Frontend

    frontends = {m.name: Frontend.from_pretrained(m.model, None, cfg.limits) for m in cfg.served}
    return TestClient(create_api(Service(cfg, frontends, score, info)), base_url="http://test")


def test_the_document_carries_the_limits_and_the_served_models(tiny_model, second_model):
    with _app(tiny_model, second_model) as http:
        doc = http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    texts = schemas["ClassifyRequest"]["properties"]["sequences"]["anyOf"]
    assert texts[0] == {"type": "string", "minLength": 1, "maxLength": 300}
    assert texts[1]["minItems"] == 1 and texts[1]["maxItems"] == 5
    labels = schemas["HFParameters"]["properties"]["candidate_labels"]["anyOf"]
    assert labels[0]["maxItems"] == 7 and labels[0]["uniqueItems"] is True
    assert labels[1]["pattern"] == labels_string_pattern(7)
    assert schemas["HFParameters"]["required"] == ["candidate_labels"]
    model = schemas["ClassifyRequest"]["properties"]["model"]["anyOf"][0]
    assert model["enum"] == ["a", "org/b"]
    # /models/{model_id}: the path names the model, its body's parameters cannot
    op = doc["paths"]["/models/{model_id}"]["post"]
    assert op["parameters"][0]["schema"]["enum"] == ["a", "org/b"]
    assert "model" not in schemas["HFModelParameters"]["properties"]
    assert doc["paths"]["/"]["post"]["parameters"] == []  # no stray query parameter
    for path in ("/", "/models/{model_id}", "/v1/classify"):
        codes = set(doc["paths"][path]["post"]["responses"])
        assert codes == {"200", "400", "404", "413", "422", "503"}, path
    assert "securitySchemes" not in doc["components"] and "security" not in doc


def test_with_a_key_the_document_declares_bearer_and_healthz_stays_open(tiny_model, second_model):
    with _app(tiny_model, second_model, key="k") as http:
        doc = http.get("/openapi.json").json()
        assert http.get("/healthz").status_code != 401
        assert http.get("/v1/info").status_code == 401
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "The app's API key (`api_key` / ZEROSHOT_API_KEY).",
    }  # fmt: skip
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in doc["paths"]["/v1/info"]["get"]["responses"]
    assert "401" in doc["paths"]["/v1/classify"]["post"]["responses"]
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]


def test_405_says_which_methods_are_allowed(tiny_model, second_model):
    with _app(tiny_model, second_model) as http:
        for path, allowed in (("/v1/info", "GET"), ("/healthz", "GET"), ("/v1/classify", "POST")):
            r = http.request("TRACE", path)
            assert r.status_code == 405 and r.headers["allow"] == allowed, path
            assert r.json()["error"]["type"] == "method_not_allowed"


# --- schemathesis against `zeroshot serve` ----------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    # Two families (one named, one by its path: an id with slashes, as hub ids have), at real
    # checkpoints'
    # token limits: the one rule the document cannot state exactly is a hypothesis's token
    # count (characters to tokens depends on the tokenizer; a 4-byte character can be 4
    # byte-level tokens), and the fuzzer's labels fit 1024 and 512 tokens.
    root = tmp_path_factory.mktemp("contract")
    bart = make_test_model(root / "bart", max_positions=1024)
    bert = make_test_model(root / "bert", arch="bert", max_positions=512)
    return [f"bart={bart}", str(bert)]


def fuzz(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """schemathesis with every check, bounded (examples per operation, seed), and the 413
    rejection status added (tests/schemathesis.toml says why)."""
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [str(cli), "--config-file", str(HERE / "schemathesis.toml"), "run",
         f"{url}/openapi.json", "--checks", "all", "--max-examples", "60", "--seed", "7",
         "--request-timeout", "60", "--generation-database", "none", *args],
        capture_output=True, text=True, timeout=600, cwd=cwd,  # its cache goes there
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("key", [None, "contract-key"])
def test_schemathesis_finds_nothing(models, tmp_path, key):
    args, env = ([], {}) if key is None else (["--api-key-env", "CONTRACT_KEY"],
                                              {"CONTRACT_KEY": key})  # fmt: skip
    server = Server(models, tmp_path / "serve.log", *args, env=env)
    try:
        if key is not None:  # the key is enforced, and the document says so
            assert httpx.get(f"{server.url}/v1/info", timeout=30).status_code == 401
        auth = [] if key is None else ["-H", f"Authorization: Bearer {key}"]
        out = fuzz(server.url, tmp_path, *auth)
    finally:
        server.stop()
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "No issues found" in out.stdout, out.stdout[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert generated and int(generated[1]) >= 200, out.stdout[-3000:]  # it did send requests
