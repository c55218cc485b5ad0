"""The classifier deployment: the model on its device, `score` behind `@serve.batch`.

A request's pairs arrive as one flat id array (`Pairs`); they are cut into length-sorted parts
(each at most one forward pass) and every part is queued on the batched method, so parts of
many concurrent requests - with different labels and templates - share forward passes. The
batch is sized in pairs (`batch_size_fn`); its size and wait come from the deployment's
`user_config`. A `BatchGate` in front of the queue lets the next batch form while the current
one runs, so batches stay full under load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from serve.config import CLASSIFIER_NAME, AppConfig, ServeBatching
from serve.metrics import Metrics, classifier_metrics
from zeroshot.config import BatchingConfig
from zeroshot.errors import InvalidInputError, ZeroShotError, from_exception
from zeroshot.pairs import Pairs
from zeroshot.score import Scorer, plan_batches

# Replica logs go through Serve's logger so each line carries the request id.
log = logging.getLogger("ray.serve")


class BatchSettings:
    """The current user_config, shared by reference with every queued part, so
    `batch_size_fn` (which only sees the parts) always applies the latest budgets. `forward`
    is the batching's forward-pass config with the token budget decided for the device."""

    def __init__(self, batching: ServeBatching, device_type: str = "cpu"):
        self.device_type = device_type
        self.update(batching)

    def update(self, batching: ServeBatching) -> None:
        self.batching = batching
        self.forward: BatchingConfig = batching.forward.for_device(self.device_type)


@dataclass
class Part:
    """A length-sorted slice of one request's pairs: the unit queued on `@serve.batch`."""

    request: int  # the call it came in (one call carries one or many requests)
    pairs: Pairs
    settings: BatchSettings
    requests: frozenset[int] = frozenset()  # the requests its pairs belong to, when known
    arrived: float = field(default_factory=time.perf_counter)
    started: bool = False  # its batch has begun on the device (see BatchGate)


class BatchGate:
    """Lets parts into the `@serve.batch` queue so that each batch is everything that arrived
    while the previous one ran (continuous batching, as TEI and vLLM schedule).

    With the device idle a part goes straight in (`alone`: nothing queued or running, so it
    may run at once) and parts arriving while its batch forms join it. While a batch runs,
    parts are held and released together when it ends, so they form one full batch. Serve
    alone would close a batch as soon as its first part had waited `batch_wait_timeout_s`,
    device free or not, so batches formed during a long pass would queue up small and stay
    small.
    """

    def __init__(self, submit: Callable[[Part, bool], Awaitable]):
        self.submit = submit  # (part, alone) -> its result, through the @serve.batch method
        self.busy = 0  # batches on the device
        self.released = 0  # parts handed to Serve's queue whose batch has not started
        self.held: list[tuple[Part, asyncio.Future]] = []

    @property
    def idle(self) -> bool:
        return not self.busy and not self.released

    async def run(self, part: Part):
        if not self.busy and not self.held:
            return await self._release(part, alone=not self.released)
        waiter = asyncio.get_running_loop().create_future()
        self.held.append((part, waiter))
        return await waiter

    async def _release(self, part: Part, alone: bool = False):
        self.released += 1
        try:
            return await self.submit(part, alone)
        finally:
            if not part.started:  # failed or cancelled before its batch began
                part.started = True
                self.released = max(0, self.released - 1)
                self._release_held()

    def started(self, parts: Sequence[Part]) -> None:
        """Called by the batch function as it begins: the device is taking these parts."""
        self.busy += 1
        for part in parts:
            if not part.started:
                part.started = True
                self.released = max(0, self.released - 1)

    def finished(self) -> None:
        """Called by the batch function as it ends: what was held forms the next batch."""
        self.busy = max(0, self.busy - 1)
        self._release_held()

    def _release_held(self) -> None:
        if self.busy or not self.held:
            return
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
    """`batch_size_fn`: a batch's size in pairs (Serve closes it at `max_batch_size`). A lone
    part always fits: `split_request` cut it to at most `max_batch_size` pairs already."""
    pairs = sum(len(p.pairs) for p in parts)
    if len(parts) == 1:
        return min(pairs, parts[0].settings.batching.max_batch_size)
    return pairs


def split_request(
    request: int, pairs: Pairs, settings: BatchSettings, owners: np.ndarray | None = None
) -> list[tuple[np.ndarray, Part]]:
    """Cut one request's pairs into parts the way forward passes are cut (length-sorted, under
    the token budget and `min_fill`) and at most `max_batch_size` pairs each, longest first,
    each with the positions of its pairs in the request."""
    forward = settings.forward
    most = min(forward.max_batch_pairs, settings.batching.max_batch_size)
    cut = forward.model_copy(update={"max_batch_pairs": most})
    return [
        (idx, Part(request, pairs.take(idx), settings, _owners(owners, idx)))
        for idx, _ in plan_batches(pairs.lengths, cut)
    ]


