"""The image (cluster/Dockerfile) built and started with podman, beside `zeroshot serve` on the
host: what the container costs a node.

In one run, on the stand-in base (cluster/image/standin.py; the official one cannot be pulled
here) with torch's CPU build:
- build: the image from a cold cache (the base only), then again after a one-line change in
  the project's code (the layer cache keeps torch and transformers: only the project layer is
  rebuilt), the seconds of each;
- size: the image's, the base's, and what the Dockerfile adds on top of it;
- start-up: the image's own CMD (`zeroshot serve --host 0.0.0.0 --port 8000`, its port
  published) from `podman run` to `/healthz` 200, against the same command, `zeroshot serve`,
  started on the host from this virtualenv (the baseline), with the same weight cache (the
  tiny fixture written as the default model's hub snapshot, HF_HUB_OFFLINE=1), alternating,
  `--repeat` times each (the 1-minute load average before each start is recorded: other
  work on the machine shows there); then the first classification's latency on each.
Ratios to the baseline as JSON, and a PNG, in benchmarks/results/image.{json,png}. Every image
and container it makes is removed (a stand-in base found in the store is kept).

    python -m benchmarks.image [--repeat 5]          # as root, podman installed

On a GPU host, build with `--torch 2.13.0` (the CUDA wheel, several GB more: the size and the
cold build grow, the warm rebuild does not) on the official base (`--base
rayproject/ray:2.60.0-py311-gpu`), and run the container with `--gpus all` (Docker) or
`--device nvidia.com/gpu=all` (podman with the CDI spec): the start-up then includes CUDA's
initialisation, as the host's does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, cpu_model, stop_group, write_results
from cluster.image import build, podman, run, standin, weights

TEXTS = ["The invoice charged me twice for the same month."]
LABELS = ["billing", "sports", "account access", "feedback"]
EXACT = {"ZEROSHOT_CPU_BF16": "0"}  # both sides in float32


def first_classify_ms(url: str) -> float:
    import httpx

    body = {"sequences": TEXTS, "candidate_labels": LABELS}
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/classify", json=body, timeout=120)
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def start_container(tag: str, hf_home: str) -> dict:
    name = f"zeroshot-bench-{uuid.uuid4().hex[:8]}"
    port = run.free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    try:
        podman.run("run", "--detach", "--name", name, *run.serving_args(hf_home, port, EXACT), tag)
        run.wait_healthy(url, 300, [name])
        healthy = time.monotonic() - t0
        first = first_classify_ms(url)
    finally:
        podman.remove_container(name)
    return {"healthy_s": healthy, "first_classify_ms": first}


def _wait_ports_free(timeout_s: float = 120) -> None:
    """The host's serve binds HAProxy's 8404/9101: wait for another run's to let go."""
    from serve.fast_ingress import HAPROXY_PORTS, port_in_use

    deadline = time.monotonic() + timeout_s
    while any(port_in_use("127.0.0.1", p) for p in HAPROXY_PORTS):
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports {HAPROXY_PORTS} stay in use: stop what serves there")
        time.sleep(1)


