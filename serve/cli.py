"""`zeroshot serve`: run the Serve app on a local Ray (or a running cluster) until Ctrl-C.

Ray is imported only inside `main`, so `zeroshot --help` and `zeroshot classify` stay light.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import uuid

from zeroshot.flags import MODEL_FLAGS, Flag, add_flags, values

# How long a stop waits for HAProxy to finish what it holds once drained (its answers are
# ready-made 503s then, so well under a second; bounded so a wedged one cannot hold the stop).
HAPROXY_STOP_S = 5.0

# Options that set a field of `serve.config.AppConfig` (default and help come from the field).
APP_FLAGS = (
    *MODEL_FLAGS,
    Flag("classifier.num_gpus"),
    Flag("classifier.max_replicas", name="replicas"),
    Flag("ingress.max_replicas", name="ingress-replicas"),
    Flag("ingress.min_replicas", name="ingress-min-replicas"),
    Flag("ingress.max_calls_in_flight"),
    Flag("ingress.hedge_after_s"),
    Flag("classifier.torch_threads"),
    Flag("batching.max_batch_size"),
    Flag("batching.batch_wait_timeout_s"),
    Flag("api_key_env"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from serve.config import AppConfig

    add_flags(parser, AppConfig, [f for f in APP_FLAGS if f.path != "model"])
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="[ID=]MODEL",
        help="Hugging Face hub id or local directory to serve; repeat to serve several in one "
        "app (requests pick one by id, the first is the default); ID= names one (default: "
        f"MODEL as given; --revision applies to each) (default: {AppConfig().model})",
    )
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
    parser.add_argument("--name", default=None, help="Serve application name")
    parser.add_argument(
        "--no-fast-ingress",
        dest="fast_ingress",
        action="store_false",
        help="use Serve's default Python proxy instead of its HAProxy high-throughput ingress "
        "(on by default for the local Ray this starts; a joined cluster decides for itself)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's and Serve's informational log lines too (off: our lines and warnings)",
    )


def config_from_args(args: argparse.Namespace):
    """The `AppConfig` the parsed options ask for."""
    from serve.config import AppConfig

    fields = values(args)
    given = [_served(word) for word in getattr(args, "models", None) or []]
    if len(given) == 1 and "id" not in given[0]:
        fields["model"] = given[0]["model"]  # one model: the plain form, as in the YAML
    elif given:
        revision = fields.pop("revision", None)
        fields["models"] = [{**m, "revision": revision} for m in given]
    return AppConfig.model_validate(fields)


def _served(word: str) -> dict:
    """`[ID=]MODEL` as a served model's fields (a hub id or path holds no '=' before a '/')."""
    name, eq, source = word.partition("=")
    if eq and name and "/" not in name:
        return {"id": name, "model": source}
    return {"model": word}


