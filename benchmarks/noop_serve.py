"""The baseline of `benchmarks.serve_wrk`: a no-op Ray Serve app of the service's shape.

One FastAPI deployment answering a constant on the service's routes (POST / and
/v1/classify, GET /healthz), on Serve's high-throughput ingress: what Ray Serve itself costs
per request on this machine, with no work of ours. Runs until SIGINT/SIGTERM.

    python -m benchmarks.noop_serve [--port 8000]
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from serve import fast_ingress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    fast_ingress.enable(local=True)  # before Ray starts: the same ingress zeroshot serve runs

    import ray
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    app = FastAPI()
    answer = [{"label": "technology", "score": 0.9}, {"label": "sports", "score": 0.1}]

    @serve.deployment(max_ongoing_requests=256)
    @serve.ingress(app)
    class Noop:
        @app.post("/")
        async def hf(self):
            return JSONResponse(answer)

        @app.post("/v1/classify")
        async def classify(self):
            return JSONResponse({"results": [answer]})

        @app.get("/healthz")
        async def healthz(self):
            return {"status": "ok"}

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ray.init(num_cpus=os.cpu_count())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(Noop.bind(), name="noop", route_prefix="/")
        print("ready", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
