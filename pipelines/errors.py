"""Errors of the offline job, in the engine's taxonomy (`zeroshot.errors`), and the exit code
each one gives `zeroshot score` (one table, `EXIT_CODES`)."""

from __future__ import annotations

from zeroshot.errors import ErrorType, InvalidInputError, ZeroShotError


class JobInputError(InvalidInputError):
    """The job cannot start as asked: a missing column, no Parquet at the input, a clash with
    the output. Raised before any Ray work; the CLI prints it and exits with 2."""

    type = ErrorType.VALIDATION


class JobError(ZeroShotError):
    """The job started and could not finish; `kind` is what the CLI prints, `exit_code` what
    it exits with. Rows written before the failure are whole and count as done on a re-run;
    nothing else does."""

    type = ErrorType.INTERNAL
    kind = "job_failed"
    exit_code = 1


class RowCountError(JobError):
    """Rows in != rows out after the job: a row was lost or written twice."""

    kind = "row_count_mismatch"
    exit_code = 1


class OutputError(JobError):
    """The output cannot be written: read-only, no permission, disk full."""

    kind = "output_unwritable"
    exit_code = 3


class InputDataError(JobError):
    """An input file that passed the footer check cannot be read: a corrupt page."""

    kind = "input_unreadable"
    exit_code = 4


class AllRowsFailedError(JobError):
    """The job ran to the end, and not one row got scores: every row carries an error."""

    kind = "all_rows_failed"
    exit_code = 5


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM to the CLI) stopped the job; `message` says how to resume. Still a
    KeyboardInterrupt, so Python callers stop as they would on Ctrl-C."""

    exit_code = 130  # the shell's convention: 128 + SIGINT

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


INTERRUPTED_EXIT_CODE = JobInterrupted.exit_code

EXIT_CODES = {
    0: "every input row is in the output (some may carry a row error)",
    1: "rows in != rows out after the run (row_count_mismatch), or an unexpected failure",
    2: "the job cannot run as asked (bad options, input, or an output of another job)",
    OutputError.exit_code: "the output cannot be written (read-only, permissions, disk full)",
    InputDataError.exit_code: "an input file cannot be read (a corrupt page)",
    AllRowsFailedError.exit_code: "the job ran, and every row carries an error",
    INTERRUPTED_EXIT_CODE: "interrupted (Ctrl-C): re-run the same command to resume",
}
