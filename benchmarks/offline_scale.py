"""The offline job at dataset scale: 1,000,000 generated rows with the null backend.

- memory: the job (`python -m zeroshot score`, its own local Ray) over 250,000 and 1,000,000
  rows, peak RSS of the driver, of the largest other process (a worker, the raylet, ...) and
  of the whole process tree, sampled with psutil (the tree sum counts the object store's
  shared pages once per process that maps them: an upper bound); beside them the private pages
  (USS) and the physical memory: private pages summed plus the object store's pages once;
- the output: files, rows per file, bytes per file;
- resume: a 1,000,000-row run SIGKILLed (driver and its Ray) at --kill-at of its rows, then the
  same command again: every id exactly once.
Start-up (1-row input) is measured alongside, so the steady rate is reported too.

Prints JSON; writes benchmarks/results/offline_scale.{json,png}.

    python -m benchmarks.offline_scale [--rows 1000000] [--small 250000] [--kill-at 0.4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import LABELS, RESULTS, write_results

WORK = RESULTS / "offline_scale_work"
ROWS_PER_FILE = 10_000


def generate(directory: Path, rows: int, seed: int = 0) -> None:
    """`rows` texts with the benchmarks' length profile (70% 3-30 words, 22% 30-120, 8%
    120-400), ids 0..rows-1, in files of 10,000 rows; numpy-fast."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zeroshot.fixtures import _WORDS

    if directory.exists() and len(list(directory.glob("*.parquet"))) == -(-rows // ROWS_PER_FILE):
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    words = np.asarray(_WORDS, dtype=object)
    rng = np.random.default_rng(seed)
    for k, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        r = rng.random(n)
        lo = np.where(r < 0.70, 3, np.where(r < 0.92, 30, 120))
        hi = np.where(r < 0.70, 30, np.where(r < 0.92, 120, 400))
        counts = rng.integers(lo, hi + 1)
        picks = words[rng.integers(0, len(words), counts.sum())]
        bounds = np.concatenate(([0], np.cumsum(counts)))
        texts = [" ".join(picks[a:b]) + "." for a, b in zip(bounds[:-1], bounds[1:])]
        table = pa.table({"id": np.arange(start, start + n), "text": texts})
        pq.write_table(table, directory / f"part-{k:05d}.parquet")


def subset(src: Path, directory: Path, rows: int) -> None:
    """The first `rows` rows of `src` (its first files), linked, not copied."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for f in sorted(src.glob("*.parquet"))[: rows // ROWS_PER_FILE]:
        os.symlink(f, directory / f.name)


def command(data: Path, out: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "zeroshot", "score", str(data), str(out),
            "--labels", ",".join(LABELS), "--model", model, "--backend", "null",
            "--id-column", "id", "--no-progress"]  # fmt: skip


def start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def shmem_bytes() -> int:
    """The machine's shared-memory pages in use (`Shmem` in /proc/meminfo): where Ray's object
    store lives (/dev/shm), each page counted once."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


def run_sampled(cmd: list[str], stop_when=None) -> dict:
    """Run `cmd`, sampling RSS of it and its descendants every 0.2 s; `stop_when()` true
    SIGKILLs the process group (driver and the Ray it started).

    RSS counts every object-store page a process has touched, so the same shared page shows in
    each worker that mapped it, and a worker's RSS climbs as the store's allocator hands out
    fresh addresses even when it holds little at once. What the job takes from the machine is
    its private pages (USS, summed) plus the object store's pages once (`Shmem` above what it
    was before the run): `physical`."""
    import psutil

    shm0 = shmem_bytes()
    t0 = time.perf_counter()
    proc = start(cmd)
    root = psutil.Process(proc.pid)
    peak = {"driver": 0, "largest_other": 0, "tree": 0, "uss_tree": 0, "uss_largest": 0,
            "shm": 0, "physical": 0}  # fmt: skip
    by_name: dict[str, int] = {}  # peak RSS per kind of process (driver, raylet, a worker...)
    killed = threading.Event()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            rss, uss = [], []
            for p in procs:
                try:
                    # USS: the process's own pages, without the object store's shared ones.
                    info = p.memory_full_info()
                    uss.append(info.uss)
                    rss.append(info.rss)
                    name = " ".join(p.cmdline())[:70] if p is not root else "driver"
                    name = name.split(" --")[0]
                    by_name[name] = max(by_name.get(name, 0), rss[-1])
                except psutil.Error:
                    rss.append(0)
            if rss:
                peak["driver"] = max(peak["driver"], rss[0])
                peak["largest_other"] = max(peak["largest_other"], max(rss[1:], default=0))
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["uss_tree"] = max(peak["uss_tree"], sum(uss))
                peak["uss_largest"] = max(peak["uss_largest"], max(uss, default=0))
                shm = max(0, shmem_bytes() - shm0)
                peak["shm"] = max(peak["shm"], shm)
                peak["physical"] = max(peak["physical"], sum(uss) + shm)
            if stop_when is not None and not killed.is_set() and stop_when():
                killed.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0 and not killed.is_set():
        raise RuntimeError(f"job failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {
        "seconds": time.perf_counter() - t0,
        "exit": proc.returncode,
        "killed": killed.is_set(),
        "peak_rss_driver_mib": peak["driver"] / 2**20,
        "peak_rss_largest_other_mib": peak["largest_other"] / 2**20,
        "peak_rss_tree_mib": peak["tree"] / 2**20,
        "peak_uss_tree_mib": peak["uss_tree"] / 2**20,
        "peak_uss_largest_mib": peak["uss_largest"] / 2**20,
        "peak_object_store_shm_mib": peak["shm"] / 2**20,
        "peak_physical_mib": peak["physical"] / 2**20,
        "peak_rss_by_process_mib": {
            k: v / 2**20 for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
        },
        "stdout": stdout,
    }


def output_files(out: Path) -> dict:
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    rows = np.array([pq.read_metadata(f).num_rows for f in files])
    sizes = np.array([f.stat().st_size for f in files]) / 2**20
    return {
        "files": len(files),
        "rows_per_file": {
            "min": int(rows.min()),
            "median": float(np.median(rows)),
            "max": int(rows.max()),
        },  # fmt: skip
        "mib_per_file": {
            "min": float(sizes.min()),
            "median": float(np.median(sizes)),
            "max": float(sizes.max()),
        },  # fmt: skip
        "mib_total": float(sizes.sum()),
    }


def exactly_once(out: Path, rows: int) -> dict:
    import pyarrow.dataset as pads

    ids = pads.dataset(str(out), format="parquet").to_table(columns=["id"]).column(0)
    unique = len(np.unique(ids.to_numpy()))
    return {"rows_out": len(ids), "unique_ids": unique,
            "exactly_once": len(ids) == unique == rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=250_000)
    ap.add_argument("--kill-at", type=float, default=0.4, help="share of rows written at the kill")
    ap.add_argument("--skip-resume", action="store_true", help="memory and files only")
    args = ap.parse_args()
    from pipelines.files import inspect_output
    from zeroshot.fixtures import make_test_model

    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "tiny"
    if not (model / "model.safetensors").exists():
        make_test_model(model, "tiny")
    big = WORK / f"data_{args.rows}"
    generate(big, args.rows)
    small = WORK / f"data_{args.small}"
    subset(big, small, args.small)
    one = WORK / "data_1"
    subset(big, one, ROWS_PER_FILE)  # the smallest input: one file
    result: dict = {"rows": args.rows, "small": args.small, "labels": len(LABELS), "runs": {}}

    for name, data in (("startup_10k", one), (str(args.small), small), (str(args.rows), big)):
        out = WORK / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        run = run_sampled(command(data, out, str(model)))
        run.pop("stdout")
        run["output"] = output_files(out)
        result["runs"][name] = run
        print(name, run, file=sys.stderr)
    a, b = result["runs"][str(args.small)], result["runs"][str(args.rows)]
    startup = result["runs"]["startup_10k"]["seconds"]
    result["ratios_big_over_small"] = {
        key: b[key] / a[key]
        for key in (
            "peak_rss_driver_mib",
            "peak_rss_largest_other_mib",
            "peak_rss_tree_mib",
            "peak_uss_largest_mib",
            "peak_uss_tree_mib",
            "peak_object_store_shm_mib",
            "peak_physical_mib",
        )  # fmt: skip
    }
    result["steady_rows_per_s"] = (args.rows - ROWS_PER_FILE) / (b["seconds"] - startup)
    result["rows_per_s"] = args.rows / b["seconds"]

    if args.skip_resume:
        write_results("offline_scale_memory", result)
        return
    # Kill at --kill-at of the rows, then the same command: every row exactly once.
    out = WORK / "out_resume"
    shutil.rmtree(out, ignore_errors=True)
    target = int(args.kill_at * args.rows)
    killed = run_sampled(command(big, out, str(model)),
                         stop_when=lambda: inspect_output(str(out)).num_rows >= target)  # fmt: skip
    partial = inspect_output(str(out)).num_rows
    resumed = run_sampled(command(big, out, str(model)))
    result["resume"] = {
        "killed_after_s": killed["seconds"],
        "rows_there_after_kill": partial,
        "rerun_seconds": resumed["seconds"],
        "rerun_exit": resumed["exit"],
        "rerun_summary": resumed["stdout"].strip().splitlines(),
        **exactly_once(out, args.rows),
    }
    ratios = result["ratios_big_over_small"]

    def flat(*keys: str) -> bool:
        return all(ratios[k] <= 1.15 for k in keys)

    result["targets"] = {
        "peak RSS (driver, largest process, tree) flat from small to big (<= 1.15x)": flat(
            "peak_rss_driver_mib", "peak_rss_largest_other_mib", "peak_rss_tree_mib"
        ),
        "peak private memory (driver, largest process) and physical memory (private pages "
        "summed + object store once) flat from small to big (<= 1.15x)": flat(
            "peak_rss_driver_mib", "peak_uss_largest_mib", "peak_physical_mib"
        ),
        "killed and resumed: every row exactly once": result["resume"]["exactly_once"],
    }
    write_results("offline_scale", result)
    plot(result)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(result["small"]), str(result["rows"])]
    keys = ["peak_rss_driver_mib", "peak_rss_largest_other_mib", "peak_rss_tree_mib",
            "peak_uss_largest_mib", "peak_physical_mib"]  # fmt: skip
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(names):
        vals = [result["runs"][name][k] for k in keys]
        bars = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=f"{int(name):,} rows")
        ax.bar_label(bars, fmt="%.0f")
    ax.set_xticks(x, ["driver\nRSS", "largest other\nprocess, RSS", "process tree\nRSS (sum)",
                      "largest other\nprocess, USS",
                      "physical: USS summed\n+ object store"])  # fmt: skip
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title(f"offline job, null backend: memory from {int(names[0]):,} to "
                 f"{int(names[1]):,} rows; {result['rows_per_s']:,.0f} rows/s all in")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "offline_scale.png", dpi=100)


if __name__ == "__main__":
    main()
