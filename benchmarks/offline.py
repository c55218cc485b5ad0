"""Offline job throughput and memory, against its baselines, in one run.

Section `platform` (the machinery around the model), each over the same --platform-rows rows
(>= 100,000; seeded texts, 5 labels), each a fresh process with its own local Ray, timed from
outside (what a user waits for, start-up and shutdown included), and again over a 1-row input
(the fixed cost, reported as start-up):
- the no-op Ray Data job of the same shape (benchmarks.offline_noop: read_parquet -> identity
  tasks -> one identity actor -> identity tasks -> write_parquet);
- `zeroshot score --backend null` (every stage real, the forward pass a no-op);
- `zeroshot score` on the tiny fixture model (float32, CPU here; --device cuda on a GPU host),
  with the engine's bare forward limit on the same pairs beside it;
- `zeroshot score --backend null --null-pairs-per-s R`: the job driving an emulated device
  that scores R pairs/s (does the machinery keep a device of that speed fed?);
- the empty-input job.
Targets: null job >= 0.5 of the no-op job's pace (start-up included in both); empty-input job
<= 8 s.

Section `small` (a newcomer's first jobs): per size (--small-rows, 200 and 2,000 rows of the
tiny fixture), alternated --small-repeats times, each a fresh process: the no-op Ray Data job
of the same rows, the model's load alone (import and from_pretrained), `zeroshot score`, and
the same command again with every row already there (answered from the output's record).
Targets: the job <= no-op job + model load; the finished rerun <= 3 s.

Section `model`: the full fixture (the real model's shape):
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

Prints JSON with rows/s and ratios; writes benchmarks/results/offline.{json,png} (a run of
some sections keeps the others' last results in the JSON).

    python -m benchmarks.offline [--sections small,platform,model,memory] [--platform-rows 100000]
        [--rows 5000] [--pipeline-rows 40] [--memory-rows 10000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
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
            # Files every few blocks, so the steady rate (between first and last file) is seen.
            rows_per_file=4 * batch_size,
            overwrite=True,
            show_progress=False,
        )
    )
    return {
        "dtype": dtype,
        "rows": summary.rows_written,
        "seconds": summary.seconds,
        "startup_seconds": summary.startup_seconds,
        "rows_per_s": summary.rows_per_s,
        "steady_rows_per_s": summary.steady_rows_per_s,
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


def peak_rss_of_job(data: str, out: Path, model: str, batch_size: int | None, device: str) -> dict:
    """Run the job as `python -m pipelines` and sample the RSS of it and its descendants."""
    import psutil

    cmd = [sys.executable, "-m", "pipelines", data, str(out), "--labels", ",".join(LABELS),
           "--model", model, "--dtype", "float32", "--device", "cpu" if device == "cpu" else "auto",
           "--id-column", "id", "--overwrite", "--no-progress",
           *(["--batch-size", str(batch_size)] if batch_size else [])]  # fmt: skip
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


def _timed(cmd: list[str], timeout: float = 3600) -> dict:
    """Run a command in a fresh process; its wall time and exit code."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, "stdout": proc.stdout, "stderr": proc.stderr}


def _score_cmd(data: str, out: Path, model: str, backend: str, device: str, *extra) -> list:
    return [sys.executable, "-m", "zeroshot", "score", data, str(out),
            "--labels", ",".join(LABELS), "--model", model, "--backend", backend,
            "--dtype", "float32", "--device", "cpu" if device == "cpu" else "auto",
            "--id-column", "id", "--overwrite", "--no-progress", *extra]  # fmt: skip


def _noop_cmd(data: str, out: Path) -> list:
    return [sys.executable, "-m", "benchmarks.offline_noop", data, str(out)]