def drain(build, cfg, name: str, version: str, timeout_s: float) -> None:
    """A graceful stop's first step: every ingress replica refuses new requests (JSON 503 +
    Retry-After, /healthz 503) while the accepted ones finish, through the proxy, to their
    clients. Returns when no replica holds a request (seen three times in a row: each check
    reaches one replica) or after `timeout_s`, whatever state the app is in."""
    from ray import serve

    from serve.config import INGRESS_NAME, IngressState

    draining = {"user_config": IngressState(draining=True).model_dump()}
    # Only the ingress's user_config changes: Serve reconfigures the live replicas in place.
    # Not waiting for the app to be RUNNING: one that cannot get there (a replica that
    # cannot be placed or keeps failing) must still stop.
    app = build(cfg, overrides={INGRESS_NAME: draining}, version=version)
    serve.run_many(
        [serve.RunTarget(app, name=name, route_prefix="/")],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    handle = serve.get_deployment_handle(INGRESS_NAME, name)
    # Throughput-optimized Serve runs a handle's router on the caller's event loop; this
    # caller has none (and serve.shutdown later closes the handle), so the router gets its own.
    with contextlib.suppress(RuntimeError):  # initialized already: it works as it is
        handle._init(_run_router_in_separate_loop=True)
    deadline = time.monotonic() + timeout_s
    idle = 0
    while idle < 3 and time.monotonic() < deadline:
        # None: this replica has not been reconfigured yet.
        pending = handle.pending.remote().result(timeout_s=max(0.1, deadline - time.monotonic()))
        idle = idle + 1 if pending == 0 else 0
        time.sleep(0.1)


def main(args: argparse.Namespace) -> int:
    from serve import fast_ingress
    from serve.config import APP_NAME

    cfg = config_from_args(args)
    name = args.name or APP_NAME
    if args.address is None:
        # Fail fast, before starting Ray, when the model cannot be found (offline, bad path).
        from zeroshot.loading import check_model

        for served in cfg.served:
            check_model(served.model, served.revision)

    fast = False
    if args.address is None:
        if fast_ingress.port_in_use(args.host, args.port):
            print(
                f"error: port {args.port} on {args.host} is in use (another zeroshot serve?); "
                "stop it or pick another with --port",
                file=sys.stderr,
            )
            return 1
        # Decided before anything imports ray.serve: Serve reads these variables once, at
        # import, in this process (the driver) as in every Ray process it starts.
        fast = args.fast_ingress and fast_ingress.requested()
        why = fast_ingress.problem() if fast else None
        if why:
            print(f"fast ingress off: {why}; using Serve's default proxy", file=sys.stderr)
            fast = False
        if fast:
            fast_ingress.enable(local=True)
        else:
            fast_ingress.disable()

    from serve.startup import StartupClock

    clock = StartupClock()
    import ray
    from ray import serve

    from serve.app import build, cluster_gpus
    from serve.config import deployment_needs, shortfall
    from serve.ui import banner
    from zeroshot import raylog

    init = raylog.quiet(args.verbose)  # after `import ray.serve`, which sets its logger's level
    started_ray = False
    node = ""  # the local Ray node this process starts, whose HAProxy it stops
    if args.address is None:
        ray.init(address="local", num_cpus=args.num_cpus, **init)  # never join a running one
        started_ray = True
        node = ray.get_runtime_context().get_node_id()
        gpus = cluster_gpus()
        cfg = cfg.for_machine(args.num_cpus or os.cpu_count() or 1, gpus)
        cpus = ray.cluster_resources().get("CPU", 0)
        short = shortfall(deployment_needs(cfg.deployment_options(gpus)), cpus, gpus)
        if short:
            ray.shutdown()
            print(
                f"error: the app's fewest replicas need {short}: lower --ingress-min-replicas "
                "(or the config's min_replicas), or give Ray more with --num-cpus",
                file=sys.stderr,
            )
            return 1
    else:
        ray.init(address=args.address, **init)
    clock.lap("Ray")

    def stop(signum, frame):  # SIGTERM (docker stop, kill) ends like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    http_options = {"host": args.host, "port": args.port}
    version = uuid.uuid4().hex[:12]
    try:
        try:
            serve.start(http_options=http_options)
        except Exception as exc:  # noqa: BLE001 - HAProxy failed to start: fall back once
            if not fast:
                raise
            print(
                f"fast ingress off: HAProxy did not start ({str(exc).splitlines()[0][:200]}); "
                "restarting with Serve's default proxy",
                file=sys.stderr,
            )
            serve.shutdown()
            ray.shutdown()
            # A fresh process: this one's Serve read the fast-ingress settings at import.
            argv = [sys.executable, "-m", "zeroshot", *sys.argv[1:], "--no-fast-ingress"]
            os.execv(sys.executable, argv)
        clock.lap("Serve")
        serve.run(build(cfg, version=version), name=name, route_prefix="/")
        clock.lap("app")
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{shown}:{args.port}"
        clock.wait_healthy(url)
        print(clock.line(load_s=clock.model_load_s(name)), flush=True)
        models = ", ".join(m.name for m in cfg.served)
        print(f"serving {models} at {url}/  (docs: {url}/docs)  - Ctrl-C to stop", flush=True)
        print(banner(url), flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        timeout = cfg.ingress.graceful_shutdown_timeout_s
        print(f"\nstopping: finishing requests in flight (<= {timeout:g} s)", file=sys.stderr)
        try:
            drain(build, cfg, name, version, timeout)
            if started_ray:
                # The drained app still answers 503s to late requests: let HAProxy close its
                # listeners and finish those before Serve's shutdown kills it mid-answer.
                fast_ingress.soft_stop(fast_ingress.haproxies(node), HAPROXY_STOP_S)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - stop anyway
            print(f"stopping without draining: {exc!r}", file=sys.stderr)
    except RuntimeError as exc:
        from serve.startup import why_not_running

        why = why_not_running(name)
        print(
            f"error: the app did not start: {exc}" + (f" ({why})" if why else ""), file=sys.stderr
        )
        return 1
    finally:
        # A second Ctrl-C / SIGTERM may cut the drain short, never this cleanup: cut, it
        # would leave HAProxy (started by a Serve actor, and outliving it) holding the ports.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if started_ray:
                serve.shutdown()
            else:
                serve.delete(name)
        finally:
            ray.shutdown()
            if started_ray:  # after Ray is down, when no Serve actor can start another
                fast_ingress.reap(fast_ingress.haproxies(node))
    return 0
