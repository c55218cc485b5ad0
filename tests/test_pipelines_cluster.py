"""GPU scheduling without GPUs: a two-node `ray.cluster_utils.Cluster` whose nodes each declare
one GPU. The job must place one scoring actor per node (one per GPU slot) and, since CUDA is not
actually there, run the model on CPU."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from reference import assert_same_result

from pipelines import JobConfig, run_job

pytestmark = pytest.mark.ray

LABELS = ["sports", "politics", "business"]


@pytest.fixture(scope="module")
def two_gpu_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    # Dispatch only once both actors are up, so neither can take every batch while the
    # other is still loading the model.
    ctx = ray.data.DataContext.get_current()
    saved, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 300
    yield {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    ctx.wait_for_min_actors_s = saved
    ray.shutdown()
    cluster.shutdown()


def scorer_nodes() -> list[str]:
    """Nodes of the job's scoring actors, from the GCS's actor table (no dashboard needed)."""
    import ray

    actors = ray._private.state.actors().values()
    return [a["Address"]["NodeID"] for a in actors if "(Score)" in a["ActorClassName"]]


def test_one_actor_per_gpu_node_model_on_cpu(
    two_gpu_nodes, tmp_path, tiny_model, reference_pipeline
):
    n = 96
    texts = [f"The match and the election, story {i}" for i in range(n)]
    pq.write_table(pa.table({"text": texts, "i": range(n)}), tmp_path / "in.parquet")

    summary = run_job(
        JobConfig(
            input=str(tmp_path / "in.parquet"),
            output=str(tmp_path / "out"),
            labels=LABELS,
            model=tiny_model,
            dtype="float32",
            batch_size=4,
            rows_per_file=None,
            record_scorer=True,
            show_progress=False,
        )
    )
    from pipelines.job import _write_cpus

    # Every node declares CPUs: the writer reserves none (see test_pipelines_cpu_head.py).
    assert _write_cpus() == 0.0
    # Defaults on a cluster with 2 GPUs: one actor per GPU.
    assert summary.ok and summary.num_actors == 2 and summary.gpus_per_actor == 1

    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert sorted(r["i"] for r in rows) == list(range(n))
    # One scoring actor on each GPU node. (Which of them scores a given block is Ray Data's
    # choice: blocks that arrive one at a time may all go to the first idle actor.)
    assert sorted(scorer_nodes()) == sorted(two_gpu_nodes)
    assert {r["scorer_node"] for r in rows} <= two_gpu_nodes
    assert {r["scorer_device"] for r in rows} == {"cpu"}  # declared GPUs, no CUDA: CPU
    for row in rows[:10]:
        expected = reference_pipeline(row["text"], candidate_labels=LABELS)
        assert_same_result({"sequence": row["text"], **row}, expected)
