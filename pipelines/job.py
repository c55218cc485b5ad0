"""The offline job: Parquet in, three Ray Data stages, Parquet out, every row accounted for.

    read_parquet (only the needed columns) -> repartition(batch_size rows)
      -> encode (CPU tasks) -> Score (actor pool, GPU or CPU) -> assemble (CPU tasks)
      -> write_parquet (append)

Everything that can be wrong with the request (paths, columns, labels, template, model) is
checked before Ray is touched. A re-run of the same job skips the ids already in the output
(an anti-join against the id column read back from the written files), so an interrupted job
finishes without duplicating rows; files cut off mid-write are unreadable Parquet and are
deleted first.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from pipelines.config import OUTPUT_COLUMNS, ROW_HASH_COLUMN, SCORER_COLUMNS, JobConfig
from pipelines.errors import JobInputError, RowCountError
from pipelines.files import (
    InputFiles,
    OutputState,
    count_nonnull,
    id_keys,
    inspect_output,
    is_string_type,
    read_ids,
    resolve_input,
)
from pipelines.stages import PRIVATE, StageSpec
from zeroshot.assemble import NliLabels
from zeroshot.config import ModelConfig

# The engine's own options of a job (what each scoring actor loads).
ENGINE_FIELDS = set(ModelConfig.model_fields)


class JobSummary(BaseModel):
    """What one run did; `str()` is the block the CLI prints."""

    input: str = Field(description="Input path as given.")
    output: str = Field(description="Output directory.")
    rows_in: int = Field(description="Rows in the input files (from their footers).")
    rows_out: int = Field(description="Rows in the output directory after the run.")
    rows_before: int = Field(description="Rows already in the output when the run started.")
    rows_written: int = Field(description="Rows this run wrote.")
    errors: int = Field(description="Output rows with an error (null scores).")
    seconds: float = Field(description="Wall time of the run, Ray start-up included.")
    rows_per_s: float = Field(description="rows_written / seconds.")
    num_actors: int = Field(description="Scoring actors.")
    gpus_per_actor: float = Field(description="GPUs reserved per scoring actor.")
    model: str = Field(description="Model id or path.")
    dtype: str = Field(description="Requested dtype.")
    ok: bool = Field(description="rows_in == rows_out.")

    def __str__(self) -> str:
        status = "OK" if self.ok else "MISMATCH"
        resumed = f" ({self.rows_before:,} already there)" if self.rows_before else ""
        device = (
            f"{self.num_actors} x {self.gpus_per_actor:g} GPU"
            if self.gpus_per_actor
            else f"{self.num_actors} x CPU"
        )
        lines = [
            "zero-shot scoring job",
            f"  input       {self.input}",
            f"  output      {self.output}",
            f"  rows        in {self.rows_in:,} / out {self.rows_out:,}  [{status}]",
            f"  this run    {self.rows_written:,} rows{resumed} in {self.seconds:.1f} s"
            f" = {self.rows_per_s:,.1f} rows/s",
            f"  errors      {self.errors:,} rows (null scores, reason in `error`)",
            f"  scoring     {device} actors, model {self.model}, dtype {self.dtype}",
        ]
        return "\n".join(lines)


@dataclass
class Plan:
    """Everything the run needs, checked before Ray starts."""

    inputs: InputFiles
    read_columns: list[str]
    spec: StageSpec
    nli: NliLabels
    output: OutputState


def _check_columns(config: JobConfig, inputs: InputFiles) -> tuple[list[str], list[str]]:
    available = inputs.columns
    shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
    if config.text_column not in available:
        raise JobInputError(
            f"text column {config.text_column!r} is not in the input {config.input!r}; "
            f"its columns are: {shown}. Name the right one with --text-column."
        )
    id_column = config.id_column or ROW_HASH_COLUMN
    if config.id_column is not None and config.id_column not in available:
        raise JobInputError(
            f"id column {config.id_column!r} is not in the input; its columns are: {shown}."
        )
    if config.id_column is None and ROW_HASH_COLUMN in available:
        raise JobInputError(
            f"the input has a column named {ROW_HASH_COLUMN!r}, the name of the generated row "
            "id: pass --id-column (that column, if it is a unique id) or drop it."
        )
    kept = list(config.keep_columns) if config.keep_columns is not None else list(available)
    missing = [c for c in kept if c not in available]
    if missing:
        raise JobInputError(
            f"--keep-columns names {missing} that are not in the input; its columns are: {shown}."
        )
    added = OUTPUT_COLUMNS + (SCORER_COLUMNS if config.record_scorer else ())
    clash = [c for c in kept if c in added or c in PRIVATE]
    if clash:
        raise JobInputError(
            f"input columns {clash} have the names of columns the job adds ({', '.join(added)}); "
            "leave them out with --keep-columns."
        )
    if id_column not in kept:
        kept.append(id_column)
    read = [c for c in available if c in kept or c == config.text_column]
    if config.id_column is None:
        read.append(ROW_HASH_COLUMN)
    output_columns = kept + list(added)
    t = (
        inputs.schema.field(config.text_column).type
        if (config.text_column in inputs.schema.names)
        else None
    )
    if t is not None and not is_string_type(t):
        print(
            f"warning: text column {config.text_column!r} has type {t}, not strings: every row "
            "will carry an invalid_text error.",
            file=sys.stderr,
        )
    return read, output_columns


def _check_paths(inputs: InputFiles, output: OutputState) -> None:
    if type(inputs.location.filesystem) is not type(output.location.filesystem):
        return
    out = output.location.path.rstrip("/")
    if inputs.would_read(out):
        raise JobInputError(
            f"the output {output.location.uri(out)!r} is inside the input; a re-run would "
            "read its own output. Write somewhere else."
        )
    if any(f.startswith(out + "/") for f in inputs.files):
        raise JobInputError(
            f"the input is inside the output {output.location.uri(out)!r}; write elsewhere."
        )


def prepare(config: JobConfig) -> Plan:
    """Resolve and check everything without Ray; raises typed errors (`ZeroShotError`)."""
    from zeroshot.frontend import Frontend

    inputs = resolve_input(config.input)
    read_columns, output_columns = _check_columns(config, inputs)
    output = inspect_output(config.output)
    _check_paths(inputs, output)

    # The labels and template go through the engine's own request checks (and a real encode,
    # for hypotheses too long for the model) once here, not once per row.
    frontend = Frontend.from_pretrained(config.model, config.revision, config.limits)
    request = frontend.request(
        ["probe"], config.labels, config.hypothesis_template, config.multi_label
    )
    frontend.encode(request)

    id_column = config.id_column or ROW_HASH_COLUMN
    if output.files and not config.overwrite:
        import pyarrow.parquet as pq

        names = pq.read_schema(output.files[0], filesystem=output.location.filesystem).names
        if id_column not in names or "error" not in names:
            raise JobInputError(
                f"the output {config.output!r} already holds Parquet files that are not this "
                f"job's (no {id_column!r} or 'error' column): pass --overwrite to replace "
                "them, or write elsewhere."
            )
    spec = StageSpec(
        model=config.model,
        revision=config.revision,
        limits=config.limits,
        labels=request.labels,
        template=request.hypothesis_template,
        multi_label=request.multi_label,
        text_column=config.text_column,
        id_column=id_column,
        output_columns=tuple(output_columns),
    )
    return Plan(inputs, read_columns, spec, frontend.nli, output)


def _connect(address: str | None) -> str:
    """Use, join or start Ray: 'existing' (already initialized here, left as is), 'joined'
    (a cluster at an address) or 'local' (a fresh Ray on this machine)."""
    import ray

    if ray.is_initialized():
        return "existing"
    # No address: RAY_ADDRESS (set inside a KubeRay RayJob) or else a fresh local Ray, never
    # some other cluster that happens to run on this machine.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        ray.init(address="local", include_dashboard=False)
        return "local"
    ray.init(address=address)
    return "joined"


def _actors(config: JobConfig, local: bool) -> tuple[int, float, int]:
    """(actors, GPUs per actor, torch threads for a CPU actor) for the cluster at hand."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    per_actor = config.gpus_per_actor
    if per_actor is None:
        per_actor = 1.0 if gpus >= 1 else 0.0
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    num = config.num_actors
    if num is None:
        num = max(1, int(gpus // per_actor)) if per_actor > 0 else max(1, len(nodes))
    if per_actor > 0 and num * per_actor > gpus:
        need = f"{num} scoring actor(s) x {per_actor:g} GPU = {num * per_actor:g} GPU(s) needed"
        if local:
            # Nothing will ever add GPUs to a Ray this job started: it would wait forever.
            raise JobInputError(
                f"{need}, and the Ray this job started has {gpus:g}; lower --num-actors or "
                "--gpus-per-actor (0 runs the model on CPU)."
            )
        print(
            f"warning: {need}, and the cluster has {gpus:g} now; the job waits for more "
            "(an autoscaler may add them).",
            file=sys.stderr,
        )
    threads = config.torch_threads
    if threads is None:
        cpus = min((n["Resources"]["CPU"] for n in nodes), default=1)
        threads = max(1, int(cpus // math.ceil(num / max(1, len(nodes)))))
    return num, per_actor, threads


def _done_ids(plan: Plan) -> np.ndarray | None:
    if not plan.output.files:
        return None
    ids = read_ids(plan.output.location, plan.output.files, plan.spec.id_column)
    return np.unique(id_keys(ids))


def run_job(config: JobConfig) -> JobSummary:
    """Run the job to the end and return its summary (also printed).

    Raises `JobInputError` (before any Ray work) for a request that cannot run, and
    `RowCountError` when the output does not hold exactly the input's rows.
    """
    t0 = time.perf_counter()
    plan = prepare(config)
    mode = _connect(config.address)
    try:
        summary = _execute(config, plan, t0, local=mode == "local")
    finally:
        if mode != "existing":
            import ray

            ray.shutdown()
    print(summary, flush=True)
    if not summary.ok:
        raise RowCountError(
            f"rows in ({summary.rows_in:,}) != rows out ({summary.rows_out:,}) in "
            f"{config.output!r}: the output is not trustworthy; re-run with --overwrite."
        )
    return summary


def _execute(config: JobConfig, plan: Plan, t0: float, local: bool) -> JobSummary:
    import ray
    from ray.data import ActorPoolStrategy, DataContext, SaveMode, TaskPoolStrategy
    from ray.data.datasource import Partitioning

    from pipelines.stages import Score, assemble, encode

    num_actors, gpus_per_actor, threads = _actors(config, local)
    out = plan.output
    if config.overwrite:
        out.location.filesystem.delete_dir_contents(out.location.path, missing_dir_ok=True)
        out = OutputState(out.location, [], 0, [])
    for path in out.broken:
        print(f"removing {out.location.uri(path)}: unreadable, cut off by an interrupted write")
        out.location.filesystem.delete_file(path)
    plan.output = out
    done = _done_ids(plan)

    # Ray Data warns when a small input gives the encode stage fewer blocks than its cap.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = config.show_progress

    inputs = plan.inputs
    size = config.batch_size
    ds = ray.data.read_parquet(
        inputs.uris,
        partitioning=Partitioning("hive", base_dir=inputs.location.uri(inputs.base_dir)),
        include_row_hash=config.id_column is None,
        schema=inputs.schema,
    ).select_columns(plan.read_columns)
    # Small blocks stream through the stages (and keep memory flat) whatever the file sizes.
    ds = ds.repartition(target_num_rows_per_block=size)
    # Encoding is far cheaper than scoring: a few concurrent tasks per actor keep it ahead.
    # The cap also differs from the actor pool's size, which is what keeps Ray Data from
    # fusing encode into the scoring actors (tokenizing belongs on CPU tasks, not in front
    # of the accelerator).
    encode_tasks = config.encode_tasks or 4 * num_actors
    if encode_tasks == num_actors:
        encode_tasks += 1
    ds = ds.map_batches(
        encode,
        batch_format="pyarrow",
        batch_size=size,
        compute=TaskPoolStrategy(size=encode_tasks),
        fn_kwargs={"spec": plan.spec, "done_ids": done},
    )
    ds = ds.map_batches(
        Score,
        compute=ActorPoolStrategy(size=num_actors),
        fn_constructor_kwargs={
            "model": ModelConfig.model_validate(config.model_dump(include=ENGINE_FIELDS)),
            "batching": config.batching,
            "torch_threads": threads,
            "record_scorer": config.record_scorer,
        },
        batch_size=size,
        batch_format="pyarrow",
        num_gpus=gpus_per_actor,
        num_cpus=config.cpus_per_actor,
    )
    ds = ds.map_batches(
        assemble, batch_format="pyarrow", fn_kwargs={"spec": plan.spec, "nli": plan.nli}
    )
    ds.write_parquet(
        out.location.uri(out.location.path),
        mode=SaveMode.APPEND,
        min_rows_per_file=config.rows_per_file,
    )

    final = inspect_output(config.output)
    seconds = time.perf_counter() - t0
    written = final.num_rows - out.num_rows
    return JobSummary(
        input=config.input,
        output=config.output,
        rows_in=inputs.num_rows,
        rows_out=final.num_rows,
        rows_before=out.num_rows,
        rows_written=written,
        errors=count_nonnull(final.location, final.files, "error"),
        seconds=seconds,
        rows_per_s=written / seconds if seconds > 0 else 0.0,
        num_actors=num_actors,
        gpus_per_actor=gpus_per_actor,
        model=config.model,
        dtype=config.dtype if config.backend == "torch" else f"{config.backend} backend",
        ok=final.num_rows == inputs.num_rows and not final.broken,
    )
