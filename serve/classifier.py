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
from zeroshot.errors import InvalidInputError, ModelNotFoundError, ZeroShotError, from_exception
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
    model: str = ""  # the served model it is for
    arrived: float = field(default_factory=time.perf_counter)
    started: bool = False  # its batch has begun on the device (see BatchGate)


class Device:
    """The device the model lanes of a replica share. While it runs a batch, every lane holds
    what arrives for it; when it frees, the lane whose oldest held part has waited longest
    releases all it holds, as one batch. So each model's batch is everything that arrived for
    it since its last one (its own pass and the other models' passes), not a batch cut at
    the moment another model's pass began."""

    def __init__(self) -> None:
        self.busy = 0  # batches on the device
        self.gates: list[BatchGate] = []

    def next_turn(self) -> None:
        # A retired gate (its model unloaded) goes once nothing of it is held.
        self.gates = [gate for gate in self.gates if gate.held or not gate.retired]
        if self.busy:
            return
        waiting = [gate for gate in self.gates if gate.held]
        if waiting:
            min(waiting, key=lambda gate: gate.held[0][0].arrived).release_held()


class BatchGate:
    """Lets one lane's parts into its `@serve.batch` queue so that each batch is everything
    that arrived while the device was busy (continuous batching, as TEI and vLLM schedule).

    With the device idle a part goes straight in (`alone`: nothing of this lane queued, so it
    may run at once) and parts arriving while its batch forms join it. While the device runs a
    batch (of any lane), parts are held and released together when their lane's turn comes, so
    they form one full batch. Serve alone would close a batch as soon as its first part had
    waited `batch_wait_timeout_s`, device free or not, so batches formed during a long pass
    would queue up small and stay small.
    """

    def __init__(self, submit: Callable[[Part, bool], Awaitable], device: Device | None = None):
        self.submit = submit  # (part, alone) -> its result, through the @serve.batch method
        self.device = device or Device()
        self.device.gates.append(self)
        self.released = 0  # parts handed to Serve's queue whose batch has not started
        self.held: list[tuple[Part, asyncio.Future]] = []
        self.retired = False

    @property
    def busy(self) -> int:
        return self.device.busy

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
                self.device.next_turn()

    def started(self, parts: Sequence[Part]) -> None:
        """Called by the batch function as it begins: the device is taking these parts."""
        self.device.busy += 1
        for part in parts:
            if not part.started:
                part.started = True
                self.released = max(0, self.released - 1)

    def finished(self) -> None:
        """Called by the batch function as it ends: the next lane's held parts form a batch."""
        self.device.busy = max(0, self.device.busy - 1)
        self.device.next_turn()

    def release_held(self) -> None:
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
    request: int,
    pairs: Pairs,
    settings: BatchSettings,
    owners: np.ndarray | None = None,
    model: str = "",
) -> list[tuple[np.ndarray, Part]]:
    """Cut one request's pairs into parts the way forward passes are cut (length-sorted, under
    the token budget and `min_fill`) and at most `max_batch_size` pairs each, longest first,
    each with the positions of its pairs in the request."""
    forward = settings.forward
    most = min(forward.max_batch_pairs, settings.batching.max_batch_size)
    cut = forward.model_copy(update={"max_batch_pairs": most})
    return [
        (idx, Part(request, pairs.take(idx), settings, _owners(owners, idx), model))
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
    max_models_per_batch: int = 0  # 1 by construction (a lane per model); counted to show it
    failed_batches: int = 0

    @classmethod
    def merged(cls, many) -> BatchStats:
        out = cls()
        for stats in many:
            for name, value in stats.__dict__.items():
                mine = getattr(out, name)
                setattr(out, name, max(mine, value) if name.startswith("max_") else mine + value)
        return out

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
        s.max_models_per_batch = max(s.max_models_per_batch, len({p.model for p in parts}))
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


class ModelLane:
    """One served model on a classifier replica: its scorer, its own `@serve.batch` queue and
    `BatchGate`, its counters. Each model's batches fill with that model's parts alone: one
    queue shared by all models would close a batch at its size and then split it by model
    (Ray's multiplexed batching, ray PR 59334), so each model's share would run small."""

    def __init__(
        self,
        model_id: str,
        scorer: Scorer,
        batching: ServeBatching,
        metrics: Metrics,
        executor: ThreadPoolExecutor,
        device: Device,
    ):
        self.model_id = model_id
        self.scorer = scorer
        self.settings = BatchSettings(batching, scorer.backend.device_type)
        self.runner = BatchRunner(scorer, metrics.for_model(model_id), executor)
        self.gate = BatchGate(self._submit, device)
        self._calls = 0
        self._requests = 0
        self.on_unload: Callable[[ModelLane], None] | None = None

        async def run_batch(parts: list[Part]) -> list[np.ndarray | ZeroShotError]:
            return await self._run_batch(parts)

        # A queue of this lane's own (a plain function: Serve keeps the queue on it). Size and
        # wait come from the config through `reconfigure`.
        self.score_parts = serve.batch(batch_size_fn=batch_size)(run_batch)
        self.reconfigure(batching)
        self._warm_up()

    def _warm_up(self) -> None:
        config = self.scorer.backend.config
        bos = config.bos_token_id if config.bos_token_id is not None else 0
        eos = config.eos_token_id if config.eos_token_id is not None else bos
        self.scorer.score(Pairs.from_list([np.asarray([bos, eos, eos, eos], dtype=np.int32)]))

    def reconfigure(self, batching: ServeBatching) -> None:
        self.settings.update(batching)
        self.score_parts.set_max_batch_size(batching.max_batch_size)
        self.score_parts.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.scorer.batching = self.settings.forward

    def __del__(self) -> None:
        # Serve calls it when its LRU unloads the model (and Python when the lane is freed):
        # the replica forgets the lane, so its weights go once the batches holding it end.
        unload, self.on_unload = getattr(self, "on_unload", None), None
        if unload is not None:
            unload(self)

    async def score_requests(
        self, pairs: Pairs, counts: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, ZeroShotError]]:
        """See `ZeroShotClassifier.score_requests`."""
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
        parts = split_request(self._calls, pairs, self.settings, owners, self.model_id)
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


