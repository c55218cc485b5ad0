"""The offline job: Parquet in, three Ray Data stages, Parquet out, every row accounted for.

    read the needed columns in blocks of batch_size rows, straight from the row groups
      -> encode (CPU tasks) -> Score (actor pool, GPU or CPU)
      -> assemble + write one whole Parquet file per rows_per_file rows (tasks; I/O, so
         they reserve no CPU where every node has some: see `_write_cpus`)
      -> the driver counts the files as they land (progress, summary)

Everything that can be wrong with the request (paths, columns, labels, template, model, an
output holding another job's results) is checked before Ray is touched, and the output is
proven writable by writing the job's manifest there first. A re-run of the same job skips the
ids already in the output (an anti-join against the id column read back from the written
files), so an interrupted job finishes without duplicating rows; a file is written whole or
not at all, so there is never a half-written one to count.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from pipelines.config import OUTPUT_COLUMNS, ROW_HASH_COLUMN, SCORER_COLUMNS, JobConfig
from pipelines.errors import (
    AllRowsFailedError,
    InputDataError,
    JobError,
    JobInputError,
    JobInterrupted,
    OutputError,
    RowCountError,
)
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
from pipelines.manifest import (
    JobParams,
    check_resume,
    first_line,
    model_fingerprint,
    read_manifest,
    write_manifest,
)
from pipelines.stages import METADATA_KEY, PRIVATE, StageSpec, scorer_config_fields
from zeroshot import raylog
from zeroshot.assemble import NliLabels
from zeroshot.config import ModelConfig
from zeroshot.requests import ClassificationRequest

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
    startup_seconds: float = Field(
        0.0, description="From the start of the run to the first row written (or the end)."
    )
    steady_rows_per_s: float = Field(
        0.0,
        description="Rows/s between the first and the last file written (start-up and the "
        "last file's tail excluded); rows_per_s when fewer than two files were written.",
    )
    stats: str = Field("", exclude=True, description="Ray Data's `ds.stats()` of the run.")

    @property
    def all_failed(self) -> bool:
        """Rows came out, and not one of them has scores."""
        return self.rows_out > 0 and self.errors == self.rows_out

    @property
    def status(self) -> str:
        if not self.ok:
            return "MISMATCH"
        return "ALL ROWS FAILED" if self.all_failed else "OK"

    def __str__(self) -> str:
        status = self.status
        resumed = f" ({self.rows_before:,} already there)" if self.rows_before else ""
        device = (
            f"{self.num_actors} x {self.gpus_per_actor:g} GPU actors"
            if self.gpus_per_actor
            else f"{self.num_actors} x CPU actors"
        )
        if not self.num_actors:
            device = "none (nothing left to score: Ray not started)"
        lines = [
            "zero-shot scoring job",
            f"  input       {self.input}",
            f"  output      {self.output}",
            f"  rows        in {self.rows_in:,} / out {self.rows_out:,}  [{status}]",
            f"  this run    {self.rows_written:,} rows{resumed} in {self.seconds:.1f} s"
            f" = {self.rows_per_s:,.1f} rows/s",
            f"  errors      {self.errors:,} rows (null scores, reason in `error`)",
            f"  scoring     {device}, model {self.model}, dtype {self.dtype}",
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
    params: JobParams
    # What a null-backend actor needs of the model config (so it imports no transformers).
    null_config: dict = field(default_factory=dict)


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
        # Every row would fail; say so now rather than after a whole run.
        raise JobInputError(
            f"text column {config.text_column!r} has type {t}, not strings: no row could be "
            "scored. Name the text column with --text-column."
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


def _params(
    config: JobConfig,
    inputs: InputFiles,
    request,
    output_columns: list[str],
    fingerprint: str | None,
) -> JobParams:
    """What this run's answers depend on: recorded with every file it writes, and compared
    with what an output already holds before a run adds to it."""
    return JobParams(
        model=config.model,
        revision=config.revision,
        model_fingerprint=fingerprint,
        backend=config.backend,
        dtype=config.dtype if config.backend == "torch" else None,
        labels=list(request.labels),
        hypothesis_template=request.hypothesis_template,
        multi_label=request.multi_label,
        text_column=config.text_column,
        max_chars=config.limits.max_chars,
        input=inputs.uri,
        id_column=config.id_column or ROW_HASH_COLUMN,
        columns=output_columns,
    )


def _check_resume(config: JobConfig, output: OutputState, params: JobParams) -> None:
    if not config.overwrite:
        loc = output.location
        recorded = [JobParams.parse(r) for r in output.recorded]
        check_resume(
            params,
            read_manifest(loc.filesystem, loc.path),
            list(zip([loc.uri(f) for f in output.files], recorded)),
            config.output,
        )


def finished_already(config: JobConfig, t0: float) -> JobSummary | None:
    """The summary of a run with nothing left to do, answered from the output's own record
    (row counts in the footers, the parameters each file recorded) without loading the model
    or starting Ray; None when the run has work to do, or when saying so needs the model (a
    hub id: its fingerprint is the commit the hub resolves, known once its config loads).
    Raises `JobInputError` as `prepare` would when the output holds other parameters' rows."""
    if config.overwrite or not os.path.isdir(config.model):
        return None
    inputs = resolve_input(config.input)
    output = inspect_output(config.output, METADATA_KEY)
    if not output.files or output.broken or output.num_rows != inputs.num_rows:
        return None
    _, output_columns = _check_columns(config, inputs)
    _check_paths(inputs, output)
    request = ClassificationRequest.create(
        ["probe"], config.labels, config.hypothesis_template, config.multi_label, config.limits
    )
    fingerprint = model_fingerprint(config.model, None)  # a directory's: its files
    _check_resume(config, output, _params(config, inputs, request, output_columns, fingerprint))
    plan = Plan(inputs, [], None, None, output, None)
    return _summary(config, plan, t0, output.num_rows, 0, 0.0, 0, 0.0, "")


