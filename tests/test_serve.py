"""The Serve app end to end: a local Ray, real HTTP, the tiny fixture model in float32.

Two apps share one Serve instance: `zs` at / (auth off, small limits, a 0.1 s batch window so
concurrent requests surely meet) and `tight` at /tight (API key on, a one-slot queue in front
of a one-request classifier that scores one pair per batch, so a burst overflows it).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from reference import assert_same_result

from serve.config import CLASSIFIER_NAME, AppConfig, ServeBatching
from zeroshot import raylog
from zeroshot.config import Limits

pytestmark = pytest.mark.ray

CONFIG_YAML = Path(__file__).resolve().parent.parent / "serve" / "config.yaml"

KEY = "s3cret-key"
LIMITS = Limits(max_labels=5, max_sequences=4, max_chars=300)
BODY_LIMIT = 4096
TEXTS = [
    "The team won the championship after a late goal.",
    "Inflation rose again as the central bank kept rates high.",
    "A new phone with a faster chip was announced today.",
    "Doctors recommend a vaccine before the flu season.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _yaml_app(model: str, batching: dict, user_config: dict | None = None) -> dict:
    """serve/config.yaml as app `zs`, with what a CPU test box needs changed in its `args`;
    `user_config` retunes the classifier's batching the way Serve does it on a running app
    (a `deployments` entry: changing `args` would restart every replica)."""
    data = yaml.safe_load(CONFIG_YAML.read_text())
    del data["http_options"]  # Serve is already up on a free port
    (app,) = data["applications"]
    app["name"] = "zs"
    args = app["args"]
    args.update(
        model=model,
        dtype="float32",
        limits=LIMITS.model_dump(),
        max_body_bytes=BODY_LIMIT,
        batching=batching,
    )
    args["ingress"] = {"max_replicas": 1, "num_cpus": 0.25}
    args["classifier"] = {"max_replicas": 1, "num_cpus": 1, "num_gpus": 0}
    if user_config is not None:
        app["deployments"] = [{"name": CLASSIFIER_NAME, "user_config": user_config}]
    return data


def _deploy_yaml(model: str, batching: dict, user_config: dict | None = None) -> dict:
    """Deploy it through Serve's config path (what `serve run`/`serve deploy`/KubeRay do)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    data = _yaml_app(model, batching, user_config)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(data), _blocking=True)
    return data["applications"][0]["args"]