def platform(args, model_tiny: str) -> dict:
    """The `platform` section (see the module docstring)."""
    from zeroshot.config import BatchingConfig
    from zeroshot.frontend import Frontend
    from zeroshot.requests import ClassificationRequest

    rows = args.platform_rows
    data = write_dataset(WORK / "platform", seeded_texts(rows, seed=2), rows_per_file=10_000)
    one = write_dataset(WORK / "platform_one", seeded_texts(1, seed=2))
    empty = WORK / "platform_empty"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}),
                   empty / "part-0.parquet")  # fmt: skip
    out = WORK / "platform_out"
    runs = {
        "noop": lambda d: _noop_cmd(d, out),
        "null": lambda d: _score_cmd(d, out, model_tiny, "null", args.device),
        "tiny": lambda d: _score_cmd(d, out, model_tiny, "torch", args.device),
        "null_emulated_device": lambda d: _score_cmd(
            d,
            out,
            model_tiny,
            "null",
            args.device,
            "--null-pairs-per-s",
            str(args.emulated_pairs_per_s),
        ),  # fmt: skip
    }
    result: dict = {"rows": rows, "labels": len(LABELS), "emulated_pairs_per_s": None}
    for name, cmd in runs.items():
        startup = _timed(cmd(one))["seconds"]
        total = _timed(cmd(data))["seconds"]
        result[name] = {
            "seconds": total,
            "startup_seconds": startup,
            "rows_per_s": rows / total,
            "steady_rows_per_s": (rows - 1) / max(1e-9, total - startup),
        }
        print(name, json.dumps(result[name]), file=sys.stderr)
    result["emulated_pairs_per_s"] = args.emulated_pairs_per_s
    result["empty_input_seconds"] = _timed(runs["null"](str(empty)))["seconds"]
    # The tiny model's bare forward limit on the same pairs (a subset: it is the slow part).
    frontend = Frontend.from_pretrained(model_tiny)
    texts = seeded_texts(min(rows, args.bare_rows), seed=2)
    pairs = frontend.encode(ClassificationRequest(tuple(texts), tuple(LABELS))).pairs
    batching = BatchingConfig().for_device(args.device)
    bare = bare_limit(model_tiny, "float32", pairs, batching, device=args.device)
    result["tiny_bare"] = {**bare, "rows_per_s": bare["pairs_per_s"] / len(LABELS)}
    n, noop, tiny = len(LABELS), result["noop"], result["tiny"]
    emu = result["null_emulated_device"]
    result["ratios"] = {
        "null_over_noop_pace": result["null"]["rows_per_s"] / noop["rows_per_s"],
        "null_over_noop_steady": result["null"]["steady_rows_per_s"] / noop["steady_rows_per_s"],
        "tiny_job_steady_over_bare": tiny["steady_rows_per_s"] / result["tiny_bare"]["rows_per_s"],
        "emulated_device_busy": emu["steady_rows_per_s"] * n / args.emulated_pairs_per_s,
    }
    result["targets"] = {
        "null >= 0.5 x no-op pace (start-up included)": result["ratios"]["null_over_noop_pace"]
        >= 0.5,
        "empty-input job <= 8 s": result["empty_input_seconds"] <= 8.0,
    }
    return result


def _load_cmd(model: str, device: str) -> list:
    """A fresh process that imports the engine's libraries and loads the model: what a scoring
    actor does beyond the no-op job's identity actor."""
    code = ("import sys; from zeroshot.loading import load_model; "
            "load_model(sys.argv[1], None, sys.argv[2], 'float32')")  # fmt: skip
    return [sys.executable, "-c", code, model, "cpu" if device == "cpu" else "cuda"]


