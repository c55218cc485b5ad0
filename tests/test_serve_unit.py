"""Serve app pieces that need no Ray cluster: batch budgets, per-part error isolation, config
file validity and deployment options, import hygiene."""

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
    Device,
    Part,
    ZeroShotClassifier,
    batch_size,
    split_request,
)
from serve.config import (
    CLASSIFIER_NAME,
    INGRESS_NAME,
    AppConfig,
    ClassifierSettings,
    IngressSettings,
    ServeBatching,
)
from zeroshot.config import BatchingConfig
from zeroshot.errors import InternalError
from zeroshot.pairs import Pairs
from zeroshot.score import ScoreStats

ROOT = Path(__file__).resolve().parent.parent
CONFIG_YAML = ROOT / "serve" / "config.yaml"


def _pairs(lengths) -> Pairs:
    return Pairs.from_list([np.arange(n, dtype=np.int32) % 50 + 3 for n in lengths])


def test_split_request_cuts_like_forward_passes():
    forward = BatchingConfig(max_batch_tokens=64)
    settings = BatchSettings(ServeBatching(max_batch_size=4, forward=forward))
    pairs = _pairs([5, 30, 7, 9, 12, 3, 3, 3, 3, 3])
    parts = split_request(1, pairs, settings)
    seen = np.concatenate([idx for idx, _ in parts])
    assert sorted(seen.tolist()) == list(range(len(pairs)))
    for idx, part in parts:
        lengths = part.pairs.lengths
        assert len(part.pairs) <= 4
        assert (-(-lengths.max() // 8) * 8) * len(lengths) <= 64 or len(lengths) == 1
        assert lengths.tolist() == pairs.lengths[idx].tolist()
        assert (-(-lengths // 8) * 8 >= 0.75 * (-(-lengths.max() // 8) * 8)).all()  # min_fill


def test_batch_budget_follows_the_device():
    cpu = BatchSettings(ServeBatching(), "cpu").forward.max_batch_tokens
    gpu = BatchSettings(ServeBatching(), "cuda").forward.max_batch_tokens
    assert cpu < gpu
    fixed = ServeBatching(forward=BatchingConfig(max_batch_tokens=777))
    assert BatchSettings(fixed, "cuda").forward.max_batch_tokens == 777


def test_batch_size_counts_pairs():
    settings = BatchSettings(ServeBatching(max_batch_size=10))
    small = Part(1, _pairs([5, 5]), settings)
    other = Part(2, _pairs([6, 6, 6]), settings)
    assert batch_size([small]) == 2
    assert batch_size([small, other]) == 5
    settings.update(ServeBatching(max_batch_size=1))  # reconfigured
    assert batch_size([small]) == 1  # a lone part always fits ...
    assert batch_size([small, other]) == 5  # ... and nothing joins it


class FakeScorer:
    """Logits = (first id, length, 0); any batch holding id 999 fails, as a broken pass would."""

    def __init__(self):
        self.calls: list[int] = []

    def score_many(self, groups):
        pairs = [p for g in groups for p in g.to_list()]
        self.calls.append(len(pairs))
        if any(999 in p for p in pairs):
            raise RuntimeError("boom")
        n = sum(len(p) for p in pairs)
        stats = ScoreStats(batches=1, pairs=len(pairs), tokens=n, padded_tokens=n)
        return [np.asarray([[p[0], len(p), 0.0] for p in g.to_list()]) for g in groups], stats


def test_batch_runner_isolates_a_failing_part():
    settings = BatchSettings(ServeBatching())
    good1 = Part(1, Pairs.from_list([np.asarray([5, 6, 7])]), settings)
    bad = Part(2, Pairs.from_list([np.asarray([999, 1])]), settings)
    good2 = Part(3, Pairs.from_list([np.asarray([8, 9]), np.asarray([10])]), settings)
    runner = BatchRunner(FakeScorer())
    out = asyncio.run(runner.run([good1, bad, good2]))
    assert out[0].tolist() == [[5, 3, 0]]
    assert isinstance(out[1], InternalError) and "boom" in out[1].message
    assert out[2].tolist() == [[8, 2, 0], [10, 1, 0]]
    assert runner.scorer.calls == [4, 1, 1, 2]  # shared pass failed, then each part alone
    assert runner.stats.failed_batches == 1 and runner.stats.batches == 2

    ok = asyncio.run(runner.run([good1, good2]))
    assert [o.tolist() for o in ok] == [[[5, 3, 0]], [[8, 2, 0], [10, 1, 0]]]
    assert runner.stats.max_requests_per_batch == 2


def test_batch_gate_forms_each_batch_from_what_arrived_while_one_ran():
    """A fake Serve queue: parts are queued by `submit` and run when the test starts a batch."""

    async def scenario():
        settings = BatchSettings(ServeBatching())
        queued: list[tuple[Part, asyncio.Future]] = []
        alone: list[int] = []

        async def submit(part, is_alone):
            if is_alone:
                alone.append(part.request)
            fut = asyncio.get_running_loop().create_future()
            queued.append((part, fut))
            return await fut

        gate = BatchGate(submit)

        async def start_batch():
            batch = [(p, f) for p, f in queued if not f.cancelled()]  # as Serve drops them
            queued[:] = []
            gate.started([p for p, _ in batch])
            return batch

        async def finish_batch(batch):
            for part, fut in batch:
                fut.set_result(f"r{part.request}")
            gate.finished()
            await asyncio.sleep(0)  # let released parts reach the queue

        first = asyncio.create_task(gate.run(Part(0, _pairs([1]), settings)))
        await asyncio.sleep(0)
        joins = asyncio.create_task(gate.run(Part(1, _pairs([1]), settings)))
        await asyncio.sleep(0)
        # Idle device: the first goes straight in, alone; the next joins the forming batch.
        assert [p.request for p, _ in queued] == [0, 1] and alone == [0]
        running = await start_batch()
        rest = [asyncio.create_task(gate.run(Part(i, _pairs([1]), settings))) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        assert not queued and len(gate.held) == 3  # busy: held
        rest[1].cancel()  # a request cancelled while held never reaches the queue
        await finish_batch(running)  # the batch ends: everything held forms the next, together
        assert await first == "r0" and await joins == "r1"
        assert sorted(p.request for p, _ in queued) == [2, 4] and alone == [0]
        queued[0][1].cancel()  # a released part dropped before its batch began (Serve)
        await asyncio.sleep(0)
        assert gate.released == 1
        batch2 = await start_batch()
        assert gate.released == 0 and gate.busy == 1
        await finish_batch(batch2)
        assert await rest[2] == "r4"
        assert rest[0].cancelled() and rest[1].cancelled()
        assert gate.idle and not gate.held
        again = asyncio.create_task(gate.run(Part(10, _pairs([1]), settings)))
        await asyncio.sleep(0)
        assert [p.request for p, _ in queued] == [10] and alone[-1] == 10  # idle again
        again.cancel()

    asyncio.run(scenario())


def test_two_models_lanes_take_turns_and_each_batch_holds_all_that_waited():
    """Two lanes on one device: while lane A's batch runs, both hold what arrives; when it
    ends, the lane whose part has waited longest goes (B), and A's arrivals wait on through
    B's batch, then leave together."""

    async def scenario():
        settings = BatchSettings(ServeBatching())
        device = Device()
        queued: dict[str, list] = {"a": [], "b": []}
        gates = {}

        def submitter(name):
            async def submit(part, alone):
                fut = asyncio.get_running_loop().create_future()
                queued[name].append((part, fut))
                return await fut

            return submit

        for name in ("a", "b"):
            gates[name] = BatchGate(submitter(name), device)

        def start(name):
            batch, queued[name][:] = list(queued[name]), []
            gates[name].started([p for p, _ in batch])
            return batch

        async def finish(name, batch):
            for part, fut in batch:
                fut.set_result(f"{name}{part.request}")
            gates[name].finished()
            await asyncio.sleep(0)

        def run(name, i):
            return asyncio.create_task(gates[name].run(Part(i, _pairs([1]), settings, model=name)))

        a0 = run("a", 0)
        await asyncio.sleep(0)
        running = start("a")
        b1 = run("b", 1)  # waits longest
        a2, a3 = run("a", 2), run("a", 3)
        await asyncio.sleep(0)
        assert not queued["a"] and not queued["b"]  # the device is busy: both lanes hold
        await finish("a", running)
        assert await a0 == "a0"
        assert [p.request for p, _ in queued["b"]] == [1] and not queued["a"]  # B's turn
        b_batch = start("b")
        a4 = run("a", 4)
        await asyncio.sleep(0)
        await finish("b", b_batch)
        assert await b1 == "b1"
        # A's three arrivals (during A's and B's batches) leave as one batch
        assert sorted(p.request for p, _ in queued["a"]) == [2, 3, 4]
        await finish("a", start("a"))
        assert [await t for t in (a2, a3, a4)] == ["a2", "a3", "a4"]
        assert not device.busy and all(g.idle and not g.held for g in gates.values())

    asyncio.run(scenario())


def test_a_cancelled_part_does_not_strand_the_parts_held_behind_it():
    async def scenario():
        settings = BatchSettings(ServeBatching())
        queued: list[tuple[Part, asyncio.Future]] = []

        async def submit(part, alone):
            fut = asyncio.get_running_loop().create_future()
            queued.append((part, fut))
            return await fut

        gate = BatchGate(submit)
        running = asyncio.create_task(gate.run(Part(0, _pairs([1]), settings)))
        await asyncio.sleep(0)
        gate.started([queued[0][0]])
        behind = asyncio.create_task(gate.run(Part(1, _pairs([1]), settings)))
        await asyncio.sleep(0)
        assert len(gate.held) == 1
        running.cancel()  # the client went away; its batch still ends
        queued[0][1].cancel()
        gate.finished()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [p.request for p, _ in queued[1:]] == [1]  # released, not stranded
        queued[1][1].set_result("r1")
        assert await behind == "r1"

    asyncio.run(scenario())


def test_check_health_fails_without_model():
    cls = ZeroShotClassifier.func_or_class
    replica = cls.__new__(cls)
    replica.loaded = {}
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
    cfg = AppConfig.model_validate(app.args)
    # Every deployment option comes from AppConfig: the file overrides none of them.
    assert not app.deployments
    options = cfg.deployment_options(cluster_gpus=0)
    assert set(options) == {INGRESS_NAME, CLASSIFIER_NAME}
    clf = options[CLASSIFIER_NAME]
    assert clf["ray_actor_options"]["num_gpus"] == 1  # said outright for GPU clusters
    batching = ServeBatching.model_validate(clf["user_config"])
    assert clf["max_ongoing_requests"] >= 2 * batching.max_batch_size
    assert not _keys(data) & {"max_concurrent_queries", "target_num_ongoing_requests_per_replica"}


def test_cli_and_yaml_deploy_the_same_options():
    """`zeroshot serve` with the file's values builds exactly the file's options: both go
    through AppConfig.deployment_options, and nothing else sets one."""
    from serve.cli import config_from_args
    from zeroshot.cli import build_parser

    args = _yaml()["applications"][0]["args"]
    from_yaml = AppConfig.model_validate(args)
    argv = ["serve", "--model", args["model"], "--num-gpus", "1", "--replicas", "4"]
    from_cli = config_from_args(
        build_parser("serve").parse_args(
            [*argv, "--ingress-min-replicas", "2", "--ingress-replicas", "4"]
        )
    )
    assert from_cli == from_yaml
    for gpus in (0, 2):
        assert from_cli.deployment_options(gpus) == from_yaml.deployment_options(gpus)
    # The code defaults, unchanged by the CLI, are the same object as an empty `args`.
    plain = config_from_args(build_parser("serve").parse_args(["serve"]))
    assert plain == AppConfig.model_validate({})


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


@pytest.mark.parametrize(
    "model", [AppConfig, ServeBatching, BatchingConfig, IngressSettings, ClassifierSettings]
)
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
    from serve.cli import config_from_args
    from zeroshot.cli import build_parser

    args = build_parser("serve").parse_args(
        ["serve", "--model", "/m", "--port", "8123", "--dtype", "float32", "--num-gpus", "0"]
    )
    cfg = config_from_args(args)
    assert (cfg.model, cfg.dtype, cfg.classifier.num_gpus) == ("/m", "float32", 0)
    assert args.port == 8123 and args.host == "127.0.0.1"


def test_zeroshot_serve_sizes_the_app_from_the_machine():
    from serve.config import AppConfig

    cpu = AppConfig(model="m").for_machine(cores=2, gpus=0)
    assert cpu.classifier.torch_threads == 2 and cpu.ingress.min_replicas == 1
    one_gpu = AppConfig(model="m").for_machine(cores=16, gpus=1)
    assert (one_gpu.ingress.min_replicas, one_gpu.ingress.max_replicas) == (2, 2)
    assert one_gpu.classifier.torch_threads is None  # the GPU does the work
    four = AppConfig(model="m", classifier={"max_replicas": 4}).for_machine(cores=8, gpus=4)
    assert four.ingress.min_replicas == 3  # cores - GPUs - 1: what the machine allows
    mine = AppConfig.model_validate(
        {"model": "m", "ingress": {"max_replicas": 1}, "classifier": {"torch_threads": 1}}
    )
    assert mine.for_machine(cores=16, gpus=1).ingress.max_replicas == 1  # the user's word
    assert mine.for_machine(cores=16, gpus=0).classifier.torch_threads == 1
    # --ingress-min-replicas keeps a second replica on a CPU box too (a GPU host's shape).
    from serve.cli import config_from_args
    from zeroshot.cli import build_parser

    argv = ["serve", "--ingress-min-replicas", "2", "--ingress-replicas", "2"]
    pinned = config_from_args(build_parser("serve").parse_args(argv))
    for gpus in (0, 1):
        ingress = pinned.for_machine(cores=2, gpus=gpus).ingress
        assert (ingress.min_replicas, ingress.max_replicas) == (2, 2)


def test_an_app_whose_fewest_replicas_do_not_fit_is_named_with_what_it_needs():
    from serve.config import AppConfig, deployment_needs, shortfall

    def short(cfg: AppConfig, cores: int, gpus: int) -> str | None:
        sized = cfg.for_machine(cores=cores, gpus=gpus)
        return shortfall(deployment_needs(sized.deployment_options(gpus)), cores, gpus)

    # What `zeroshot serve` sizes by itself always fits the machine.
    for cores, gpus in ((2, 0), (4, 0), (2, 1), (16, 1), (8, 4)):
        assert short(AppConfig(model="m"), cores, gpus) is None, (cores, gpus)
    # Two ingress replicas asked for on two cores: 2 x 1 + the classifier's 1 = 3 CPUs.
    two = AppConfig.model_validate({"model": "m", "ingress": {"min_replicas": 2}})
    assert short(two, 2, 0) == (
        "3 CPUs (ZeroShotIngress 2 x 1, ZeroShotClassifier 1 x 1); Ray has 2"
    )
    assert short(two, 3, 0) is None
    gpus = AppConfig.model_validate(
        {"model": "m", "classifier": {"num_gpus": 1, "min_replicas": 2, "max_replicas": 2}}
    )
    assert short(gpus, 16, 1) == "2 GPUs (ZeroShotClassifier 2 x 1); Ray has 1"


def test_several_models_from_the_cli_and_the_yaml_shape():
    from serve.cli import config_from_args
    from zeroshot.cli import build_parser

    def parsed(*argv: str) -> AppConfig:
        return config_from_args(build_parser("serve").parse_args(["serve", *argv]))

    one = parsed("--model", "org/m", "--revision", "abc")
    assert one.models == [] and (one.model, one.revision) == ("org/m", "abc")
    assert [m.name for m in one.served] == ["org/m"]
    two = parsed("--model", "first=/models/x", "--model", "org/y")
    assert [(m.name, m.model) for m in two.served] == [("first", "/models/x"), ("org/y", "org/y")]
    assert two.model == "/models/x" and two.default_model == "first"
    assert two.models_per_replica() == 2
    assert AppConfig.model_validate(two.model_dump()) == two  # what Serve's replicas receive
    assert two.for_model("org/y").model == "org/y"
    lru = AppConfig(models=two.models, classifier={"max_models_per_replica": 1})
    assert lru.models_per_replica() == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ({"models": [{"model": "x"}, {"model": "x"}]}, "served twice: x"),
        ({"models": [{"id": "a", "model": "x"}, {"id": "a", "model": "y"}]}, "served twice: a"),
        ({"model": "y", "models": [{"model": "x"}]}, "not both"),
        ({"models": [{"model": ""}]}, "at least 1 character"),
    ],
)
def test_bad_model_lists_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        AppConfig.model_validate(args)


def test_the_request_deadline_ends_before_haproxy_gives_a_request_up():
    """HAProxy replays a request unanswered after its server timeout (a replica lost with its
    host never answers): a deadline past it would replay live requests too."""
    from pydantic import ValidationError

    from serve import fast_ingress

    assert fast_ingress.ENV["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"] == str(
        fast_ingress.SERVER_TIMEOUT_S
    )
    assert "response-timeout" in fast_ingress.ENV["RAY_SERVE_HAPROXY_RETRY_ON"].split()
    AppConfig(request_timeout_s=fast_ingress.SERVER_TIMEOUT_S - 5)
    with pytest.raises(ValidationError, match="request_timeout_s"):
        AppConfig(request_timeout_s=fast_ingress.SERVER_TIMEOUT_S - 4)
