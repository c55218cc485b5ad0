"""The no-op Ray Data job of the offline job's shape: the platform's ceiling on this machine.

    read_parquet -> identity tasks -> one identity actor -> identity tasks -> write_parquet

Same input, same block size, same number of actors, a fresh local Ray, start-up included;
whatever the real job does beyond this is our machinery (or the model).

    python -m benchmarks.offline_noop DATA OUT [--batch-size 2048]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time


def _identity(batch):
    return batch


class _Identity:
    def __call__(self, batch):
        return batch


def run_noop(data: str, out: str, batch_size: int, encode_tasks: int = 4) -> dict:
    """Run the no-op job; seconds in all and to Ray being up (start-up)."""
    t0 = time.perf_counter()
    import pyarrow.dataset as pads
    import ray
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    shutil.rmtree(out, ignore_errors=True)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        t_up = time.perf_counter()
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.read_parquet(data).repartition(target_num_rows_per_block=batch_size)
        ds = ds.map_batches(
            _identity,
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=TaskPoolStrategy(size=encode_tasks),
        )
        ds = ds.map_batches(
            _Identity,
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=ActorPoolStrategy(size=1),
            num_cpus=1,
        )
        ds = ds.map_batches(_identity, batch_format="pyarrow")
        ds.write_parquet(out)
        t_end = time.perf_counter()
        rows = pads.dataset(out, format="parquet").count_rows()
        stats = ds.stats()
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - t0
    return {
        "rows": rows,
        "seconds": seconds,
        "seconds_to_written": t_end - t0,
        "ray_init_seconds": t_up - t0,
        "rows_per_s": rows / seconds,
        "stats": stats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--batch-size", type=int, default=2048)
    args = ap.parse_args()
    result = run_noop(args.data, args.out, args.batch_size)
    print(result.pop("stats"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
