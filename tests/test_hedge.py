"""Hedged classifier calls (serve.hedge): when a second copy goes out, which answer wins, what
happens to the loser, and the limits that keep hedging from doubling an overload."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve import hedge
from serve.hedge import Hedger


class Replicas:
    """Attempts answered in turn by scripted replicas: each entry a delay in seconds (None: the
    replica is cut off and never answers) or an exception to raise."""

    def __init__(self, *script):
        self.script = list(script)
        self.sent = 0
        self.cancelled: list[int] = []

    async def attempt(self):
        n = self.sent
        self.sent += 1
        step = self.script[n] if n < len(self.script) else 0.0
        try:
            if isinstance(step, BaseException):
                raise step
            await asyncio.sleep(3600 if step is None else step)
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise
        return f"answer {n}"


def run(coro):
    return asyncio.run(coro)


def test_a_fast_call_is_sent_once():
    async def scenario():
        h, r = Hedger(0.2), Replicas(0.0)
        assert await h.call(r.attempt, time.monotonic() + 5) == "answer 0"
        return h, r

    h, r = run(scenario())
    assert (r.sent, h.hedged) == (1, 0)


def test_a_silent_replica_is_hedged_and_its_copy_runs_on_until_the_deadline():
    async def scenario():
        h, r = Hedger(0.1), Replicas(None, 0.0)
        t0 = time.monotonic()
        answer = await h.call(r.attempt, time.monotonic() + 0.5)
        took = time.monotonic() - t0
        # The silent copy is still outstanding (Serve's router counts it against its
        # replica), then cancelled at the deadline.
        assert r.cancelled == []
        await asyncio.sleep(0.6)
        return answer, took, h, r

    answer, took, h, r = run(scenario())
    assert answer == "answer 1"
    assert 0.1 <= took < 0.4
    assert (r.sent, h.hedged, h.won) == (2, 1, 1)
    assert r.cancelled == [0]


def test_the_first_copy_wins_when_it_answers_before_the_hedge():
    async def scenario():
        h, r = Hedger(0.05), Replicas(0.15, 0.5)
        answer = await h.call(r.attempt, time.monotonic() + 2)
        await asyncio.sleep(0.6)  # the hedge finishes on its own, before the deadline
        return answer, h, r

    answer, h, r = run(scenario())
    assert answer == "answer 0"
    assert (h.hedged, h.won) == (1, 0)
    assert r.cancelled == []


def test_a_failed_copy_leaves_the_answer_to_the_other():
    async def scenario():
        h, r = Hedger(0.05), Replicas(None, RuntimeError("replica gone"))
        # The hedge fails at once; the first copy is then the only hope: it answers late.
        r.script[0] = 0.2
        return await h.call(r.attempt, time.monotonic() + 2)

    assert run(scenario()) == "answer 0"


def test_when_every_copy_fails_the_first_error_is_raised():
    async def scenario():
        h = Hedger(0.05)
        r = Replicas(None, ValueError("second"))

        async def attempt():
            n = r.sent
            if n == 0:
                r.sent += 1
                await asyncio.sleep(0.1)
                raise KeyError("first")
            return await r.attempt()

        await h.call(attempt, time.monotonic() + 2)

    with pytest.raises(KeyError, match="first"):
        run(scenario())


def test_never_hedging_when_switched_off():
    async def scenario():
        h, r = Hedger(0), Replicas(0.2)
        assert await h.call(r.attempt, time.monotonic() + 2) == "answer 0"
        return h, r

    h, r = run(scenario())
    assert (r.sent, h.hedged) == (1, 0)


def test_the_budget_bounds_hedges_to_a_tenth_of_the_calls(monkeypatch):
    # The delay held at its floor, so that only the budget stops the hedges.
    monkeypatch.setattr(hedge, "FACTOR", 0.01)

    async def scenario():
        h = Hedger(0.01)
        for _ in range(60):  # every call slow past the delay: an overload
            await h.call(Replicas(0.02, 0.02).attempt, time.monotonic() + 1)
        await asyncio.sleep(0.05)
        return h

    h = run(scenario())
    assert h.delay_s() == 0.01
    # The burst (BUDGET_CAP), then a tenth of the calls.
    assert hedge.BUDGET_CAP <= h.hedged <= hedge.BUDGET_CAP + 60 * hedge.BUDGET_PER_CALL


def test_the_delay_follows_the_calls_p95_and_never_goes_under_the_floor():
    async def scenario():
        h = Hedger(0.01)
        for _ in range(hedge.REFRESH_EVERY):
            await h.call(Replicas(0.03).attempt, time.monotonic() + 1)
        slow = h.delay_s()
        fast = Hedger(0.5)
        for _ in range(hedge.REFRESH_EVERY):
            await fast.call(Replicas(0.0).attempt, time.monotonic() + 1)
        return slow, fast.delay_s()

    slow, floor = run(scenario())
    assert hedge.FACTOR * 0.03 <= slow < hedge.FACTOR * 0.03 + 0.1
    assert floor == 0.5


def test_cancelling_the_call_cancels_every_copy():
    async def scenario():
        h, r = Hedger(0.05), Replicas(None, None)
        task = asyncio.create_task(h.call(r.attempt, time.monotonic() + 60))
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        return r

    assert sorted(run(scenario()).cancelled) == [0, 1]


# --- in the ingress ----------------------------------------------------------------------------


def test_the_ingress_answers_every_request_when_one_classifier_replica_is_silent(tiny_model):
    """Serve's router alternating between a live replica and one cut off by the network: each
    call that went to the silent one is hedged, and every request gets its right answer well
    before its deadline (no call slot waits out the 30 s)."""
    from serve.config import AppConfig
    from serve.ingress import Service
    from zeroshot.classifier import ZeroShotClassifier

    clf = ZeroShotClassifier.from_pretrained(tiny_model, dtype="float32")
    sent = []

    async def score(model_id, pairs, counts):
        sent.append(len(counts))
        if len(sent) % 2:  # the silent replica
            await asyncio.sleep(3600)
        return clf.scorer.score(pairs)[0], {}

    async def info():
        return {}

    cfg = AppConfig(model=tiny_model, dtype="float32", ingress={"hedge_after_s": 0.2})
    labels = ["sports", "politics"]
    texts = [f"text number {i} about the match" for i in range(12)]

    async def scenario():
        service = Service(cfg, clf.frontend, score, info)
        t0 = time.monotonic()
        answers = await asyncio.gather(
            *(service.classify(text, labels, None, False) for text in texts)
        )
        return answers, time.monotonic() - t0, service

    answers, took, service = run(scenario())
    expected = clf(texts, labels)
    for (results, _), want in zip(answers, expected):
        assert results[0]["labels"] == want["labels"]
        assert results[0]["scores"] == pytest.approx(want["scores"], abs=1e-6)
    assert took < 5.0  # the deadline is 30 s
    hedger = service.hedgers[cfg.default_model]
    assert hedger.hedged >= 1 and hedger.won == hedger.hedged
