"""A cluster whose head declares no CPUs (KubeRay's recommended head, `num-cpus: 0`): the job
runs all its work on the worker node, its writer included, and every row lands once."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import JobConfig, run_job

pytestmark = pytest.mark.ray


@pytest.fixture
def zero_cpu_head():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield
    ray.shutdown()
    cluster.shutdown()


def test_writer_keeps_its_cpu_where_the_head_has_none(zero_cpu_head, tmp_path, tiny_model):
    from pipelines.job import _write_cpus

    # A 0-CPU writer could be placed on the head; here it reserves a CPU, so it cannot.
    assert _write_cpus() == 1.0
    n = 50
    pq.write_table(
        pa.table({"text": [f"story {i} about the match" for i in range(n)], "i": range(n)}),
        tmp_path / "in.parquet",
    )
    summary = run_job(
        JobConfig(
            input=str(tmp_path / "in.parquet"),
            output=str(tmp_path / "out"),
            labels=["sports", "politics"],
            model=tiny_model,
            batch_size=8,
            rows_per_file=20,
            show_progress=False,
        )
    )
    assert summary.ok and summary.num_actors == 1
    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert sorted(r["i"] for r in rows) == list(range(n))
    assert all(r["error"] is None and len(r["scores"]) == 2 for r in rows)
