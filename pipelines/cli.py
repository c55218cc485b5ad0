"""`zeroshot score INPUT OUTPUT --labels "a,b,c" ...` (and `python -m pipelines ...`).

Imports no Ray at module level: `zeroshot --help` builds this parser too.
"""

from __future__ import annotations

import argparse
import sys

from zeroshot.cli import add_model_args
from zeroshot.config import DEFAULT_TEMPLATE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Score a Parquet dataset with Ray Data: encode (CPU tasks) -> score (actor pool, GPU "
        "or CPU) -> assemble (CPU tasks) -> Parquet. Every input column is kept, plus labels, "
        "scores, top_label, top_score and error. Re-running an interrupted job finishes the "
        "missing rows."
    )
    parser.add_argument("input", help="Parquet file, directory (hive partitions kept) or glob")
    parser.add_argument("output", help="output directory of Parquet files")
    parser.add_argument("--labels", required=True, help='candidate labels, e.g. "a,b,c"')
    parser.add_argument("--text-column", default="text", help="column to classify")
    parser.add_argument(
        "--id-column",
        default=None,
        help="unique row id used to resume; default: Ray Data's row_hash (path + position)",
    )
    parser.add_argument(
        "--keep-columns", default=None, help="input columns to keep, e.g. a,b (default: all)"
    )
    parser.add_argument("--multi-label", action="store_true", help="score labels independently")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="hypothesis template with {}")
    add_model_args(parser, device_help="auto (CUDA when the actor got a GPU), cpu, cuda")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto, host:port or ray://...; default RAY_ADDRESS, else a local Ray",
    )
    parser.add_argument("--num-actors", type=int, default=None, help="scoring actors")
    parser.add_argument(
        "--gpus-per-actor", type=float, default=None, help="GPUs per actor (fractions share)"
    )
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads of a CPU actor"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="rows per block and per actor call"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="padded tokens per forward pass (default: 16384 on GPU, 2048 on CPU)",
    )
    parser.add_argument(
        "--rows-per-file", type=int, default=8192, help="fewest rows per output file"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output instead of resuming"
    )
    parser.add_argument(
        "--record-scorer",
        action="store_true",
        help="add scorer_node and scorer_device columns (where each row was scored)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def config_from_args(args: argparse.Namespace):
    """The `JobConfig` for parsed arguments (raises pydantic's ValidationError)."""
    from pipelines.config import JobConfig

    return JobConfig.model_validate(
        {
            "input": args.input,
            "output": args.output,
            "labels": args.labels,
            "text_column": args.text_column,
            "id_column": args.id_column,
            "keep_columns": args.keep_columns,
            "hypothesis_template": args.template,
            "multi_label": args.multi_label,
            "model": {
                "model": args.model,
                "revision": args.revision,
                "device": args.device,
                "dtype": args.dtype,
            },
            "batching": (
                None
                if args.max_batch_tokens is None
                else {"max_batch_tokens": args.max_batch_tokens}
            ),
            "batch_size": args.batch_size,
            "num_actors": args.num_actors,
            "gpus_per_actor": args.gpus_per_actor,
            "cpus_per_actor": args.cpus_per_actor,
            "torch_threads": args.torch_threads,
            "rows_per_file": args.rows_per_file,
            "address": args.address,
            "overwrite": args.overwrite,
            "show_progress": not args.no_progress,
            "record_scorer": args.record_scorer,
        }
    )


def main(args: argparse.Namespace) -> int:
    """Run the job; 0 when rows in = rows out, 1 on a mismatch. Input problems raise
    `ZeroShotError`s, which the `zeroshot` CLI prints and turns into exit code 2."""
    from pydantic import ValidationError

    from pipelines.errors import JobInputError, RowCountError
    from pipelines.job import run_job

    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise JobInputError(f"invalid options: {problems}") from None
    try:
        run_job(config)
    except RowCountError as exc:
        print(f"error ({exc.type.value}): {exc.message}", file=sys.stderr)
        return 1
    return 0


def run(argv: list[str] | None = None) -> int:
    """`python -m pipelines`: the `zeroshot score` parser and error handling, standalone."""
    from zeroshot.errors import ZeroShotError

    parser = argparse.ArgumentParser(prog="python -m pipelines")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except ZeroShotError as exc:
        print(f"error ({exc.type.value}): {exc.message}", file=sys.stderr)
        return 2
