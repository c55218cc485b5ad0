"""The start-up of `zeroshot serve`, timed by phase and printed as one line:

    up in 13.1 s: Python 1.3 s, Ray 4.4 s, Serve 2.1 s, app 4.9 s (model load 0.6 s), ready 0.4 s

Python: from the process's start to here (the interpreter, imports, the model's config read);
Ray: `ray.init`; Serve: its controller and proxies; app: the deployments placed and started
until Serve calls the app RUNNING (the classifier's model load is the part the replica itself
measured); ready: until the HTTP port answers /healthz 200, which is when a client can use it.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request

# How long the first /healthz through the port may take after Serve calls the app RUNNING
# (the proxy learns the route by a long poll); past it the line says "not yet".
READY_WAIT_S = 30.0


def process_age_s() -> float:
    """Seconds since this process started (0.0 where /proc cannot say)."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22, after the command name in parentheses (which may hold spaces).
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class StartupClock:
    """Phases timed from the process's start; `lap(phase)` ends one."""

    def __init__(self, first_phase: str = "Python") -> None:
        now = time.perf_counter()
        self.t0 = now - process_age_s()
        self._last = now
        self.laps: list[tuple[str, float]] = [(first_phase, now - self.t0)]

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.laps.append((phase, now - self._last))
        self._last = now
        return now - self.t0

    def wait_healthy(self, url: str, timeout_s: float = READY_WAIT_S) -> bool:
        """Poll `url`/healthz until it answers 200; records the "ready" phase either way."""
        deadline = time.monotonic() + timeout_s
        healthy = False
        while not healthy and time.monotonic() < deadline:
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{url}/healthz", timeout=2) as response,
            ):
                healthy = response.status == 200
            if not healthy:
                time.sleep(0.05)
        self.lap("ready" if healthy else "not ready yet")
        return healthy

    @staticmethod
    def model_load_s(app_name: str) -> float | None:
        """What a classifier replica measured for its model load (None if it cannot say)."""
        from ray import serve

        from serve.config import CLASSIFIER_NAME

        try:
            handle = serve.get_deployment_handle(CLASSIFIER_NAME, app_name)
            # The driver has no event loop for throughput-optimized Serve's router.
            with contextlib.suppress(RuntimeError):
                handle._init(_run_router_in_separate_loop=True)
            return handle.info.remote().result(timeout_s=5).get("load_seconds")
        except Exception:  # noqa: BLE001 - the line just leaves the figure out
            return None

    def line(self, load_s: float | None = None) -> str:
        parts = []
        for phase, seconds in self.laps:
            part = f"{phase} {seconds:.1f} s"
            if phase == "app" and load_s is not None:
                part += f" (model load {load_s:.1f} s)"
            parts.append(part)
        return f"up in {self._last - self.t0:.1f} s: " + ", ".join(parts)


def why_not_running(app_name: str) -> str:
    """What Serve says of the app's unhealthy deployments (each replica's error, last line
    first), for the one line `zeroshot serve` prints when the app did not start."""
    try:
        from ray import serve

        app = serve.status().applications.get(app_name)
        reasons = []
        for name, deployment in (app.deployments if app else {}).items():
            if deployment.status != "HEALTHY" and deployment.message:
                lines = [ln.strip() for ln in deployment.message.splitlines() if ln.strip()]
                # The exception's own line, not Serve's "failed to start N times" preamble.
                cause = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])
                reasons.append(f"{name}: {cause[:400]}")
        return "; ".join(reasons)
    except Exception:  # noqa: BLE001 - the line just says less
        return ""
