"""What a newcomer meets in the first hour (issue 11): labels, an unreachable hub, the command
line's help and version, the benchmarks' extra, the cluster renderer run from anywhere."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import JobConfig
from pipelines.job import prepare
from zeroshot.errors import DuplicateLabelsError, EmptyLabelError, ErrorType


def zeroshot(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zeroshot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# --- labels: the offline job follows the API's rule ------------------------------------------


@pytest.fixture
def parquet_input(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["hi there"], "id": [1]}), tmp_path / "in" / "a.parquet")
    return tmp_path


@pytest.mark.parametrize(
    ("labels", "error"),
    [("a, b, a", DuplicateLabelsError), (["a", "b", "a"], DuplicateLabelsError),
     (["a", " "], EmptyLabelError)],
)  # fmt: skip
def test_offline_job_refuses_empty_and_duplicate_labels(parquet_input, tiny_model, labels, error):
    cfg = JobConfig(
        input=str(parquet_input / "in"),
        output=str(parquet_input / "out"),
        labels=labels,
        model=tiny_model,
    )
    with pytest.raises(error) as info:
        prepare(cfg)
    assert info.value.type is ErrorType.INVALID_LABELS


def test_score_command_refuses_duplicate_labels_before_ray(parquet_input, tiny_model):
    out = zeroshot(
        "score", str(parquet_input / "in"), str(parquet_input / "out"),
        "--labels", "sports,sports", "--model", tiny_model,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "invalid_labels" in out.stderr and "'sports' is given more than once" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (parquet_input / "out").exists()
