"""Shared pieces of the benchmarks: the seeded workload, the bare forward limit, result files."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL_MODEL = ROOT / ".bench" / "full"
RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ["politics", "sports", "technology", "health", "business"]

# pyproject.toml's `bench` extra as import names (tests/test_newcomer.py keeps them equal).
BENCH_EXTRA = ("httpx", "matplotlib", "pandas", "psutil")


def cpu_model() -> str:
    """The CPU's name and the matrix extensions that decide bf16 speed on it (they differ
    between hosts of the same size, and so do the figures)."""
    from zeroshot.devices import BF16_CPU_FLAGS, cpu_info

    name, flags = cpu_info()
    extensions = [x for x in BF16_CPU_FLAGS if x in flags]
    return f"{name or 'unknown CPU'} ({', '.join(extensions) or 'no bf16 matrix extension'})"


def require_extra(extra: str = "bench", modules: tuple[str, ...] = BENCH_EXTRA) -> None:
    """Exit with the install command when a module of `extra` is missing, before a benchmark
    fails on its first import with a bare `No module named ...`. Standard library only."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"error: the benchmarks need the '{extra}' extra ({', '.join(missing)} not "
            f"installed): pip install -e '.[{extra}]'"
        )


def ensure_full_model(path: Path = FULL_MODEL, arch: str = "bart") -> str:
    """The `full` fixture of `arch`, built once: distilbart-mnli-12-1's exact shape for BART,
    the family's base checkpoint's for the others (random weights)."""
    if arch != "bart" and path == FULL_MODEL:
        path = FULL_MODEL.with_name(f"full-{arch}")
    if not (path / "model.safetensors").exists() or not (path / "config.json").exists():
        print(f"building the full {arch} fixture model in {path} ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "zeroshot", "make-test-model", str(path), "--size", "full",
             "--arch", arch],
            check=True,
        )  # fmt: skip
    return str(path)


def seeded_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts from a few words to several hundred tokens, skewed short like real traffic.

    Word counts: 70% 3-30 words, 22% 30-120, 8% 120-400 (about 1.3 tokens a word here).
    """
    from zeroshot.fixtures import _WORDS

    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        r = rng.random()
        lo, hi = (3, 30) if r < 0.70 else (30, 120) if r < 0.92 else (120, 400)
        words = [rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))]
        text = " ".join(words)
        texts.append(text[0].upper() + text[1:] + ".")
    return texts


def bare_limit(
    model_dir: str, dtype: str, pairs, batching=None, device: str = "cpu", **options
) -> dict:
    """Forward-pass throughput with no overhead: pre-tokenized pairs (a `Pairs`), length-sorted
    batches padded and on the device before the clock starts; only the forward passes (and
    reading their logits back) are timed. `options`: more `ModelConfig` fields (e.g.
    fast_forward=False for transformers' own forward)."""
    from zeroshot import ModelConfig
    from zeroshot.score import Scorer

    cfg = ModelConfig(model=model_dir, device=device, dtype=dtype, **options)
    scorer = Scorer.from_config(cfg, batching=batching)
    backend = scorer.backend
    batches = padded_batches(scorer, pairs)
    seconds = forward_seconds(backend, batches)
    return {
        "pairs": len(pairs),
        "seconds": seconds,
        "pairs_per_s": len(pairs) / seconds,
        "dtype": scorer.dtype,
        "forward": getattr(backend, "forward", None),
        "batches": len(batches),
    }


def padded_batches(scorer, pairs) -> list:
    """`pairs` as the scorer would batch them, padded and on its device (its backend's
    `encode_pre`), so only the forward passes are left to time."""
    from zeroshot.score import pad_batch, plan_batches

    return [
        scorer.backend.encode_pre(
            *pad_batch(pairs, idx, padded, scorer.pad_token_id),
            segments=None if pairs.segments is None else pairs.segments[idx],
        )
        for idx, padded in plan_batches(pairs.lengths, scorer.batching)
    ]


def forward_seconds(backend, batches: list) -> float:
    """Seconds for the forward passes of `batches` (already padded and on the device), after
    a warm-up on the smallest."""
    backend.encode_post(backend.encode_core(batches[-1]))
    t0 = time.perf_counter()
    for inputs in batches:
        backend.encode_post(backend.encode_core(inputs))
    return time.perf_counter() - t0


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGINT, wait_s: float = 90) -> None:
    """Stop a process started in its own session (`start_new_session=True`) as a user would:
    `sig` (SIGINT: Ctrl-C; SIGTERM: a container's stop), then SIGKILL to its whole group if it
    has not exited within `wait_s` (the Ray it started goes with it)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    return path