@serve.deployment(name=CLASSIFIER_NAME)
class ZeroShotClassifier:
    """Holds the served models on the replica's device (Serve's model multiplexing: a call
    names its model by `multiplexed_model_id`, Serve routes it to a replica holding that model
    where one does, and each replica keeps the `models_per_replica` most recently used) and
    scores NLI pairs in shared batches, one lane per model. Every Serve option comes from
    `AppConfig.deployment_options`, the batching from `user_config`."""

    async def __init__(self, config: dict):
        cfg = AppConfig.model_validate(config)
        if cfg.classifier.torch_threads:
            import torch

            torch.set_num_threads(cfg.classifier.torch_threads)
        self.config = cfg
        self.served = {m.name for m in cfg.served}
        self.batching = cfg.batching
        self.metrics = classifier_metrics()
        # One device thread for every model: forward passes run off the replica's event loop
        # (health checks and batch assembly keep going) and never overlap on the device.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="zeroshot-device")
        self.device = Device()  # whose held parts go next when the device frees
        self.loaded: dict[str, ModelLane] = {}
        self.load_seconds: dict[str, float] = {}

        async def load(model_id: str) -> ModelLane:
            return await self._load(model_id)

        # A plain function: Serve keeps its LRU on the function object (not on a bound
        # method), and its size comes from the config, not from a decorator literal.
        self.lane = serve.multiplexed(max_num_models_per_replica=cfg.models_per_replica())(load)
        # The default model is loaded (and warmed up) before the replica reports ready.
        first = await self.lane(cfg.default_model)
        log.info(
            "%s ready: model %s on %s (%s), %d torch threads",
            CLASSIFIER_NAME,
            first.model_id,
            first.scorer.device,
            first.scorer.dtype,
            _torch_threads(),
        )

    async def _load(self, model_id: str) -> ModelLane:
        """Serve's multiplexing loader: the lane of `model_id`, loaded off the event loop."""
        if model_id not in self.served:
            raise ModelNotFoundError(_unknown(model_id, self.config))
        started = time.perf_counter()
        lane = await asyncio.to_thread(self._new_lane, model_id)
        self.load_seconds[model_id] = time.perf_counter() - started
        lane.on_unload = self._forget
        self.loaded[model_id] = lane
        return lane

    def _new_lane(self, model_id: str) -> ModelLane:
        import ray

        cfg = self.config.for_model(model_id)
        scorer = Scorer.from_config(cfg, ray.get_gpu_ids(), self.batching.forward)
        return ModelLane(model_id, scorer, self.batching, self.metrics, self.executor, self.device)

    def _forget(self, lane: ModelLane) -> None:
        lane.gate.retired = True
        if self.loaded.get(lane.model_id) is lane:
            del self.loaded[lane.model_id]
            log.info("unloaded model %s (least recently used)", lane.model_id)

    def reconfigure(self, user_config: dict) -> None:
        """Apply a new batching user_config to the running replica (no restart)."""
        self.batching = ServeBatching.model_validate(user_config or {})
        for lane in list(self.loaded.values()):
            lane.reconfigure(self.batching)
        log.info("batching: %s", self.batching.model_dump())

    async def _lane_of_call(self) -> ModelLane:
        return await self.lane(serve.get_multiplexed_model_id() or self.config.default_model)

    async def score(self, pairs: Pairs) -> np.ndarray:
        """NLI logits `[len(pairs), num_labels]` (float32) of one request's pairs, in order,
        by the model the call names (`multiplexed_model_id`; none: the first served).

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
        """Logits of many requests' pairs for the model the call names, concatenated (`counts`
        pairs each, in order), and, by request index, the error of each request that could not
        be scored (its rows are zero). One call carries every request an ingress replica
        coalesced for that model; each request still fails alone: bad ids are refused before
        they join a batch, and a request whose shared forward pass failed is scored again by
        itself."""
        if not isinstance(pairs, Pairs):
            raise InvalidInputError(f"expected Pairs, got {type(pairs).__name__}")
        lane = await self._lane_of_call()
        return await lane.score_requests(pairs, counts)

    def _any_lane(self) -> ModelLane | None:
        return next(iter(self.loaded.values()), None)

    def info(self) -> dict:
        lane = self._any_lane()
        return {
            "device": lane.scorer.device if lane else None,
            "dtype": lane.scorer.dtype if lane else None,
            "num_labels": lane.scorer.num_labels if lane else None,
            "max_length": lane.scorer.max_length if lane else None,
            "batching": self.batching.model_dump(),
            "models_loaded": list(self.loaded),
            "max_models_per_replica": self.config.models_per_replica(),
            "load_seconds": self.load_seconds.get(self.config.default_model),
        }

    def stats(self, reset: bool = False) -> dict:
        """This replica's batch counters: over all its models, and by model under `models`."""
        by_model = {}
        for model_id, lane in list(self.loaded.items()):
            by_model[model_id] = lane.runner.stats
            if reset:
                lane.runner.stats = BatchStats()
        return {**BatchStats.merged(by_model.values()).as_dict(), "models": {
            model_id: stats.as_dict() for model_id, stats in by_model.items()
        }}  # fmt: skip

    async def check_health(self) -> None:
        """Touch the device with a tiny op (off the event loop); fail when no model is loaded."""
        lane = self._any_lane() if hasattr(self, "loaded") else None
        if lane is None:
            raise RuntimeError("the model is not loaded")
        await asyncio.to_thread(lane.scorer.check)


def _unknown(model_id: str, cfg: AppConfig) -> str:
    served = ", ".join(m.name for m in cfg.served)
    return f"no model {model_id!r} is served here; the served ones: {served}"


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
