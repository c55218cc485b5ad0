"""The job's three Ray Data stages over pyarrow batches: `encode` (CPU tasks), `Score` (an
actor pool that holds the model) and `assemble` (CPU tasks).

Between stages a batch is its input columns plus a few private columns: `encode` adds each
row's pair token ids (`__zs_ids`, list<int32>: the row's pairs back to back) and their lengths
(`__zs_lens`, list<int32>), and the row's error; `Score` swaps the pair columns for the NLI
logits (list<float32>); `assemble` turns logits into the output columns and drops the private
ones. A list column's values are one flat buffer per block, so every stage works on whole
arrays (numpy / Arrow compute), never on one Python object per row or per pair. Only `Score`
touches torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeroshot.assemble import NliLabels, rank_labels
from zeroshot.config import BatchingConfig, Limits, ModelConfig
from zeroshot.errors import NoTextError, ZeroShotError
from zeroshot.pairs import Pairs
from zeroshot.requests import check_text
from zeroshot.score import Scorer

IDS = "__zs_ids"
LENS = "__zs_lens"
SEGMENTS = "__zs_segments"  # per pair, where token type 1 begins (models that read types)
LOGITS = "__zs_logits"
ERROR = "__zs_error"
PRIVATE = (IDS, LENS, SEGMENTS, LOGITS, ERROR)

# The footer key-value metadata key every output file carries (see pipelines.manifest).
METADATA_KEY = b"zeroshot.job"


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
    params_json: str = "{}"  # the job's parameters, written into every output file's footer
    # The driver's tokenizer (tokenizers JSON) and the model's input limit: an encode task
    # builds its encoder from these, without importing transformers (or torch) or reading the
    # model directory; that was most of an encode worker's first-block latency.
    tokenizer_json: str = ""
    max_length: int = 0
    token_types: bool = False  # the model reads token type ids (BERT-style cross-encoders)


def row_error(exc: ZeroShotError) -> str:
    return f"{exc.type.value}: {exc.message}"


_ENCODERS: dict[int, object] = {}


def _encoder(spec: StageSpec):
    """One `PairEncoder` per worker process and tokenizer: Ray reuses workers across tasks."""
    key = hash((spec.tokenizer_json, spec.max_length, spec.token_types, spec.model, spec.revision))
    encoder = _ENCODERS.get(key)
    if encoder is None:
        if spec.tokenizer_json:
            from tokenizers import Tokenizer

            from zeroshot.encode import PairEncoder

            encoder = PairEncoder(
                Tokenizer.from_str(spec.tokenizer_json), spec.max_length, spec.token_types
            )
        else:
            from zeroshot.frontend import Frontend

            encoder = Frontend.from_pretrained(spec.model, spec.revision, spec.limits).encoder
        _ENCODERS.clear()
        _ENCODERS[key] = encoder
    return encoder


def _list_column(values: np.ndarray, counts: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """A list column with `counts[i]` consecutive `values` in row i (no per-row objects)."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, dtype))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, dtype))


def _flat(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list column's values (the rows' lists back to back) as numpy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False)


