"""The ingress's coalescing: who travels together, in what order, and how failures stay apart."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve.coalesce import Coalescer


class Calls:
    """A flush that records each call and waits until the test lets it finish."""

    def __init__(self):
        self.calls: list[list] = []
        self.gates: list[asyncio.Future] = []

    async def flush(self, items):
        self.calls.append(list(items))
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    def finish(self, n: int) -> None:
        self.gates[n].set_result(None)


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_requests_arriving_while_calls_are_in_flight_leave_together():
    async def scenario():
        calls = Calls()
        co = Coalescer(calls.flush, max_in_flight=1, max_size=100)
        first = asyncio.create_task(co.submit(1))
        await _turns()
        assert calls.calls == [[1]]  # a lone request leaves at once
        rest = [asyncio.create_task(co.submit(i)) for i in (2, 3, -4, 5)]
        await _turns()
        assert len(calls.calls) == 1  # the only slot is busy: they wait
        rest[1].cancel()  # a client that went away is dropped before any work
        calls.finish(0)
        assert await first == 10
        await _turns()
        assert calls.calls[1] == [2, -4, 5]  # one call for all that waited, in order
        calls.finish(1)
        assert await rest[0] == 20 and await rest[3] == 50
        with pytest.raises(ValueError, match="bad -4"):
            await rest[2]  # a failing request fails alone
        assert co.in_flight == 0 and not co.waiting

    asyncio.run(scenario())


def test_a_call_holds_at_most_max_size_and_slots_overlap():
    async def scenario():
        calls = Calls()
        co = Coalescer(calls.flush, max_in_flight=2, max_size=5, size=lambda n: n)
        tasks = [asyncio.create_task(co.submit(n)) for n in (4, 1, 1, 9, 2)]
        await _turns()
        # Same turn: 4+1 fills the first call; the second slot takes the next that fit.
        assert calls.calls == [[4, 1], [1]]
        calls.finish(1)
        await _turns()
        assert calls.calls[2] == [9]  # bigger than max_size: alone, never refused
        calls.finish(0)
        await _turns()
        assert calls.calls[3] == [2]
        calls.finish(2)
        calls.finish(3)
        assert [await t for t in tasks] == [40, 10, 10, 90, 20]

    asyncio.run(scenario())


def test_another_call_leaves_only_with_spill_worth_waiting():
    async def scenario():
        calls = Calls()
        co = Coalescer(calls.flush, max_in_flight=3, max_size=10, size=lambda n: n, spill=5)
        tasks = [asyncio.create_task(co.submit(1))]
        await _turns()
        tasks += [asyncio.create_task(co.submit(n)) for n in (2, 2)]
        await _turns()
        assert calls.calls == [[1]]  # 4 waiting < spill: no second call
        tasks.append(asyncio.create_task(co.submit(1)))
        await _turns()
        assert calls.calls == [[1], [2, 2, 1]]  # 5 waiting: a second call overlaps
        calls.finish(0)
        calls.finish(1)
        assert [await t for t in tasks] == [10, 20, 20, 10]

    asyncio.run(scenario())


def test_a_failed_call_fails_its_requests_and_the_next_call_still_runs():
    async def scenario():
        state = {"n": 0}

        async def flush(items):
            state["n"] += 1
            if state["n"] == 1:
                raise ConnectionError("classifier gone")
            return items

        co = Coalescer(flush, max_in_flight=1, max_size=10)
        a = asyncio.create_task(co.submit("a"))
        await _turns(1)
        b = asyncio.create_task(co.submit("b"))
        with pytest.raises(ConnectionError):
            await a
        assert await b == "b"

    asyncio.run(scenario())


def test_a_request_past_its_deadline_gets_the_expired_error_waiting_or_in_flight():
    async def scenario():
        calls = Calls()
        co = Coalescer(
            calls.flush, max_in_flight=1, max_size=10, expired=lambda: TimeoutError("late")
        )
        now = time.monotonic()
        in_flight = asyncio.create_task(co.submit(1, now + 0.05))
        await _turns()
        waiting = asyncio.create_task(co.submit(2, now + 0.05))
        patient = asyncio.create_task(co.submit(3, now + 30))
        for task in (in_flight, waiting):
            with pytest.raises(TimeoutError, match="late"):
                await asyncio.wait_for(task, 5)  # the reaper ends them; the flush never did
        calls.finish(0)  # the late result of the first is dropped
        await _turns()
        assert calls.calls[1] == [3]  # the expired waiting one never reached a call
        calls.finish(1)
        assert await patient == 30

    asyncio.run(scenario())


def test_bad_limits_are_refused():
    async def flush(items):
        return items

    with pytest.raises(ValueError):
        Coalescer(flush, max_in_flight=0, max_size=1)
