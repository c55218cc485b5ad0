"""Offline scoring: a Ray Data job from Parquet to Parquet with the zero-shot engine.

    from pipelines import JobConfig, run_job
    summary = run_job(JobConfig(input="in/", output="out/", labels=["a", "b"]))

Ray is imported only when a job runs, so `zeroshot --help` and the config stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config import JobConfig

if TYPE_CHECKING:
    from pipelines.job import JobSummary

__all__ = ["JobConfig", "JobSummary", "run_job"]


def run_job(config: JobConfig) -> JobSummary:
    """Run one scoring job to the end; see `pipelines.job.run_job`."""
    from pipelines.job import run_job as _run

    return _run(config)


def __getattr__(name: str):
    if name == "JobSummary":
        from pipelines.job import JobSummary

        return JobSummary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