def prepare(config: JobConfig) -> Plan:
    """Resolve and check everything without Ray; raises typed errors (`ZeroShotError`)."""
    from zeroshot.frontend import Frontend

    inputs = resolve_input(config.input)
    read_columns, output_columns = _check_columns(config, inputs)
    output = inspect_output(config.output, METADATA_KEY)
    _check_paths(inputs, output)

    # The labels and template go through the engine's own request checks (and a real encode,
    # for hypotheses too long for the model) once here, not once per row.
    frontend = Frontend.from_pretrained(config.model, config.revision, config.limits)
    request = frontend.request(
        ["probe"], config.labels, config.hypothesis_template, config.multi_label
    )
    frontend.encode(request)

    id_column = config.id_column or ROW_HASH_COLUMN
    fingerprint = model_fingerprint(config.model, frontend.config)
    params = _params(config, inputs, request, output_columns, fingerprint)
    _check_resume(config, output, params)
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
        params_json=params.to_json(),
        tokenizer_json=frontend.tokenizer.backend_tokenizer.to_str(),
        max_length=frontend.max_length,
        token_types=frontend.encoder.type_offset is not None,
    )
    return Plan(
        inputs,
        read_columns,
        spec,
        frontend.nli,
        output,
        params,
        scorer_config_fields(frontend.config),
    )


def prepare_output(config: JobConfig, plan: Plan) -> None:
    """Before Ray starts: clear the output for --overwrite, remove what interrupted runs left
    (files cut off mid-write by an older writer, `_tmp-` files), and write the manifest,
    which proves the output writable (`OutputError`, exit 3, naming it, when it is not)."""
    from pipelines.sink import remove_leftovers

    out = plan.output
    loc = out.location
    try:
        if config.overwrite and loc.filesystem.get_file_info(loc.path).type.name == "Directory":
            loc.filesystem.delete_dir_contents(loc.path, missing_dir_ok=True)
            out = OutputState(loc, [], 0, [], [])
        for path in out.broken:
            print(f"removing {loc.uri(path)}: unreadable, cut off by an interrupted write")
            loc.filesystem.delete_file(path)
        out.broken = []
        remove_leftovers(loc)
    except OSError as exc:
        raise OutputError(
            f"cannot clean up the output {config.output!r}: {first_line(exc)}"
        ) from None
    write_manifest(loc.filesystem, loc.path, plan.params, loc.uri)
    plan.output = out