def _owners(owners: np.ndarray | None, idx: np.ndarray) -> frozenset[int]:
    return frozenset() if owners is None else frozenset(np.unique(owners[idx]).tolist())


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

    async def _score(self, groups: list[Pairs]):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.scorer.score_many, groups)

    async def run(self, parts: list[Part]) -> list[np.ndarray | ZeroShotError]:
        start = time.perf_counter()
        for part in parts:
            self.metrics.observe("zeroshot_queue_seconds", start - part.arrived)
        try:
            logits, stats = await self._score([part.pairs for part in parts])
        except Exception as exc:  # noqa: BLE001 - isolate below
            self.stats.failed_batches += 1
            if len(parts) == 1:
                log.warning("scoring a batch of 1 part failed: %r", exc)
                return [from_exception(exc)]
            log.warning("a batch of %d parts failed (%r); retrying each alone", len(parts), exc)
            return [await self._alone(part) for part in parts]
        self._record(parts, stats)
        return logits

    async def _alone(self, part: Part) -> np.ndarray | ZeroShotError:
        try:
            (logits,), stats = await self._score([part.pairs])
        except Exception as exc:  # noqa: BLE001 - this part's own error, returned in place
            log.warning("a request part of %d pairs failed alone: %r", len(part.pairs), exc)
            return from_exception(exc)
        self._record([part], stats)
        return logits

    def _record(self, parts: list[Part], stats) -> None:
        s = self.stats
        requests = len(set().union(*(part.requests or {-1 - part.request} for part in parts)))
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


