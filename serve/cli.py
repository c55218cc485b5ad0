"""`zeroshot serve`: run the Serve app on a local Ray (or a running cluster) until Ctrl-C.

Ray is imported only inside `main`, so `zeroshot --help` and `zeroshot classify` stay light.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from zeroshot.cli import add_model_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser, device_help="auto (the GPU Ray assigned, else CPU), cpu or cuda")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (e.g. auto or ray://host:10001) instead of a local one",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)"
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        help="GPUs per classifier replica (default: 1 if the cluster has a GPU, else 0)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="most classifier replicas (autoscaling)"
    )
    parser.add_argument("--max-batch-size", type=int, default=None, help="pairs per batch")
    parser.add_argument(
        "--batch-wait-timeout-s", type=float, default=None, help="batch fill wait (seconds)"
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        help="environment variable holding an API key to require (default: no key)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="forward-pass threads of a CPU classifier (default: all cores when no GPU)",
    )
    parser.add_argument("--name", default=None, help="Serve application name")


def _config(args: argparse.Namespace):
    from serve.config import AppConfig, ServeBatching

    batching = ServeBatching().model_dump()
    if args.max_batch_size is not None:
        batching["max_batch_size"] = args.max_batch_size
    if args.batch_wait_timeout_s is not None:
        batching["batch_wait_timeout_s"] = args.batch_wait_timeout_s
    return AppConfig(
        model=args.model,
        revision=args.revision,
        device=args.device,
        dtype=args.dtype,
        batching=batching,
        api_key_env=args.api_key_env,
        num_gpus=args.num_gpus,
        max_replicas=args.replicas,
        torch_threads=args.torch_threads,
    )


def main(args: argparse.Namespace) -> int:
    from serve.config import APP_NAME

    cfg = _config(args)
    name = args.name or APP_NAME
    if args.address is None:
        # Fail fast, before starting Ray, when the model cannot be found (offline, bad path).
        from zeroshot.loading import load_config

        load_config(cfg.model, cfg.revision)

    import ray
    from ray import serve

    from serve.app import build, cluster_gpus

    started_ray = False
    if args.address is None:
        ray.init(num_cpus=args.num_cpus)
        started_ray = True
        on_cpu = cfg.num_gpus == 0 or (cfg.num_gpus is None and cluster_gpus() == 0)
        if cfg.torch_threads is None and on_cpu:
            # Local and CPU-only: the forward pass is the bottleneck, so it gets every core
            # rather than Ray's one thread per requested CPU.
            cfg = cfg.model_copy(update={"torch_threads": args.num_cpus or os.cpu_count() or 1})
    else:
        ray.init(address=args.address)

    def stop(signum, frame):  # SIGTERM (docker stop, kill) ends like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build(cfg), name=name, route_prefix="/")
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{shown}:{args.port}"
        print(f"serving {cfg.model} at {url}/  (docs: {url}/docs)  - Ctrl-C to stop", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
    except RuntimeError as exc:
        print(f"error: the app did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            if started_ray:
                serve.shutdown()
            else:
                serve.delete(name)
        finally:
            ray.shutdown()
    return 0
