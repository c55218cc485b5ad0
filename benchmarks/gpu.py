r"""The engine on one GPU, measured in one prepared run: every figure of issue 10 side by side.

In one run, on one card, with the same seeded texts (benchmarks.common.seeded_texts, the
realistic length mix, and a fixed set of pairs of exactly 128 tokens), 5 labels:

- the transformers zero-shot pipeline at its default batch size (1) and at its best;
- the bare forward limit: pre-tokenized, length-sorted batches already on the device, every
  forward queued back to back, logits read back; its MFU from the model's FLOP count
  (339 MFLOP per token: 12 encoder layers at 25.2, one decoder layer at 33.6, attention;
  a pair costs 339 MFLOP x its length) over the card's dense bf16 peak (by name: H100 SXM
  and H200 989 TFLOP/s; recorded as `peak_flops`). Variants in the same run: the fast forward
  (zeroshot.fast_bart, the engine's default) in bf16, fp16 and fp32, transformers' own
  forward, CUDA graphs, and larger batches;
- the engine end to end (`ZeroShotClassifier`: encode, score, assemble), with its breakdown;
- the Ray Data job (`pipelines.run_job(JobConfig(...))` in a subprocess, null and torch
  backends, 200,000 rows) and the Serve app (`zeroshot serve` in a subprocess, null and torch
  backends, 1x4 and 16x8 requests at saturation from this file's own load generator: a few
  client processes with raw asyncio HTTP/1.1 keep-alive connections, whose CPU use is
  recorded to show they are not the bottleneck). Without Ray these are null, with the reason;
- agreement of bf16 and fp16 with fp32 (max score difference, top-label agreement), beside
  transformers' own bf16-vs-fp32 agreement as the yardstick, and the fast forward's fp32
  logits against transformers' on the device;
- `nvidia-smi` utilization sampled throughout (null without nvidia-smi), per phase;
- a torch profiler trace of the bare, engine and pipeline paths (trace_*.json.gz, with the
  top device kernels in gpu.json) and a py-spy dump of the Ray processes when py-spy is there.

It writes DIR/gpu.json (rewritten after every phase, so a run cut short still leaves its
figures) with the numeric keys pipeline_default_pairs_s, pipeline_best_pairs_s, bare_pairs_s,
bare_mfu, engine_pairs_s, offline_pairs_s, serve_pairs_s, plus device, ratios and targets; and
DIR/gpu.png. Model: the `full` fixture (distilbart-mnli-12-1's exact shape, random weights;
the real weights cannot be downloaded on the device host), built at the start of the run (about
8 s on a 2-core CPU). Random weights make the speed figures real but the bf16 agreement
figures pessimistic (see `agreement`). Phases run under a time budget (--budget-s); one that
would not fit is skipped with its reason.

    python -m benchmarks.gpu --out DIR            # the GPU run, about 6 minutes on an H100
    python -m benchmarks.gpu --out DIR --quick    # the same code at small sizes (CPU, tests)

On a lent GPU (the device tool; see cluster/README.md, "Measuring on a lent GPU"): once per
session, in the repository root of the session's checkout (.device/ is git-ignored):

    bash /work/shared/gpu/pack-ray.sh .device
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_5_x86_64 -d .device py-spy==0.4.3

then one device call (`run`) with carry [".device"], timeout_s 480, no kind, this command:

    mkdir -p /tmp/site /tmp/pyspy && tar -xJf .device/ray-site.tar.xz -C /tmp/site && \
    { python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .device/py_spy-*.whl \
    || true; } && export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/pyspy/bin:/tmp/site/bin:$PATH \
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 && set -o pipefail && { python3 -m pytest -q \
    -p no:cacheprovider tests/test_backends.py -k cuda; python3 -m benchmarks.gpu --out $OUT; } \
    2>&1 | tee $OUT/run.log

(cluster/README.md has it on one line.) About 6 minutes once the machine is up (budget 360 s
for the phases). The results land in $OUT, returned under the reply's files_at: gpu.json,
gpu.png, run.log, trace_{bare,engine,pipeline}.json.gz, pyspy.txt; copy gpu.json and gpu.png
to benchmarks/results/ (git add -f: that directory is ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import LABELS, ROOT, ensure_full_model, seeded_texts

TEMPLATE = "This example is {}."
LABELS_8 = [*LABELS, "science", "travel", "music"]
FLOP_PER_TOKEN = 339e6  # issue 10: 12 x 25.2 + 33.6 MFLOP + attention, per token
# Dense bf16/fp16 tensor-core peaks (no sparsity), by device-name substring, first match wins.
PEAKS = [
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]
SIZES = {
    "full": {
        "mix_texts": 6000,
        "fixed_texts": 1000,
        "fixed_len": 128,
        "pipeline_texts": 60,
        "pipeline_batch_sizes": (8, 32, 128),
        "agreement_texts": 800,
        "repeats": 3,
        # The engine's GPU default is (16384 tokens, 256 pairs): short pairs then make small
        # batches, where launching ~300 kernels from Python may cost more than computing them.
        "sweep": ((16384, 1024), (32768, 1024)),
        "profile_texts": 300,
        "offline_rows": 200_000,
        "offline_caps_s": {"null": 40.0, "torch": 75.0},
        "serve_backends": ("null", "torch"),
        "serve_levels": {(1, 4): (64, 256), (16, 8): (16, 64)},
        "serve_procs": 4,
        "serve_warmup_s": 2.0,
        "serve_window_s": 5.0,
        "budget_s": 360.0,
    },
    "quick": {
        "mix_texts": 16,
        "fixed_texts": 4,
        "fixed_len": 32,
        "pipeline_texts": 3,
        "pipeline_batch_sizes": (4,),
        "agreement_texts": 8,
        "repeats": 1,
        "sweep": ((512, 64),),
        "profile_texts": 4,
        "offline_rows": 300,
        "offline_caps_s": {"null": 90.0, "torch": 90.0},
        "serve_backends": ("torch",),
        "serve_levels": {(1, 4): (4,), (16, 8): (2,)},
        "serve_procs": 1,
        "serve_warmup_s": 0.5,
        "serve_window_s": 1.5,
        "budget_s": 300.0,
    },
}
# What each Ray phase needs at least, to be started (seconds).
NEEDS = {"offline": 40.0, "serve": 40.0}


# ---------------------------------------------------------------- recording, phases, budget


class Run:
    """The JSON being built, the phases it went through, the time budget, the output dir."""

    def __init__(self, out_dir: Path, budget_s: float):
        self.dir = out_dir
        self.t0 = time.time()
        self.deadline = self.t0 + budget_s
        self.data: dict = {"started": datetime.now().isoformat(timespec="seconds")}
        self.phases: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.data["phases"] = self.phases
        self.data["skipped"] = self.skipped

    def left(self) -> float:
        return self.deadline - time.time()

    @contextlib.contextmanager
    def phase(self, name: str, need_s: float = 0.0):
        """Runs the block unless less than `need_s` of the budget is left; an exception is
        recorded (with the end of its traceback) and the run goes on."""
        info = {"start": time.time() - self.t0}
        self.phases[name] = info
        if self.left() < need_s:
            info.update(status="skipped", reason=f"{self.left():.0f} s left, needs {need_s:.0f}")
            print(f"[gpu-bench] skip {name}: {info['reason']}", flush=True)
            yield False
            return
        print(f"[gpu-bench] {name} ...", flush=True)
        t = time.time()
        try:
            yield True
            info["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one failed phase must not lose the others
            info.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            info["traceback"] = traceback.format_exc().splitlines()[-12:]
            print(f"[gpu-bench] {name} failed: {info['error']}", flush=True)
        finally:
            info["seconds"] = time.time() - t
            info["end"] = time.time() - self.t0
            self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = time.time() - self.t0
        path = self.dir / "gpu.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite(self.data), indent=2))
        tmp.replace(path)


def _finite(x):
    """Strict JSON: NaN and infinities become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _finite(x.item())
    return x