def _connect(address: str | None, verbose: bool = False) -> str:
    """Use, join or start Ray: 'existing' (already initialized here, left as is), 'joined'
    (a cluster at an address) or 'local' (a fresh Ray on this machine)."""
    import ray

    if ray.is_initialized():
        return "existing"
    # No address: RAY_ADDRESS (set inside a KubeRay RayJob) or else a fresh local Ray, never
    # some other cluster that happens to run on this machine.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # Ray's INFO lines ("Started a local Ray instance", ...) are not the job's news.
    quiet = raylog.quiet(verbose)
    # ray.init replaces the SIGTERM handler with sys.exit; the CLI's (stop cleanly, say how
    # to resume) is put back.
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, **quiet)
            return "local"
        ray.init(address=address, **quiet)
        return "joined"
    finally:
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


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


def _write_cpus() -> float:
    """CPUs each write task reserves: none, unless some node declares none.

    Writing is I/O (one Parquet file per `rows_per_file` rows). Ray Data reserves CPUs for
    upstream operators first, so a writer that needs a whole CPU waits while read and encode
    tasks hold every core: on a small host every file then lands in the job's last seconds and
    the output piles up in the object store (worker memory grows with the dataset, and a kill
    late in a run finds little of it written). A 0-CPU task, though, may be placed on any
    node, and a node that declares no CPUs (a KubeRay head with `num-cpus: 0`) is one meant to
    run no work: there the writer keeps its CPU."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return 0.0 if all(n.get("Resources", {}).get("CPU", 0) > 0 for n in alive) else 1.0


def _done_ids(plan: Plan) -> np.ndarray | None:
    if not plan.output.files:
        return None
    ids = read_ids(plan.output.location, plan.output.files, plan.spec.id_column)
    return np.unique(id_keys(ids))


def run_job(config: JobConfig) -> JobSummary:
    """Run the job to the end and return its summary (also printed).

    Raises `JobInputError` (before any Ray work) for a request that cannot run, `OutputError`
    / `InputDataError` when the output cannot be written or an input file cannot be read,
    `RowCountError` when the output does not hold exactly the input's rows,
    `AllRowsFailedError` when not one row got scores, and `JobInterrupted` on Ctrl-C.
    """
    t0 = time.perf_counter()
    done = finished_already(config, t0)
    if done is not None:
        print(done, flush=True)
        return done
    plan = prepare(config)
    prepare_output(config, plan)
    if plan.inputs.num_rows == 0:
        # Nothing to score: no cluster to start.
        summary = _summary(config, plan, t0, plan.output.num_rows, 0, 0.0, 0, 0.0, "")
    else:
        summary = _run_on_ray(config, plan, t0)
    print(summary, flush=True)
    if not summary.ok:
        raise RowCountError(
            f"rows in ({summary.rows_in:,}) != rows out ({summary.rows_out:,}) in "
            f"{config.output!r}: the output is not trustworthy; re-run with --overwrite."
        )
    if summary.all_failed:
        raise AllRowsFailedError(
            f"every one of the {summary.rows_out:,} rows in {config.output!r} carries an error "
            "and no scores; see the `error` column (e.g. empty or null texts)."
        )
    return summary


def _run_on_ray(config: JobConfig, plan: Plan, t0: float) -> JobSummary:
    from pipelines.progress import filtered_stderr, quiet_ray

    if config.verbose:
        return _on_ray(config, plan, t0, sys.stderr)
    quiet_ray()
    with filtered_stderr() as stderr:
        return _on_ray(config, plan, t0, stderr)


def _on_ray(config: JobConfig, plan: Plan, t0: float, stderr) -> JobSummary:
    mode = _connect(config.address, config.verbose)
    rows_before = plan.output.num_rows
    progress_box: list = [stderr]
    try:
        return _execute(config, plan, t0, local=mode == "local", progress_box=progress_box)
    except KeyboardInterrupt:
        done = progress_box[-1].done if len(progress_box) > 1 else 0
        raise JobInterrupted(
            f"interrupted: {done:,} rows written to {config.output!r} this run "
            f"({rows_before + done:,} in all); run the same command again to resume."
        ) from None
    finally:
        if mode != "existing":
            import ray

            # A second Ctrl-C while Ray shuts down would only leave its processes behind.
            main = threading.current_thread() is threading.main_thread()
            saved = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
            try:
                ray.shutdown()
            finally:
                if main:
                    signal.signal(signal.SIGINT, saved)


def _execute(
    config: JobConfig, plan: Plan, t0: float, local: bool, progress_box: list
) -> JobSummary:
    import ray
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    from pipelines.progress import Progress
    from pipelines.sink import assemble_and_write
    from pipelines.source import ParquetSource
    from pipelines.stages import Score, encode

    num_actors, gpus_per_actor, threads = _actors(config, local)
    out = plan.output
    done = _done_ids(plan)

    # Ray Data warns when a small input gives the encode stage fewer blocks than its cap.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    ctx = DataContext.get_current()
    # The job draws its own progress (rows, rows/s, ETA); Ray Data's per-operator bars (or,
    # off a terminal, its 10-second dumps) are not for its users.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # A stage's own error (`OutputError`, `InputDataError`) reaches the driver as itself, not
    # as a UserCodeException that keeps only its text; the driver turns it into one line.
    ctx.raise_original_map_exception = True

    inputs = plan.inputs
    size = config.batch_size
    # Blocks of `size` rows straight from the row groups (no listing task, no repartition
    # stage): small blocks stream through the stages and keep memory flat.
    source = ParquetSource(
        inputs,
        plan.read_columns,
        size,
        row_id_column=ROW_HASH_COLUMN if config.id_column is None else None,
    )
    ds = ray.data.read_datasource(source)
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
        zero_copy_batch=True,
        compute=TaskPoolStrategy(size=encode_tasks),
        fn_kwargs={"spec": plan.spec, "done_ids": done},
    )
    null = config.backend == "null"
    ds = ds.map_batches(
        Score,
        compute=ActorPoolStrategy(size=num_actors),
        fn_constructor_kwargs={
            "model": ModelConfig.model_validate(config.model_dump(include=ENGINE_FIELDS)),
            "batching": config.batching,
            "torch_threads": threads,
            "record_scorer": config.record_scorer,
            "null_config": plan.null_config if null else None,
        },
        batch_size=size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        num_gpus=gpus_per_actor,
        num_cpus=config.cpus_per_actor,
    )
    ds = ds.map_batches(
        assemble_and_write,
        batch_format="pyarrow",
        batch_size=config.rows_per_file,
        zero_copy_batch=True,
        num_cpus=_write_cpus(),
        fn_kwargs={
            "spec": plan.spec,
            "nli": plan.nli,
            "output": out.location.uri(out.location.path),
        },
    )

    progress = Progress.for_terminal(
        max(0, inputs.num_rows - out.num_rows),
        config.show_progress,
        config.progress_every_s,
        stream=progress_box[0],
    )
    progress_box.append(progress)
    written = 0
    first_write = last_write = None
    first_rows = 0
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            rows = int(np.asarray(batch.column("rows")).sum()) if batch.num_rows else 0
            if rows:
                last_write = time.perf_counter()
                if first_write is None:
                    first_write, first_rows = last_write, rows
            written += rows
            progress.update(rows)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise _job_failure(exc, plan) from None
    finally:
        progress.close()

    final = inspect_output(config.output)
    seconds = time.perf_counter() - t0
    startup = (first_write or time.perf_counter()) - t0
    steady = (
        (written - first_rows) / (last_write - first_write)
        if first_write is not None and last_write > first_write
        else None
    )
    summary = _summary(
        config,
        plan,
        t0,
        final.num_rows,
        final.num_rows - out.num_rows,
        startup,
        num_actors,
        gpus_per_actor,
        ds.stats(),
        final=final,
        seconds=seconds,
    )
    summary.steady_rows_per_s = steady if steady is not None else summary.rows_per_s
    return summary


def _summary(
    config: JobConfig,
    plan: Plan,
    t0: float,
    rows_out: int,
    written: int,
    startup: float,
    num_actors: int,
    gpus_per_actor: float,
    stats: str,
    final: OutputState | None = None,
    seconds: float | None = None,
) -> JobSummary:
    final = final or plan.output
    seconds = seconds if seconds is not None else time.perf_counter() - t0
    return JobSummary(
        input=config.input,
        output=config.output,
        rows_in=plan.inputs.num_rows,
        rows_out=rows_out,
        rows_before=plan.output.num_rows,
        rows_written=written,
        errors=count_nonnull(final.location, final.files, "error"),
        seconds=seconds,
        rows_per_s=written / seconds if seconds > 0 else 0.0,
        num_actors=num_actors,
        gpus_per_actor=gpus_per_actor,
        model=config.model,
        dtype=config.dtype if config.backend == "torch" else f"{config.backend} backend",
        ok=rows_out == plan.inputs.num_rows and not final.broken,
        startup_seconds=startup or seconds,
        stats=stats,
    )


def _causes(exc: BaseException):
    """`exc` and what it wraps (Ray task errors carry the worker's exception as `cause`)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]


def _job_failure(exc: BaseException, plan: Plan) -> BaseException:
    """One typed error for a failed run: ours as raised in a worker (`OutputError`), a
    read failure traced to the input file that causes it (`InputDataError`), else the
    original exception (a bug: its traceback is the information)."""
    import pyarrow as pa
    from ray.exceptions import RayTaskError

    for e in _causes(exc):
        # A RayTaskError(OutputError) is both; its `cause` is the worker's own error.
        if isinstance(e, JobError) and not isinstance(e, RayTaskError):
            return e
    for e in _causes(exc):
        # ENOSPC, EROFS, EACCES raised by a writer outside our own write
        if isinstance(e, OSError) and getattr(e, "errno", None) in (28, 30, 13):
            loc = plan.output.location
            return OutputError(f"cannot write to {loc.uri(loc.path)!r}: {first_line(e)}")
    text = " ".join(str(e) for e in _causes(exc))
    if any(isinstance(e, (pa.ArrowException, OSError)) for e in _causes(exc)) or "Parquet" in text:
        bad = _unreadable_input(plan)
        if bad is not None:
            path, reason = bad
            return InputDataError(
                f"input file {path!r} cannot be read: {reason}. Its footer is valid, so a data "
                "page is corrupt; replace the file (or move it out of the input) and re-run "
                "to resume."
            )
    return exc


def _unreadable_input(plan: Plan, budget_s: float = 120.0) -> tuple[str, str] | None:
    """The first input file whose needed columns do not read back, and why; looked for only
    after a failed run, for at most `budget_s`."""
    import pyarrow.parquet as pq

    inputs = plan.inputs
    names = set(inputs.schema.names)
    columns = [c for c in plan.read_columns if c in names]
    deadline = time.monotonic() + budget_s
    for path in inputs.files:
        if time.monotonic() > deadline:
            return None
        try:
            with inputs.location.filesystem.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(columns=columns or None, batch_size=65536):
                    del batch
        except Exception as exc:  # noqa: BLE001 - any failure to read is the answer
            return inputs.location.uri(path), first_line(exc)
    return None
