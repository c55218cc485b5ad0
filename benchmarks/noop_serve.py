"""The baseline of `benchmarks.serve_wrk`: a no-op Ray Serve app of the service's shape.

One FastAPI deployment answering a constant on the service's routes (POST / and
/v1/classify, GET /healthz), on Serve's high-throughput ingress: what Ray Serve itself costs
per request on this machine, with no work of ours. With `--backend`, the service's shape (an
ingress that asks a second deployment, as ours asks the classifier, on every route), started
the way `zeroshot serve` starts (quiet Ray, the same `ray.init`): the baseline of
`benchmarks.serve_startup`. Runs until SIGINT/SIGTERM.

    python -m benchmarks.noop_serve [--port 8000] [--backend]
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
    ap.add_argument("--backend", action="store_true", help="ingress + one deployment")
    args = ap.parse_args()
    fast_ingress.enable(local=True)  # before Ray starts: the same ingress zeroshot serve runs

    import ray
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    from zeroshot import raylog

    app = FastAPI()
    constant = [{"label": "technology", "score": 0.9}, {"label": "sports", "score": 0.1}]

    @serve.deployment
    class Backend:
        async def answer(self) -> list:
            return constant

    @serve.deployment(max_ongoing_requests=256)
    @serve.ingress(app)
    class Noop:
        def __init__(self, backend=None):
            self.backend = backend

        async def answer(self) -> list:
            return await self.backend.answer.remote() if self.backend else constant

        @app.post("/")
        async def hf(self):
            return JSONResponse(await self.answer())

        @app.post("/v1/classify")
        async def classify(self):
            return JSONResponse({"results": [await self.answer()]})

        @app.get("/healthz")
        async def healthz(self):
            await self.answer()
            return {"status": "ok"}

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ray.init(address="local", num_cpus=os.cpu_count(), **raylog.quiet())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        root = Noop.bind(Backend.bind()) if args.backend else Noop.bind()
        serve.run(root, name="noop", route_prefix="/")
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
