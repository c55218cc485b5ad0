"""Coalescing: concurrent requests of one ingress replica travel to the classifier together.

A request that arrives while earlier calls are in flight waits for the next free call slot,
and everything waiting then leaves in one call (one tokenizer call, one handle call, one
pickle). Serve's per-call cost (router, gRPC, serialization, replica bookkeeping) is then paid
once per call, not per request: under load a call carries tens of requests. A request that
finds a free slot leaves on the next event-loop turn, so a lone request never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

REAP_PERIOD_S = 0.1
# Calls measured before the rate is trusted (to refuse work that would miss its deadline).
MIN_MEASURED = 4
T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Runs `flush(items)` for the items submitted while up to `max_in_flight` flushes run.

    `flush` returns one result (or exception, returned in place) per item. A flush takes
    waiting items in order until their `size` would exceed `max_size` (always at least one).
    With none running a flush starts at once; another starts only once `spill` worth of items
    waits.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_in_flight: int,
        max_size: int,
        size: Callable[[T], int] = lambda _: 1,
        spill: int = 1,
        expired: Callable[[], BaseException] = lambda: TimeoutError("deadline exceeded"),
    ):
        if max_in_flight < 1 or max_size < 1:
            raise ValueError("max_in_flight and max_size must be >= 1")
        self.flush = flush
        self.max_in_flight = max_in_flight
        self.max_size = max_size
        self.size = size
        self.spill = spill
        self.expired = expired
        self.waiting_size = 0
        self._deadlines: list[tuple[float, asyncio.Future]] = []
        self._reaper: asyncio.Task | None = None
        self.in_flight = 0
        self.backlog = 0  # total size submitted and not finished (waiting or in flight)
        self.rate: float | None = None  # size finished per second while busy (EWMA)
        self._measured = 0
        self._last_end = 0.0
        self.waiting: deque[tuple[T, asyncio.Future]] = deque()
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: T, deadline: float | None = None) -> R:
        """`item`'s result; past `deadline` (time.monotonic()) the `expired` error instead,
        whether the item still waits or is in flight (its result is then dropped)."""
        future = asyncio.get_running_loop().create_future()
        size = self.size(item)
        self.waiting.append((item, future))
        self.waiting_size += size
        self.backlog += size
        if deadline is not None:
            self._deadlines.append((deadline, future))
            if self._reaper is None or self._reaper.done():
                self._reaper = asyncio.ensure_future(self._reap())
        self._schedule()
        try:
            return await future
        finally:
            self.backlog -= size

    async def _reap(self) -> None:
        # One task checks every deadline a few times a second: cheaper per request than a
        # timer (asyncio.timeout / wait_for) each, and a deadline is in seconds anyway.
        while self._deadlines:
            await asyncio.sleep(REAP_PERIOD_S)
            now = time.monotonic()
            keep = []
            for deadline, future in self._deadlines:
                if future.done():
                    continue
                if deadline <= now:
                    future.set_exception(self.expired())
                else:
                    keep.append((deadline, future))
            self._deadlines = keep

    def expected_wait_s(self) -> float:
        """How long work submitted now would wait for what is ahead of it (0 until measured)."""
        if self._measured < MIN_MEASURED or not self.rate:
            return 0.0
        return self.backlog / self.rate

    def _may_send(self) -> bool:
        # A first call leaves at once; another one only with `spill` worth of work, so that
        # under light load calls stay few and full, and under heavy load they overlap.
        if not self.waiting or self.in_flight >= self.max_in_flight:
            return False
        return self.in_flight == 0 or self.waiting_size >= self.spill

    def _schedule(self) -> None:
        # On the next loop turn, not now: requests parsed in the same turn leave together.
        if not self._scheduled and self._may_send():
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        # Requests whose client went away (cancelled) are dropped before any work is done.
        self.waiting = deque((item, fut) for item, fut in self.waiting if not fut.done())
        self.waiting_size = sum(self.size(item) for item, _ in self.waiting)
        while self._may_send():
            batch, total = [], 0
            while self.waiting:
                size = self.size(self.waiting[0][0])
                if batch and total + size > self.max_size:
                    break
                batch.append(self.waiting.popleft())
                total += size
            self.waiting_size -= total
            self.in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _measure(self, size: int, start: float) -> None:
        # The time this call had the pipeline to itself: under load, back-to-back calls
        # overlap and the rate is their throughput; alone, it is the call's own speed.
        end = time.monotonic()
        rate = size / max(end - max(start, self._last_end), 1e-6)
        self._last_end = end
        self._measured += 1
        if self._measured == 1:
            return  # the first call pays the warm-up (first forward pass, connections)
        self.rate = rate if self.rate is None else 0.8 * self.rate + 0.2 * rate

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        start = time.monotonic()
        try:
            results: Sequence = await self.flush([item for item, _ in batch])
            self._measure(sum(self.size(item) for item, _ in batch), start)
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the failure
            results = [exc] * len(batch)
            if isinstance(exc, asyncio.CancelledError):
                results = [RuntimeError("the ingress is stopping")] * len(batch)
        finally:
            self.in_flight -= 1
            self._schedule()
        for (_, future), result in zip(batch, results):
            if future.done():  # the client went away meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