@pytest.fixture(scope="module")
def server(tiny_model):
    import ray
    from ray import serve

    from serve.app import build

    if ray.is_initialized():
        ray.shutdown()
    metrics_port = _free_port()
    # Replicas' INFO lines stay out of pytest's output, as out of `zeroshot serve`'s.
    ray.init(
        num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port, **raylog.quiet()
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    one = {"max_replicas": 1, "num_cpus": 0.25}
    tight = AppConfig(
        model=tiny_model,
        dtype="float32",
        api_key=KEY,
        batching=ServeBatching(max_batch_size=1, batch_wait_timeout_s=0.0),
        # Several calls in flight from one ingress replica, as several replicas would send:
        # the classifier's one-slot queue then overflows.
        ingress={**one, "max_calls_in_flight": 4},
        classifier={**one, "num_cpus": 0.5, "num_gpus": 0},
    )
    try:
        # `zs` goes through serve/config.yaml and Serve's config path (what `serve run`/`serve
        # deploy`/KubeRay do): import_path, args. `tight` is built from code, with a one-slot
        # queue in front of a one-request classifier that answers 429.
        _deploy_yaml(tiny_model, {"batch_wait_timeout_s": 0.1})
        serve.run(
            build(
                tight,
                overrides={
                    CLASSIFIER_NAME: {
                        "max_ongoing_requests": 1,
                        "max_queued_requests": 1,
                        "backpressure_config": {"status_code": 429, "retry_after_s": 2},
                    }
                },
            ),
            name="tight",
            route_prefix="/tight",
        )
        yield {"url": f"http://127.0.0.1:{port}", "model": tiny_model, "metrics": metrics_port}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def hub_online(monkeypatch):
    """conftest sets HF_HUB_OFFLINE so nothing reaches the hub; the client must still be allowed
    to talk to our local server (no request leaves the machine)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server["url"], timeout=60) as c:
        yield c


def _as_result(text: str, answer: list[dict]) -> dict:
    return {
        "sequence": text,
        "labels": [a["label"] for a in answer],
        "scores": [a["score"] for a in answer],
    }


def _expected(pipe, texts, labels, template="This example is {}.", multi_label=False):
    out = pipe(
        texts, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label
    )
    return out if isinstance(out, list) else [out]


# --- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, template, multi_label",
    [
        (["sports", "politics", "technology"], "This example is {}.", False),
        ("sports, economy ,health", "This example is {}.", False),
        (["sports", "economy"], "The topic is {}.", True),
        (["health"], "This example is {}.", False),
    ],
)
def test_hf_route_matches_pipeline(client, reference_pipeline, labels, template, multi_label):
    params = {"candidate_labels": labels, "hypothesis_template": template}
    if multi_label:
        params["multi_label"] = True
    one = client.post("/", json={"inputs": TEXTS[0], "parameters": params})
    assert one.status_code == 200, one.text
    expected = _expected(reference_pipeline, TEXTS[:3], labels, template, multi_label)
    assert_same_result(_as_result(TEXTS[0], one.json()), expected[0])
    many = client.post("/", json={"inputs": TEXTS[:3], "parameters": params})
    assert many.status_code == 200, many.text
    for text, answer, exp in zip(TEXTS, many.json(), expected):
        assert_same_result(_as_result(text, answer), exp)


def test_classify_route_matches_pipeline(client, reference_pipeline):
    labels = ["sports", "economy", "technology", "health"]
    r = client.post("/v1/classify", json={"sequences": TEXTS, "candidate_labels": labels})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == client_model(client)
    assert body["usage"]["pairs"] == len(TEXTS) * len(labels)
    assert body["usage"]["tokens"] > body["usage"]["pairs"]
    for got, exp in zip(body["results"], _expected(reference_pipeline, TEXTS, labels)):
        assert_same_result(got, exp)
    multi = client.post(
        "/v1/classify",
        json={"sequences": TEXTS[:2], "candidate_labels": "a,b", "multi_label": True},
    )
    expected = _expected(reference_pipeline, TEXTS[:2], "a,b", multi_label=True)
    for got, exp in zip(multi.json()["results"], expected):
        assert_same_result(got, exp)


def client_model(client) -> str:
    return client.get("/v1/info").json()["model"]


def test_special_token_text_is_plain_text(client):
    r = client.post(
        "/v1/classify",
        json={"sequences": ["a </s><s> b <pad>"], "candidate_labels": ["x", "y"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["sequence"] == "a </s><s> b <pad>"


def _burst(url: str, jobs: list[tuple[str, dict]], headers=None) -> list[httpx.Response]:
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as c:
            return await asyncio.gather(*(c.post(path, json=body) for path, body in jobs))

    return asyncio.run(run())


def _reset_stats(app: str) -> None:
    from ray import serve

    serve.get_deployment_handle(CLASSIFIER_NAME, app_name=app).stats.remote(reset=True).result()


def _stats(app: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(CLASSIFIER_NAME, app_name=app).stats.remote().result()


LABEL_SETS = [
    ["sports", "politics"],
    ["economy", "health", "science"],
    ["travel"],
    ["music", "film", "books", "art"],
    ["weather", "climate"],
    ["cars", "trains", "planes", "boats", "bikes"],
]


def test_concurrent_requests_with_different_labels_share_batches(server, reference_pipeline):
    _reset_stats("zs")
    jobs = []
    for i in range(12):
        labels = LABEL_SETS[i % len(LABEL_SETS)]
        texts = [TEXTS[i % 4], TEXTS[(i + 1) % 4]]
        multi = i % 3 == 0
        jobs.append(
            (
                "/v1/classify",
                {"sequences": texts, "candidate_labels": labels, "multi_label": multi},
            )
        )
    responses = _burst(server["url"], jobs)  # within capacity: nothing may be rejected
    for (_, body), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        exp = _expected(
            reference_pipeline,
            body["sequences"],
            body["candidate_labels"],
            multi_label=body["multi_label"],
        )
        for got, e in zip(r.json()["results"], exp):
            assert_same_result(got, e)
    stats = _stats("zs")
    assert stats["max_requests_per_batch"] >= 2, stats  # different label sets, one batch
    assert stats["batches"] < 12, stats


def test_inference_client(server, reference_pipeline, hub_online):
    from huggingface_hub import InferenceClient

    hf = InferenceClient(model=server["url"])
    labels = ["sports", "economy", "health"]
    out = hf.zero_shot_classification(TEXTS[1], labels)
    got = _as_result(TEXTS[1], [{"label": o.label, "score": o.score} for o in out])
    assert_same_result(got, _expected(reference_pipeline, TEXTS[1], labels)[0])
    out = hf.zero_shot_classification(
        TEXTS[2], labels, multi_label=True, hypothesis_template="It is about {}."
    )
    got = _as_result(TEXTS[2], [{"label": o.label, "score": o.score} for o in out])
    exp = _expected(reference_pipeline, TEXTS[2], labels, "It is about {}.", True)[0]
    assert_same_result(got, exp)


# --- bad input ------------------------------------------------------------------------------

OK = {"inputs": "some text", "parameters": {"candidate_labels": ["a", "b"]}}
LONG_LABEL = " ".join(["word"] * 200)

BAD = [
    ("malformed json", b'{"inputs": "x", ', 400, "invalid_json"),
    ("empty body", b"", 400, "invalid_json"),
    ("whitespace body", b"   \n", 400, "invalid_json"),
    ("deeply nested json", b"[" * 2000 + b"]" * 2000, 400, "invalid_json"),
    ("not utf-8", b'{"inputs": "\xff\xfe"}', 400, "invalid_json"),
    ("not an object", [1, 2], 422, "validation_error"),
    ("unknown field", {**OK, "extra": 1}, 422, "validation_error"),
    ("unknown parameter", {"inputs": "x", "parameters": {"candidate_labels": "a", "top_k": 1}},
     422, "validation_error"),
    ("inputs wrong type", {"inputs": 5, "parameters": {"candidate_labels": "a"}},
     422, "validation_error"),
    ("inputs missing", {"parameters": {"candidate_labels": "a"}}, 422, "validation_error"),
    ("labels wrong type", {"inputs": "x", "parameters": {"candidate_labels": 5}},
     422, "validation_error"),
    ("multi_label wrong type",
     {"inputs": "x", "parameters": {"candidate_labels": "a", "multi_label": "yes"}},
     422, "validation_error"),
    ("template wrong type",
     {"inputs": "x", "parameters": {"candidate_labels": "a", "hypothesis_template": 3}},
     422, "validation_error"),
    ("parameters wrong type", {"inputs": "x", "parameters": []}, 422, "validation_error"),
    ("labels missing", {"inputs": "x"}, 422, "no_labels"),
    ("labels empty list", {"inputs": "x", "parameters": {"candidate_labels": []}},
     422, "no_labels"),
    ("labels only commas", {"inputs": "x", "parameters": {"candidate_labels": " , ,"}},
     422, "no_labels"),
    ("label not a string", {"inputs": "x", "parameters": {"candidate_labels": ["a", 1]}},
     422, "no_labels"),
    ("empty text", {"inputs": "", "parameters": {"candidate_labels": "a"}}, 422, "no_text"),
    ("no texts", {"inputs": [], "parameters": {"candidate_labels": "a"}}, 422, "no_text"),
    # JSON allows the escape of a lone UTF-16 surrogate (`_post` sends `\ud800`); no tokenizer
    # takes the result.
    ("lone surrogate text",
     {"inputs": ["x", "a \ud800 b"], "parameters": {"candidate_labels": "a"}},
     422, "invalid_text"),
    ("lone surrogate label", {"inputs": "x", "parameters": {"candidate_labels": ["a", "\udc00"]}},
     422, "invalid_labels"),
    ("lone surrogate template",
     {"inputs": "x", "parameters": {"candidate_labels": "a", "hypothesis_template": "\ud800 {}"}},
     422, "invalid_template"),
    ("null text", {"inputs": ["x", None], "parameters": {"candidate_labels": "a"}},
     422, "invalid_text"),
    ("number text", {"inputs": ["x", 3], "parameters": {"candidate_labels": "a"}},
     422, "invalid_text"),
    ("template without {}",
     {"inputs": "x", "parameters": {"candidate_labels": "a", "hypothesis_template": "Nope."}},
     422, "invalid_template"),
    ("template bad format",
     {"inputs": "x", "parameters": {"candidate_labels": "a", "hypothesis_template": "{0} {1}"}},
     422, "invalid_template"),
    ("hypothesis too long", {"inputs": "x", "parameters": {"candidate_labels": [LONG_LABEL]}},
     422, "hypothesis_too_long"),
    ("too many labels", {"inputs": "x", "parameters": {"candidate_labels": list("abcdef")}},
     413, "too_many_labels"),
    ("too many sequences", {"inputs": list("abcde"), "parameters": {"candidate_labels": "a"}},
     413, "too_many_sequences"),
    ("text too long", {"inputs": "y" * 301, "parameters": {"candidate_labels": "a"}},
     413, "text_too_long"),
    ("huge body", {"inputs": "x" * 5000, "parameters": {"candidate_labels": "a"}},
     413, "body_too_large"),
]  # fmt: skip


def _post(client, path: str, body) -> httpx.Response:
    if not isinstance(body, bytes):
        # ASCII-escaped, as most clients send it: httpx's own `json=` writes UTF-8 and cannot
        # encode a lone surrogate, which JSON's escapes can carry.
        body = json.dumps(body).encode()
    return client.post(path, content=body, headers={"content-type": "application/json"})


def _check_error(r: httpx.Response, status: int, error_type: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == error_type, err
    assert set(err) == {"type", "message"} and err["message"]


@pytest.mark.parametrize("name, body, status, error_type", BAD, ids=[b[0] for b in BAD])
def test_bad_input_hf_route(client, name, body, status, error_type):
    _check_error(_post(client, "/", body), status, error_type)


def _native(body):
    if not isinstance(body, dict) or "inputs" not in body:
        return body
    params = body.get("parameters", {})
    out = {k: v for k, v in body.items() if k not in ("inputs", "parameters")}
    out["sequences"] = body["inputs"]
    if isinstance(params, dict):
        out.update(params)
    return out


NATIVE_BAD = [b for b in BAD if b[0] not in ("parameters wrong type", "unknown parameter")]


@pytest.mark.parametrize(
    "name, body, status, error_type", NATIVE_BAD, ids=[b[0] for b in NATIVE_BAD]
)
def test_bad_input_classify_route(client, name, body, status, error_type):
    _check_error(_post(client, "/v1/classify", _native(body)), status, error_type)


def test_huge_streamed_body_is_refused_without_content_length(client):
    def chunks():
        for _ in range(10):
            yield b" " * 1024  # no Content-Length: the limit must hold while reading

    r = client.post("/v1/classify", content=chunks())
    _check_error(r, 413, "body_too_large")


def test_http_errors_have_the_error_shape(client):
    _check_error(client.get("/nowhere"), 404, "not_found")
    _check_error(client.get("/v1/classify"), 405, "method_not_allowed")


def test_bad_requests_in_a_burst_leave_others_intact(server, reference_pipeline):
    labels = ["sports", "economy"]
    good = {"sequences": TEXTS, "candidate_labels": labels}
    bad = [
        {"sequences": TEXTS, "candidate_labels": []},
        {"sequences": ["z" * 400], "candidate_labels": labels},
        {"sequences": TEXTS, "candidate_labels": labels, "hypothesis_template": "no slot"},
        {"sequences": [None], "candidate_labels": labels},
    ]
    jobs = []
    for i in range(8):
        jobs.append(("/v1/classify", good))
        if i < len(bad):
            jobs.append(("/v1/classify", bad[i]))
    responses = _burst(server["url"], jobs)
    expected = _expected(reference_pipeline, TEXTS, labels)
    statuses = []
    for (_, body), r in zip(jobs, responses):
        statuses.append(r.status_code)
        if body is good:
            assert r.status_code == 200, r.text
            for got, e in zip(r.json()["results"], expected):
                assert_same_result(got, e)
        else:
            assert r.status_code in (413, 422), r.text
    assert statuses.count(200) == 8


def test_bad_pairs_sent_to_the_classifier_fail_alone(server, tiny_model):
    """Ids the model cannot embed, sent straight to the classifier among good requests: only
    that call fails, with a typed error; the batch-mates get their logits."""
    import numpy as np
    from ray import serve

    from zeroshot.errors import InvalidInputError
    from zeroshot.frontend import Frontend
    from zeroshot.pairs import Pairs

    frontend = Frontend.from_pretrained(tiny_model)
    encoded = frontend.encode(frontend.request(TEXTS, ["a", "b"], "This example is {}."))
    pairs = encoded.pairs
    handle = serve.get_deployment_handle(CLASSIFIER_NAME, app_name="zs")
    bad_ids = pairs.ids.copy()
    bad_ids[3] = 10**6
    calls = [handle.score.remote(pairs) for _ in range(3)]
    calls.insert(1, handle.score.remote(Pairs(bad_ids, pairs.offsets)))
    with pytest.raises(InvalidInputError):
        calls[1].result()
    results = [c.result() for i, c in enumerate(calls) if i != 1]
    # Equal to float32 rounding, not bit for bit: the batch-mates may share a forward pass or
    # not (the failed call splits the batch), and CPU kernels (oneDNN with AMX, say) sum in
    # an order that depends on the batch's shape.
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-5)
    assert results[0].shape == (len(pairs), 3)


def test_one_coalesced_call_fails_only_its_bad_request(server, tiny_model):
    """The ingress sends many requests in one call: a request with ids the model cannot take
    gets its own error; the others in the same call get the logits they get alone."""
    import numpy as np
    from ray import serve

    from zeroshot.errors import InvalidInputError
    from zeroshot.frontend import Frontend
    from zeroshot.pairs import Pairs

    frontend = Frontend.from_pretrained(tiny_model)
    good = frontend.encode(frontend.request(TEXTS[:2], ["a", "b", "c"], "It is {}.")).pairs
    other = frontend.encode(frontend.request(TEXTS[2], ["x", "y"], "This is {}.")).pairs
    bad_ids = other.ids.copy()
    bad_ids[1] = 10**6
    bad = Pairs(bad_ids, other.offsets)
    handle = serve.get_deployment_handle(CLASSIFIER_NAME, app_name="zs")
    counts = [len(good), len(bad), len(other)]
    logits, errors = handle.score_requests.remote(Pairs.concat([good, bad, other]), counts).result()
    assert list(errors) == [1] and isinstance(errors[1], InvalidInputError)
    np.testing.assert_allclose(logits[: len(good)], handle.score.remote(good).result(), atol=1e-5)
    tail = logits[len(good) + len(bad) :]
    np.testing.assert_allclose(tail, handle.score.remote(other).result(), atol=1e-5)


def test_config_path_deploys_exactly_the_computed_options(server):
    """What Serve runs for the app deployed from serve/config.yaml is what
    AppConfig.deployment_options computes from its args: no other source of options."""
    from ray.serve.context import _get_global_client

    args = _yaml_app(server["model"], {"batch_wait_timeout_s": 0.1})["applications"][0]["args"]
    expected = AppConfig.model_validate(args).deployment_options(cluster_gpus=0)
    details = _get_global_client().get_serve_details()
    deployed = details["applications"]["zs"]["deployments"]
    for name, options in expected.items():
        config = deployed[name]["deployment_config"]
        for key in ("max_ongoing_requests", "max_queued_requests", "user_config",
                    "health_check_period_s", "health_check_timeout_s",
                    "graceful_shutdown_timeout_s"):  # fmt: skip
            if key in options:
                assert config[key] == options[key], (name, key)
        auto = config["autoscaling_config"]
        for key, value in options["autoscaling_config"].items():
            assert auto[key] == value, (name, key)
        actor = config["ray_actor_options"]
        for key, value in options["ray_actor_options"].items():
            assert actor[key] == value, (name, key)


# --- overload, auth -------------------------------------------------------------------------

HEADERS = {"Authorization": f"Bearer {KEY}"}


def test_full_queue_answers_429_with_retry_after_then_recovers(server):
    body = {"sequences": TEXTS, "candidate_labels": ["a", "b", "c", "d", "e"]}
    responses = _burst(server["url"], [("/tight/v1/classify", body)] * 24, headers=HEADERS)
    codes = [r.status_code for r in responses]
    rejected = [r for r in responses if r.status_code in (429, 503)]
    assert rejected, codes
    assert set(codes) <= {200, 429, 503}, codes
    assert codes.count(200) >= 1, codes
    for r in rejected:
        assert r.status_code == 429  # as the tight app's BackpressureConfig says
        assert r.headers["retry-after"] == "2"
        assert r.json()["error"]["type"] == "too_many_requests"
    with httpx.Client(base_url=server["url"], timeout=60, headers=HEADERS) as c:
        after = c.post("/tight/v1/classify", json=body)
    assert after.status_code == 200, after.text
    assert len(after.json()["results"]) == len(TEXTS)


def test_api_key_required_when_configured(server):
    with httpx.Client(base_url=server["url"] + "/tight", timeout=60) as c:
        body = {"sequences": ["x"], "candidate_labels": "a,b"}
        _check_error(c.post("/v1/classify", json=body), 401, "unauthorized")
        _check_error(c.post("/", json=OK), 401, "unauthorized")
        _check_error(c.get("/v1/info"), 401, "unauthorized")
        wrong = {"Authorization": "Bearer nope"}
        _check_error(c.post("/v1/classify", json=body, headers=wrong), 401, "unauthorized")
        assert c.get("/healthz").status_code == 200
        assert c.get("/docs").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        ok = c.post("/v1/classify", json=body, headers=HEADERS)
        assert ok.status_code == 200, ok.text
        assert c.get("/v1/info", headers=HEADERS).json()["auth"] is True


def test_inference_client_with_api_key(server, hub_online):
    from huggingface_hub import InferenceClient

    out = InferenceClient(model=server["url"] + "/tight", token=KEY).zero_shot_classification(
        TEXTS[0], ["sports", "economy"]
    )
    assert {o.label for o in out} == {"sports", "economy"}


def test_no_api_key_by_default(client):
    assert client.post("/", json=OK).status_code == 200
    assert client.get("/v1/info").json()["auth"] is False


# --- info, health, docs, logs, reconfigure ---------------------------------------------------


def test_info_health_docs(client):
    info = client.get("/v1/info").json()
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["labels"]["entailment_id"] == 2 and info["labels"]["contradiction_id"] == 0
    assert info["labels"]["id2label"]["2"] == "entailment"
    assert info["limits"] == {**LIMITS.model_dump(), "max_body_bytes": BODY_LIMIT}
    assert client.get("/healthz").json() == {"status": "ok"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/", "/v1/classify", "/v1/info", "/healthz"} <= set(spec["paths"])
    assert "ClassifyRequest" in spec["components"]["schemas"]


def test_request_logs_carry_the_request_id(client):
    import ray

    rid = f"zs-test-{uuid.uuid4()}"
    r = client.post("/", json=OK, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    assert r.headers.get("x-request-id") == rid
    pattern = os.path.join(
        ray._private.worker._global_node.get_session_dir_path(), "logs", "serve", "*.log"
    )
    deadline = time.time() + 15
    while time.time() < deadline:
        lines = []
        for path in glob.glob(pattern):
            with open(path, errors="replace") as f:
                lines += [line for line in f if rid in line and "classified" in line]
        if lines:
            break
        time.sleep(0.5)
    assert lines, "no ingress log line with the request id"


def test_custom_metrics_are_exported(server):
    from serve.metrics import HISTOGRAMS

    wanted = {f"ray_{name}_count" for name in HISTOGRAMS}
    deadline = time.time() + 40
    while time.time() < deadline:
        text = httpx.get(f"http://127.0.0.1:{server['metrics']}/metrics", timeout=10).text
        seen = {
            line.split("{")[0]
            for line in text.splitlines()
            if line.startswith("ray_zeroshot_") and 'application="zs"' in line
        }
        if wanted <= seen:
            break
        time.sleep(1)
    assert wanted <= seen, wanted - seen


def test_batching_retuned_through_user_config(server, client):
    before = _stats("zs")["batches"]
    assert before > 0
    new = {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}
    _deploy_yaml(server["model"], {"batch_wait_timeout_s": 0.1}, user_config=new)
    deadline = time.time() + 30
    while time.time() < deadline:
        batching = client.get("/v1/info").json()["batching"]
        if {k: batching[k] for k in new} == new:
            break
        time.sleep(0.5)
    assert {k: batching[k] for k in new} == new
    assert _stats("zs")["batches"] >= before  # same replica: reconfigured, not restarted
    _reset_stats("zs")
    body = {"sequences": TEXTS, "candidate_labels": ["a", "b", "c", "d", "e"]}  # 20 pairs > 8
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    stats = _stats("zs")
    assert stats["pairs"] == 20 and stats["max_pairs_per_batch"] <= 8, stats


# --- several models in one app ---------------------------------------------------------------


@pytest.fixture(scope="module")
def multi(server, tiny_model, second_model):
    """Two apps on the same Serve: `multi` serves the tiny BART model as `a` and a second
    model as `b` (one classifier replica holds both); `lru` serves the same two with room for
    one per replica, so each switch of model unloads the other."""
    from ray import serve

    from serve.app import build

    one = {"max_replicas": 1, "num_cpus": 0.25, "num_gpus": 0}
    models = [{"id": "a", "model": tiny_model}, {"id": "b", "model": second_model}]
    for name, most in (("multi", None), ("lru", 1)):
        cfg = AppConfig(
            models=models,
            dtype="float32",
            ingress={"max_replicas": 1, "num_cpus": 0.25},
            classifier={**one, "max_models_per_replica": most},
        )
        serve.run(build(cfg), name=name, route_prefix=f"/{name}")
    return server["url"]  # `server` shuts Serve down, these apps with it


@pytest.fixture(scope="module")
def pipelines_by_model(tiny_model, second_model, reference_pipeline):
    from transformers import pipeline

    second = pipeline("zero-shot-classification", model=second_model, device=-1)
    return {"a": reference_pipeline, "b": second}


def _pick(i: int, model: str, texts: list[str], labels: list[str]) -> tuple[str, dict]:
    """The three ways to name a model, in turn: the native body's `model`, the Hugging Face
    body's `parameters.model`, the Hugging Face /models/{id} path."""
    way = i % 3
    if way == 0:
        return "/multi/v1/classify", {"sequences": texts, "candidate_labels": labels,
                                      "model": model}  # fmt: skip
    params = {"candidate_labels": labels, **({"model": model} if way == 1 else {})}
    path = "/multi/" if way == 1 else f"/multi/models/{model}"
    return path, {"inputs": texts, "parameters": params}


def _results(path: str, body: dict, r: httpx.Response) -> list[dict]:
    if path.endswith("/v1/classify"):
        return r.json()["results"]
    return [_as_result(t, a) for t, a in zip(body["inputs"], r.json())]


def test_mixed_traffic_each_answer_from_its_own_model_batches_never_mixed(
    multi, pipelines_by_model
):
    _reset_stats("multi")
    jobs, models = [], []
    for i in range(24):
        model = "ab"[i % 2] if i < 12 else "ab"[(i // 2) % 2]
        labels = LABEL_SETS[i % len(LABEL_SETS)]
        jobs.append(_pick(i, model, [TEXTS[i % 4], TEXTS[(i + 2) % 4]], labels))
        models.append(model)
    responses = _burst(multi, jobs)
    for (path, body), model, r in zip(jobs, models, responses):
        assert r.status_code == 200, r.text
        texts = body.get("sequences") or body["inputs"]
        labels = body.get("candidate_labels") or body["parameters"]["candidate_labels"]
        expected = _expected(pipelines_by_model[model], texts, labels)
        for got, e in zip(_results(path, body, r), expected):
            assert_same_result(got, e)
        if path.endswith("/v1/classify"):
            assert r.json()["model"] == model
    stats = _stats("multi")
    assert set(stats["models"]) == {"a", "b"}, stats
    assert stats["max_models_per_batch"] == 1, stats
    for model, per in stats["models"].items():
        assert per["batches"] >= 1 and per["max_models_per_batch"] == 1, (model, per)
        # each model's batches fill with that model's requests (coalesced and batched)
        assert per["max_requests_per_batch"] >= 2, (model, per)


def test_no_model_named_is_the_first_and_an_unknown_one_is_a_404_naming_them(multi):
    one = {"inputs": TEXTS[0], "parameters": {"candidate_labels": ["sports", "politics"]}}
    plain = httpx.post(f"{multi}/multi/", json=one, timeout=60)
    named = httpx.post(f"{multi}/multi/models/a", json=one, timeout=60)
    assert plain.status_code == named.status_code == 200 and plain.json() == named.json()
    native = httpx.post(f"{multi}/multi/v1/classify", timeout=60,
                        json={"sequences": TEXTS[0], "candidate_labels": ["x", "y"]})  # fmt: skip
    assert native.status_code == 200 and native.json()["model"] == "a"

    for path, body in [
        ("/multi/models/zz", one),
        ("/multi/", {**one, "parameters": {**one["parameters"], "model": "zz"}}),
        ("/multi/v1/classify", {"sequences": TEXTS[0], "candidate_labels": "x", "model": "zz"}),
    ]:
        r = httpx.post(f"{multi}{path}", json=body, timeout=60)
        _check_error(r, 404, "model_not_found")
        assert "'zz'" in r.json()["error"]["message"] and "a, b" in r.json()["error"]["message"]
    # The path names the model; parameters.model there is refused, even the same id (the
    # OpenAPI document's body for that route has no such field).
    for named_too in ("b", "a"):
        both = {**one, "parameters": {**one["parameters"], "model": named_too}}
        _check_error(httpx.post(f"{multi}/multi/models/a", json=both, timeout=60), 422,
                     "validation_error")  # fmt: skip


def test_info_lists_the_served_models(multi, second_model):
    info = httpx.get(f"{multi}/multi/v1/info", timeout=60).json()
    assert [m["id"] for m in info["models"]] == ["a", "b"]
    a, b = info["models"]
    assert a["labels"]["entailment_id"] == 2 and a["family"] == "bart"
    assert b["model"] == second_model and b["dtype"] == "float32" == info["dtype"]
    assert b["family"] == "bert"
    assert b["labels"] == _nli_labels(second_model)
    assert info["max_models_per_replica"] == 2


def _nli_labels(model: str) -> dict:
    from zeroshot.assemble import NliLabels
    from zeroshot.loading import load_config

    nli = NliLabels.from_config(load_config(model))
    return {
        "id2label": {str(k): v for k, v in sorted(nli.id2label.items())},
        "entailment_id": nli.entailment_id,
        "contradiction_id": nli.contradiction_id,
    }


def test_a_replica_with_room_for_one_model_swaps_them_and_stays_exact(multi, pipelines_by_model):
    from ray import serve

    handle = serve.get_deployment_handle(CLASSIFIER_NAME, app_name="lru")
    labels = ["sports", "politics", "technology"]
    for model in ["a", "b", "a", "b"]:
        body = {"inputs": [TEXTS[1]], "parameters": {"candidate_labels": labels}}
        r = httpx.post(f"{multi}/lru/models/{model}", json=body, timeout=60)
        assert r.status_code == 200, r.text
        (expected,) = _expected(pipelines_by_model[model], [TEXTS[1]], labels)
        assert_same_result(_as_result(TEXTS[1], r.json()[0]), expected)
        assert handle.info.remote().result()["models_loaded"] == [model]


def test_inference_client_pointed_at_one_models_url(multi, pipelines_by_model, hub_online):
    from huggingface_hub import InferenceClient

    labels = ["sports", "economy", "health"]
    for model in ("b", "a"):
        out = InferenceClient(model=f"{multi}/multi/models/{model}").zero_shot_classification(
            TEXTS[1], labels
        )
        got = _as_result(TEXTS[1], [{"label": o.label, "score": o.score} for o in out])
        assert_same_result(got, _expected(pipelines_by_model[model], TEXTS[1], labels)[0])
