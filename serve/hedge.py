"""Hedged classifier calls: a call still unanswered well past what calls take gets a second copy,
and the first answer wins ("The Tail at Scale", Dean and Barroso, 2013).

Why the ingress needs it: a classifier replica cut off by the network (a partitioned host, or
one lost without a FIN or RST) never answers, and it is not declared dead for tens of seconds.
Until then Serve's router keeps choosing it, since it looks idle. Each call sent there holds
one of the ingress's few call slots (`IngressSettings.max_calls_in_flight`) until the
request's deadline. A hedge is routed while the first copy still counts as outstanding on
the silent replica, so it most likely goes to another one. On the host cluster this took the
burst of deadline 503s out of a 30 s partition (benchmarks/faults_hosts); what it does not
cover is a wait before the call (HAProxy on a cut ingress) or after the link is back
(issue 24).

The losing copy is not cancelled when the winner answers. It keeps running until it ends or
its deadline passes, so the router's count for a replica that does not answer stays up.
Cancelling it would make that replica look free again.

Two limits keep hedging from doubling the load in a real overload, where every call is slow:
- the delay follows the calls themselves: `FACTOR` times their recent 95th percentile, never
  under the configured floor (`IngressSettings.hedge_after_s`);
- a budget: `BUDGET_PER_CALL` of a token per call, up to `BUDGET_CAP` tokens, one per hedge
  (gRPC's retry throttling). Over time at most a tenth of the calls are hedged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

R = TypeVar("R")

FACTOR = 3.0
WINDOW = 128  # recent call durations the percentile is taken over
REFRESH_EVERY = 16  # calls between recomputing it
BUDGET_PER_CALL = 0.1
BUDGET_CAP = 10.0


class Hedger:
    """Runs calls with at most one hedge each; one per model in an ingress replica."""

    def __init__(self, after_s: float):
        self.floor_s = after_s if after_s > 0 else None  # None: never hedge
        self._durations: deque[float] = deque(maxlen=WINDOW)
        self._delay_s = after_s
        self._since_refresh = 0
        self.tokens = BUDGET_CAP
        self.hedged = 0  # hedges sent
        self.won = 0  # hedges that answered first
        self._lingering: set[asyncio.Task] = set()

    def delay_s(self) -> float:
        """How long a call runs alone before it is hedged."""
        return self._delay_s

    def _observe(self, seconds: float) -> None:
        # Only the time of a copy that answered: a hedged call's whole wait would raise the
        # percentile, then the delay, then the wait, each time.
        self._durations.append(seconds)
        self._since_refresh += 1
        if self._since_refresh >= REFRESH_EVERY and self.floor_s is not None:
            self._since_refresh = 0
            ordered = sorted(self._durations)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            self._delay_s = max(self.floor_s, FACTOR * p95)

    def _may_hedge(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    async def call(self, attempt: Callable[[], Awaitable[R]], deadline: float) -> R:
        """`attempt()`'s result, from a second `attempt()` when the first is slow past
        `delay_s()`. A copy still running when the other answered runs on until `deadline`
        (time.monotonic()), then is cancelled. When every copy fails, the first's error."""
        self.tokens = min(BUDGET_CAP, self.tokens + BUDGET_PER_CALL)
        first = asyncio.ensure_future(attempt())
        started = {first: time.monotonic()}
        pending = {first}
        error: BaseException | None = None
        try:
            if self.floor_s is not None:
                await asyncio.wait(pending, timeout=self._delay_s)
                if not first.done() and self._may_hedge():
                    self.hedged += 1
                    hedge = asyncio.ensure_future(attempt())
                    started[hedge] = time.monotonic()
                    pending.add(hedge)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.cancelled():
                        continue
                    if task.exception() is None:
                        self._observe(time.monotonic() - started[task])
                        self.won += task is not first
                        self._linger(pending, deadline)
                        pending = set()
                        return task.result()
                    if error is None or task is first:
                        error = task.exception()
        finally:
            for task in pending:  # cancelled from outside (the ingress is stopping)
                task.cancel()
        raise error if error is not None else asyncio.CancelledError()

    def _linger(self, tasks: set[asyncio.Task], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        for task in tasks:
            self._lingering.add(task)
            timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), task.cancel)

            def finished(t: asyncio.Task, timer=timer) -> None:
                timer.cancel()
                self._lingering.discard(t)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    t.exception()  # retrieved: a late failure of a loser is nobody's concern

            task.add_done_callback(finished)
