"""The classifier deployment: the model on its device, `score` behind `@serve.batch`.

A request's pairs arrive as one flat id array; they are cut into length-sorted parts (each
under the batch budgets) and every part is queued on the batched method, so parts of many
concurrent requests - with different labels and templates - share forward passes. The batch
is sized in pairs and closed early by a padded-token budget (`batch_size_fn`), and both
budgets and the wait come from the deployment's `user_config`. A `BatchGate` in front of the
queue lets the next batch form while the current one runs, so batches stay full under load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from serve.config import CLASSIFIER_NAME, AppConfig, ServeBatching
from serve.errors import HTTPError
from serve.metrics import Metrics, classifier_metrics
from serve.wire import unpack_pairs
from zeroshot.config import BatchingConfig
from zeroshot.errors import ErrorType, InvalidInputError, ZeroShotError
from zeroshot.score import plan_batches

# Replica logs go through Serve's logger so each line carries the request id.
log = logging.getLogger("ray.serve")


def pick_device(configured: str, gpu_ids: Sequence[int | str], visible: str | None = None) -> str:
    """The torch device for a replica from the GPUs Ray assigned to it.

    Ray 2.60 no longer hides GPUs from zero-GPU workers, so `torch.cuda.is_available()` says
    nothing about this replica: 'auto' means CUDA only when Ray gave the replica a GPU. Ray
    normally narrows CUDA_VISIBLE_DEVICES to the assigned ids (so the first is cuda:0); with
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES every GPU stays visible and the id is the index.
    """
    if configured != "auto":
        return configured
    if not gpu_ids:
        return "cpu"
    first = str(gpu_ids[0])
    visible_ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if first in visible_ids:
        return f"cuda:{visible_ids.index(first)}"
    return f"cuda:{int(first)}" if first.isdigit() else "cuda"


class BatchSettings:
    """The current user_config, shared by reference with every queued part, so
    `batch_size_fn` (which only sees the parts) always applies the latest budgets."""

    def __init__(self, batching: ServeBatching):
        self.batching = batching


@dataclass
class Part:
    """A length-sorted slice of one request's pairs: the unit queued on `@serve.batch`."""

    request: int
    pairs: list[np.ndarray]
    padded_len: int
    settings: BatchSettings
    arrived: float = field(default_factory=time.perf_counter)
    started: bool = False  # its batch has begun on the device (see BatchGate)

    @property
    def padded_tokens(self) -> int:
        return self.padded_len * len(self.pairs)


class BatchGate:
    """Lets parts into the `@serve.batch` queue one batch ahead of the device.

    Serve forms a batch as soon as its first item has waited `batch_wait_timeout_s`, whether
    or not the device is free; with `max_concurrent_batches=1` the batches formed during a long
    forward pass then queue up small (each holds what arrived in one wait window). The gate
    holds new parts while earlier ones are queued but not started, and releases all it holds
    the moment a batch starts: the next batch fills while the current one runs, as full as the
    traffic allows. With nothing queued a part goes straight in, so light load pays nothing.
    """

    def __init__(self, submit: Callable[[Part], Awaitable]):
        self.submit = submit  # the @serve.batch method
        self.released = 0  # parts handed to Serve's queue whose batch has not started
        self.held: list[tuple[Part, asyncio.Future]] = []

    async def run(self, part: Part):
        if not self.released and not self.held:
            return await self._release(part)
        waiter = asyncio.get_running_loop().create_future()
        self.held.append((part, waiter))
        return await waiter

    async def _release(self, part: Part):
        self.released += 1
        try:
            return await self.submit(part)
        finally:
            if not part.started:  # failed or cancelled before its batch began
                part.started = True
                self._started(1)

    def started(self, parts: Sequence[Part]) -> None:
        """Called by the batch function as it begins: the device is taking these parts."""
        n = 0
        for part in parts:
            if not part.started:
                part.started = True
                n += 1
        self._started(n)

    def _started(self, n: int) -> None:
        self.released = max(0, self.released - n)
        if not self.released and self.held:
            held, self.held = self.held, []
            for part, waiter in held:
                if not waiter.done():
                    _chain(asyncio.ensure_future(self._release(part)), waiter)


def _chain(task: asyncio.Future, waiter: asyncio.Future) -> None:
    def to_waiter(t: asyncio.Future) -> None:
        if waiter.done():
            return
        if t.cancelled():
            waiter.cancel()
        elif t.exception() is not None:
            waiter.set_exception(t.exception())
        else:
            waiter.set_result(t.result())

    task.add_done_callback(to_waiter)
    waiter.add_done_callback(lambda w: task.cancel() if w.cancelled() else None)


def batch_size(parts: list[Part]) -> int:
    """`batch_size_fn`: a batch's size in pairs, or more than the limit once its padded tokens
    pass the token budget (so Serve closes it). A lone part always fits: `split_request`
    already cut it under both budgets, except a single pair longer than the token budget."""
    b = parts[0].settings.batching
    pairs = sum(len(p.pairs) for p in parts)
    if len(parts) == 1:
        return min(pairs, b.max_batch_size)
    if sum(p.padded_tokens for p in parts) > b.max_batch_tokens:
        return b.max_batch_size + 1
    return pairs