# ---------------------------------------------------------------- nvidia-smi sampler


class GpuSampler:
    """`nvidia-smi` in loop mode on a thread; samples carry nvidia-smi's own timestamps, so a
    buffered pipe does not shift them. `available` is False without nvidia-smi."""

    FIELDS = "timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm"

    def __init__(self, interval_ms: int = 200):
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, ...]] = []
        self.proc = None
        self.available = shutil.which("nvidia-smi") is not None
        self._thread = None

    def start(self) -> None:
        if not self.available:
            return
        cmd = [
            "nvidia-smi",
            f"--query-gpu={self.FIELDS}",
            "--format=csv,noheader,nounits",
            f"-lms={self.interval_ms}",
        ]
        if shutil.which("stdbuf"):  # line-buffered, so stopping it loses no buffered samples
            cmd = ["stdbuf", "-oL", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(self.FIELDS.split(",")):
                continue
            try:
                t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                values = [float(p) if p not in ("[N/A]", "N/A") else math.nan for p in parts[1:]]
            except (ValueError, IndexError):
                continue
            self.samples.append((t, *values))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self._thread is not None:
                self._thread.join(5)

    def window(self, t0: float, t1: float) -> dict | None:
        if not self.available:
            return None
        rows = np.array([s[1:] for s in self.samples if t0 <= s[0] <= t1])
        if not len(rows):
            return {"samples": 0}

        def stat(fn, col: int) -> float | None:
            values = rows[:, col][~np.isnan(rows[:, col])]
            return float(fn(values)) if len(values) else None  # [N/A] throughout: unknown

        return {
            "samples": len(rows),
            "util_mean": stat(np.mean, 0),
            "util_max": stat(np.max, 0),
            "mem_util_mean": stat(np.mean, 1),
            "memory_used_mib_max": stat(np.max, 2),
            "power_w_mean": stat(np.mean, 3),
            "sm_clock_mhz_mean": stat(np.mean, 4),
        }


# ---------------------------------------------------------------- workload


def fixed_length_texts(frontend, n: int, pair_len: int, labels, seed: int = 7) -> list[str]:
    """`n` texts whose pairs with each label's hypothesis are `pair_len` tokens. Byte-level BPE
    never merges across a space, so a text's token count is the sum of its words'."""
    from zeroshot.fixtures import _WORDS

    enc = frontend.encoder
    hyp = max(len(enc.hypothesis_ids(TEMPLATE, label)) for label in labels)
    target = pair_len - enc.num_special - hyp
    first = {w: len(enc.tokenize([w])[0]) for w in _WORDS}
    later = {w: len(enc.tokenize([" " + w])[0]) for w in _WORDS}
    ones = [w for w in _WORDS if later[w] == 1]
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:
        words = [rng.choice(_WORDS)]
        count = first[words[0]]
        while count < target:
            w = rng.choice(_WORDS) if target - count > 3 else rng.choice(ones)
            words.append(w)
            count += later[w]
        text = " ".join(words)
        if count == target and len(enc.tokenize([text])[0]) == target:
            texts.append(text)
    return texts


def encode_pairs(frontend, texts, labels):
    from zeroshot import ClassificationRequest, Limits

    limits = Limits(max_sequences=max(256, len(texts)))
    request = ClassificationRequest.create(texts, labels, TEMPLATE, limits=limits)
    return frontend.encode(request).pairs


def flops(pairs) -> float:
    return FLOP_PER_TOKEN * float(pairs.lengths.sum())


def device_peak(name: str) -> tuple[float | None, str]:
    for key, peak in PEAKS:
        if key in name:
            return peak, f"dense bf16 peak of '{key}' (datasheet), matched in '{name}'"
    return None, f"no dense bf16 peak known for '{name}': MFU is null"


# ---------------------------------------------------------------- bare forward, engine


def load_models(model: str, device: str, dtypes) -> dict:
    import torch

    from zeroshot.loading import load_model

    return {d: load_model(model, None, torch.device(device), getattr(torch, d)) for d in dtypes}


def make_backend(model, **options):
    from zeroshot.backends import TorchBackend

    return TorchBackend(model, **options)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_run(backend, pairs, batching, repeats: int, peak: float | None) -> tuple[dict, Any]:
    """The forward limit: every batch padded and on the device before the clock; all forwards
    queued back to back, then all logits read. One untimed pass first (cuBLAS heuristics,
    graph capture); best and median of `repeats` timed passes."""
    from zeroshot.score import pad_batch, plan_batches

    batching = batching.for_device(backend.device_type)
    plan = plan_batches(pairs.lengths, batching)
    pad_id = int(backend.config.pad_token_id)
    batches = [backend.encode_pre(*pad_batch(pairs, idx, t, pad_id)) for idx, t in plan]
    logits = np.empty((len(pairs), backend.num_labels), dtype=np.float32)

    def one_pass() -> float:
        t0 = time.perf_counter()
        outs = [backend.encode_core(b) for b in batches]
        for (idx, _), o in zip(plan, outs):
            logits[idx] = backend.encode_post(o)
        return time.perf_counter() - t0

    one_pass()
    times = [one_pass() for _ in range(max(1, repeats))]
    best = min(times)
    padded = sum(len(idx) * t for idx, t in plan)
    out = {
        "forward": backend.forward,
        "dtype": backend.dtype,
        "pairs": len(pairs),
        "tokens": int(pairs.lengths.sum()),
        "padded_tokens": int(padded),
        "batches": len(plan),
        "max_batch_tokens": batching.max_batch_tokens,
        "max_batch_pairs": batching.max_batch_pairs,
        "seconds": best,
        "seconds_median": float(np.median(times)),
        "pairs_per_s": len(pairs) / best,
        "tflops": flops(pairs) / best / 1e12,
        "mfu": flops(pairs) / best / peak if peak else None,
    }
    graphs = getattr(backend, "_graphs", None)
    if graphs is not None:
        out["cuda_graphs"] = len(graphs.graphs)
        out["cuda_graph_eager_calls"] = graphs.eager_calls
    return out, logits


def engine_for(frontend, model, batching, **options):
    from zeroshot import Limits, ZeroShotClassifier
    from zeroshot.frontend import Frontend
    from zeroshot.score import Scorer

    big = Frontend(frontend.tokenizer, frontend.config, Limits(max_sequences=1_000_000))
    scorer = Scorer(make_backend(model, **options), batching)
    return ZeroShotClassifier(big, scorer, "bench", None)


def engine_run(clf, texts, labels, repeats: int, peak: float | None, pairs) -> tuple[dict, list]:
    clf(texts, labels)  # warm-up: every batch shape once (cuBLAS heuristics, graph capture)
    sync(clf.device)
    times, results = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        results = clf(texts, labels)
        times.append(time.perf_counter() - t0)
    best = min(times)
    n = len(texts) * len(labels)
    return {
        "forward": clf.scorer.backend.forward,
        "dtype": clf.dtype,
        "pairs": n,
        "seconds": best,
        "seconds_median": float(np.median(times)),
        "pairs_per_s": n / best,
        "mfu": flops(pairs) / best / peak if peak else None,
    }, results


def engine_breakdown(clf, texts, labels) -> dict:
    """One engine call's stages timed apart: encode (tokenize, pairs), score, assemble."""
    request = clf.frontend.request(texts, labels, TEMPLATE)
    t0 = time.perf_counter()
    (encoded,) = clf.frontend.encode_many([request])
    t1 = time.perf_counter()
    logits, stats = clf.scorer.score(encoded.pairs)
    t2 = time.perf_counter()
    clf.frontend.assemble(request, logits)
    t3 = time.perf_counter()
    return {
        "encode_s": t1 - t0,
        "score_s": t2 - t1,
        "assemble_s": t3 - t2,
        "batches": stats.batches,
        "padding_ratio": stats.padding_ratio,
    }


def score_maps(results) -> list[dict[str, float]]:
    return [dict(zip(r["labels"], r["scores"])) for r in results]


def agreement(low: list[dict], exact: list[dict]) -> dict:
    diffs = [abs(a[k] - b[k]) for a, b in zip(low, exact) for k in b]
    top = [max(a, key=a.get) == max(b, key=b.get) for a, b in zip(low, exact)]
    return {
        "texts": len(exact),
        "max_abs_score_diff": float(max(diffs)),
        "mean_abs_score_diff": float(np.mean(diffs)),
        "top_label_agreement": float(np.mean(top)),
    }


# ---------------------------------------------------------------- profiles


def profile(run: Run, name: str, fn, device: str) -> dict:
    """A torch profiler trace of `fn()` into DIR/trace_{name}.json.gz; the top device (or CPU)
    kernels by self time."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    cuda = device.startswith("cuda")
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        target = run.dir / f"trace_{name}.json.gz"
        with open(raw, "rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    rows = []
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0)
        rows.append((dev if cuda else e.self_cpu_time_total, e.key, e.count))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1.0
    return {
        "file": target.name,
        "bytes": target.stat().st_size,
        "clock": "device" if cuda else "cpu",
        "top": [
            {"name": k[:160], "self_ms": t / 1e3, "share": t / total, "calls": c}
            for t, k, c in rows[:15]
        ],
    }


# ---------------------------------------------------------------- processes


def kill_tree(pid: int, grace_s: float = 10.0) -> None:
    """Terminate a process we started and every descendant, by pid."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def tail(path: Path, lines: int = 25) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").splitlines()[-lines:]
    return []


