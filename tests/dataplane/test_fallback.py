"""A fallback tier through a real Envoy: requests the chosen backend fails go on to the
fallback, clients see only its answers, and a backend that keeps failing is ejected."""

from __future__ import annotations

import asyncio

from llmfleet.routing.table import Fallback, Retry, Route
from tests.dataplane.conftest import DataPlane, SimFactory, post_many, split, table_for


def _with_fallback(primary, fallback, retry: Retry | None = None) -> object:
    route = Route("chat", split(("ai/primary", 1)), retry=retry or Retry(),
                  fallback=Fallback(("ai/fallback",)))
    return table_for([route], {"ai/primary": [primary], "ai/fallback": [fallback]})


def _attempts(dataplane: DataPlane, cluster: str) -> int:
    return int(dataplane.envoy.stats(f"cluster.{cluster}.upstream_rq_total").get(
        f"cluster.{cluster}.upstream_rq_total", 0))


async def test_a_healthy_primary_serves_everything(dataplane: DataPlane, sims: SimFactory) -> None:
    primary, fallback = sims.start("model-a", "model-b")
    await asyncio.to_thread(dataplane.apply, _with_fallback(primary, fallback))
    result = await post_many(dataplane.url, 50, concurrency=4)
    assert result.statuses == {200: 50} and result.models == {"model-a": 50}


async def test_a_primary_answering_500_or_429_leaves_clients_only_the_fallbacks_answers(
        dataplane: DataPlane, sims: SimFactory) -> None:
    for status in ("500", "429"):
        (primary,) = sims.start("model-a", args=("--error-rate", "1", "--error-status", status))
        (fallback,) = sims.start("model-b")
        await asyncio.to_thread(dataplane.apply, _with_fallback(primary, fallback))
        before = _attempts(dataplane, "ai_primary")
        result = await post_many(dataplane.url, 40, concurrency=4)
        assert result.statuses == {200: 40} and result.models == {"model-b": 40}, (status, result.errors[:2])
        assert _attempts(dataplane, "ai_primary") > before, "the primary was never tried"


async def test_a_hanging_primary_times_out_into_the_fallback(dataplane: DataPlane, sims: SimFactory) -> None:
    (primary,) = sims.start("model-a", args=("--hang-rate", "1"))
    (fallback,) = sims.start("model-b")
    retry = Retry(attempts=1, per_try_timeout_seconds=1)
    await asyncio.to_thread(dataplane.apply, _with_fallback(primary, fallback, retry))
    result = await post_many(dataplane.url, 8, concurrency=4)
    assert result.statuses == {200: 8} and result.models == {"model-b": 8}, result.errors[:2]
    # The first answers waited out one per-try timeout (the hang); once the hanging
    # backend's timeouts got it ejected, the rest went straight to the fallback.
    took = sorted(round(done - sent, 2) for sent, done, _ in result.timeline)
    assert took[-1] >= 1.0 and took[-1] < 5.0, took


async def test_a_backend_that_keeps_failing_is_ejected_and_its_requests_go_straight_to_the_fallback(
        dataplane: DataPlane, sims: SimFactory) -> None:
    (primary,) = sims.start("model-a", args=("--error-rate", "1"))
    (fallback,) = sims.start("model-b")
    await asyncio.to_thread(dataplane.apply, _with_fallback(primary, fallback))
    first = await post_many(dataplane.url, 30, concurrency=2)
    assert first.statuses == {200: 30}
    await asyncio.sleep(3)  # an outlier-detection interval (2 s) passes: 5 consecutive 5xx eject it
    tried = _attempts(dataplane, "ai_primary")
    second = await post_many(dataplane.url, 30, concurrency=2)
    assert second.statuses == {200: 30} and second.models == {"model-b": 30}
    assert _attempts(dataplane, "ai_primary") == tried, "an ejected backend still got attempts"


async def test_a_saturated_primary_overflows_to_the_fallback_instead_of_queueing(
        dataplane: DataPlane, sims: SimFactory) -> None:
    # The primary answers in about 1 s (4 tokens at 250 ms a step) and may hold 2 requests.
    (primary,) = sims.start("model-a", args=("--time-scale", "1", "--decode-step-ms", "250"))
    (fallback,) = sims.start("model-b")
    gated = Route("chat", split(("ai/primary", 1)), retry=Retry(),
                  fallback=Fallback(("ai/fallback",), max_in_flight_per_replica=2))
    await asyncio.to_thread(dataplane.apply, table_for([gated], {"ai/primary": [primary],
                                                                 "ai/fallback": [fallback]}))
    result = await post_many(dataplane.url, 12, concurrency=6)
    assert result.statuses == {200: 12}, result.errors[:2]
    # 2 at a time on the primary while the others went on to the fallback at once:
    # 12 answers in about the time of one or two of the primary's.
    assert 2 <= result.models["model-a"] <= 4 and result.models["model-b"] >= 8, result.models
    took = max(done for _, done, _ in result.timeline) - min(sent for sent, _, _ in result.timeline)
    assert took < 2.8, took
    # Without the limit the primary takes every request (its batch has room for all).
    await asyncio.to_thread(dataplane.apply, _with_fallback(primary, fallback))
    result = await post_many(dataplane.url, 12, concurrency=6)
    assert result.statuses == {200: 12} and result.models == {"model-a": 12}
