"""Typed configuration of the offline job: one object fed by the CLI, `python -m pipelines`
and `run_job(JobConfig(...))` from a RayJob entrypoint or a notebook."""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator

from zeroshot.config import DEFAULT_TEMPLATE, BatchingConfig, Limits, ModelConfig
from zeroshot.requests import parse_labels

# Columns the job adds to every output row.
OUTPUT_COLUMNS = ("labels", "scores", "top_label", "top_score", "error")
# Ray Data's deterministic id (`read_parquet(include_row_hash=True)`) when no id column is given.
ROW_HASH_COLUMN = "row_hash"
# Added only with `record_scorer`: where each row was scored.
SCORER_COLUMNS = ("scorer_node", "scorer_device")


# Rows per block. Every block costs a task per stage and an actor call (a few ms of Ray and
# Arrow work each, about what 1,000 rows of vectorized encode cost), so blocks of a few
# thousand rows keep that overhead small; a block's pairs are still cut into forward passes
# by the token budget, so a GPU sees the same batches whatever this is.
BATCH_SIZE = 2048


def _split_columns(value: object) -> object:
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return value


class JobConfig(ModelConfig):
    """One offline scoring job: which Parquet to read, how to classify it, where to write.

    Inherits model, revision, device, dtype and backend from the engine's `ModelConfig`
    (device 'auto': CUDA when Ray gave the scoring actor a GPU that CUDA can drive)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: str = Field(
        description="Parquet input: one file, a directory (searched recursively; hive "
        "`key=value` directories become columns) or a glob such as 'data/*.parquet'. Local "
        "paths or any URI pyarrow resolves (s3://, gs://, ...).",
    )
    output: str = Field(
        description="Output directory of Parquet files (local path or URI). Rows already "
        "there from an interrupted run of the same job are kept and not scored again.",
    )
    labels: list[str] = Field(
        description="Candidate labels, as a list or one comma-separated string.",
    )
    text_column: str = Field("text", description="Column holding the text to classify.")
    id_column: str | None = Field(
        None,
        description="Column with a unique id per row, used to resume an interrupted run. None "
        f"uses Ray Data's deterministic `{ROW_HASH_COLUMN}` (a hash of file path and row "
        "position), written to the output under that name.",
    )
    keep_columns: list[str] | None = Field(
        None,
        description="Input columns to copy to the output (a list or a comma-separated string); "
        "None keeps every input column. The id column is always kept.",
    )
    hypothesis_template: str = Field(
        DEFAULT_TEMPLATE, description="Hypothesis template; {} is replaced by each label."
    )
    multi_label: bool = Field(
        False,
        description="Score each label independently (entailment vs contradiction) instead of "
        "a softmax across labels.",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="How each scoring actor cuts a batch's length-sorted pairs into forward "
        "passes (padded-token budget; by default one that suits the actor's device).",
    )
    limits: Limits = Field(
        default_factory=Limits,
        description="Per-text limits; only max_chars applies here (a longer text is a row "
        "error, text_too_long).",
    )
    batch_size: int = Field(
        BATCH_SIZE,
        ge=1,
        description="Rows per block between stages and per scoring-actor call; each call's "
        "pairs are sorted by length before they are cut into forward passes.",
    )
    num_actors: int | None = Field(
        None,
        ge=1,
        description="Scoring actors. None: one per GPU slot (cluster GPUs / gpus_per_actor) "
        "when the cluster has GPUs, else one per node.",
    )
    gpus_per_actor: float | None = Field(
        None,
        ge=0,
        description="GPUs each scoring actor reserves (fractions share a GPU). None: 1 when the "
        "cluster has GPUs, else 0 (CPU actors).",
    )
    cpus_per_actor: float = Field(
        1.0, ge=0, description="CPUs each scoring actor reserves in Ray's accounting."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads of a CPU scoring actor. None: the node's cores "
        "divided among the actors expected on it (Ray would otherwise pin it to 1 thread).",
    )
    encode_tasks: int | None = Field(
        None,
        ge=1,
        description="Most encode tasks running at once. None: 4 per scoring actor.",
    )
    rows_per_file: int | None = Field(
        16384,
        ge=1,
        description="Rows per output file (blocks are bundled up to this before a write; the "
        "last file may hold fewer); None writes one file per block. A file is written whole "
        "or not at all, so an interruption loses at most the files being written.",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto', 'host:port' or 'ray://...'. None joins "
        "RAY_ADDRESS when it is set (as inside a KubeRay RayJob), else starts a local Ray; "
        "a Ray already initialized in this process is always used as is.",
    )
    overwrite: bool = Field(
        False, description="Delete what the output directory holds and score every row again."
    )
    show_progress: bool = Field(
        True,
        description="On a terminal, one progress line (rows done, rows/s, ETA); elsewhere "
        "nothing, unless --progress-every asks for a line every N seconds.",
    )
    verbose: bool = Field(
        False,
        description="Show Ray's and Ray Data's informational log lines too (execution plans, "
        "operator dumps); off: the job's own lines and real warnings only.",
    )
    progress_every_s: float | None = Field(
        None,
        gt=0,
        description="When not on a terminal (a RayJob's log, a pipe): print a progress line at "
        "most every this many seconds. None: only the final summary.",
    )
    record_scorer: bool = Field(
        False,
        description=f"Add columns {', '.join(SCORER_COLUMNS)}: the Ray node id and torch device "
        "that scored each row (for checking placement).",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        # The pipeline's rule (split on commas, strip); emptiness is checked with the other
        # request rules before the job starts, as a typed error.
        return parse_labels(value) if isinstance(value, str) else value

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _keep(cls, value: object) -> object:
        return _split_columns(value)