def small_jobs(args, model_tiny: str) -> dict:
    """The `small` section: what a small job costs against what it must cost, in one run, per
    size: the no-op Ray Data job of the same rows, the model's load in a fresh process, the
    job on the tiny model, and the same command again with every row already in the output."""
    result: dict = {"labels": len(LABELS), "sizes": {}}
    for rows in args.small_rows:
        data = write_dataset(WORK / f"small_{rows}", seeded_texts(rows, seed=3))
        out = WORK / f"small_out_{rows}"
        job = _score_cmd(data, out, model_tiny, "torch", args.device)
        rerun = [a for a in job if a != "--overwrite"]
        runs: dict = {"noop": [], "model_load": [], "job": [], "rerun_finished": []}
        for _ in range(args.small_repeats):  # alternated, so the machine's drift hits all
            runs["noop"].append(_timed(_noop_cmd(data, out))["seconds"])
            runs["model_load"].append(_timed(_load_cmd(model_tiny, args.device))["seconds"])
            runs["job"].append(_timed(job)["seconds"])
            runs["rerun_finished"].append(_timed(rerun)["seconds"])
        med = {k: float(np.median(v)) for k, v in runs.items()}
        bound = med["noop"] + med["model_load"]
        result["sizes"][str(rows)] = {
            "runs_seconds": runs,
            "median_seconds": med,
            "job_over_noop_plus_load": med["job"] / bound,
            "job_over_noop": med["job"] / med["noop"],
        }
        print(rows, json.dumps(result["sizes"][str(rows)]), file=sys.stderr)
    sizes = result["sizes"].values()
    result["targets"] = {
        "small job <= no-op job + model load": all(
            s["job_over_noop_plus_load"] <= 1 for s in sizes
        ),
        "finished rerun <= 3 s": all(s["median_seconds"]["rerun_finished"] <= 3 for s in sizes),
    }
    return result


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
    ap.add_argument("--sections", default="small,platform,model,memory", help="comma-separated")
    ap.add_argument("--platform-rows", type=int, default=100_000, help="rows of `platform`")
    ap.add_argument("--bare-rows", type=int, default=20_000, help="rows for the tiny bare limit")
    ap.add_argument("--emulated-pairs-per-s", type=float, default=19500.0,
                    help="emulated device speed (H100-like by default)")  # fmt: skip
    ap.add_argument("--rows", type=int, default=5000, help="dataset rows for the `model` runs")
    ap.add_argument("--pipeline-rows", type=int, default=40, help="rows for the pipeline loop")
    ap.add_argument("--memory-rows", type=int, default=10000, help="N for the N vs 4N runs")
    ap.add_argument("--memory-model", default=None, help="model for the memory runs (tiny)")
    ap.add_argument("--batch-size", type=int, default=None, help="the job's rows per block")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to score")
    ap.add_argument("--small-rows", type=int, nargs="+", default=[200, 2000],
                    help="sizes of the `small` section")  # fmt: skip
    ap.add_argument("--small-repeats", type=int, default=3, help="runs of each, alternated")
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}

    import torch

    WORK.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "offline.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}
    out["device"] = args.device + (
        f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else " (2-core CPU host)"
    )
    out["cpu_threads"] = torch.get_num_threads()
    if "small" in sections:
        out["small"] = small_jobs(args, memory_model(args.memory_model))
    if "platform" in sections:
        out["platform"] = platform(args, memory_model(args.memory_model))
    if "model" in sections:
        out["model"] = model_section(args)
    if "memory" in sections:
        small = memory_model(args.memory_model)
        mem = {"model": small, "rows": {}}
        for n in (args.memory_rows, 4 * args.memory_rows):
            mem_data = write_dataset(WORK / f"mem_{n}", seeded_texts(n, seed=1))
            mem["rows"][str(n)] = peak_rss_of_job(
                mem_data, WORK / f"mem_out_{n}", small, args.batch_size, args.device
            )
        a, b = (mem["rows"][str(n)] for n in (args.memory_rows, 4 * args.memory_rows))
        mem["tree_ratio_4x"] = b["peak_rss_tree_mib"] / a["peak_rss_tree_mib"]
        mem["driver_ratio_4x"] = b["peak_rss_driver_mib"] / a["peak_rss_driver_mib"]
        mem["targets"] = {
            "peak RSS flat at 4x rows (tree ratio <= 1.15)": mem["tree_ratio_4x"] <= 1.15
        }
        out["memory"] = mem
    write_results("offline", out)
    plot(out)