def check_texts(column: pa.ChunkedArray | pa.Array, name: str, limits: Limits) -> list[str | None]:
    """Each row's error (None when the text can be scored): null, empty, too long, not a
    string. Vectorized; only failing rows cost Python work (messages as `check_text`)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    errors: list[str | None] = [None] * len(column)
    t = column.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        bad = range(len(column))
    else:
        chars = pc.utf8_length(column)
        bad_mask = pc.or_kleene(pc.is_null(column), pc.invert(pc.and_(
            pc.greater(chars, 0), pc.less_equal(chars, limits.max_chars)
        )))  # fmt: skip
        bad = np.flatnonzero(bad_mask.fill_null(True).to_numpy(zero_copy_only=False))
    for i in bad:
        text = column[int(i)].as_py()
        try:
            if text is None:
                raise NoTextError(f"{name} is null.")
            check_text(text, limits, where=name)
        except ZeroShotError as exc:
            errors[int(i)] = row_error(exc)
    return errors


def encode(batch: pa.Table, *, spec: StageSpec, done_ids: np.ndarray | None = None) -> pa.Table:
    """Drop rows already in the output (a resumed run), check each text, tokenize the rest.

    A row whose text is null, empty, too long or not a string keeps its place with no pairs
    and the reason in the error column.
    """
    if done_ids is not None and len(done_ids) and batch.num_rows:
        from pipelines.files import done_mask

        batch = batch.filter(pa.array(~done_mask(batch.column(spec.id_column), done_ids)))
    encoder = _encoder(spec)
    n = batch.num_rows
    errors = check_texts(batch.column(spec.text_column), spec.text_column, spec.limits)
    valid = np.fromiter((e is None for e in errors), bool, n)
    n_labels = len(spec.labels)
    pairs_per_row = np.zeros(n, np.int64)
    pairs = Pairs.from_list([])
    if valid.any():
        column = batch.column(spec.text_column)
        texts = column.filter(pa.array(valid)).to_pylist()
        try:
            pairs = encoder.encode_texts(texts, spec.labels, spec.template)
            pairs_per_row[valid] = n_labels
        except ZeroShotError as exc:
            for row in np.flatnonzero(valid):
                errors[row] = row_error(exc)
    # Tokens per row: the sum of its pairs' lengths (pairs are row-major, n_labels a row).
    tokens_per_row = np.zeros(n, np.int64)
    if len(pairs):
        tokens_per_row[pairs_per_row > 0] = pairs.lengths.reshape(-1, n_labels).sum(axis=1)
    batch = batch.append_column(IDS, _list_column(pairs.ids, tokens_per_row, pa.int32()))
    batch = batch.append_column(LENS, _list_column(pairs.lengths, pairs_per_row, pa.int32()))
    if encoder.type_offset is not None:
        segments = pairs.segments if pairs.segments is not None else np.zeros(0, np.int32)
        batch = batch.append_column(SEGMENTS, _list_column(segments, pairs_per_row, pa.int32()))
    return batch.append_column(ERROR, pa.array(errors, pa.string()))


class _Config:
    """The few model-config fields `Scorer` and `NullBackend` read, without transformers."""

    def __init__(self, fields: dict):
        self.__dict__.update(fields)


def scorer_config_fields(config) -> dict:
    """What a null-backend actor needs of the model config (sent from the driver, so the
    actor imports neither transformers nor torch)."""
    names = ("num_labels", "pad_token_id", "vocab_size", "max_position_embeddings")
    return {name: getattr(config, name, None) for name in names}


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
        null_config: dict | None = None,
    ):
        import ray

        if model.backend == "null" and null_config is not None:
            from zeroshot.backends import NullBackend

            backend = NullBackend(_Config(null_config), model.null_pairs_per_s)
            self.scorer = Scorer(backend, batching)
        else:
            self.scorer = Scorer.from_config(model, ray.get_gpu_ids(), batching)
        threads = None
        if self.scorer.backend.device_type == "cpu" and torch_threads:
            import torch

            # Ray pins an actor to its reserved CPUs' worth of threads (often 1); a CPU scorer
            # is the job's bottleneck and should use the cores the driver planned for it.
            usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            torch.set_num_threads(max(1, min(torch_threads, usable or torch_threads)))
            threads = torch.get_num_threads()
        self.node = ray.get_runtime_context().get_node_id()
        self.device = self.scorer.device
        self.record = record_scorer
        self.description = (
            f"device {self.device}, dtype {self.scorer.dtype}"
            + (f", {threads} torch threads" if threads else "")
            + f", {self.scorer.batching.max_batch_tokens}-token forward passes"
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        lens = _flat(batch.column(LENS))
        typed = SEGMENTS in batch.column_names
        segments = _flat(batch.column(SEGMENTS)) if typed else None
        pairs = Pairs.from_lengths(_flat(batch.column(IDS)), lens, segments)
        logits, _ = self.scorer.score(pairs)
        pairs_per_row = pc.list_value_length(batch.column(LENS)).to_numpy(zero_copy_only=False)
        out = _list_column(logits.reshape(-1), pairs_per_row * logits.shape[1], pa.float32())
        dropped = [IDS, LENS, SEGMENTS] if typed else [IDS, LENS]
        batch = batch.drop_columns(dropped).append_column(LOGITS, out)
        if self.record:
            n = batch.num_rows
            batch = batch.append_column("scorer_node", pa.array([self.node] * n, pa.string()))
            batch = batch.append_column("scorer_device", pa.array([self.device] * n, pa.string()))
        return batch


def assemble(batch: pa.Table, *, spec: StageSpec, nli: NliLabels) -> pa.Table:
    """Logits to sorted labels and scores, exactly as the transformers pipeline; rows with an
    error get nulls. Keeps only the output columns, and records the job's parameters in the
    table's metadata (the Parquet footer of every file written)."""
    n, n_labels = batch.num_rows, len(spec.labels)
    error = batch.column(ERROR).combine_chunks() if n else pa.array([], pa.string())
    valid = error.is_null().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    n_valid = int(valid.sum())
    if n_valid:
        logits = _flat(batch.column(LOGITS))
        width = logits.size // (n_valid * n_labels)
        order, scores = rank_labels(logits.reshape(-1, width), n_labels, spec.multi_label, nli)
    else:
        order, scores = np.zeros((0, n_labels), np.int64), np.zeros((0, n_labels), np.float32)
    counts = np.where(valid, n_labels, 0)
    names = pa.array(spec.labels, pa.string())
    labels = _list_column(names.take(pa.array(order.reshape(-1))), counts, pa.string())
    scored = _list_column(scores.reshape(-1), counts, pa.float32())
    invalid = pa.array(~valid)
    top_index = np.zeros(n, np.int64)
    top_score = np.zeros(n, np.float32)
    if len(order):
        top_index[valid], top_score[valid] = order[:, 0], scores[:, 0]
    extra = {
        "labels": pa.ListArray.from_arrays(labels.offsets, labels.values, mask=invalid),
        "scores": pa.ListArray.from_arrays(scored.offsets, scored.values, mask=invalid),
        "top_label": names.take(pa.array(top_index, mask=~valid)),
        "top_score": pa.array(top_score, pa.float32(), mask=~valid),
        "error": error,
    }
    columns = [c for c in spec.output_columns if c not in extra]
    table = batch.select(columns)
    for name, values in extra.items():
        table = table.append_column(name, values)
    order_out = [c for c in spec.output_columns if c in table.column_names]
    return table.select(order_out).replace_schema_metadata({METADATA_KEY: spec.params_json})
