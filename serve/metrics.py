"""Custom Serve metrics (exported by Ray's metrics agent as `ray_zeroshot_*` in Prometheus).

One histogram per phase so dashboards can stack them: encode and assemble run in the ingress,
queue (waiting for a batch and the device) and inference (the forward passes of one batch) in
the classifier; the batch shape histograms say how well batching works.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

SECONDS = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
]  # fmt: skip
COUNTS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
TOKENS = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
# Ray wants strictly positive boundaries; the first bucket is "no padding to speak of".
RATIOS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

# name -> (description, boundaries)
HISTOGRAMS: dict[str, tuple[str, Sequence[float]]] = {
    "zeroshot_encode_seconds": (
        "Ingress: tokenize the requests of one classifier call (coalesced).",
        SECONDS,
    ),
    "zeroshot_assemble_seconds": (
        "Ingress: logits to label scores for the requests of one classifier call.",
        SECONDS,
    ),
    "zeroshot_call_requests": (
        "Ingress: requests carried by one classifier call (concurrent requests coalesce).",
        COUNTS,
    ),
    "zeroshot_queue_seconds": (
        "Classifier: from a request part's arrival to the start of its batch's forward passes.",
        SECONDS,
    ),
    "zeroshot_inference_seconds": ("Classifier: forward passes of one batch.", SECONDS),
    "zeroshot_batch_pairs": ("Classifier: NLI pairs in one @serve.batch call.", COUNTS),
    "zeroshot_batch_parts": (
        "Classifier: request parts in one @serve.batch call (>1: requests share passes).",
        COUNTS,
    ),
    "zeroshot_batch_padded_tokens": (
        "Classifier: padded tokens (longest x pairs, per forward pass) in one batch.",
        TOKENS,
    ),
    "zeroshot_batch_padding_ratio": (
        "Classifier: share of a batch's padded tokens that are padding.",
        RATIOS,
    ),
}
# Every series carries the served model's id (an app may serve several); "-" where a request
# failed before naming one (e.g. malformed JSON).
MODEL_TAG = "model"
NO_MODEL = "-"
# Counters are exact where Ray's exported histogram sums are not (Ray 2.60 rebuilds them from
# bucket midpoints), so means such as pairs per batch come from these.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zeroshot_requests": ("Ingress: requests sent to the classifier.", ()),
    "zeroshot_hedged_calls": (
        "Ingress: classifier calls sent a second time, being slow past the hedge delay.",
        (),
    ),
    "zeroshot_request_errors": (
        "Ingress: requests answered with an error, by type and status.",
        ("type", "status"),
    ),
    "zeroshot_batches": ("Classifier: @serve.batch calls run.", ()),
    "zeroshot_pairs": ("Classifier: NLI pairs scored.", ()),
    "zeroshot_tokens": ("Classifier: tokens scored, before padding.", ()),
    "zeroshot_padded_tokens": ("Classifier: tokens scored, padding included.", ()),
}


class Metrics:
    """Histograms and counters by name, each tagged with the model; a logged no-op if Ray
    cannot create them. `for_model` gives the view one model's code records through."""

    def __init__(self, names: Sequence[str], counters: Sequence[str] = ()):
        self._hist: dict = {}
        self._count: dict = {}
        self._tags: dict[str, str] = {MODEL_TAG: NO_MODEL}
        try:
            from ray.serve.metrics import Counter, Histogram

            for name in names:
                description, bounds = HISTOGRAMS[name]
                self._hist[name] = Histogram(
                    name, description=description, boundaries=bounds, tag_keys=(MODEL_TAG,)
                )
            for name in counters:
                description, tag_keys = COUNTERS[name]
                self._count[name] = Counter(
                    name, description=description, tag_keys=(*tag_keys, MODEL_TAG)
                )
        except Exception as exc:  # noqa: BLE001 - metrics must never break serving
            logging.getLogger("ray.serve").warning("metrics disabled: %r", exc)
            self._hist, self._count = {}, {}

    def for_model(self, model_id: str) -> Metrics:
        """The same series, recorded with `model_id` as their model tag."""
        view = copy.copy(self)
        view._tags = {MODEL_TAG: model_id}
        return view

    def observe(self, name: str, value: float) -> None:
        hist = self._hist.get(name)
        if hist is not None:
            hist.observe(value, tags=self._tags)

    def inc(self, name: str, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        counter = self._count.get(name)
        if counter is not None and value > 0:
            counter.inc(value, tags={**self._tags, **(tags or {})})


def ingress_metrics() -> Metrics:
    return Metrics(
        ["zeroshot_encode_seconds", "zeroshot_assemble_seconds", "zeroshot_call_requests"],
        ["zeroshot_requests", "zeroshot_request_errors", "zeroshot_hedged_calls"],
    )


def classifier_metrics() -> Metrics:
    return Metrics(
        [
            "zeroshot_queue_seconds",
            "zeroshot_inference_seconds",
            "zeroshot_batch_pairs",
            "zeroshot_batch_parts",
            "zeroshot_batch_padded_tokens",
            "zeroshot_batch_padding_ratio",
        ],
        ["zeroshot_batches", "zeroshot_pairs", "zeroshot_tokens", "zeroshot_padded_tokens"],
    )


# Where to look: the Grafana dashboard of the series above (Ray's own Serve dashboards cover
# replicas, queues and HTTP status codes).
GRAFANA_DASHBOARD = "cluster/grafana/zeroshot-dashboard.json"


def prometheus_targets() -> list[str]:
    """Where Prometheus scrapes these series: Ray's metrics agent on every live node (each
    node exports what its replicas recorded; Prometheus sums them). Empty outside Ray.

    Not an app route on purpose: one ingress replica, picked by the load balancer, could
    only show its own node's share, never the classifier's GPU nodes.
    """
    try:
        import ray

        if not ray.is_initialized():
            return []
        return sorted(
            f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in ray.nodes()
            if node.get("Alive") and node.get("MetricsExportPort")
        )
    except Exception:  # noqa: BLE001 - telling where metrics are must never break a route
        return []


def metrics_info() -> dict:
    """The `metrics` entry of GET /v1/info."""
    return {
        "prometheus": prometheus_targets(),
        "series": "ray_zeroshot_*",
        "grafana_dashboard": GRAFANA_DASHBOARD,
    }
