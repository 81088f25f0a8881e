"""Failover: the data plane follows a new table at once; a dying replica costs no request."""

from __future__ import annotations

import asyncio
import time

from llmfleet.routing.table import Retry, Route
from tests.dataplane.conftest import FAST_RETRY, DataPlane, LoadResult, SimFactory, post_many, split, table_for


async def test_traffic_follows_a_failover_update_within_a_second(dataplane: DataPlane, sims: SimFactory) -> None:
    primary, secondary = sims.start("primary-model", "secondary-model")
    clusters = {"ai/primary": [primary], "ai/secondary": [secondary]}
    await asyncio.to_thread(dataplane.apply, table_for([Route("chat", split(("ai/primary", 1)))], clusters))

    switched_at: list[float] = []

    def switch_after_warmup(result: LoadResult) -> None:
        # Under way and steady: the controller decides the primary has no ready replica.
        if not switched_at and result.ok >= 100:
            switched_at.append(time.monotonic())
            dataplane.xds.update(table_for([Route("chat", split(("ai/secondary", 1)))], clusters))

    def a_while_after_switch(_: LoadResult) -> bool:
        return bool(switched_at) and time.monotonic() > switched_at[0] + 1.5

    result = await post_many(dataplane.url, 5000, concurrency=4, on_progress=switch_after_warmup,
                             stop=a_while_after_switch)

    assert set(result.statuses) == {200}, result.errors[:3]  # nothing lost during the switch
    assert switched_at
    t_switch = switched_at[0]
    # Every request sent a second after the update went to the secondary...
    late = [model for sent, _, model in result.timeline if sent > t_switch + 1.0]
    assert late and set(late) == {"secondary-model"}
    # ...and in fact the last primary answer came well within that second.
    last_primary = max(done for _, done, model in result.timeline if model == "primary-model")
    assert last_primary - t_switch < 1.0, f"primary still served {last_primary - t_switch:.3f}s after the update"
    print(f"\nfailover followed in {max(0.0, last_primary - t_switch) * 1000:.0f} ms")


async def test_killed_replica_costs_no_request(dataplane: DataPlane, sims: SimFactory) -> None:
    # Two replicas of one deployment; each request takes a few ms so some are in flight.
    replicas = sims.start("model-k", "model-k", args=("--time-scale", "0.2", "--output-tokens", "8"))
    victim, survivor = replicas
    table = table_for([Route("chat", split(("ai/k", 1)), retry=FAST_RETRY)], {"ai/k": replicas})
    await asyncio.to_thread(dataplane.apply, table)

    killed_at: list[float] = []

    def kill_midway(result: LoadResult) -> None:
        if not killed_at and result.ok >= 150:
            killed_at.append(time.monotonic())
            victim.kill()  # SIGKILL: connections reset, the port refuses from now on

    before = survivor.requests_served()
    result = await post_many(dataplane.url, 500, concurrency=8, on_progress=kill_midway)

    assert killed_at, "the replica was never killed"
    assert result.statuses == {200: 500}, result.errors[:3]
    assert result.errors == []
    after_kill = sum(1 for sent, _, _ in result.timeline if sent > killed_at[0])
    assert after_kill >= 300
    assert survivor.requests_served() - before >= after_kill
    retries = dataplane.envoy.stats(r"cluster\.ai_k\.upstream_rq_retry")
    print(f"\nreplica killed with requests in flight; envoy retries: {retries}")


async def test_without_retries_a_killed_replica_does_cost_requests(dataplane: DataPlane, sims: SimFactory) -> None:
    """The control for the test above: it can fail, and retries are what save it."""
    replicas = sims.start("model-n", "model-n", args=("--time-scale", "0.2", "--output-tokens", "8"))
    table = table_for([Route("chat", split(("ai/n", 1)), retry=Retry(attempts=0))], {"ai/n": replicas})
    await asyncio.to_thread(dataplane.apply, table)

    def kill_midway(result: LoadResult) -> None:
        if result.ok >= 50:
            replicas[0].kill()

    result = await post_many(dataplane.url, 200, concurrency=8, on_progress=kill_midway)
    assert result.statuses[200] < 200, "no request failed without retries; the retry test proves nothing"
    assert set(result.statuses) <= {200, 503}
