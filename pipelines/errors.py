"""Errors of the offline job, in the engine's taxonomy (`zeroshot.errors`)."""

from __future__ import annotations

from zeroshot.errors import ErrorType, InvalidInputError, ZeroShotError


class JobInputError(InvalidInputError):
    """The job cannot start as asked: a missing column, no Parquet at the input, a clash with
    the output. Raised before any Ray work; the CLI prints it and exits with 2."""

    type = ErrorType.VALIDATION


class RowCountError(ZeroShotError):
    """Rows in != rows out after the job: a row was lost or written twice."""

    type = ErrorType.INTERNAL
