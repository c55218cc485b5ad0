"""The job's three Ray Data stages over pyarrow batches: `encode` (CPU tasks), `Score` (an
actor pool that holds the model) and `assemble` (CPU tasks).

Between stages a batch is its input columns plus a few private columns: `encode` adds the pair
token ids of each row (list<list<int32>>) and the row's error, `Score` swaps the pair ids for
their NLI logits (list<float32>), `assemble` turns logits into the output columns and drops
the private ones. Only `Score` touches torch.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeroshot.assemble import NliLabels
from zeroshot.assemble import assemble as assemble_results
from zeroshot.config import BatchingConfig, Limits, ModelConfig
from zeroshot.errors import NoTextError, ZeroShotError
from zeroshot.pairs import Pairs
from zeroshot.requests import ClassificationRequest, check_text
from zeroshot.score import Scorer

PAIRS = "__zs_pairs"
LOGITS = "__zs_logits"
ERROR = "__zs_error"
PRIVATE = (PAIRS, LOGITS, ERROR)

LABELS_TYPE = pa.list_(pa.string())
SCORES_TYPE = pa.list_(pa.float32())


@dataclass(frozen=True)
class StageSpec:
    """What the stages need to know, shipped once to every task and actor."""

    model: str
    revision: str | None
    limits: Limits
    labels: tuple[str, ...]
    template: str
    multi_label: bool
    text_column: str
    id_column: str
    output_columns: tuple[str, ...]


def row_error(exc: ZeroShotError) -> str:
    return f"{exc.type.value}: {exc.message}"


@functools.lru_cache(maxsize=4)
def _frontend(model: str, revision: str | None, limits_json: str):
    # One tokenizer per worker process: Ray reuses workers across encode tasks.
    from zeroshot.frontend import Frontend

    return Frontend.from_pretrained(model, revision, Limits.model_validate_json(limits_json))


def _pairs_column(pairs: Pairs, per_row: np.ndarray) -> pa.Array:
    """`per_row[i]` consecutive pairs per row as list<list<int32>>, from offsets (no copies of
    Python objects)."""
    outer = np.zeros(len(per_row) + 1, dtype=np.int32)
    np.cumsum(per_row, out=outer[1:])
    inner = pa.ListArray.from_arrays(
        pa.array(pairs.offsets.astype(np.int32)), pa.array(pairs.ids, pa.int32())
    )
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def encode(batch: pa.Table, *, spec: StageSpec, done_ids: np.ndarray | None = None) -> pa.Table:
    """Drop rows already in the output (a resumed run), check each text, tokenize the rest.

    A row whose text is null, empty, too long or not a string keeps its place with no pairs
    and the reason in the error column.
    """
    if done_ids is not None and len(done_ids) and batch.num_rows:
        from pipelines.files import done_mask

        batch = batch.filter(pa.array(~done_mask(batch.column(spec.id_column), done_ids)))
    frontend = _frontend(spec.model, spec.revision, spec.limits.model_dump_json())
    texts = batch.column(spec.text_column).to_pylist() if batch.num_rows else []
    errors: list[str | None] = [None] * len(texts)
    valid: list[int] = []
    for i, text in enumerate(texts):
        try:
            if text is None:
                raise NoTextError(f"{spec.text_column} is null.")
            check_text(text, frontend.limits, where=spec.text_column)
            valid.append(i)
        except ZeroShotError as exc:
            errors[i] = row_error(exc)

    per_row = np.zeros(len(texts), dtype=np.int64)
    pairs = Pairs.from_list([])
    if valid:
        # Texts are checked above, so the request is built directly; one tokenizer call.
        request = ClassificationRequest(
            tuple(texts[i] for i in valid), spec.labels, spec.template, spec.multi_label
        )
        (encoded,) = frontend.encode_many([request])
        if isinstance(encoded, ZeroShotError):
            for row in valid:
                errors[row] = row_error(encoded)
        else:
            pairs = encoded.pairs
            per_row[valid] = len(spec.labels)
    batch = batch.append_column(PAIRS, _pairs_column(pairs, per_row))
    return batch.append_column(ERROR, pa.array(errors, pa.string()))


class Score:
    """Scoring actor: loads the weights once, then turns each batch's pairs into logits.

    A batch's pairs are sorted by length and cut into forward passes under the token budget
    (`zeroshot.score.Scorer`), so lengths mix freely across rows.
    """

    def __init__(
        self,
        model: ModelConfig,
        batching: BatchingConfig,
        torch_threads: int | None = None,
        record_scorer: bool = False,
    ):
        import ray

        self.scorer = Scorer.from_config(model, ray.get_gpu_ids(), batching)
        if self.scorer.backend.device_type == "cpu" and torch_threads:
            import torch

            # Ray pins an actor to its reserved CPUs' worth of threads (often 1); a CPU scorer
            # is the job's bottleneck and should use the cores the driver planned for it.
            usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            torch.set_num_threads(max(1, min(torch_threads, usable or torch_threads)))
        self.node = ray.get_runtime_context().get_node_id()
        self.device = self.scorer.device
        self.record = record_scorer
        # Printed, not logged: Ray forwards actor stdout to the driver, tagged with the actor,
        # so the job's output shows where each scorer landed and what it runs on.
        print(
            f"scorer on node {self.node[:12]}: device {self.device}, dtype "
            f"{self.scorer.dtype}, {_torch_threads()} torch threads, "
            f"{self.scorer.batching.max_batch_tokens}-token forward passes",
            flush=True,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        col = batch.column(PAIRS).combine_chunks()
        per_row = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        inner = col.flatten()
        lengths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
        flat = inner.flatten().to_numpy(zero_copy_only=False)
        logits, _ = self.scorer.score(Pairs.from_lengths(flat, lengths))
        width = logits.shape[1]
        offsets = np.concatenate(([0], np.cumsum(per_row) * width)).astype(np.int32)
        out = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(logits.reshape(-1), pa.float32())
        )
        batch = batch.drop_columns([PAIRS]).append_column(LOGITS, out)
        if self.record:
            n = batch.num_rows
            batch = batch.append_column("scorer_node", pa.array([self.node] * n, pa.string()))
            batch = batch.append_column("scorer_device", pa.array([self.device] * n, pa.string()))
        return batch


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def assemble(batch: pa.Table, *, spec: StageSpec, nli: NliLabels) -> pa.Table:
    """Logits to sorted labels and scores, exactly as the transformers pipeline; rows with an
    error get nulls. Keeps only the output columns."""
    n = batch.num_rows
    errors = batch.column(ERROR).to_pylist()
    valid = [i for i, e in enumerate(errors) if e is None]
    labels: list[list[str] | None] = [None] * n
    scores: list[list[float] | None] = [None] * n
    if valid:
        logits_col = batch.column(LOGITS).combine_chunks()
        rows = logits_col.take(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        texts = batch.column(spec.text_column).take(pa.array(valid)).to_pylist()
        request = ClassificationRequest(tuple(texts), spec.labels, spec.template, spec.multi_label)
        results = assemble_results(request, rows.reshape(len(valid) * len(spec.labels), -1), nli)
        for i, result in zip(valid, results):
            labels[i] = result["labels"]
            scores[i] = result["scores"]
    top_label = [x[0] if x else None for x in labels]
    top_score = [x[0] if x else None for x in scores]
    extra = {
        "labels": pa.array(labels, LABELS_TYPE),
        "scores": pa.array(scores, SCORES_TYPE),
        "top_label": pa.array(top_label, pa.string()),
        "top_score": pa.array(top_score, pa.float32()),
        "error": pa.array(errors, pa.string()),
    }
    columns = [c for c in spec.output_columns if c not in extra]
    table = batch.select(columns)
    for name, values in extra.items():
        table = table.append_column(name, values)
    order = [c for c in spec.output_columns if c in table.column_names]
    return table.select(order)