def split_request(
    request: int, pairs: Sequence[np.ndarray], settings: BatchSettings
) -> list[tuple[np.ndarray, Part]]:
    """Cut one request's pairs into parts under the batch budgets, longest first, each with the
    positions of its pairs in the request."""
    b = settings.batching
    cut = BatchingConfig(
        max_batch_tokens=b.max_batch_tokens,
        max_batch_pairs=b.max_batch_size,
        pad_to_multiple_of=b.forward.pad_to_multiple_of,
    )
    lengths = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
    return [
        (idx, Part(request, [pairs[i] for i in idx], padded, settings))
        for idx, padded in plan_batches(lengths, cut)
    ]


def check_pairs(ids: object, lengths: object, vocab_size: int, max_length: int) -> None:
    """Refuse ids the model cannot embed, before they can join (and break) a shared batch."""
    if not isinstance(ids, np.ndarray) or not isinstance(lengths, np.ndarray):
        raise InvalidInputError("pairs must be numpy arrays (ids, lengths)")
    if ids.ndim != 1 or lengths.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise InvalidInputError("pairs must be a flat integer id array and a length array")
    if len(lengths) == 0:
        raise InvalidInputError("no pairs to score")
    if int(lengths.min()) < 1 or int(lengths.max()) > max_length:
        raise InvalidInputError(f"every pair needs 1 to {max_length} tokens")
    if int(lengths.sum()) != len(ids):
        raise InvalidInputError("the lengths do not add up to the number of ids")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise InvalidInputError(f"token ids must lie in [0, {vocab_size})")


def failure(exc: BaseException) -> ZeroShotError:
    """A scoring failure as a typed error the ingress can answer without a stack trace."""
    if isinstance(exc, ZeroShotError):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":
        return HTTPError(
            "the model ran out of device memory on this batch; retry, or send fewer pairs",
            ErrorType.OVERLOADED,
            503,
            {"Retry-After": "1"},
        )
    return HTTPError(f"scoring failed: {type(exc).__name__}: {exc}", ErrorType.INTERNAL, 500)


@dataclass
class BatchStats:
    """Cumulative counters of one replica, for tests and benchmarks (`stats()`)."""

    batches: int = 0
    pairs: int = 0
    parts: int = 0
    requests: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    forward_passes: int = 0
    inference_seconds: float = 0.0
    max_pairs_per_batch: int = 0
    max_requests_per_batch: int = 0
    failed_batches: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mean_pairs_per_batch"] = self.pairs / self.batches if self.batches else 0.0
        d["mean_requests_per_batch"] = self.requests / self.batches if self.batches else 0.0
        return d


