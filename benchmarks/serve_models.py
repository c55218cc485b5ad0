"""Several models in one classifier: do their batches fill as one model's do? In one run.

Each run keeps `--concurrency` requests in flight (closed loop, through deployment handles
with pre-encoded pairs, so only the batching differs), each 1-10 labels of one text, half for
each of two tiny fixture models in the two-model runs:
- `one_model`: our classifier serving one model, all the load on it (the anchor);
- `two_models`: our classifier serving both (a lane per model: each model's `@serve.batch`
  queue and gate fill with its own parts);
- `ray_split`: the baseline Ray offers, one `@serve.batch` queue under `@serve.multiplexed`
  (the same batch size in pairs, the same scorer, the same queue, Ray's default 10 ms wait):
  Ray closes a batch at its size or wait, whether the device is free or not, and then splits
  it by model (ray PR 59334), so each model's share runs as a smaller batch.
Reports pairs/s, mean pairs per forward batch (per model) and ratios as JSON, and writes
benchmarks/results/serve_models.{json,png}.

On a GPU host the forward pass's fixed cost per batch is what half-full batches waste (an
H100 runs a 64-pair batch of this model in about the time of a 128-pair one), so the gap in
pairs per batch is the figure that carries over; pairs/s here is a 2-core CPU's.

    python -m benchmarks.serve_models [--seconds 15] [--concurrency 32] [--max-batch-size 64]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import numpy as np

from benchmarks.common import RESULTS, cpu_model, seeded_texts, write_results
from benchmarks.serve_load import LABEL_POOL

WORK = RESULTS / "serve_models_work"


def models() -> list[str]:
    from zeroshot.fixtures import make_test_model

    out = []
    for name, seed in (("m1", 1), ("m2", 2)):
        target = WORK / name
        if not (target / "model.safetensors").exists():
            make_test_model(target, "tiny", seed=seed)
        out.append(str(target))
    return out


def workload(paths: list[str], n: int = 400, seed: int = 0) -> dict[str, list]:
    """Per model, `n` requests' pre-encoded pairs (one text, 1-10 labels)."""
    from zeroshot.frontend import Frontend

    rng = random.Random(seed)
    texts = [" ".join(t.split()[:40]) for t in seeded_texts(n, seed=seed)]
    labels = [rng.sample(LABEL_POOL, rng.randint(1, 10)) for _ in range(n)]
    out = {}
    for path in paths:
        frontend = Frontend.from_pretrained(path)
        out[path] = [
            frontend.encode(frontend.request([t], ls, "This example is {}.")).pairs
            for t, ls in zip(texts, labels)
        ]
    return out


def ray_split_deployment(max_batch_size: int, queue: dict):
    """Ray's own way: `@serve.multiplexed` models, one shared `@serve.batch` queue sized in
    pairs (the same size function as ours), each model's share of a batch scored apart."""
    from ray import serve

    from zeroshot.config import BatchingConfig, ModelConfig
    from zeroshot.pairs import Pairs
    from zeroshot.score import Scorer

    # The same queue in front as ours, so both hold every request in flight.
    @serve.deployment(name="RaySplit", ray_actor_options={"num_cpus": 0}, **queue)
    class RaySplit:
        def __init__(self):
            self.batches: list[tuple[str, int]] = []

        @serve.multiplexed(max_num_models_per_replica=2)
        async def scorer(self, model_id: str) -> Scorer:
            cfg = ModelConfig(model=model_id, device="cpu", dtype="float32")
            return Scorer.from_config(cfg, batching=BatchingConfig())

        async def score(self, pairs: Pairs) -> np.ndarray:
            return await self.batched(pairs)

        @serve.batch(  # Ray's default wait (10 ms): a batch waits that long to fill
            max_batch_size=max_batch_size,
            batch_size_fn=lambda items: sum(len(p) for p in items),
        )
        async def batched(self, items: list[Pairs]) -> list[np.ndarray]:
            model_id = serve.get_multiplexed_model_id()  # one model per sub-batch
            scorer = await self.scorer(model_id)
            counts = [len(p) for p in items]
            logits, _ = await asyncio.to_thread(scorer.score, Pairs.concat(items))
            self.batches.append((model_id, sum(counts)))
            return np.split(logits, np.cumsum(counts)[:-1])

        def stats(self, reset: bool = False) -> dict:
            out = {}
            for model_id, n in self.batches:
                s = out.setdefault(model_id, {"batches": 0, "pairs": 0})
                s["batches"] += 1
                s["pairs"] += n
            if reset:
                self.batches = []
            return {"models": out}

    return RaySplit.bind()


