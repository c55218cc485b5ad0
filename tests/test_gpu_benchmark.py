"""benchmarks/gpu.py: the prepared GPU run, in its --quick mode on the CPU (same code, small
sizes), and the pieces it measures with (peaks, fixed-length texts, the HTTP client)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = [
    "pipeline_default_pairs_s",
    "pipeline_best_pairs_s",
    "bare_pairs_s",
    "bare_mfu",
    "engine_pairs_s",
    "offline_pairs_s",
    "serve_pairs_s",
]


def run_quick(out: Path, model: str, *extra: str, timeout: int = 600) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--out", str(out), "--quick", "--model", model]
    proc = subprocess.run(
        [*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu.json").read_text())


def check_engine_parts(data: dict, out: Path) -> None:
    assert data["device"] == "cpu" and data["mode"] == "quick"
    assert set(HEADLINE) <= set(data)
    for key in ("pipeline_default_pairs_s", "pipeline_best_pairs_s", "bare_pairs_s"):
        assert data[key] > 0, key
    assert data["engine_pairs_s"] > 0
    assert data["pipeline_best_pairs_s"] >= data["pipeline_default_pairs_s"]
    # No tensor-core peak on a CPU: MFU is null, with the reason.
    assert data["bare_mfu"] is None and data["peak_flops"] is None and data["peak_source"]
    assert data["gpu_util"] is None and "nvidia-smi" in data["gpu_util_note"]
    for name, phase in data["phases"].items():
        assert phase["status"] == "ok", (name, phase)
    runs = data["runs"]
    failed = {k: v["error"] for k, v in runs.items() if "error" in v}
    assert not failed
    assert runs["bare"]["forward"] == "fast" and runs["bare_transformers"]["forward"] == (
        "transformers"
    )
    assert runs["bare"]["tokens"] <= runs["bare"]["padded_tokens"]
    # Every pair of the fixed set has exactly the asked length.
    assert data["workload"]["fixed"]["tokens_min_max"] == [32, 32]
    # The fast forward is exact in float32 against transformers', through the engine too.
    assert data["exactness"]["float32_max_abs_logit_diff"] <= 1e-5
    assert data["exactness"]["float32_argmax_agreement"] == 1.0
    ag = data["agreement"]
    assert ag["fast_fp32_vs_transformers_fp32"]["max_abs_score_diff"] <= 1e-5
    assert 0.0 <= ag["fast_bfloat16_vs_fp32"]["top_label_agreement"] <= 1.0
    assert ag["transformers_bfloat16_vs_fp32"]["texts"] == ag["fast_bfloat16_vs_fp32"]["texts"]
    r = data["ratios"]
    assert r["engine_over_bare"] == pytest.approx(data["engine_pairs_s"] / data["bare_pairs_s"])
    assert r["fast_over_transformers_bare"] > 0
    # A trace per path, gzip'd Chrome JSON; the top ops recorded in gpu.json.
    for name in ("bare", "engine", "pipeline"):
        trace = json.loads(gzip.decompress((out / f"trace_{name}.json.gz").read_bytes()))
        assert trace["traceEvents"]
        assert data["profiles"][name]["top"]
    assert (out / "gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_without_ray(tmp_path, tiny_model):
    data = run_quick(tmp_path, tiny_model, "--skip-ray")
    check_engine_parts(data, tmp_path)
    assert data["offline_pairs_s"] is None and data["serve_pairs_s"] is None
    assert data["skipped"]["offline_pairs_s"] == data["skipped"]["serve_pairs_s"] == "--skip-ray"
    assert data["targets"]["offline_over_bare >= 0.85"] is None


@pytest.mark.ray
@pytest.mark.slow
def test_quick_run_with_ray(tmp_path, tiny_model):
    """The Ray Data job (null and torch backends) and the Serve app under the load generator,
    for real: every row comes back, every request is answered 200 with the right results."""
    data = run_quick(tmp_path, tiny_model)
    check_engine_parts(data, tmp_path)
    offline = data["runs"]["offline"]
    for backend in ("null", "torch"):
        job = offline[backend]
        assert job["summary"]["ok"] and job["rows_out"] == 300 and not job["timed_out"]
        assert job["pairs_per_s"] == pytest.approx(job["rows_per_s"] * 5)
    assert data["offline_pairs_s"] == offline["torch"]["pairs_per_s"] > 0
    serve = data["runs"]["serve"]["torch"]
    assert [(x["texts_per_request"], x["labels_per_request"]) for x in serve["loads"]] == [
        (1, 4),
        (16, 8),
    ]
    for load in serve["loads"]:
        assert set(load["status"]) == {"200"} and load["bad_answers"] == 0
        assert load["pairs_per_s"] == pytest.approx(
            load["requests_per_s"] * load["texts_per_request"] * load["labels_per_request"]
        )
        assert load["client_cpu_busy_max"] < 0.9
    assert data["serve_pairs_s"] == max(serve["1x4_pairs_s"], serve["16x8_pairs_s"]) > 0
    assert data["serve_1x4_pairs_s"] == serve["1x4_pairs_s"]


def test_device_peaks():
    assert gpu.device_peak("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gpu.device_peak("NVIDIA H200")[0] == 989e12
    assert gpu.device_peak("NVIDIA H100 PCIe")[0] == 756e12
    assert gpu.device_peak("NVIDIA A100-SXM4-80GB")[0] == 312e12
    peak, why = gpu.device_peak("Some Future GPU")
    assert peak is None and "MFU is null" in why


def test_flop_count_per_pair():
    from zeroshot.pairs import Pairs

    pairs = Pairs.from_list([np.zeros(60, np.int32), np.zeros(128, np.int32)])
    # The figures: about 20 GFLOP for a 60-token pair, 44 for a 128-token pair.
    assert gpu.flops(pairs.take(np.array([0]))) == pytest.approx(20.3e9, rel=0.01)
    assert gpu.flops(pairs.take(np.array([1]))) == pytest.approx(43.4e9, rel=0.01)


@pytest.mark.parametrize("length", [16, 40, 128])
def test_fixed_length_texts(tiny_model, length):
    from zeroshot.frontend import Frontend

    frontend = Frontend.from_pretrained(tiny_model)
    texts = gpu.fixed_length_texts(frontend, 12, length, gpu.LABELS)
    assert len(set(texts)) == 12
    pairs = gpu.encode_pairs(frontend, texts, gpu.LABELS)
    assert set(pairs.lengths.tolist()) == {length}


def test_http_client_reads_plain_and_chunked_answers():
    """The load generator's HTTP/1.1 reader against a real socket: content-length and chunked
    bodies on one keep-alive connection, then Connection: close."""
    body = json.dumps({"results": [1, 2]}).encode()
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
        + body[:5]
        + b"\r\n%x\r\n" % (len(body) - 5)
        + body[5:]
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ]

    async def scenario():
        async def handle(reader, writer):
            for answer in answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = []
        for _ in answers:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got.append(await gpu._read_response(reader))
        writer.close()
        server.close()
        return got

    got = asyncio.run(scenario())
    assert got == [(200, body, False), (200, body, False), (503, b"", True)]


def test_gpu_sampler_reads_nvidia_smi_lines(tmp_path, monkeypatch):
    """The sampler's parsing and windows, against a stand-in `nvidia-smi` on PATH that prints
    the query's CSV format (no GPU here); its own timestamps place the samples."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "while true; do\n"
        '  echo "$(date +"%Y/%m/%d %H:%M:%S.%3N"), 57, 12, 1024, [N/A], 1980"\n'
        "  sleep 0.05\n"
        "done\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    import time

    sampler = gpu.GpuSampler()
    assert sampler.available
    t0 = time.time()
    sampler.start()
    time.sleep(1.0)
    sampler.stop()
    t1 = time.time()
    w = sampler.window(t0 - 0.5, t1 + 0.5)
    assert w["samples"] >= 5
    assert w["util_mean"] == w["util_max"] == 57.0 and w["memory_used_mib_max"] == 1024.0
    assert w["power_w_mean"] is None  # [N/A] throughout is unknown, not zero
    assert sampler.window(t1 + 60, t1 + 120) == {"samples": 0}
