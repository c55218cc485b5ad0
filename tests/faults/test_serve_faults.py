"""Faults of the Serve app with real processes and real signals: `zeroshot serve` stopped under
load, its classifier replica and its ingress replica SIGKILLed under load. Every request sent
gets a 200 with a right answer or a JSON 503 with Retry-After; never a 500, a plain-text error,
a cut connection for a request already accepted, or a hang.

The app runs as users start it (`python -m zeroshot serve`, its own local Ray, the fast
ingress) on the null backend slowed to a device's pace (--null-pairs-per-s), so requests are
in flight when the fault lands.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from procs import children_named, listeners

from benchmarks.common import stop_group

# The repo root, for cluster/ (pytest puts only tests/ dirs on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# The long suite (`python3 -m pytest -m slow`).
pytestmark = [pytest.mark.ray, pytest.mark.slow]

LABELS = ["sports", "politics", "business", "health"]
ONE = {"inputs": "The match went to extra time.", "parameters": {"candidate_labels": LABELS}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model: str, *extra: str):
    port = _free_port()
    cmd = [sys.executable, "-m", "zeroshot", "serve", "--model", model, "--backend", "null"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"zeroshot serve exited: {proc.stdout.read()[-3000:]}"
            assert time.time() < deadline, "the app did not get ready within 120 s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        yield proc, url
    finally:
        stop_group(proc, signal.SIGTERM)


def _check_answer(r: httpx.Response) -> str:
    """'ok' for a right 200, 'retry' for a JSON 503 with Retry-After; fails on anything else."""
    if r.status_code == 200:
        body = r.json()
        assert sorted(x["label"] for x in body) == sorted(LABELS), body
        assert abs(sum(x["score"] for x in body) - 1) < 1e-3, body
        return "ok"
    assert r.status_code == 503, (r.status_code, r.headers, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    assert r.json()["error"]["type"] in {"shutting_down", "model_unavailable", "overloaded"}
    assert int(r.headers["retry-after"]) >= 0
    return "retry"


def _readiness_probe(url: str) -> subprocess.CompletedProcess:
    """The RayService serving pods' readiness probe command (cluster/render.py), run here
    against this app's port: the raylet's health from the local Ray's dashboard agent, then
    the app's /healthz through HAProxy."""
    from cluster.render import serving_readiness_probe

    probe = serving_readiness_probe(int(url.rsplit(":", 1)[1]))
    return subprocess.run(
        probe["exec"]["command"], capture_output=True, text=True, timeout=probe["timeoutSeconds"]
    )


def _refused(exc: Exception) -> bool:
    """A connection refused: the request was never accepted (a stopped app's closed port)."""
    return isinstance(exc, httpx.ConnectError)


def _load(url: str, clients: int, stop: threading.Event, out: list) -> list[threading.Thread]:
    def client():
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    out.append(http.post(f"{url}/", json=ONE))
                except httpx.HTTPError as exc:  # a cut connection: recorded, asserted on
                    out.append(exc)
                    time.sleep(0.05)  # a refused connection fails at once

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones_with_json(tiny_model):
    # 16 x 8 = 128 pairs at 200 pairs/s: each request takes ~0.6 s of "device" time.
    big = {
        "sequences": [f"Report number {i} on the league." for i in range(16)],
        "candidate_labels": LABELS * 2,
    }
    big["candidate_labels"] = [f"{label} {i}" for i, label in enumerate(big["candidate_labels"])]
    with serving(tiny_model, "--null-pairs-per-s", "200") as (proc, url):
        results: list = []
        # Beside them, a steady load that goes on through the stop: what it sends after the
        # signal gets a JSON 503 or a refused connection, and nothing it sent is cut.
        stop, steady = threading.Event(), []
        steady_threads = _load(url, 4, stop, steady)

        def send():
            try:
                results.append(httpx.post(f"{url}/v1/classify", json=big, timeout=60))
            except httpx.HTTPError as exc:
                results.append(exc)

        senders = [threading.Thread(target=send) for _ in range(4)]
        for t in senders:
            t.start()
        ready_before = _readiness_probe(url)
        time.sleep(0.5)  # all four accepted, the first ones scoring
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        late = []
        with contextlib.suppress(httpx.HTTPError):  # refused, or already closed: both fine
            late.append(httpx.post(f"{url}/", json=ONE, timeout=10))
        ready_while_stopping = _readiness_probe(url)
        for t in senders:
            t.join(60)
        assert proc.wait(90) == 0
        stop.set()
        for t in steady_threads:
            t.join(60)
        out = proc.stdout.read()
    assert len(results) == 4
    cut = [e for e in steady if isinstance(e, httpx.HTTPError) and not _refused(e)]
    assert not cut, f"{len(cut)} of {len(steady)} steady requests cut: {cut[:3]}"
    kinds = [_check_answer(r) for r in steady if isinstance(r, httpx.Response)]
    assert "retry" in kinds, kinds[-20:]
    for r in results:
        assert isinstance(r, httpx.Response), f"an accepted request was cut: {r!r}\n{out[-2000:]}"
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 16
    for r in late:
        assert _check_answer(r) == "retry"
    # The RayService's serving pods leave the Service while the app stops.
    assert ready_before.returncode == 0, ready_before.stdout
    assert ready_while_stopping.returncode != 0, ready_while_stopping.stdout
    assert "stopping: finishing requests in flight" in out


