"""CPU micro-benchmark: transformers' BartForSequenceClassification forward vs FastBartClassifier.

On the `full` fixture (distilbart-mnli-12-1's shape, random weights), in float32 and bfloat16,
both forwards get the same pre-padded, length-sorted batches under a padded-token budget;
only the forward calls are timed, alternating the implementations, best of N. Prints JSON
with pairs/s, the speedup over transformers and the largest logit difference, for the
default (unpadded encoder on CPU) and the padded path (the GPU default).

    python -m benchmarks.fast_bart [--texts 16] [--labels 5] [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.common import LABELS, ensure_full_model, seeded_texts


def make_batches(
    model_dir: str,
    n_texts: int,
    n_labels: int,
    budget: int,
    multiple: int = 8,
    min_fill: float = 0.75,
):
    """NLI pairs of `seeded_texts` x labels (the tokenizer's own pair template, only-first
    truncation), sorted longest first and cut into right-padded batches of at most `budget`
    padded tokens, where every pair fills at least `min_fill` of its batch's padded length
    (the engine's CPU defaults). Self-contained: it does not follow changes to zeroshot.score."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = seeded_texts(n_texts, seed=0)
    hyps = [f"This example is {label}." for label in LABELS[:n_labels]]
    enc = tok([t for t in texts for _ in hyps], hyps * len(texts), truncation="only_first")[
        "input_ids"
    ]
    pairs = sorted(enc, key=len, reverse=True)
    lengths = np.array([len(p) for p in pairs], dtype=np.int64)
    batches, start = [], 0
    while start < len(pairs):
        padded = -(-int(lengths[start]) // multiple) * multiple
        count = max(1, budget // padded)
        rounded = -(-lengths[start : start + count] // multiple) * multiple
        count = max(1, int((rounded >= min_fill * padded).sum()))
        chunk, n = pairs[start : start + count], lengths[start : start + count]
        ids = torch.full((len(chunk), padded), tok.pad_token_id, dtype=torch.long)
        for row, p in enumerate(chunk):
            ids[row, : len(p)] = torch.tensor(p)
        mask = (torch.arange(padded) < torch.from_numpy(n)[:, None]).long()
        # `last` is computed here, on the host, from the pair lengths: as a caller would.
        batches.append((ids, mask, torch.from_numpy(n - 1)))
        start += count
    return batches, lengths


def run_dtype(model_dir: str, dtype: torch.dtype, batches, repeats: int) -> dict:
    from transformers import AutoModelForSequenceClassification

    from zeroshot.fast_bart import FastBartClassifier

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).eval()
    fast = FastBartClassifier(model)  # unpadded encoder: the CPU default
    fast_padded = FastBartClassifier(model, unpad=False)  # the GPU default, for the breakdown

    def reference(ids, mask, last):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()

    impls = {"transformers": reference, "fast": fast, "fast_padded": fast_padded}
    best = dict.fromkeys(impls, float("inf"))
    outputs = {}
    with torch.inference_mode():
        for fn in impls.values():  # warm-up on the smallest batch
            fn(*batches[-1])
        for _ in range(repeats):
            for name, fn in impls.items():  # alternate, so drift on a shared box hits both
                t0 = time.perf_counter()
                outputs[name] = [fn(*b) for b in batches]
                best[name] = min(best[name], time.perf_counter() - t0)
    n_pairs = sum(b[0].shape[0] for b in batches)
    result: dict = {name: {"seconds": s, "pairs_per_s": n_pairs / s} for name, s in best.items()}
    for name in ("fast", "fast_padded"):
        result[name]["speedup"] = best["transformers"] / best[name]
        result[name]["max_abs_logit_diff"] = max(
            (a - b).abs().max().item() for a, b in zip(outputs["transformers"], outputs[name])
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--labels", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="best of N")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--budget", type=int, default=2048, help="padded tokens per batch (CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = ensure_full_model()
    batches, lengths = make_batches(model_dir, args.texts, args.labels, args.budget)
    padded = sum(b[0].numel() for b in batches)
    out: dict = {
        "model": "full fixture (distilbart-mnli-12-1 shape, random weights)",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "pairs": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "padded_tokens": int(padded),
        "padding_ratio": 1 - int(lengths.sum()) / padded,
        "batch_shapes": [list(b[0].shape) for b in batches],
    }
    for name in args.dtypes.split(","):
        out[name] = run_dtype(model_dir, getattr(torch, name), batches, args.repeats)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
