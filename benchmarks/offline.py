"""Offline job throughput and memory on the `full` fixture, against its baselines, in one run.

- the job (`pipelines.run_job`, a fresh local Ray per run, start-up included) at float32 and
  with dtype=auto, over a seeded Parquet dataset (benchmarks.common.seeded_texts: a few words
  to several hundred tokens, skewed short; 5 labels);
- the engine's bare limit at the same dtypes: the same pairs, pre-tokenized, length-sorted,
  only the forward passes timed (benchmarks.common.bare_limit);
- a plain loop of the transformers pipeline (float32) over pandas batches of the same Parquet,
  on a subset of the rows with the dataset's length profile (it is the slowest by far);
- memory: the job as a subprocess (`python -m pipelines`) on N and 4N rows, peak RSS of the
  driver and of its whole process tree (Ray's raylet and workers), sampled with psutil. It uses
  a small model by default (the tiny fixture), so the data, not the weights, dominate.

Prints JSON with rows/s and ratios; writes benchmarks/results/offline.{json,png}.

    python -m benchmarks.offline [--rows 5000] [--pipeline-rows 40] [--memory-rows 10000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    LABELS,
    RESULTS,
    bare_limit,
    ensure_full_model,
    seeded_texts,
    write_results,
)

WORK = RESULTS / "offline_work"


def write_dataset(directory: Path, texts: list[str], rows_per_file: int = 1000) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for k, start in enumerate(range(0, len(texts), rows_per_file)):
        chunk = texts[start : start + rows_per_file]
        table = pa.table({"id": np.arange(start, start + len(chunk)), "text": chunk})
        pq.write_table(table, directory / f"part-{k:05d}.parquet")
    return str(directory)


def run_job(data: str, out: Path, model: str, dtype: str, batch_size: int, device: str) -> dict:
    from pipelines import JobConfig
    from pipelines import run_job as run

    summary = run(
        JobConfig(
            input=data,
            output=str(out),
            labels=LABELS,
            id_column="id",
            # On a GPU machine the actor picks CUDA itself (it is given the GPU).
            model=model,
            dtype=dtype,
            device="cpu" if device == "cpu" else "auto",
            batch_size=batch_size,
            overwrite=True,
            show_progress=False,
        )
    )
    return {
        "dtype": dtype,
        "rows": summary.rows_written,
        "seconds": summary.seconds,
        "rows_per_s": summary.rows_per_s,
        "errors": summary.errors,
        "ok": summary.ok,
    }


def pipeline_loop(data: str, model: str, ids: set[int], device: str, batch_rows: int = 16) -> dict:
    """The transformers pipeline over pandas batches: what one writes without this project.
    Runs on the rows in `ids` only (it is the slowest by far)."""
    import pyarrow.dataset as pads
    import torch
    from transformers import pipeline

    pipe = pipeline(
        "zero-shot-classification",
        model=model,
        device=-1 if device == "cpu" else 0,
        dtype=torch.float32,
    )
    pipe("warm up", candidate_labels=LABELS)
    rows = 0
    t0 = time.perf_counter()
    for batch in pads.dataset(data, format="parquet").to_batches(batch_size=1024):
        frame = batch.to_pandas()
        frame = frame[frame["id"].isin(ids)]
        for start in range(0, len(frame), batch_rows):
            texts = frame["text"].iloc[start : start + batch_rows].tolist()
            pipe(texts, candidate_labels=LABELS)
            rows += len(texts)
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def peak_rss_of_job(data: str, out: Path, model: str, batch_size: int, device: str) -> dict:
    """Run the job as `python -m pipelines` and sample the RSS of it and its descendants."""
    import psutil

    cmd = [sys.executable, "-m", "pipelines", data, str(out), "--labels", ",".join(LABELS),
           "--model", model, "--dtype", "float32", "--device", "cpu" if device == "cpu" else "auto",
           "--id-column", "id",
           "--batch-size", str(batch_size), "--overwrite", "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak = {"driver": 0, "tree": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        rss.append(0)
                peak["driver"] = max(peak["driver"], rss[0])
                peak["tree"] = max(peak["tree"], sum(rss))
            except psutil.Error:
                pass
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}):\n{stdout}")
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_driver_mib": peak["driver"] / 2**20,
        "peak_rss_tree_mib": peak["tree"] / 2**20,
    }


def memory_model(path: str | None) -> str:
    if path:
        return path
    from zeroshot.fixtures import make_test_model

    target = WORK / "tiny_model"
    if not (target / "model.safetensors").exists():
        make_test_model(target, "tiny")
    return str(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000, help="dataset rows for the throughput runs")
    ap.add_argument("--pipeline-rows", type=int, default=40, help="rows for the pipeline loop")
    ap.add_argument("--memory-rows", type=int, default=10000, help="N for the N vs 4N runs")
    ap.add_argument("--memory-model", default=None, help="model for the memory runs (tiny)")
    ap.add_argument("--batch-size", type=int, default=256, help="the job's rows per block")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to score")
    args = ap.parse_args()

    import torch

    from zeroshot.config import BatchingConfig
    from zeroshot.frontend import Frontend
    from zeroshot.requests import ClassificationRequest

    model = ensure_full_model()
    WORK.mkdir(parents=True, exist_ok=True)
    texts = seeded_texts(args.rows, seed=0)
    data = write_dataset(WORK / "data", texts)
    frontend = Frontend.from_pretrained(model)
    # Built directly: the job checks texts itself, and a request caps its sequences.
    pairs = frontend.encode(ClassificationRequest(tuple(texts), tuple(LABELS))).pairs
    lengths = pairs.lengths
    out: dict = {
        "model": "full fixture (distilbart-mnli-12-1 shape, random weights)",
        "rows": len(texts),
        "labels": len(LABELS),
        "pairs": len(pairs),
        "pair_tokens_mean": float(lengths.mean()),
        "pair_tokens_max": int(lengths.max()),
        "batch_size": args.batch_size,
        "device": args.device
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        "cpu_threads": torch.get_num_threads(),
    }

    # The bare limit cuts batches exactly as the job's actors do on this device.
    batching = BatchingConfig().for_device(args.device)
    out["max_batch_tokens"] = batching.max_batch_tokens

    # Interleaved, so a change in background load hits each pair of runs alike.
    for dtype in ("float32", "auto"):
        bare = bare_limit(model, dtype, pairs, batching, device=args.device)
        bare["rows_per_s"] = bare["pairs_per_s"] / len(LABELS)
        out[f"bare_{dtype}"] = bare
        out[f"job_{dtype}"] = run_job(
            data, WORK / f"out_{dtype}", model, dtype, args.batch_size, args.device
        )

    # A subset with the dataset's length profile: every k-th row in order of length.
    row_tokens = lengths.reshape(len(texts), len(LABELS)).sum(axis=1)
    step = max(1, len(texts) // args.pipeline_rows)
    subset = np.argsort(row_tokens, kind="stable")[step // 2 :: step][: args.pipeline_rows]
    loop = pipeline_loop(data, model, {int(i) for i in subset}, args.device)
    loop["pair_tokens_mean"] = float(row_tokens[subset].sum() / (len(subset) * len(LABELS)))
    out["pipeline_loop_float32"] = loop

    if not args.skip_memory:
        small = memory_model(args.memory_model)
        mem = {"model": small, "rows": {}}
        for n in (args.memory_rows, 4 * args.memory_rows):
            mem_data = write_dataset(WORK / f"mem_{n}", seeded_texts(n, seed=1))
            mem["rows"][str(n)] = peak_rss_of_job(
                mem_data, WORK / f"mem_out_{n}", small, 256, args.device
            )
        a, b = (mem["rows"][str(n)] for n in (args.memory_rows, 4 * args.memory_rows))
        mem["tree_ratio_4x"] = b["peak_rss_tree_mib"] / a["peak_rss_tree_mib"]
        mem["driver_ratio_4x"] = b["peak_rss_driver_mib"] / a["peak_rss_driver_mib"]
        out["memory"] = mem

    job32, jobauto = out["job_float32"]["rows_per_s"], out["job_auto"]["rows_per_s"]
    loop = out["pipeline_loop_float32"]["rows_per_s"]
    out["ratios"] = {
        "job_fp32_over_bare_fp32": job32 / out["bare_float32"]["rows_per_s"],
        "job_auto_over_bare_auto": jobauto / out["bare_auto"]["rows_per_s"],
        "job_auto_over_pipeline_loop": jobauto / loop,
        "job_fp32_over_pipeline_loop": job32 / loop,
    }
    out["targets"] = {
        "job_fp32_over_bare_fp32 >= 0.85": out["ratios"]["job_fp32_over_bare_fp32"] >= 0.85,
        "job_auto_over_pipeline_loop >= 10": out["ratios"]["job_auto_over_pipeline_loop"] >= 10,
    }
    if "memory" in out:
        out["targets"]["peak RSS flat at 4x rows (tree ratio <= 1.15)"] = (
            out["memory"]["tree_ratio_4x"] <= 1.15
        )
    write_results("offline", out)
    plot(out)


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["pipeline_loop_float32", "job_float32", "bare_float32", "job_auto", "bare_auto"]
    values = [out[n]["rows_per_s"] for n in names]
    panels = 2 if "memory" in out else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    bars = ax.bar(names, values, color=["#999", "#36c", "#9bd", "#c63", "#eb9"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set_ylabel("rows / s")
    ax.set_title(
        f"offline job, full fixture, {out['rows']} rows x {out['labels']} labels, {out['device']}"
    )
    ax.tick_params(axis="x", rotation=20)
    if "memory" in out:
        ax = axes[0][1]
        rows = list(out["memory"]["rows"])
        tree = [out["memory"]["rows"][r]["peak_rss_tree_mib"] for r in rows]
        driver = [out["memory"]["rows"][r]["peak_rss_driver_mib"] for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, tree, 0.4, label="process tree", color="#36c")
        ax.bar(x + 0.2, driver, 0.4, label="driver", color="#9bd")
        ax.set_xticks(x, [f"{int(r):,} rows" for r in rows])
        ax.set_ylabel("peak RSS (MiB)")
        ax.set_title("job memory as the dataset grows 4x (small model)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "offline.png", dpi=100)


if __name__ == "__main__":
    main()