async def closed_loop(call, work: dict[str, list], concurrency: int, seconds: float) -> dict:
    """`concurrency` clients, each sending its next request when the last one is answered,
    the models in turn; pairs answered per second inside the window after a warm-up."""
    paths = list(work)
    counter = iter(range(10**9))
    done: list[tuple[float, int]] = []

    async def client() -> None:
        while True:
            i = next(counter)
            path = paths[i % len(paths)]
            pairs = work[path][(i // len(paths)) % len(work[path])]
            await call(path, pairs)
            done.append((time.perf_counter(), len(pairs)))

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(2.0)  # warm-up: the queues fill
    lo = time.perf_counter()
    await asyncio.sleep(seconds)
    hi = time.perf_counter()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    inside = [n for t, n in done if lo < t <= hi]
    return {"pairs_per_s": sum(inside) / (hi - lo), "requests": len(inside)}


def per_batch(stats: dict) -> dict[str, float]:
    return {m: s["pairs"] / s["batches"] for m, s in stats["models"].items() if s["batches"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=64, help="pairs per batch, all runs")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each (the median is kept)")
    args = ap.parse_args()

    import ray
    from ray import serve

    from serve.config import AppConfig, ServeBatching
    from zeroshot import raylog

    paths = models()
    work = workload(paths)
    ray.init(num_cpus=2, include_dashboard=False, **raylog.quiet())
    serve.start()
    batching = ServeBatching(max_batch_size=args.max_batch_size)
    clf = {"num_cpus": 0, "num_gpus": 0, "torch_threads": 2}
    queue = {"max_ongoing_requests": 4 * args.concurrency, "max_queued_requests": -1}
    out: dict = {
        "device": f"cpu ({cpu_model()}, 2 cores)",
        "concurrency": args.concurrency,
        "max_batch_size_pairs": args.max_batch_size,
        "seconds": args.seconds,
        "runs": {},
    }
    try:
        handles, served = {}, {}
        for name, paths_here in (("one_model", paths[:1]), ("two_models", paths)):
            cfg = AppConfig(models=[{"model": p} for p in paths_here], dtype="float32",
                            batching=batching, classifier=clf)  # fmt: skip
            # The classifier alone (no ingress): handles carry pre-encoded pairs.
            handles[name] = serve.run(_classifier_only(cfg, queue), name=name, route_prefix=None)
            served[name] = paths_here
        handles["ray_split"] = serve.run(ray_split_deployment(args.max_batch_size, queue),
                                         name="ray_split", route_prefix=None)  # fmt: skip
        served["ray_split"] = paths
        loop = asyncio.new_event_loop()
        rounds: dict[str, list] = {name: [] for name in handles}
        for _ in range(args.rounds):  # alternated, so the machine's drift hits every run
            for name, handle in handles.items():

                async def call(path, pairs, handle=handle):
                    return await handle.options(multiplexed_model_id=path).score.remote(pairs)

                for p in served[name]:  # each model loaded and warm before the window
                    loop.run_until_complete(call(p, work[p][0]))
                handle.stats.remote(reset=True).result()
                here = {p: work[p] for p in served[name]}
                result = loop.run_until_complete(
                    closed_loop(call, here, args.concurrency, args.seconds)
                )
                stats = handle.stats.remote().result()
                result["pairs_per_batch"] = per_batch(stats)
                if "max_models_per_batch" in stats:
                    result["max_models_per_batch"] = stats["max_models_per_batch"]
                rounds[name].append(result)
                print(name, result, flush=True)
        for name, results in rounds.items():
            best = sorted(results, key=lambda r: r["pairs_per_s"])[len(results) // 2]
            out["runs"][name] = {**best, "rounds_pairs_per_s": [r["pairs_per_s"] for r in results]}
    finally:
        serve.shutdown()
        ray.shutdown()

    runs = out["runs"]
    mean = {k: float(np.mean(list(v["pairs_per_batch"].values()))) for k, v in runs.items()}
    out["ratios"] = {
        "two_models_over_one_pairs_per_s": runs["two_models"]["pairs_per_s"]
        / runs["one_model"]["pairs_per_s"],
        "two_models_over_ray_split_pairs_per_s": runs["two_models"]["pairs_per_s"]
        / runs["ray_split"]["pairs_per_s"],
        "two_models_over_ray_split_pairs_per_batch": mean["two_models"] / mean["ray_split"],
        "two_models_over_one_pairs_per_batch": mean["two_models"] / mean["one_model"],
    }
    out["targets"] = {
        "each model's batches as full as one model's (>= 0.9)": out["ratios"][
            "two_models_over_one_pairs_per_batch"
        ]
        >= 0.9,
        "no batch holds two models": all(
            r["max_models_per_batch"] == 1 for r in rounds["two_models"]
        ),
    }
    write_results("serve_models", out)
    plot(out, mean)


def _classifier_only(cfg, queue: dict):
    from serve.classifier import ZeroShotClassifier
    from serve.config import CLASSIFIER_NAME

    options = cfg.deployment_options()[CLASSIFIER_NAME]
    options.update(queue)
    return ZeroShotClassifier.options(**options).bind(cfg.model_dump())


def plot(out: dict, mean: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["one_model", "two_models", "ray_split"]
    shown = ["one model (ours)", "two models (ours:\na queue per model)",
             "two models (Ray: one\nqueue, split by model)"]  # fmt: skip
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bars = left.bar(shown, [mean[n] for n in names], color=["#999", "#36c", "#c63"])
    left.bar_label(bars, fmt="%.1f")
    left.axhline(out["max_batch_size_pairs"], color="#666", ls="--", lw=1, label="max batch")
    left.set_ylabel("pairs per forward batch (mean over models)")
    left.legend(fontsize=8)
    bars = right.bar(shown, [out["runs"][n]["pairs_per_s"] for n in names],
                     color=["#999", "#36c", "#c63"])  # fmt: skip
    right.bar_label(bars, fmt="%.0f")
    right.set_ylabel("pairs / s (all models)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"several models, one classifier: {out['concurrency']} requests in flight, "
                 f"{out['device']}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(RESULTS / "serve_models.png", dpi=100)


if __name__ == "__main__":
    main()