def py_spy_dump(root_pid: int, label: str, out: Path, limit: int = 6) -> str | None:
    """`py-spy dump` of Ray's worker processes under `root_pid` (the scoring actors and Serve
    replicas), appended to `out`; None when py-spy is not installed."""
    import psutil

    exe = shutil.which("py-spy")
    if exe is None:
        return None
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return "process gone"
    picked = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            title = " ".join(p.cmdline()).strip()[:200]
            # The processes that do the work: replicas, proxies, Ray Data's actors and tasks.
            if title.startswith("ray::") and not any(s in title for s in SPY_SKIP):
                picked.append((p.pid, title))
    with open(out, "a") as f:
        for pid, title in picked[:limit]:
            f.write(f"===== {label}: pid {pid} {title}\n")
            with contextlib.suppress(subprocess.TimeoutExpired):
                res = subprocess.run(
                    [exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20
                )
                f.write(res.stdout + res.stderr + "\n")
    return f"{len(picked[:limit])} processes"


SPY_SKIP = (
    "IDLE",
    "DashboardAgent",
    "RuntimeEnvAgent",
    "ServeController",
    "_StatsActor",
    "AutoscalingRequester",
    "Dashboard",
)


def ray_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "ray is not importable here (pack it: bash /work/shared/gpu/pack-ray.sh .device)"
    return None


# ---------------------------------------------------------------- offline job


def write_dataset(directory: Path, rows: int, rows_per_file: int = 10_000) -> str:
    """`rows` rows (id, text) of the seeded mix (20,000 distinct texts, repeated)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = seeded_texts(min(rows, 20_000), seed=3)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for k, start in enumerate(range(0, rows, rows_per_file)):
        ids = np.arange(start, min(rows, start + rows_per_file))
        table = pa.table({"id": ids, "text": [texts[i % len(texts)] for i in ids]})
        pq.write_table(table, directory / f"part-{k:05d}.parquet")
    return str(directory)


def output_rows(directory: Path) -> tuple[int, float | None]:
    """(rows in the output's Parquet files, rows/s between the first and the last file)."""
    import pyarrow.parquet as pq

    files = []
    for p in directory.rglob("*.parquet"):
        with contextlib.suppress(Exception):
            files.append((p.stat().st_mtime, pq.ParquetFile(p).metadata.num_rows))
    files.sort()
    total = sum(n for _, n in files)
    steady = None
    if len(files) >= 3 and files[-1][0] > files[0][0]:
        steady = sum(n for _, n in files[1:]) / (files[-1][0] - files[0][0])
    return total, steady


def offline_child(config_path: str, result_path: str) -> None:
    """In a subprocess: the job through its public entry point."""
    from pipelines import JobConfig, run_job

    summary = run_job(JobConfig(**json.loads(Path(config_path).read_text())))
    Path(result_path).write_text(json.dumps(summary.model_dump()))


def run_offline(run: Run, work: Path, model: str, backend: str, data: str, cap_s: float) -> dict:
    out = work / f"offline_out_{backend}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = {
        "input": data,
        "output": str(out),
        "labels": LABELS,
        "id_column": "id",
        "model": model,
        "backend": backend,
        "overwrite": True,
        "show_progress": False,
    }
    cfg_path, result_path = work / f"offline_{backend}.json", work / f"offline_{backend}.out"
    cfg_path.write_text(json.dumps(cfg))
    result_path.unlink(missing_ok=True)
    log = work / f"offline_{backend}.log"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu",
        "--child-offline",
        str(cfg_path),
        str(result_path),
    ]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    dumped = None
    timed_out = False
    try:
        wait = min(cap_s, max(5.0, run.left()))
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(min(25.0, wait / 2))  # then the job is well under way
        if proc.poll() is None:
            dumped = py_spy_dump(proc.pid, f"offline {backend}", run.dir / "pyspy.txt")
            proc.wait(max(1.0, wait - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        kill_tree(proc.pid)
    seconds = time.time() - t0
    rows, steady = output_rows(out)
    res: dict = {
        "backend": backend,
        "rows_out": rows,
        "wall_s": seconds,
        "timed_out": timed_out,
        "cap_s": cap_s,
        "returncode": proc.returncode,
        "py_spy": dumped,
    }
    if result_path.exists():
        summary = json.loads(result_path.read_text())
        res["summary"] = summary
        res["rows_per_s"] = summary["rows_per_s"]  # the job's own figure (Ray start included)
    else:
        res["rows_per_s"] = rows / seconds if rows else None  # partial: rows written in the cap
        res["log_tail"] = tail(log)
    res["steady_rows_per_s"] = steady  # first to last output file: without start-up
    res["pairs_per_s"] = res["rows_per_s"] * len(LABELS) if res["rows_per_s"] else None
    res["steady_pairs_per_s"] = steady * len(LABELS) if steady else None
    shutil.rmtree(out, ignore_errors=True)
    return res


# ---------------------------------------------------------------- Serve app and load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> int | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return getattr(exc, "code", None)


async def _read_response(reader) -> tuple[int, bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length, chunked, close = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif key == b"connection" and b"close" in value.lower():
            close = True
    if not chunked:
        return status, await reader.readexactly(length), close
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body, close
        body += chunk[:-2]


async def _client_loop(port, bodies, conns, start_at, warm_end, end_at) -> dict:
    stats = {"ok": 0, "pairs": 0, "status": {}, "errors": 0, "bad_answers": 0, "lat": []}

    async def one_connection(k: int) -> None:
        reader = writer = None
        i = k
        while time.time() < end_at:
            body, n_texts, n_pairs = bodies[i % len(bodies)]
            i += conns
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t = time.time()
                writer.write(body)
                await writer.drain()
                status, payload, close = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                stats["errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
                continue
            done = time.time()
            if close:
                writer.close()
                reader = writer = None
            if not warm_end <= done <= end_at:
                continue
            stats["status"][status] = stats["status"].get(status, 0) + 1
            if status == 200:
                if len(json.loads(payload)["results"]) != n_texts:
                    stats["bad_answers"] += 1
                    continue
                stats["ok"] += 1
                stats["pairs"] += n_pairs
                stats["lat"].append(done - t)
        if writer is not None:
            writer.close()

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(one_connection(k) for k in range(conns)))
    return stats


def client_main(port, n_texts, n_labels, conns, start_at, warm_end, end_at, seed, queue) -> None:
    """One load-generator process: `conns` keep-alive connections in a closed loop."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    texts = seeded_texts(256, seed=seed)
    labels = LABELS_8[:n_labels]
    bodies = []
    for k in range(64):
        seqs = [texts[(k * n_texts + j) % len(texts)] for j in range(n_texts)]
        payload = json.dumps({"sequences": seqs, "candidate_labels": labels}).encode()
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        bodies.append((head.encode() + payload, n_texts, n_texts * n_labels))
    cpu0 = time.process_time()
    stats = asyncio.run(_client_loop(port, bodies, conns, start_at, warm_end, end_at))
    stats["cpu_s"] = time.process_time() - cpu0
    stats["wall_s"] = time.time() - start_at
    queue.put(stats)


def serve_load(port: int, shape, conns_total: int, procs: int, warmup: float, window: float):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = max(1, min(procs, conns_total))
    start_at = time.time() + 1.5  # spawned clients import and build their bodies first
    warm_end, end_at = start_at + warmup, start_at + warmup + window
    workers = []
    for p in range(procs):
        conns = conns_total // procs + (1 if p < conns_total % procs else 0)
        args = (port, shape[0], shape[1], conns, start_at, warm_end, end_at, 100 + p, queue)
        w = ctx.Process(target=client_main, args=args, daemon=True)
        w.start()
        workers.append(w)
    results = [queue.get(timeout=warmup + window + 60) for _ in workers]
    for w in workers:
        w.join(10)
    lat = sorted(x for r in results for x in r["lat"])
    status: dict = {}
    for r in results:
        for k, v in r["status"].items():
            status[str(k)] = status.get(str(k), 0) + v
    pairs = sum(r["pairs"] for r in results)
    return {
        "texts_per_request": shape[0],
        "labels_per_request": shape[1],
        "connections": conns_total,
        "client_processes": procs,
        "window_s": window,
        "requests_per_s": sum(r["ok"] for r in results) / window,
        "pairs_per_s": pairs / window,
        "status": status,
        "errors": sum(r["errors"] for r in results),
        "bad_answers": sum(r["bad_answers"] for r in results),
        "latency_p50_s": lat[len(lat) // 2] if lat else None,
        "latency_p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
        # CPU seconds per wall second of each client process: near 1.0 would mean the load
        # generator itself is the bottleneck.
        "client_cpu_busy_max": max(r["cpu_s"] / max(r["wall_s"], 1e-9) for r in results),
    }


def run_serve(run: Run, work: Path, model: str, backend: str, sizes: dict) -> dict:
    """`zeroshot serve` in a subprocess (a local Ray, the app as configured by default), then
    closed-loop load at each shape and concurrency; the null backend at the highest level of
    each shape only. Throughput at saturation: the best level of a shape."""
    port = free_port()
    ncpu = max(4, os.cpu_count() or 1)
    log = work / f"serve_{backend}.log"
    cmd = [sys.executable, "-m", "zeroshot", "serve", "--model", model, "--backend", backend]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--num-cpus", str(ncpu)]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    res: dict = {"backend": backend, "port": port, "loads": []}
    warmup, window = sizes["serve_warmup_s"], sizes["serve_window_s"]
    try:
        ready = False
        patience = min(150.0, max(30.0, run.left() - 20))
        while time.time() - t0 < patience and proc.poll() is None:
            if http_get(port, "/healthz") == 200:
                ready = True
                break
            time.sleep(0.5)
        res["start_s"] = time.time() - t0
        if not ready:
            res["error"] = f"app not healthy after {res['start_s']:.0f} s (rc {proc.poll()})"
            res["log_tail"] = tail(log)
            return res
        plan = [
            (shape, conns)
            for shape, levels in sizes["serve_levels"].items()
            for conns in (levels if backend == "torch" else levels[-1:])
        ]
        for k, (shape, conns) in enumerate(plan):
            if run.left() < warmup + window + 15:
                res["cut_short"] = "time budget"
                break
            spy = None
            if backend == "torch" and k == len(plan) - 1:  # mid-window of the last load
                dump = (proc.pid, f"serve {backend}", run.dir / "pyspy.txt")
                spy = threading.Timer(1.5 + warmup + window / 2, py_spy_dump, dump)
                spy.start()
            load = serve_load(port, shape, conns, sizes["serve_procs"], warmup, window)
            if spy is not None:
                spy.join()
            res["loads"].append(load)
            print(
                f"[gpu-bench]   serve {backend} {shape[0]}x{shape[1]} conns {conns}: "
                f"{load['pairs_per_s']:.0f} pairs/s",
                flush=True,
            )
    finally:
        proc.send_signal(2)  # Ctrl-C: serve.shutdown, ray.shutdown
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        kill_tree(proc.pid)
    for texts, labels in sizes["serve_levels"]:
        shape = [
            x["pairs_per_s"]
            for x in res["loads"]
            if (x["texts_per_request"], x["labels_per_request"]) == (texts, labels)
        ]
        res[f"{texts}x{labels}_pairs_s"] = max(shape, default=None)
    res["pairs_per_s"] = max((x["pairs_per_s"] for x in res["loads"]), default=None)
    return res


# ---------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=False, help="output directory (gpu.json, gpu.png, traces)")
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU, tests)")
    ap.add_argument("--model", default=None, help="model dir (default: build the full fixture)")
    ap.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of the run")
    ap.add_argument("--skip-ray", action="store_true", help="no Ray Data job, no Serve app")
    ap.add_argument(
        "--child-offline", nargs=2, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child_offline:
        offline_child(*args.child_offline)
        return 0
    if not args.out:
        ap.error("--out is required")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    mode = "quick" if args.quick else "full"
    sizes = dict(SIZES[mode])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pyspy.txt").unlink(missing_ok=True)
    run = Run(out_dir, args.budget_s or sizes["budget_s"])
    sampler = GpuSampler()
    sampler.start()
    work = Path(tempfile.mkdtemp(prefix="zeroshot-gpu-bench-"))
    try:
        measure(run, args, mode, sizes, work)
    finally:
        sampler.stop()
        finish(run, sampler)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: run.data.get(k) for k in HEADLINE + ["device"]}, indent=2))
    return 0


HEADLINE = [
    "pipeline_default_pairs_s",
    "pipeline_best_pairs_s",
    "bare_pairs_s",
    "bare_mfu",
    "engine_pairs_s",
    "offline_pairs_s",
    "serve_pairs_s",
]


def measure(run: Run, args, mode: str, sizes: dict, work: Path) -> None:
    """The phases, in order of what the issue needs most, each under the time budget."""
    import torch
    import transformers

    from zeroshot import BatchingConfig
    from zeroshot.frontend import Frontend

    d = run.data
    for key in HEADLINE:
        d[key] = None
    device = args.device
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak, peak_source = device_peak(name) if cuda else (None, "CPU: no tensor-core peak")
    half = "bfloat16" if not cuda or torch.cuda.is_bf16_supported() else "float16"
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    d.update(
        mode=mode,
        device=name,
        torch_device=device,
        peak_flops=peak,
        dtype=half,
        peak_source=peak_source,
        flop_per_token=FLOP_PER_TOKEN,
        versions=versions,
        cpus=os.cpu_count(),
        sizes={k: str(v) for k, v in sizes.items()},
    )
    runs: dict = {}
    d["runs"] = runs
    batching = BatchingConfig()
    repeats = sizes["repeats"]
    state: dict = {}  # what later phases reuse: models, texts, pairs, the pipeline

    def variant(key: str, fn, need_s: float = 20.0) -> dict | None:
        """One measurement; its failure or a short budget is recorded, not raised."""
        if run.left() < need_s:
            run.skipped[key] = "time budget"
            return None
        try:
            runs[key] = fn()
        except Exception as exc:  # noqa: BLE001 - one variant must not sink its phase
            runs[key] = {
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc().splitlines()[-8:],
            }
            print(f"[gpu-bench]   {key} failed: {runs[key]['error']}", flush=True)
            return None
        r = runs[key]
        if "pairs_per_s" in r:
            print(
                f"[gpu-bench]   {key}: {r['pairs_per_s']:.0f} pairs/s, mfu {r.get('mfu')}",
                flush=True,
            )
        run.save()
        return r

    def bare(key, dtype, pairs, b=batching, same_as=None, **options):
        """`same_as`: a run on the same pairs and dtype whose logits these must reproduce."""

        def fn():
            res, logits = bare_run(make_backend(state[dtype], **options), pairs, b, repeats, peak)
            state[f"logits_{key}"] = logits
            other = state.get(f"logits_{same_as}")
            if other is not None:
                res[f"max_abs_logit_diff_vs_{same_as}"] = float(np.abs(logits - other).max())
            return res

        return variant(key, fn)

    def engine(key, dtype, texts, pairs, n=repeats, **options):
        def fn():
            clf = engine_for(state["frontend"], state[dtype], batching, **options)
            res, _ = engine_run(clf, texts, LABELS, n, peak, pairs)
            if key == "engine":
                res["breakdown"] = engine_breakdown(clf, texts, LABELS)
            return res

        return variant(key, fn)

    with run.phase("model") as ok:
        t = time.time()
        if args.model:
            model, what = args.model, "given with --model"
        elif mode == "quick":
            from zeroshot.fixtures import make_test_model

            model, what = str(make_test_model(work / "tiny", "tiny")), "tiny fixture, built here"
        else:
            model = ensure_full_model()
            what = (
                "full fixture: distilbart-mnli-12-1's exact shape (12+1 layers, d_model "
                "1024), random weights, built here (the real weights cannot be downloaded)"
            )
        d["model"] = {"path": model, "what": what, "ready_s": time.time() - t}
        frontend = state["frontend"] = Frontend.from_pretrained(model)
        texts = seeded_texts(sizes["mix_texts"], seed=0)
        fixed = fixed_length_texts(frontend, sizes["fixed_texts"], sizes["fixed_len"], LABELS)
        mix, fixed_pairs = (
            encode_pairs(frontend, texts, LABELS),
            encode_pairs(frontend, fixed, LABELS),
        )
        lens = mix.lengths
        d["workload"] = {
            "labels": LABELS,
            "mix": {
                "texts": len(texts),
                "pairs": len(mix),
                "tokens_mean": float(lens.mean()),
                "tokens_p50_p90_p99": [float(np.percentile(lens, q)) for q in (50, 90, 99)],
                "tokens_max": int(lens.max()),
            },
            "fixed": {
                "texts": len(fixed),
                "pairs": len(fixed_pairs),
                "tokens_min_max": [int(fixed_pairs.lengths.min()), int(fixed_pairs.lengths.max())],
            },
        }
        t = time.time()
        state.update(load_models(model, device, ["float32", half] + ["float16"] * cuda))
        d["model"]["load_s"] = time.time() - t
    if "float32" not in state:
        return

    with run.phase("exactness", 10) as ok:
        if ok:
            # The fast forward against transformers' own, on the device, same batches.
            sample = mix.take(np.arange(0, len(mix), max(1, len(mix) // 256)))
            ex: dict = {"pairs": len(sample)}
            for dtype in ("float32", half):
                _, fast = bare_run(make_backend(state[dtype]), sample, batching, 1, None)
                slow_backend = make_backend(state[dtype], fast_forward=False)
                _, slow = bare_run(slow_backend, sample, batching, 1, None)
                ex[f"{dtype}_max_abs_logit_diff"] = float(np.abs(fast - slow).max())
                ex[f"{dtype}_max_abs_logit"] = float(np.abs(slow).max())
                ex[f"{dtype}_argmax_agreement"] = float((fast.argmax(1) == slow.argmax(1)).mean())
            d["exactness"] = ex

    with run.phase("bare", 20) as ok:
        if ok:
            subset = mix.take(np.arange(min(len(mix), sizes["agreement_texts"] * len(LABELS))))
            bare("bare", half, mix)
            bare("bare_fixed", half, fixed_pairs)
            bare("bare_transformers", half, mix, fast_forward=False)
            bare("bare_cuda_graphs", half, mix, same_as="bare", cuda_graphs=True)
            bare(
                "bare_fixed_cuda_graphs", half, fixed_pairs, same_as="bare_fixed", cuda_graphs=True
            )
            if cuda:
                bare("bare_float16", "float16", mix)
            bare("bare_subset", half, subset)
            bare("bare_float32_subset", "float32", subset)
            for key in ("bare", "bare_fixed"):
                d[f"{key}_pairs_s"] = (runs.get(key) or {}).get("pairs_per_s")
                d[f"{key}_mfu"] = (runs.get(key) or {}).get("mfu")

    with run.phase("engine", 20) as ok:
        if ok:
            engine("engine", half, texts, mix)
            d["engine_pairs_s"] = (runs.get("engine") or {}).get("pairs_per_s")
            engine("engine_fixed", half, fixed, fixed_pairs)
            engine("engine_transformers", half, texts, mix, max(1, repeats - 1), fast_forward=False)
            engine("engine_cuda_graphs", half, texts, mix, max(1, repeats - 1), cuda_graphs=True)

    with run.phase("pipeline", 15) as ok:
        if ok:
            from transformers import pipeline

            sub = texts[:: max(1, len(texts) // sizes["pipeline_texts"])][: sizes["pipeline_texts"]]
            n = len(sub) * len(LABELS)
            pipe = state["pipe"] = pipeline(
                "zero-shot-classification",
                model=model,
                device=0 if cuda else -1,
                dtype=getattr(torch, half),
            )
            pipe(sub[:2], candidate_labels=LABELS)  # warm-up

            def pipeline_run(batch_size):
                kw = {"batch_size": batch_size} if batch_size else {}
                t = time.perf_counter()
                pipe(sub, candidate_labels=LABELS, **kw)
                return {
                    "texts": len(sub),
                    "dtype": half,
                    "batch_size": batch_size or 1,
                    "pairs_per_s": n / (time.perf_counter() - t),
                }

            tried = [variant("pipeline_default", lambda: pipeline_run(None), 10)]
            for bs in sizes["pipeline_batch_sizes"]:
                tried.append(variant(f"pipeline_batch_{bs}", lambda bs=bs: pipeline_run(bs), 10))
            tried = [r for r in tried if r]
            if tried:
                runs["pipeline_best"] = max(tried, key=lambda r: r["pairs_per_s"])
                d["pipeline_best_pairs_s"] = runs["pipeline_best"]["pairs_per_s"]
            d["pipeline_default_pairs_s"] = (runs.get("pipeline_default") or {}).get("pairs_per_s")
            # The engine on exactly the pipeline's texts: the ratio at equal work.
            engine("engine_on_pipeline_texts", half, sub, encode_pairs(frontend, sub, LABELS), 1)

    with run.phase("agreement", 15) as ok:
        if ok:
            sub = texts[: sizes["agreement_texts"]] + fixed[: max(1, sizes["agreement_texts"] // 8)]
            scores = {}
            for forward, options in (("fast", {}), ("transformers", {"fast_forward": False})):
                for dtype in ["float32", half] + ["float16"] * (cuda and forward == "fast"):
                    clf = engine_for(frontend, state[dtype], batching, **options)
                    scores[forward, dtype] = score_maps(clf(sub, LABELS))
            ag = {
                f"fast_{half}_vs_fp32": agreement(scores["fast", half], scores["fast", "float32"]),
                f"transformers_{half}_vs_fp32": agreement(
                    scores["transformers", half], scores["transformers", "float32"]
                ),
                "fast_fp32_vs_transformers_fp32": agreement(
                    scores["fast", "float32"], scores["transformers", "float32"]
                ),
            }
            if cuda:
                ag["fast_float16_vs_fp32"] = agreement(
                    scores["fast", "float16"], scores["fast", "float32"]
                )
            ag["note"] = (
                "random weights (init_std 0.1, 12 layers) amplify rounding far more "
                f"than trained ones: transformers_{half}_vs_fp32 is the yardstick"
            )
            d["agreement"] = ag

    with run.phase("profiles", 15) as ok:
        if ok:
            sub = texts[: sizes["profile_texts"]]
            sub_pairs = encode_pairs(frontend, sub, LABELS)
            backend = make_backend(state[half])
            clf = engine_for(frontend, state[half], batching)
            prof = {
                "bare": profile(
                    run, "bare", lambda: bare_run(backend, sub_pairs, batching, 1, None), device
                ),
                "engine": profile(run, "engine", lambda: clf(sub, LABELS), device),
            }
            if "pipe" in state:
                prof["pipeline"] = profile(
                    run, "pipeline", lambda: state["pipe"](sub[:8], candidate_labels=LABELS), device
                )
            d["profiles"] = prof
            kernels = [r["name"] for r in prof["bare"]["top"]]
            marks = ("fmha", "flash", "attention", "cudnn", "efficient")
            d["attention_kernels"] = [k for k in kernels if any(m in k.lower() for m in marks)]

    missing = "--skip-ray" if args.skip_ray else ray_missing()
    if missing:
        for key in ("offline_pairs_s", "serve_pairs_s"):
            run.skipped[key] = missing
    else:
        if cuda:
            torch.cuda.empty_cache()  # the Ray phases' own processes need the device
        ray_phases(run, work, model, sizes)

    with run.phase("bare_sweep", 20) as ok:
        if ok:  # larger batches than the engine's default, for tuning the GPU default
            for tokens, pairs_cap in sizes["sweep"]:
                b = BatchingConfig(max_batch_tokens=tokens, max_batch_pairs=pairs_cap)
                bare(f"bare_batch_{tokens}_{pairs_cap}", half, mix, b)


def ray_phases(run: Run, work: Path, model: str, sizes: dict) -> None:
    d, runs = run.data, run.data["runs"]
    with run.phase("offline", NEEDS["offline"]) as ok:
        if ok:
            data = write_dataset(work / "offline_in", sizes["offline_rows"])
            off = runs["offline"] = {}
            for backend in ("null", "torch"):
                cap = sizes["offline_caps_s"][backend]
                off[backend] = run_offline(run, work, model, backend, data, cap)
                print(
                    f"[gpu-bench]   offline {backend}: {off[backend].get('pairs_per_s')} pairs/s",
                    flush=True,
                )
                run.save()
            d["offline_pairs_s"] = off["torch"]["pairs_per_s"]
            d["offline_null_pairs_s"] = off["null"]["pairs_per_s"]
            if off["torch"].get("timed_out"):
                run.skipped["offline_pairs_s (complete job)"] = (
                    f"the torch job did not finish {sizes['offline_rows']} rows in "
                    f"{sizes['offline_caps_s']['torch']:.0f} s: the figure is rows written / cap"
                )
    with run.phase("serve", NEEDS["serve"]) as ok:
        if ok:
            srv = runs["serve"] = {}
            for backend in sizes["serve_backends"]:
                if run.left() < NEEDS["serve"]:
                    run.skipped[f"serve {backend}"] = "time budget"
                    continue
                srv[backend] = run_serve(run, work, model, backend, sizes)
                run.save()
            if "torch" in srv:
                d["serve_pairs_s"] = srv["torch"]["pairs_per_s"]
                for texts, labels in sizes["serve_levels"]:
                    key = f"{texts}x{labels}_pairs_s"
                    d[f"serve_{key}"] = srv["torch"].get(key)
            if "null" in srv:
                d["serve_null_pairs_s"] = srv["null"]["pairs_per_s"]


def finish(run: Run, sampler: GpuSampler) -> None:
    d = run.data
    for key in HEADLINE:
        d.setdefault(key, None)
    if sampler.available:
        d["gpu_util"] = {"whole_run": sampler.window(run.t0, time.time())}
        for name, p in run.phases.items():
            if p.get("status") == "ok":
                d["gpu_util"][name] = sampler.window(run.t0 + p["start"], run.t0 + p["end"])
        d["gpu_util_samples"] = [[round(s[0] - run.t0, 2), s[1]] for s in sampler.samples]
    else:
        d["gpu_util"] = None
        d["gpu_util_note"] = "nvidia-smi not found: no utilization samples"

    def ratio(a: str, b: str):
        x, y = d.get(a), d.get(b)
        return x / y if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None

    runs = d.get("runs", {})

    def pps(key: str):
        return (runs.get(key) or {}).get("pairs_per_s")

    d["ratios"] = {
        "engine_over_bare": ratio("engine_pairs_s", "bare_pairs_s"),
        "offline_over_bare": ratio("offline_pairs_s", "bare_pairs_s"),
        "serve_over_bare": ratio("serve_pairs_s", "bare_pairs_s"),
        "engine_over_pipeline_default": ratio("engine_pairs_s", "pipeline_default_pairs_s"),
        "engine_over_pipeline_best": ratio("engine_pairs_s", "pipeline_best_pairs_s"),
        "bare_over_pipeline_default": ratio("bare_pairs_s", "pipeline_default_pairs_s"),
    }
    extra = {
        "fast_over_transformers_bare": (pps("bare"), pps("bare_transformers")),
        "fast_over_transformers_engine": (pps("engine"), pps("engine_transformers")),
        "cuda_graphs_over_eager_bare": (pps("bare_cuda_graphs"), pps("bare")),
        "cuda_graphs_over_eager_bare_fixed": (pps("bare_fixed_cuda_graphs"), pps("bare_fixed")),
        "cuda_graphs_over_eager_engine": (pps("engine_cuda_graphs"), pps("engine")),
        "float16_over_bfloat16_bare": (pps("bare_float16"), pps("bare")),
        "half_over_float32_bare": (pps("bare_subset"), pps("bare_float32_subset")),
        "engine_over_pipeline_default_equal_texts": (
            pps("engine_on_pipeline_texts"),
            pps("pipeline_default"),
        ),
    }
    for key, (a, b) in extra.items():
        d["ratios"][key] = a / b if a and b else None
    r = d["ratios"]

    def at_least(value, target):
        return None if value is None else value >= target

    d["targets"] = {
        "bare_mfu >= 0.40": at_least(d.get("bare_mfu"), 0.40),
        "engine_over_bare >= 0.9": at_least(r["engine_over_bare"], 0.9),
        "offline_over_bare >= 0.85": at_least(r["offline_over_bare"], 0.85),
        "serve_over_bare >= 0.6": at_least(r["serve_over_bare"], 0.6),
    }
    d["fp16_faster_than_bf16"] = at_least(r["float16_over_bfloat16_bare"], 1.03)
    run.save()
    with contextlib.suppress(Exception):
        plot(run)
        run.save()


def plot(run: Run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = run.data
    runs = d.get("runs", {})
    bars = [
        ("pipeline default", d.get("pipeline_default_pairs_s")),
        ("pipeline best", d.get("pipeline_best_pairs_s")),
    ]
    for key in (
        "bare_transformers",
        "bare",
        "bare_cuda_graphs",
        "bare_float16",
        "engine_transformers",
        "engine",
        "engine_cuda_graphs",
    ):
        if key in runs:
            bars.append((key.replace("_", " "), runs[key]["pairs_per_s"]))
    for key, label in (
        ("offline_null_pairs_s", "offline (null)"),
        ("offline_pairs_s", "offline"),
        ("serve_null_pairs_s", "serve (null)"),
        ("serve_pairs_s", "serve"),
    ):
        if d.get(key):
            bars.append((label, d[key]))
    bars = [(k, v) for k, v in bars if v]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 8), height_ratios=[3, 2])
    if bars:
        rects = ax.bar([k for k, _ in bars], [v for _, v in bars], color="#36c")
        ax.bar_label(rects, fmt="%.0f", fontsize=8)
        ax.set_yscale("log")
    ax.set_ylabel("pairs / s (log)")
    mfu = d.get("bare_mfu")
    ax.set_title(
        f"{d.get('device')} ({d.get('dtype')}), {d.get('mode')} run; bare MFU {mfu:.1%}"
        if mfu
        else f"{d.get('device')} ({d.get('dtype')}), {d.get('mode')}"
    )
    ax.tick_params(axis="x", rotation=25, labelsize=8)
    samples = d.get("gpu_util_samples") or []
    if samples:
        ax2.plot([s[0] for s in samples], [s[1] for s in samples], lw=0.8, color="#c63")
        for name, p in run.phases.items():
            if "end" in p:
                ax2.axvspan(p["start"], p["end"], alpha=0.08, color="#36c")
                ax2.text(p["start"], 102, name, fontsize=7, rotation=30)
        ax2.set_ylim(0, 115)
        ax2.set_ylabel("GPU utilization %")
        ax2.set_xlabel("seconds into the run")
    else:
        ax2.text(0.5, 0.5, "no nvidia-smi: no utilization samples", ha="center")
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(run.dir / "gpu.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
