"""How long `zeroshot serve` takes to be usable, against a no-op Serve app of the same shape
started the same way.

In one run, alternating, `--repeat` times each (one at a time on this machine):
- `noop`: `benchmarks.noop_serve --backend`: an ingress deployment asking a second one on
  every route (as ours asks the classifier), the same quiet `ray.init`, `serve.start` with the
  same http_options and the same high-throughput ingress, `serve.run`: the baseline;
- `null`: `zeroshot serve --backend null` (everything but the model's weights and forward);
- `tiny`: `zeroshot serve` on the tiny fixture model (or `--model DIR`).
Each is timed from the process's spawn to `GET /healthz` 200, then to a first answered
classification. `zeroshot serve`'s own start-up line (Python, Ray, Serve, app, model load,
ready) is kept per run. The median of each, the ratio to the no-op app (target <= 1.3) as
JSON and a PNG in benchmarks/results/serve_startup.{json,png}.

    python -m benchmarks.serve_startup [--repeat 3]

On a GPU host, `--model <real model dir>`: `tiny` then includes the weights' load to the GPU
and the CUDA context, which a no-op app never pays; the ratio says what the model costs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    RESULTS,
    ROOT,
    cpu_model,
    require_extra,
    stop_group,
    write_results,
)
from benchmarks.serve_wrk import SHAPES, ensure_tiny, user_env

TARGET = 1.3
_PHASE = re.compile(r"(Python|Ray|Serve|app|ready|model load) ([\d.]+) s")


def one_start(system: str, model: str, port: int, timeout_s: float = 180) -> dict:
    if system == "noop":
        cmd = [sys.executable, "-m", "benchmarks.noop_serve", "--backend", "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "zeroshot", "serve", "--model", model, "--port", str(port)]
        cmd += ["--backend", "null" if system == "null" else "torch"]
    log_path = RESULTS / f"serve_startup.{system}.log"
    url = f"http://127.0.0.1:{port}"
    path, body, _ = SHAPES["1x4"]
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=user_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            healthy = answered = None
            while time.perf_counter() - t0 < timeout_s and answered is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"{system} exited with {proc.returncode}; see {log_path}")
                try:
                    if healthy is None:
                        if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                            healthy = time.perf_counter() - t0
                    elif httpx.post(url + path, json=body, timeout=10).status_code == 200:
                        answered = time.perf_counter() - t0
                except httpx.HTTPError:
                    pass
                if answered is None:
                    time.sleep(0.05)
            if answered is None:
                raise RuntimeError(f"{system} did not answer in {timeout_s:g} s; see {log_path}")
            # zeroshot serve prints its start-up line once it has seen /healthz 200 itself.
            for _ in range(100 if system != "noop" else 0):
                if "up in " in log_path.read_text():
                    break
                time.sleep(0.1)
        finally:
            stop_group(proc)
    line = next((x for x in log_path.read_text().splitlines() if x.startswith("up in ")), "")
    return {
        "healthy_s": healthy,
        "first_answer_s": answered,
        "phases_s": {name: float(v) for name, v in _PHASE.findall(line)},
    }


def summarize(runs: list[dict]) -> dict:
    phases = sorted({k for r in runs for k in r["phases_s"]})
    return {
        "healthy_s": statistics.median(r["healthy_s"] for r in runs),
        "first_answer_s": statistics.median(r["first_answer_s"] for r in runs),
        "phases_s": {
            k: statistics.median(r["phases_s"][k] for r in runs if k in r["phases_s"])
            for k in phases
        },
        "runs": runs,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result["systems"])
    healthy = [result["systems"][s]["healthy_s"] for s in systems]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(systems, healthy, color=["#999999", "#4c72b0", "#dd8452"][: len(systems)])
    for bar, s in zip(bars, systems):
        ax.annotate(
            f"{bar.get_height():.1f} s\n({result['ratios'][s]['healthy']:.2f}x)",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(healthy[0] * TARGET, color="red", linestyle="--", label=f"{TARGET}x the no-op app")
    ax.set_ylabel("seconds from spawn to /healthz 200 (median)")
    ax.margins(y=0.25)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"zeroshot serve start-up vs a no-op Serve app ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    require_extra()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default=None, help="model dir (default: the tiny fixture)")
    ap.add_argument("--systems", default="noop,null,tiny")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = args.model or ensure_tiny()
    systems = args.systems.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for _ in range(args.repeat):
        for system in systems:  # alternating, so a noisy minute hits every system alike
            runs[system].append(one_start(system, model, args.port))
    result = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "model": model,
        "repeat": args.repeat,
        "target_ratio": TARGET,
        "systems": {s: summarize(r) for s, r in runs.items()},
    }
    base = result["systems"][systems[0]]
    result["ratios"] = {
        s: {
            "healthy": v["healthy_s"] / base["healthy_s"],
            "first_answer": v["first_answer_s"] / base["first_answer_s"],
        }
        for s, v in result["systems"].items()
    }
    write_results("serve_startup", result)
    plot(result, RESULTS / "serve_startup.png")


if __name__ == "__main__":
    main()
