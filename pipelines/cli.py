"""`zeroshot score INPUT OUTPUT --labels "a,b,c" ...` (and `python -m pipelines ...`).

Imports no Ray at module level: `zeroshot --help` builds this parser too.
"""

from __future__ import annotations

import argparse
import sys

from zeroshot.flags import MODEL_FLAGS, Flag, add_flags, to_argv, values

DESCRIPTION = (
    "Score a Parquet dataset with Ray Data: encode (CPU tasks) -> score (actor pool, GPU or "
    "CPU) -> assemble (CPU tasks) -> Parquet. Every input column is kept, plus labels, scores, "
    "top_label, top_score and error. Re-running an interrupted job finishes the missing rows."
)

# Options that set a field of `pipelines.config.JobConfig` (default and help from the field).
JOB_FLAGS = (
    Flag("input", positional=True),
    Flag("output", positional=True),
    Flag("labels", metavar='"A,B,C"'),
    Flag("text_column"),
    Flag("id_column"),
    Flag("keep_columns", metavar="A,B"),
    Flag("multi_label"),
    Flag("hypothesis_template", name="template"),
    *MODEL_FLAGS,
    Flag("address"),
    Flag("num_actors"),
    Flag("gpus_per_actor"),
    Flag("cpus_per_actor"),
    Flag("torch_threads"),
    Flag("batch_size"),
    Flag("batching.max_batch_tokens"),
    Flag("rows_per_file"),
    Flag("overwrite"),
    Flag("record_scorer"),
    Flag(
        "show_progress",
        name="no-progress",
        invert=True,
        help="No progress line on a terminal (by default one line is redrawn in place); "
        "--progress-every still prints its periodic lines.",
    ),
    Flag("progress_every_s", name="progress-every", metavar="SECONDS"),
    Flag("verbose"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.config import JobConfig

    parser.description = DESCRIPTION
    parser.epilog = _epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_flags(parser, JobConfig, JOB_FLAGS)


def config_from_args(args: argparse.Namespace):
    """The `JobConfig` for parsed arguments (raises pydantic's ValidationError)."""
    from pipelines.config import JobConfig

    return JobConfig.model_validate(values(args))


def command_line(config) -> list[str]:
    """`zeroshot score ...` words that run `config` (a `JobConfig`): the inverse of parsing."""
    return ["zeroshot", "score", *to_argv(config, JOB_FLAGS)]


def _epilog() -> str:
    from pipelines.errors import EXIT_CODES

    return "exit codes:\n" + "\n".join(f"  {code:<4}{what}" for code, what in EXIT_CODES.items())


def _stop_on_sigterm() -> None:
    """SIGTERM (a pod or a scheduler stopping the job) stops it as Ctrl-C does: cleanly,
    with one line saying how to resume."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(args: argparse.Namespace) -> int:
    """Run the job; the exit code says how it ended (`pipelines.errors.EXIT_CODES`). Input
    problems raise `ZeroShotError`s, which the `zeroshot` CLI prints and turns into exit 2."""
    from pydantic import ValidationError

    from pipelines.errors import JobError, JobInputError, JobInterrupted
    from pipelines.job import run_job

    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise JobInputError(f"invalid options: {problems}") from None
    _stop_on_sigterm()
    try:
        run_job(config)
    except JobError as exc:
        print(f"error ({exc.kind}): {exc.message}", file=sys.stderr)
        return exc.exit_code
    except JobInterrupted as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Before Ray started (reading footers, loading the tokenizer): nothing was written.
        print("interrupted before any row was scored.", file=sys.stderr)
        return JobInterrupted.exit_code
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