def start_host(hf_home: str, log_path: Path) -> dict:
    """`zeroshot serve` on the host, the image's CMD with the same weight cache and settings."""
    _wait_ports_free()
    port = run.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    env.update(EXACT, HF_HOME=hf_home, HF_HUB_OFFLINE="1")
    zeroshot = shutil.which("zeroshot") or str(Path(sys.executable).parent / "zeroshot")
    with log_path.open("w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [zeroshot, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tempfile.gettempdir(),  # not the checkout: the installed package, as the image
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while run.healthz(url, timeout_s=2) != 200:
                if proc.poll() is not None:
                    raise RuntimeError(f"zeroshot serve exited {proc.returncode}; see {log_path}")
                if time.monotonic() - t0 > 300:
                    raise TimeoutError(f"zeroshot serve not healthy in 300 s; see {log_path}")
                time.sleep(0.1)
            healthy = time.monotonic() - t0
            first = first_classify_ms(url)
        finally:
            stop_group(proc, signal.SIGTERM)
    return {"healthy_s": healthy, "first_classify_ms": first}


def changed_context(dest: Path) -> Path:
    """A copy of the build context (what the ignore file lets in) with one line added to the
    project's code: a code change as a developer makes it."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for package in ("zeroshot", "serve", "pipelines"):
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    with (dest / "zeroshot" / "__init__.py").open("a") as f:
        f.write(f"\n# benchmarks/image.py: a code change ({uuid.uuid4().hex[:8]})\n")
    return dest


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 4))
    builds = data["build"]
    names = ["stand-in base"] if builds.get("base_s") else []
    values = [builds["base_s"]] if builds.get("base_s") else []
    names += ["image, cold", "image, code change"]
    values += [builds["cold_s"], builds["code_change_s"]]
    a.bar(names, values, color=["#999", "#4477aa", "#66ccee"][-len(values) :])
    a.set_ylabel("seconds")
    a.set_title("podman build (2.13.0+cpu torch)")
    for i, v in enumerate(values):
        a.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    sizes = data["size"]
    b.bar(["base", "image"], [sizes["base_gb"], sizes["image_gb"]], color=["#999", "#4477aa"])
    b.set_ylabel("GB")
    b.set_title(f"size (+{sizes['added_gb']:.2f} GB by the Dockerfile)")
    starts = data["start"]
    host = [r["healthy_s"] for r in starts["host"]]
    cont = [r["healthy_s"] for r in starts["container"]]
    c.boxplot([host, cont], tick_labels=["host: zeroshot serve", "container: image CMD"])
    for x, values in ((1, host), (2, cont)):
        c.scatter([x] * len(values), values, color="#222", s=12, zorder=3)
    c.set_ylabel("seconds to /healthz 200")
    ratios = data["ratios"]
    c.set_title(
        f"start-up, container / host: median {ratios['start_container_over_host']:.2f}, "
        f"best {ratios['start_container_over_host_best']:.2f}",
        fontsize=9,
    )
    fig.suptitle(f"cluster/Dockerfile with podman on {data['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="start-ups of each (default 5)")
    parser.add_argument("--base", default=None, help="base image (default: the stand-in)")
    parser.add_argument("--torch", default=build.CPU_TORCH, help="TORCH_VERSION")
    parser.add_argument(
        "--rebuild-base",
        action="store_true",
        help="remove the stand-in base and build it again, timed (it is kept afterwards)",
    )
    args = parser.parse_args(argv)
    why = podman.problem()
    if why:
        sys.exit(f"error: {why}")
    from zeroshot.config import DEFAULT_MODEL
    from zeroshot.fixtures import make_test_model

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"localhost/zeroshot-bench:{uuid.uuid4().hex[:10]}"
    before = podman.image_ids()
    base, keep_base = None, False
    with tempfile.TemporaryDirectory(prefix="zeroshot-image-bench-") as tmp:
        tmp = Path(tmp)
        log = (tmp / "build.log").open("w")
        try:
            keep_base = args.rebuild_base  # asked for: kept; built because missing: removed
            if args.base:
                base = standin.Base(args.base, built=False, seconds=0.0)
            else:
                if args.rebuild_base and podman.image_exists(standin.tag()):
                    standin.remove()
                base = standin.ensure(log=log)
                print(f"stand-in base: {base.seconds:.0f} s", file=sys.stderr)
            print(f"base {base.tag} ({'built' if base.built else 'found'})", file=sys.stderr)
            cold = build.build(tag, base.tag, args.torch, log=log)
            print(f"cold build {cold.seconds:.0f} s", file=sys.stderr)
            warm = build.build(
                tag, base.tag, args.torch, context=changed_context(tmp / "ctx"), log=log
            )
            print(f"rebuild after a code change {warm.seconds:.0f} s", file=sys.stderr)
            image_size = podman.inspect_image(tag)["Size"]
            base_size = podman.inspect_image(base.tag)["Size"]

            model = make_test_model(tmp / "model", "tiny")
            hf_home = str(weights.hub_cache(model, tmp / "hf", DEFAULT_MODEL))
            starts: dict[str, list[dict]] = {"host": [], "container": []}
            for i in range(args.repeat):
                for side in ("host", "container") if i % 2 == 0 else ("container", "host"):
                    load = os.getloadavg()[0]
                    if side == "host":
                        row = start_host(hf_home, tmp / f"host-{i}.log")
                    else:
                        row = start_container(tag, hf_home)
                    row["load_before"] = round(load, 2)
                    starts[side].append(row)
                    print(f"{side}: healthy in {row['healthy_s']:.1f} s", file=sys.stderr)
        except BaseException:
            log.close()
            print((tmp / "build.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            log.close()
            podman.remove_image(tag)
            if base is not None and base.built and not keep_base:
                podman.remove_image(base.tag)
            podman.remove_new_untagged(before)

    host_s, cont_s = median(starts["host"], "healthy_s"), median(starts["container"], "healthy_s")
    host_min = min(r["healthy_s"] for r in starts["host"])
    cont_min = min(r["healthy_s"] for r in starts["container"])
    data = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "base": base.tag,
        "torch": args.torch,
        "repeat": args.repeat,
        "build": {
            "base_s": round(base.seconds, 1) if base.built else None,
            "cold_s": round(cold.seconds, 1),
            "code_change_s": round(warm.seconds, 1),
        },
        "size": {
            "image_gb": round(image_size / 1e9, 3),
            "base_gb": round(base_size / 1e9, 3),
            "added_gb": round((image_size - base_size) / 1e9, 3),
        },
        "start": {
            "host": starts["host"],
            "container": starts["container"],
            "host_median_s": round(host_s, 2),
            "container_median_s": round(cont_s, 2),
            "host_min_s": round(host_min, 2),
            "container_min_s": round(cont_min, 2),
        },
        "ratios": {
            # the medians, and the best of each (the start least disturbed by other load)
            "start_container_over_host": round(cont_s / host_s, 3),
            "start_container_over_host_best": round(cont_min / host_min, 3),
            "first_classify_container_over_host": round(
                median(starts["container"], "first_classify_ms")
                / median(starts["host"], "first_classify_ms"),
                3,
            ),
            "code_change_over_cold_build": round(warm.seconds / cold.seconds, 3),
        },
    }
    write_results("image", data)
    plot(data, RESULTS / "image.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