def test_a_killed_classifier_replica_costs_at_most_a_json_503(tiny_model):
    with serving(tiny_model, "--null-pairs-per-s", "2000") as (proc, url):
        stop, out = threading.Event(), []
        threads = _load(url, 4, stop, out)
        time.sleep(2)
        victims = children_named(proc.pid, "ZeroShotClassifier")
        assert victims, "no classifier replica process found"
        for p in victims:
            p.kill()
        killed_at = time.time()
        health = []
        while time.time() - killed_at < 60:
            r = httpx.get(f"{url}/healthz", timeout=10)
            health.append(r.status_code)
            if r.status_code == 200 and time.time() - killed_at > 3:
                break
            time.sleep(0.25)
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(60)
    answers = [r for r in out if isinstance(r, httpx.Response)]
    cut = [r for r in out if not isinstance(r, httpx.Response)]
    assert not cut, cut[:3]
    kinds = [_check_answer(r) for r in answers]
    assert kinds.count("ok") > 10 and kinds[-1] == "ok", kinds[-20:]
    assert health[-1] == 200, health  # it recovered by itself


def test_a_killed_ingress_replica_costs_no_request_sent_in_one_write(tiny_model):
    """HAProxy replays a request whose ingress replica died before answering, on a live replica
    or the fallback proxy that waits for a new one (serve/fast_ingress.py). It can only replay
    a request it held whole, so these clients send each in one write, as aiohttp, curl and
    wrk do (httpx writes headers and body apart; benchmarks/faults_serve.py shows both)."""
    import asyncio

    import aiohttp  # a dependency of ray[serve]

    async def load(url: str, stop: asyncio.Event, out: list) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            while not stop.is_set():
                try:
                    async with http.post(f"{url}/", json=ONE) as r:
                        out.append((r.status, r.headers.get("content-type", ""), await r.read()))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    out.append(exc)
                    await asyncio.sleep(0.05)

    async def run(proc, url: str) -> tuple[list, float]:
        stop, out = asyncio.Event(), []
        clients = [asyncio.create_task(load(url, stop, out)) for _ in range(4)]
        await asyncio.sleep(2)
        victims = children_named(proc.pid, "ZeroShotIngress")
        assert victims, "no ingress replica process found"
        victims[0].kill()
        killed_at = time.time()
        sent_before = len(out)
        # Until a replacement answers (~10 s with one ingress replica), then 2 s more.
        while time.time() - killed_at < 60:
            await asyncio.sleep(0.25)
            answered = [a for a in out[sent_before:] if not isinstance(a, Exception)]
            if any(a[0] == 200 for a in answered) and time.time() - killed_at > 3:
                break
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*clients)
        return out, time.time() - killed_at

    with serving(tiny_model, "--null-pairs-per-s", "2000") as (proc, url):
        out, _ = asyncio.run(run(proc, url))
    failed = [a for a in out if isinstance(a, Exception)]
    assert not failed, f"{len(failed)} of {len(out)} requests failed: {failed[:3]}"
    for status, content_type, body in out:
        if status == 200:
            answer = json.loads(body)
            assert sorted(x["label"] for x in answer) == sorted(LABELS), answer
        else:
            assert status == 503 and content_type.startswith("application/json"), (status, body)
    assert sum(status == 200 for status, _, _ in out) > 10


def test_a_stop_ends_when_the_classifier_cannot_come_back(tiny_model, tmp_path):
    """The classifier dies and its replacement cannot load the model (here: the model is
    gone), so the app never gets back to RUNNING. A stop still drains, cleans up and exits
    within its timeout (it used to wait for the app to be RUNNING, until SIGKILL)."""
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "model")
    with serving(str(model), "--null-pairs-per-s", "2000") as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        shutil.rmtree(model)
        victims = children_named(proc.pid, "ZeroShotClassifier")
        assert victims, "no classifier replica process found"
        for p in victims:
            p.kill()
        deadline = time.time() + 60
        while httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
            assert time.time() < deadline, "/healthz stayed 200 with no classifier"
            time.sleep(0.5)
        # Waits for a classifier replica until its deadline (30 s), then a JSON 503.
        r = httpx.post(f"{url}/", json=ONE, timeout=60)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 0, r.text
        assert r.json()["error"]["type"] == "deadline_exceeded", r.text
        proc.send_signal(signal.SIGTERM)
        started = time.time()
        # graceful_shutdown_timeout_s (20 s) of draining at most, then HAProxy and Ray.
        assert proc.wait(60) == 0
        took = time.time() - started
        out = proc.stdout.read()
    assert took < 45, f"the stop took {took:.0f} s\n{out[-2000:]}"
    # Nothing left listening on the port (the connections HAProxy closed sit in TIME_WAIT, which
    # a bare bind() trips over and a restarted server does not).
    assert not listeners(port), listeners(port)