@serve.deployment(name=CLASSIFIER_NAME)
class ZeroShotClassifier:
    """Holds the model on the replica's device and scores NLI pairs in shared batches. Every
    Serve option comes from `AppConfig.deployment_options`, the batching from `user_config`."""

    def __init__(self, config: dict):
        import ray

        cfg = AppConfig.model_validate(config)
        if cfg.classifier.torch_threads:
            import torch

            torch.set_num_threads(cfg.classifier.torch_threads)
        self.scorer = Scorer.from_config(cfg, ray.get_gpu_ids(), cfg.batching.forward)
        self.settings = BatchSettings(cfg.batching, self.scorer.backend.device_type)
        self.runner = BatchRunner(self.scorer, classifier_metrics())
        self.gate = BatchGate(self._submit)
        self._calls = 0
        self._requests = 0
        self.reconfigure(cfg.batching.model_dump())
        self._warm_up()
        log.info(
            "%s ready: model %s on %s (%s), %d torch threads",
            CLASSIFIER_NAME,
            cfg.model,
            self.scorer.device,
            self.scorer.dtype,
            _torch_threads(),
        )

    def _warm_up(self) -> None:
        config = self.scorer.backend.config
        bos = config.bos_token_id if config.bos_token_id is not None else 0
        eos = config.eos_token_id if config.eos_token_id is not None else bos
        self.scorer.score(Pairs.from_list([np.asarray([bos, eos, eos, eos], dtype=np.int32)]))

    def reconfigure(self, user_config: dict) -> None:
        """Apply a new batching user_config to the running replica (no restart)."""
        batching = ServeBatching.model_validate(user_config or {})
        self.settings.update(batching)
        self.score_parts.set_max_batch_size(batching.max_batch_size)
        self.score_parts.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.scorer.batching = self.settings.forward
        log.info("batching: %s", batching.model_dump())

    async def score(self, pairs: Pairs) -> np.ndarray:
        """NLI logits `[len(pairs), num_labels]` (float32) of one request's pairs, in order.

        Raises `InvalidInputError` for ids the model cannot take and the engine's typed error
        when the forward pass fails for this request."""
        if not isinstance(pairs, Pairs):
            raise InvalidInputError(f"expected Pairs, got {type(pairs).__name__}")
        if not len(pairs):
            raise InvalidInputError("no pairs to score")
        logits, errors = await self.score_requests(pairs, [len(pairs)])
        if errors:
            raise errors[0]
        return logits

    async def score_requests(
        self, pairs: Pairs, counts: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, ZeroShotError]]:
        """Logits of many requests' pairs, concatenated (`counts` pairs each, in order), and,
        by request index, the error of each request that could not be scored (its rows are
        zero). One call carries every request an ingress replica coalesced; each request still
        fails alone: bad ids are refused before they join a batch, and a request whose shared
        forward pass failed is scored again by itself."""
        if not isinstance(pairs, Pairs):
            raise InvalidInputError(f"expected Pairs, got {type(pairs).__name__}")
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or int(counts.sum()) != len(pairs) or (counts < 1).any():
            raise InvalidInputError("counts must give each request's number of pairs (>= 1)")
        errors = self._refuse_invalid(pairs, counts)
        owner = np.repeat(np.arange(len(counts)), counts)  # request of each pair
        first, self._requests = self._requests, self._requests + len(counts)
        keep = np.flatnonzero(~np.isin(owner, list(errors))) if errors else None
        out = np.zeros((len(pairs), self.scorer.num_labels), dtype=np.float32)
        todo = pairs if keep is None else pairs.take(keep)
        logits, failed = await self._run(todo, first + (owner if keep is None else owner[keep]))
        out[slice(None) if keep is None else keep] = logits
        if not failed:
            return out, errors
        if len(counts) == 1:
            return out, {0: failed[0][1]}
        # A failed part may span requests: each of them is scored again alone, so only the
        # request that breaks a forward pass fails.
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        positions = np.concatenate([idx for idx, _ in failed])
        rows = positions if keep is None else keep[positions]
        for r in np.unique(owner[rows]).tolist():
            span = np.arange(starts[r], starts[r] + counts[r])
            alone, again = await self._run(pairs.take(span), np.full(len(span), first + r))
            if again:
                errors[r] = again[0][1]
            else:
                out[span] = alone
        return out, errors

    def _refuse_invalid(self, pairs: Pairs, counts: np.ndarray) -> dict[int, ZeroShotError]:
        """Requests whose ids the model cannot take, by index (checked whole first: cheap)."""
        vocab, longest = self.scorer.vocab_size, self.scorer.max_length
        try:
            pairs.check(vocab, longest)
            return {}
        except InvalidInputError as whole:
            if len(counts) == 1:
                return {0: whole}
        errors: dict[int, ZeroShotError] = {}
        start = 0
        for r, n in enumerate(counts.tolist()):
            try:
                pairs.take(np.arange(start, start + n)).check(vocab, longest)
            except InvalidInputError as exc:
                errors[r] = exc
            start += n
        return errors

    async def _run(
        self, pairs: Pairs, owners: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, ZeroShotError]]]:
        """Logits of `pairs` (of the requests `owners`) through the shared batches, and the
        failed parts (positions, error) with their rows left zero."""
        self._calls += 1
        parts = split_request(self._calls, pairs, self.settings, owners)
        results = await asyncio.gather(*(self.gate.run(part) for _, part in parts))
        out = np.zeros((len(pairs), self.scorer.num_labels), dtype=np.float32)
        failed = []
        for (idx, _), result in zip(parts, results):
            if isinstance(result, BaseException):
                failed.append((idx, result))
            else:
                out[idx] = result
        return out, failed

    async def _submit(self, part: Part, alone: bool):
        wait = self.settings.batching.batch_wait_timeout_s
        if alone and not wait:
            # Nothing queued, nothing running, nothing to wait for: run now, without the hop
            # through Serve's batch queue.
            return (await self._run_batch([part]))[0]
        # Serve reads the wait when a batch's first part arrives: a lone part may wait for
        # company (as configured); parts released together have all their company already.
        self.score_parts.set_batch_wait_timeout_s(wait if alone else 0.0)
        return await self.score_parts(part)

    # The batch size and wait come from the config through `reconfigure`, not from here.
    @serve.batch(batch_size_fn=batch_size)
    async def score_parts(self, parts: list[Part]) -> list[np.ndarray | ZeroShotError]:
        return await self._run_batch(parts)

    async def _run_batch(self, parts: list[Part]) -> list[np.ndarray | ZeroShotError]:
        self.gate.started(parts)
        # Errors come back as values: raising here would fail every request of the batch.
        try:
            return await self.runner.run(parts)
        except Exception as exc:  # noqa: BLE001 - last resort, still per part
            log.exception("batch runner failed")
            return [from_exception(exc)] * len(parts)
        finally:
            self.gate.finished()

    def info(self) -> dict:
        return {
            "device": self.scorer.device,
            "dtype": self.scorer.dtype,
            "num_labels": self.scorer.num_labels,
            "max_length": self.scorer.max_length,
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
        if scorer is None:
            raise RuntimeError("the model is not loaded")
        await asyncio.to_thread(scorer.check)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
