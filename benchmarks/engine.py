"""Engine throughput on the `full` fixture against the transformers pipeline and the bare limit.

In one run, on the same seeded texts: the engine with the fast forward (zeroshot.fast_bart, the
default) and with transformers' own forward (`fast_forward=False`), each in float32 and with
dtype=auto; the bare forward limit of both forwards (pre-tokenized, length-sorted, no
overhead) at each dtype; the transformers pipeline (default batch size, and its best batch
size). Runs alternate between variants (best of N) so drift on a shared box hits all of them.
Prints JSON with pairs/s and ratios; writes benchmarks/results/engine.{json,png}.

    python -m benchmarks.engine [--texts 200] [--pipeline-texts 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import (
    LABELS,
    RESULTS,
    bare_limit,
    cpu_model,
    ensure_full_model,
    seeded_texts,
    write_results,
)

FORWARDS = {"fast": True, "transformers": False}  # name -> ModelConfig.fast_forward


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def score_map(results) -> list[dict[str, float]]:
    return [dict(zip(r["labels"], r["scores"])) for r in results]


def variant(forward: str, dtype: str) -> str:
    """Result key: the fast forward keeps the historic names (engine_float32, bare_auto)."""
    return dtype if forward == "fast" else f"transformers_{dtype}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--pipeline-texts", type=int, default=40, help="subset for the slow pipeline")
    ap.add_argument("--batch-sizes", default="8,32", help="pipeline batch sizes to search")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for engine and bare runs")
    args = ap.parse_args()

    from transformers import pipeline

    from zeroshot import ClassificationRequest, Limits, ModelConfig, ZeroShotClassifier

    model = ensure_full_model()
    texts = seeded_texts(args.texts, seed=0)
    labels = LABELS
    n_pairs = len(texts) * len(labels)
    limits = Limits(max_sequences=max(256, len(texts)))
    out: dict = {"model": "full fixture (distilbart-mnli-12-1 shape, random weights)",
                 "device": "cpu", "cpu": cpu_model(), "texts": len(texts),
                 "labels": len(labels), "pairs": n_pairs,
                 "torch_threads": torch.get_num_threads()}  # fmt: skip

    engines = {}
    for dtype in ("float32", "auto"):
        for forward, fast in FORWARDS.items():
            cfg = ModelConfig(model=model, dtype=dtype, device="cpu", fast_forward=fast)
            clf = ZeroShotClassifier.from_config(cfg, limits=limits)
            assert clf.scorer.backend.forward == forward
            clf(texts[:2], labels)  # warm-up
            engines[forward, dtype] = {"clf": clf, "seconds": float("inf")}
    for _ in range(args.repeats):  # best of N, alternating: this shared 2-core box is noisy
        for e in engines.values():
            results, secs = timed(lambda clf=e["clf"]: clf(texts, labels))
            e["results"], e["seconds"] = results, min(e["seconds"], secs)
    for (forward, dtype), e in engines.items():
        out[f"engine_{variant(forward, dtype)}"] = {
            "forward": forward,
            "dtype": e["clf"].dtype,
            "seconds": e["seconds"],
            "pairs_per_s": n_pairs / e["seconds"],
        }

    # The bare limit sees exactly the engine's pairs and batching.
    clf32 = engines["fast", "float32"]["clf"]
    pairs = clf32.frontend.encode(ClassificationRequest.create(texts, labels, limits=limits)).pairs
    bare: dict = {}
    for _ in range(args.repeats):
        for forward, dtype in engines:
            run = bare_limit(
                model, dtype, pairs, clf32.scorer.batching, fast_forward=FORWARDS[forward]
            )
            key = f"bare_{variant(forward, dtype)}"
            if key not in bare or run["pairs_per_s"] > bare[key]["pairs_per_s"]:
                bare[key] = run
    for key, run in bare.items():
        del run["pairs"]
        out[key] = run

    # The pipeline is slow (one pair per forward by default): time it on a subset.
    sub_idx = list(range(0, len(texts), max(1, len(texts) // args.pipeline_texts)))
    sub_idx = sub_idx[: args.pipeline_texts]
    sub = [texts[i] for i in sub_idx]
    sub_pairs = len(sub) * len(labels)
    pipe = pipeline("zero-shot-classification", model=model, device=-1, dtype=torch.float32)
    pipe(sub[:1], candidate_labels=labels)
    ref, secs = timed(lambda: pipe(sub, candidate_labels=labels))
    out["pipeline_default"] = {"texts": len(sub), "seconds": secs, "pairs_per_s": sub_pairs / secs}
    best = None
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        _, secs = timed(lambda bs=bs: pipe(sub, candidate_labels=labels, batch_size=bs))
        out[f"pipeline_batch_{bs}"] = {"seconds": secs, "pairs_per_s": sub_pairs / secs}
        if best is None or sub_pairs / secs > best[1]:
            best = (bs, sub_pairs / secs)
    out["pipeline_best"] = {"batch_size": best[0], "pairs_per_s": best[1]}
    # The engine on the pipeline's subset: the pipeline ratios compare equal work.
    _, secs = timed(lambda: engines["fast", "auto"]["clf"](sub, labels))
    out["engine_auto_on_pipeline_subset"] = {"seconds": secs, "pairs_per_s": sub_pairs / secs}

    # Agreement: each float32 engine vs the pipeline; dtype=auto vs float32 for each forward
    # (transformers' own forward in the low dtype is the yardstick for the fast one).
    def max_diff(a: list[dict], b: list[dict], idx) -> float:
        return max(abs(a[i][lab] - b[j][lab]) for i, j in idx for lab in labels)

    ref_map = score_map(ref)
    for forward in FORWARDS:
        exact = score_map(engines[forward, "float32"]["results"])
        out[f"max_abs_diff_engine_{forward}_fp32_vs_pipeline"] = max_diff(
            exact, ref_map, list(zip(sub_idx, range(len(sub))))
        )
        low = score_map(engines[forward, "auto"]["results"])
        out[f"max_abs_diff_{forward}_auto_vs_fp32"] = max_diff(
            low, exact, [(i, i) for i in range(len(texts))]
        )
        out[f"top_label_agreement_{forward}_auto_vs_fp32"] = float(np.mean([
            max(f, key=f.get) == max(e, key=e.get) for f, e in zip(low, exact)
        ]))  # fmt: skip

    runs = {k: v for k, v in out.items() if isinstance(v, dict)}
    pps = {k: v["pairs_per_s"] for k, v in runs.items() if "pairs_per_s" in v}
    esub = pps["engine_auto_on_pipeline_subset"]
    out["ratios"] = {
        "engine_fp32_over_bare_fp32": pps["engine_float32"] / pps["bare_float32"],
        "engine_auto_over_bare_auto": pps["engine_auto"] / pps["bare_auto"],
        "fast_over_transformers_engine_fp32": (
            pps["engine_float32"] / pps["engine_transformers_float32"]
        ),
        "fast_over_transformers_engine_auto": pps["engine_auto"] / pps["engine_transformers_auto"],
        "fast_over_transformers_bare_fp32": pps["bare_float32"] / pps["bare_transformers_float32"],
        "fast_over_transformers_bare_auto": pps["bare_auto"] / pps["bare_transformers_auto"],
        "engine_auto_over_pipeline_default": esub / pps["pipeline_default"],
        "engine_auto_over_pipeline_best": esub / pps["pipeline_best"],
        "engine_auto_over_engine_fp32": pps["engine_auto"] / pps["engine_float32"],
    }
    out["targets"] = {
        "engine_fp32_over_bare_fp32 >= 0.9": out["ratios"]["engine_fp32_over_bare_fp32"] >= 0.9,
        "engine_auto_over_pipeline_default >= 10": out["ratios"][
            "engine_auto_over_pipeline_default"
        ] >= 10,
    }  # fmt: skip
    write_results("engine", out)
    plot(out)


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["pipeline_default", "pipeline_best",
             "engine_transformers_float32", "engine_float32", "bare_float32",
             "engine_transformers_auto", "engine_auto", "bare_auto"]  # fmt: skip
    values = [out[n]["pairs_per_s"] for n in names]
    colors = ["#999", "#bbb", "#8ab", "#36c", "#9bd", "#db8", "#c63", "#eb9"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("pairs / s")
    dtype = out["engine_auto"]["dtype"]
    ax.set_title(
        f"zero-shot engine, full fixture, {out['pairs']} pairs, CPU "
        f"({out['torch_threads']} threads; auto = {dtype})"
    )
    plt.xticks(rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(RESULTS / "engine.png", dpi=100)


if __name__ == "__main__":
    main()
