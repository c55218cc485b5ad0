"""Serve app pieces that need no Ray cluster: device choice, batch budgets, per-part error
isolation, config file validity, import hygiene."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from serve.classifier import (
    BatchGate,
    BatchRunner,
    BatchSettings,
    Part,
    ZeroShotClassifier,
    batch_size,
    check_pairs,
    pick_device,
    split_request,
)
from serve.config import CLASSIFIER_NAME, INGRESS_NAME, AppConfig, ServeBatching
from serve.errors import HTTPError
from serve.wire import pack_pairs, unpack_pairs
from zeroshot.errors import InvalidInputError
from zeroshot.score import ScoreStats

ROOT = Path(__file__).resolve().parent.parent
CONFIG_YAML = ROOT / "serve" / "config.yaml"


def test_pick_device_from_ray_gpu_ids():
    assert pick_device("auto", []) == "cpu"
    assert pick_device("auto", [3], "3") == "cuda:0"
    assert pick_device("auto", [3], "1,3") == "cuda:1"
    assert pick_device("auto", ["2"], None) == "cuda:2"  # NOSET mode: every GPU visible
    assert pick_device("cpu", [0], "0") == "cpu"
    assert pick_device("cuda:1", [], None) == "cuda:1"


def _pairs(lengths) -> list[np.ndarray]:
    return [np.arange(n, dtype=np.int32) % 50 + 3 for n in lengths]


def test_split_request_respects_both_budgets():
    settings = BatchSettings(ServeBatching(max_batch_size=4, max_batch_tokens=64))
    pairs = _pairs([5, 30, 7, 9, 12, 3, 3, 3, 3, 3])
    parts = split_request(1, pairs, settings)
    seen = np.concatenate([idx for idx, _ in parts])
    assert sorted(seen.tolist()) == list(range(len(pairs)))
    for idx, part in parts:
        assert len(part.pairs) <= 4
        assert part.padded_tokens <= 64 or len(part.pairs) == 1
        assert [len(p) for p in part.pairs] == [len(pairs[i]) for i in idx]


def test_batch_size_counts_pairs_and_closes_on_tokens():
    settings = BatchSettings(ServeBatching(max_batch_size=10, max_batch_tokens=100))
    small = Part(1, _pairs([5, 5]), 8, settings)
    other = Part(2, _pairs([6, 6, 6]), 8, settings)
    assert batch_size([small]) == 2
    assert batch_size([small, other]) == 5
    big = Part(3, _pairs([48, 48]), 48, settings)  # 96 padded tokens, 112 with `small`
    assert batch_size([small, big]) == 11  # over the token budget: more than the limit
    lone = Part(4, _pairs([200]), 200, settings)  # one pair longer than the budget still runs
    assert batch_size([lone]) == 1
    settings.batching = ServeBatching(max_batch_size=1, max_batch_tokens=100)  # reconfigured
    assert batch_size([small]) == 1  # a lone part always fits ...
    assert batch_size([small, other]) == 5  # ... and nothing joins it


def test_wire_roundtrip_and_checks():
    pairs = _pairs([3, 1, 7])
    ids, lengths = pack_pairs(pairs)
    back = unpack_pairs(ids, lengths)
    assert [p.tolist() for p in back] == [p.tolist() for p in pairs]
    check_pairs(ids, lengths, vocab_size=100, max_length=8)
    with pytest.raises(InvalidInputError):
        check_pairs(ids, lengths, vocab_size=5, max_length=8)  # id beyond the vocabulary
    with pytest.raises(InvalidInputError):
        check_pairs(ids, lengths, vocab_size=100, max_length=4)  # pair too long
    with pytest.raises(InvalidInputError):
        check_pairs(ids, lengths[:2], vocab_size=100, max_length=8)
    with pytest.raises(InvalidInputError):
        check_pairs([1, 2], lengths, vocab_size=100, max_length=8)


class FakeScorer:
    """Logits = (first id, length, 0); any batch holding id 999 fails, as a broken pass would."""

    def __init__(self):
        self.calls: list[int] = []

    def score_with_stats(self, pairs):
        self.calls.append(len(pairs))
        if any(999 in p for p in pairs):
            raise RuntimeError("boom")
        logits = np.asarray([[p[0], len(p), 0.0] for p in pairs], dtype=np.float32)
        n = sum(len(p) for p in pairs)
        return logits, ScoreStats(batches=1, pairs=len(pairs), tokens=n, padded_tokens=n)


def test_batch_runner_isolates_a_failing_part():
    settings = BatchSettings(ServeBatching())
    good1 = Part(1, [np.asarray([5, 6, 7])], 8, settings)
    bad = Part(2, [np.asarray([999, 1])], 8, settings)
    good2 = Part(3, [np.asarray([8, 9]), np.asarray([10])], 8, settings)
    runner = BatchRunner(FakeScorer())
    out = asyncio.run(runner.run([good1, bad, good2]))
    assert out[0].tolist() == [[5, 3, 0]]
    assert isinstance(out[1], HTTPError) and out[1].status == 500
    assert out[2].tolist() == [[8, 2, 0], [10, 1, 0]]
    assert runner.scorer.calls == [4, 1, 1, 2]  # shared pass failed, then each part alone
    assert runner.stats.failed_batches == 1 and runner.stats.batches == 2

    ok = asyncio.run(runner.run([good1, good2]))
    assert [o.tolist() for o in ok] == [[[5, 3, 0]], [[8, 2, 0], [10, 1, 0]]]
    assert runner.stats.max_requests_per_batch == 2


def test_batch_gate_fills_the_next_batch_while_one_runs():
    """A fake Serve queue: parts are queued by `submit` and run when the test starts a batch."""

    async def scenario():
        settings = BatchSettings(ServeBatching())
        queued: list[tuple[Part, asyncio.Future]] = []

        async def submit(part):
            fut = asyncio.get_running_loop().create_future()
            queued.append((part, fut))
            return await fut

        gate = BatchGate(submit)

        async def start_batch():
            batch = [(p, f) for p, f in queued if not f.cancelled()]  # as Serve drops them
            queued[:] = []
            gate.started([p for p, _ in batch])
            await asyncio.sleep(0)  # let released parts reach the queue
            return batch

        parts = [Part(i, [np.asarray([i])], 8, settings) for i in range(6)]
        first = asyncio.create_task(gate.run(parts[0]))
        await asyncio.sleep(0)
        assert len(queued) == 1  # idle: straight in
        rest = [asyncio.create_task(gate.run(p)) for p in parts[1:]]
        await asyncio.sleep(0)
        assert len(queued) == 1 and len(gate.held) == 5  # one batch is already waiting
        rest[1].cancel()  # a request cancelled while held never reaches the queue
        running = await start_batch()  # batch 1 starts: everything held is released at once
        assert [p.request for p, _ in running] == [0]
        assert sorted(p.request for p, _ in queued) == [1, 3, 4, 5]
        running[0][1].set_result("r0")
        assert await first == "r0"
        late = asyncio.create_task(gate.run(Part(9, [np.asarray([9])], 8, settings)))
        await asyncio.sleep(0)
        assert len(gate.held) == 1  # batch 2 is formed but not started: hold
        queued[0][1].cancel()  # a released part dropped before its batch began (Serve)
        await asyncio.sleep(0)
        assert gate.released == 3
        batch2 = await start_batch()
        assert [p.request for p, _ in queued] == [9]  # released when batch 2 began
        for part, fut in batch2:
            fut.set_result(f"r{part.request}")
        queued[0][1].set_result("r9")
        assert await late == "r9"
        assert [await t for t in rest[2:]] == ["r3", "r4", "r5"]
        assert rest[1].cancelled() and rest[0].cancelled()

    asyncio.run(scenario())


def test_check_health_fails_without_model():
    cls = ZeroShotClassifier.func_or_class
    replica = cls.__new__(cls)
    replica.scorer = None
    with pytest.raises(RuntimeError, match="not loaded"):
        asyncio.run(replica.check_health())


def test_every_metric_is_created():
    from serve.metrics import COUNTERS, HISTOGRAMS, classifier_metrics, ingress_metrics

    made = {**classifier_metrics()._hist, **ingress_metrics()._hist}
    assert set(made) == set(HISTOGRAMS)  # e.g. a zero bucket boundary would disable them all
    counters = {**classifier_metrics()._count, **ingress_metrics()._count}
    assert set(counters) == set(COUNTERS)


def _yaml() -> dict:
    return yaml.safe_load(CONFIG_YAML.read_text())


def test_config_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    data = _yaml()
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    AppConfig.model_validate(app.args)
    deployments = {d.name: d.model_dump(exclude_unset=True) for d in app.deployments}
    assert set(deployments) == {INGRESS_NAME, CLASSIFIER_NAME}
    for d in deployments.values():
        for key in ("autoscaling_config", "max_ongoing_requests", "max_queued_requests"):
            assert key in d, (d["name"], key)
        assert "ray_actor_options" in d
    clf = deployments[CLASSIFIER_NAME]
    batching = ServeBatching.model_validate(clf["user_config"])
    assert clf["ray_actor_options"]["num_gpus"] == 1
    assert clf["max_ongoing_requests"] >= batching.max_batch_size
    assert not _keys(data) & {"max_concurrent_queries", "target_num_ongoing_requests_per_replica"}


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node))
    return set()


def test_build_app_from_yaml_args():
    from ray.serve import Application

    from serve.app import build_app

    app = build_app(_yaml()["applications"][0]["args"])
    assert isinstance(app, Application)
    with pytest.raises(Exception, match="extra|unknown|permitted"):
        build_app({"modle": "typo"})


@pytest.mark.parametrize("model", [AppConfig, ServeBatching])
def test_every_config_field_is_described(model):
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"


def _imports_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(out.stdout.split())


def test_serve_cli_import_does_not_import_ray():
    mods = _imports_after("import serve.cli")
    assert "ray" not in mods


def test_ingress_import_adds_no_torch():
    base = _imports_after("import zeroshot.frontend")
    if "torch" in base:
        pytest.skip("the zeroshot package imports torch eagerly (zeroshot/__init__.py)")
    assert "torch" not in _imports_after("import serve.ingress")


def test_cli_arguments_parse():
    from zeroshot.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--model", "/m", "--port", "8123", "--dtype", "float32", "--num-gpus", "0"]
    )
    from serve.cli import _config

    cfg = _config(args)
    assert (cfg.model, cfg.dtype, cfg.num_gpus) == ("/m", "float32", 0)
    assert args.port == 8123 and args.host == "127.0.0.1"