class BatchRunner:
    """Runs one batch: all parts' pairs in shared, length-sorted forward passes on the device
    thread. When the shared pass fails, each part is retried alone, so a part that breaks a
    pass fails by itself and never takes its batch-mates down (Serve would otherwise fail every
    request of the batch)."""

    def __init__(self, scorer, metrics: Metrics | None = None, executor=None):
        self.scorer = scorer
        self.metrics = metrics or Metrics([])
        # One device thread: forward passes run off the replica's event loop (health checks
        # and batch assembly keep going) and never overlap each other on the device.
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="zeroshot-device")
        self.stats = BatchStats()

    async def _score(self, pairs: list[np.ndarray]):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.scorer.score_with_stats, pairs)

    async def run(self, parts: list[Part]) -> list[np.ndarray | ZeroShotError]:
        start = time.perf_counter()
        for part in parts:
            self.metrics.observe("zeroshot_queue_seconds", start - part.arrived)
        pairs = [p for part in parts for p in part.pairs]
        try:
            logits, stats = await self._score(pairs)
        except Exception as exc:  # noqa: BLE001 - isolate below
            self.stats.failed_batches += 1
            if len(parts) == 1:
                log.warning("scoring a batch of 1 part failed: %r", exc)
                return [failure(exc)]
            log.warning("a batch of %d parts failed (%r); retrying each alone", len(parts), exc)
            return [await self._alone(part) for part in parts]
        self._record(parts, stats)
        bounds = np.cumsum([0] + [len(part.pairs) for part in parts])
        return [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    async def _alone(self, part: Part) -> np.ndarray | ZeroShotError:
        try:
            logits, stats = await self._score(part.pairs)
        except Exception as exc:  # noqa: BLE001 - this part's own error, returned in place
            log.warning("a request part of %d pairs failed alone: %r", len(part.pairs), exc)
            return failure(exc)
        self._record([part], stats)
        return logits

    def _record(self, parts: list[Part], stats) -> None:
        s = self.stats
        requests = len({part.request for part in parts})
        s.batches += 1
        s.pairs += stats.pairs
        s.parts += len(parts)
        s.requests += requests
        s.tokens += stats.tokens
        s.padded_tokens += stats.padded_tokens
        s.forward_passes += stats.batches
        s.inference_seconds += stats.seconds
        s.max_pairs_per_batch = max(s.max_pairs_per_batch, stats.pairs)
        s.max_requests_per_batch = max(s.max_requests_per_batch, requests)
        m = self.metrics
        m.observe("zeroshot_inference_seconds", stats.seconds)
        m.observe("zeroshot_batch_pairs", stats.pairs)
        m.observe("zeroshot_batch_parts", len(parts))
        m.observe("zeroshot_batch_padded_tokens", stats.padded_tokens)
        m.observe("zeroshot_batch_padding_ratio", stats.padding_ratio)
        m.inc("zeroshot_batches")
        m.inc("zeroshot_pairs", stats.pairs)
        m.inc("zeroshot_tokens", stats.tokens)
        m.inc("zeroshot_padded_tokens", stats.padded_tokens)


@serve.deployment(
    name=CLASSIFIER_NAME,
    max_ongoing_requests=128,
    max_queued_requests=256,
    health_check_period_s=10,
    health_check_timeout_s=60,
    graceful_shutdown_timeout_s=30,
)
class ZeroShotClassifier:
    """Holds the model on the replica's device and scores NLI pairs in shared batches."""

    def __init__(self, config: dict):
        import ray

        from zeroshot.devices import dtype_name
        from zeroshot.score import Scorer

        cfg = AppConfig.model_validate(config)
        if cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        self.settings = BatchSettings(cfg.batching)
        self.device = pick_device(
            cfg.device, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        self.scorer = Scorer.from_pretrained(
            cfg.model, cfg.revision, self.device, cfg.dtype, cfg.batching.forward
        )
        model_config = self.scorer.model.config
        self.vocab_size = int(model_config.vocab_size)
        self.max_length = int(getattr(model_config, "max_position_embeddings", 0) or 1 << 20)
        self.dtype = dtype_name(self.scorer.dtype)
        self.runner = BatchRunner(self.scorer, classifier_metrics())
        self.gate = BatchGate(self.score_parts)
        self._requests = 0
        self._warm_up(model_config)
        log.info(
            "%s ready: model %s on %s (%s), %d torch threads",
            CLASSIFIER_NAME,
            cfg.model,
            self.device,
            self.dtype,
            _torch_threads(),
        )

    def _warm_up(self, model_config) -> None:
        bos = model_config.bos_token_id if model_config.bos_token_id is not None else 0
        eos = model_config.eos_token_id if model_config.eos_token_id is not None else bos
        self.scorer.score([np.asarray([bos, eos, eos, eos], dtype=np.int32)])

    def reconfigure(self, user_config: dict) -> None:
        """Apply a new batching user_config to the running replica (no restart)."""
        batching = ServeBatching.model_validate(user_config or {})
        self.settings.batching = batching
        self.score_parts.set_max_batch_size(batching.max_batch_size)
        self.score_parts.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.scorer.batching = batching.forward
        log.info("batching: %s", batching.model_dump())

    async def score(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """NLI logits `[n_pairs, num_labels]` (float32) of one request's pairs, in input order.

        Raises `InvalidInputError` for ids the model cannot take and an `HTTPError` when the
        forward pass fails for this request."""
        check_pairs(ids, lengths, self.vocab_size, self.max_length)
        pairs = unpack_pairs(ids, lengths)
        self._requests += 1
        parts = split_request(self._requests, pairs, self.settings)
        results = await asyncio.gather(*(self.gate.run(part) for _, part in parts))
        out = np.empty((len(pairs), self.scorer.num_labels), dtype=np.float32)
        for (idx, _), result in zip(parts, results):
            if isinstance(result, BaseException):
                raise result
            out[idx] = result
        return out

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=batch_size)
    async def score_parts(self, parts: list[Part]) -> list[np.ndarray | ZeroShotError]:
        self.gate.started(parts)
        # Errors come back as values: raising here would fail every request of the batch.
        try:
            return await self.runner.run(parts)
        except Exception as exc:  # noqa: BLE001 - last resort, still per part
            log.exception("batch runner failed")
            return [failure(exc)] * len(parts)

    def info(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "num_labels": self.scorer.num_labels,
            "max_length": self.max_length,
            "batching": self.settings.batching.model_dump(),
        }

    def stats(self, reset: bool = False) -> dict:
        out = self.runner.stats.as_dict()
        if reset:
            self.runner.stats = BatchStats()
        return out

    async def check_health(self) -> None:
        """Touch the device with a tiny op (off the event loop); fail when the model is gone."""
        scorer = getattr(self, "scorer", None)
        if scorer is None or getattr(scorer, "model", None) is None:
            raise RuntimeError("the model is not loaded")
        await asyncio.to_thread(scorer.check)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