def model_section(args) -> dict:
    """The full fixture: the job (fp32 and auto) against the bare forward limit, and the
    transformers pipeline loop."""
    import torch

    from zeroshot.config import BatchingConfig
    from zeroshot.frontend import Frontend
    from zeroshot.requests import ClassificationRequest

    model = ensure_full_model()
    texts = seeded_texts(args.rows, seed=0)
    data = write_dataset(WORK / "data", texts)
    frontend = Frontend.from_pretrained(model)
    # Built directly: the job checks texts itself, and a request caps its sequences.
    pairs = frontend.encode(ClassificationRequest(tuple(texts), tuple(LABELS))).pairs
    lengths = pairs.lengths
    batch_size = args.batch_size or 512
    out: dict = {
        "model": "full fixture (distilbart-mnli-12-1 shape, random weights)",
        "rows": len(texts),
        "labels": len(LABELS),
        "pairs": len(pairs),
        "pair_tokens_mean": float(lengths.mean()),
        "pair_tokens_max": int(lengths.max()),
        "batch_size": batch_size,
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
            data, WORK / f"out_{dtype}", model, dtype, batch_size, args.device
        )
    # A subset with the dataset's length profile: every k-th row in order of length.
    row_tokens = lengths.reshape(len(texts), len(LABELS)).sum(axis=1)
    step = max(1, len(texts) // args.pipeline_rows)
    subset = np.argsort(row_tokens, kind="stable")[step // 2 :: step][: args.pipeline_rows]
    loop = pipeline_loop(data, model, {int(i) for i in subset}, args.device)
    loop["pair_tokens_mean"] = float(row_tokens[subset].sum() / (len(subset) * len(LABELS)))
    out["pipeline_loop_float32"] = loop
    job32, jobauto = out["job_float32"], out["job_auto"]
    loop_rate = out["pipeline_loop_float32"]["rows_per_s"]
    out["ratios"] = {
        "job_fp32_over_bare_fp32": job32["rows_per_s"] / out["bare_float32"]["rows_per_s"],
        "job_auto_over_bare_auto": jobauto["rows_per_s"] / out["bare_auto"]["rows_per_s"],
        "job_fp32_steady_over_bare_fp32": job32["steady_rows_per_s"]
        / out["bare_float32"]["rows_per_s"],
        "job_auto_steady_over_bare_auto": jobauto["steady_rows_per_s"]
        / out["bare_auto"]["rows_per_s"],
        "job_auto_over_pipeline_loop": jobauto["rows_per_s"] / loop_rate,
        "job_fp32_over_pipeline_loop": job32["rows_per_s"] / loop_rate,
    }
    out["targets"] = {
        "job steady >= 0.85 x bare forward (fp32; the GPU target, meaningful on a GPU)": out[
            "ratios"
        ]["job_fp32_steady_over_bare_fp32"]
        >= 0.85,
        "job_auto_over_pipeline_loop >= 10": out["ratios"]["job_auto_over_pipeline_loop"] >= 10,
    }
    return out


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("small", "platform", "model", "memory") if k in out]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, name in zip(axes[0], panels):
        sec = out[name]
        if name == "small":
            sizes = list(sec["sizes"])
            kinds = [("noop", "no-op Ray Data job", "#999"), ("model_load", "model load", "#eb9"),
                     ("job", "zeroshot score", "#36c"),
                     ("rerun_finished", "rerun, all done", "#9bd")]  # fmt: skip
            x = np.arange(len(sizes))
            for i, (key, label, color) in enumerate(kinds):
                vals = [sec["sizes"][r]["median_seconds"][key] for r in sizes]
                ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=label, color=color)
            ax.set_xticks(x, [f"{int(r):,} rows" for r in sizes])
            ax.set_ylabel("seconds (median, fresh process, all in)")
            worst = max(sec["sizes"][r]["job_over_noop_plus_load"] for r in sizes)
            ax.set_title(f"small jobs: at most {worst:.2f}x (no-op job + model load)")
            ax.legend(fontsize=8)
        elif name == "platform":
            names = ["noop", "null", "null_emulated_device", "tiny"]
            x = np.arange(len(names))
            total = [sec[n]["seconds"] for n in names]
            start = [sec[n]["startup_seconds"] for n in names]
            ax.bar(x - 0.2, total, 0.4, label=f"{sec['rows']:,} rows (wall, all in)", color="#36c")
            ax.bar(x + 0.2, start, 0.4, label="1 row (start-up)", color="#9bd")
            emulated = f"null @ {sec['emulated_pairs_per_s']:g} pairs/s"
            ax.set_xticks(x, ["no-op Ray Data", "--backend null", emulated, "tiny model"])
            ax.axhline(sec["empty_input_seconds"], color="#c63", ls="--",
                       label=f"empty input {sec['empty_input_seconds']:.1f} s")  # fmt: skip
            ax.set_ylabel("seconds")
            ratio = sec["ratios"]["null_over_noop_pace"]
            ax.set_title(f"machinery: null job at {ratio:.2f}x the no-op job's pace")
            ax.legend(fontsize=8)
        elif name == "model":
            names = [
                "pipeline_loop_float32",
                "job_float32",
                "bare_float32",
                "job_auto",
                "bare_auto",
            ]
            bars = ax.bar(names, [sec[n]["rows_per_s"] for n in names],
                          color=["#999", "#36c", "#9bd", "#c63", "#eb9"])  # fmt: skip
            ax.bar_label(bars, fmt="%.2f")
            ax.set_ylabel("rows / s")
            ax.set_title(f"full fixture, {sec['rows']} rows x {sec['labels']} labels")
            ax.tick_params(axis="x", rotation=20)
        else:
            rows = list(sec["rows"])
            tree = [sec["rows"][r]["peak_rss_tree_mib"] for r in rows]
            driver = [sec["rows"][r]["peak_rss_driver_mib"] for r in rows]
            x = np.arange(len(rows))
            ax.bar(x - 0.2, tree, 0.4, label="process tree", color="#36c")
            ax.bar(x + 0.2, driver, 0.4, label="driver", color="#9bd")
            ax.set_xticks(x, [f"{int(r):,} rows" for r in rows])
            ax.set_ylabel("peak RSS (MiB)")
            ax.set_title("job memory as the dataset grows 4x")
            ax.legend()
    fig.suptitle(f"offline job, {out['device']}")
    fig.tight_layout()
    fig.savefig(RESULTS / "offline.png", dpi=100)


if __name__ == "__main__":
    main()
