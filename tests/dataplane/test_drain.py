"""Scale-down without failed requests: a replica removed from EDS finishes its streams.

Envoy drains the connection pools of a host that leaves EDS (no active health
checking here, so it leaves at once): requests in flight on it run to completion,
new ones go to the remaining hosts. With the kubelet's order of events after it
(preStop, then SIGTERM, then the sim's drain), no stream is cut.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import dataclass

import openai

from llmfleet.routing.table import Route, RouteTable
from tests.dataplane.conftest import CHAT, DataPlane, LoadResult, Sim, SimFactory, post_many, split, table_for

TOKENS = 40  # of 40 ms each: a stream lasts about 1.6 s
SLOW = ("--time-scale", "1", "--decode-step-ms", "40")


def _table(cluster: str, *sims: Sim) -> RouteTable:
    return table_for([Route("chat", split((cluster, 1)))], {cluster: list(sims)})


def members(dataplane: DataPlane, cluster: str) -> set[str]:
    """``host:port`` of the cluster's hosts as Envoy holds them (admin ``/clusters``)."""
    _, body = dataplane.envoy.admin("/clusters")
    return set(re.findall(rf"^{re.escape(cluster)}::([\d.]+:\d+)::", body, flags=re.MULTILINE))


@dataclass
class Removal:
    """What happened to streams in flight on replica A when A left the cluster for B."""

    results: list[tuple[str, str | None] | BaseException]  # (text, finish_reason) per stream
    ended: list[float]  # when each stream ended (monotonic)
    removed_at: float  # Envoy acknowledged the table without A
    members_after: set[str]  # the cluster's hosts in Envoy right after
    in_flight: bool  # no stream had ended by then
    new: LoadResult  # short requests sent after the removal

    def complete(self) -> int:
        return sum(1 for r in self.results if isinstance(r, tuple) and r[1] == "length"
                   and len(r[0].split()) == TOKENS)


async def stream_through_removal(dataplane: DataPlane, cluster: str, a: Sim, b: Sim, *,
                                 sigterm: bool, streams: int = 4, new_requests: int = 12) -> Removal:
    """Open ``streams`` streams on A (until each has its first chunk), take A out of the
    cluster in favour of B, optionally SIGTERM A (as the kubelet does after the preStop
    sleep), send ``new_requests`` short requests, and wait for everything."""
    sdk = openai.AsyncOpenAI(base_url=f"{dataplane.url}/v1", api_key="unused", max_retries=0)
    ended: list[float] = []
    loop = asyncio.get_running_loop()
    started: list[asyncio.Future[None]] = [loop.create_future() for _ in range(streams)]

    async def one(first: asyncio.Future[None]) -> tuple[str, str | None]:
        stream = await sdk.chat.completions.create(model="chat", messages=CHAT["messages"],
                                                   max_tokens=TOKENS, stream=True)
        text, finish = [], None
        async for chunk in stream:
            if not first.done():
                first.set_result(None)
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        ended.append(time.monotonic())
        return "".join(text), finish

    await asyncio.to_thread(dataplane.apply, _table(cluster, a))
    try:
        tasks = [asyncio.create_task(one(first)) for first in started]
        await asyncio.wait_for(asyncio.gather(*started), timeout=10)
        await asyncio.to_thread(dataplane.apply, _table(cluster, b))
        removed_at = time.monotonic()
        in_flight = not any(t.done() for t in tasks)
        members_after = members(dataplane, cluster)
        if sigterm:
            assert a.proc is not None
            a.proc.send_signal(signal.SIGTERM)
        new = await post_many(dataplane.url, new_requests, concurrency=4, time_limit=30)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    finally:
        await sdk.close()
    return Removal(results, ended, removed_at, members_after, in_flight, new)


async def test_streams_on_an_endpoint_removed_from_eds_complete(dataplane: DataPlane, sims: SimFactory) -> None:
    a, b = sims.start("model-d", "model-d", args=SLOW)
    removal = await stream_through_removal(dataplane, "ai/d", a, b, sigterm=False)

    assert removal.in_flight, "the streams ended before A was removed; nothing tested"
    assert removal.members_after == {f"{b.endpoint.address}:{b.endpoint.port}"}  # A is out of Envoy's hosts
    assert removal.complete() == 4, removal.results
    assert min(removal.ended) > removal.removed_at + 0.5  # ...yet its streams went on for a while
    assert removal.new.statuses == {200: 12}, removal.new.errors[:3]
    assert a.requests_served() == 4  # only the streams: every new request went to B
    assert b.requests_served() == 12
    # Drained, not closed: no upstream connection went down with a request on it.
    assert dataplane.envoy.stats(r"cluster\.ai_d\.upstream_cx_destroy_with_active_rq") == {
        "cluster.ai_d.upstream_cx_destroy_with_active_rq": 0}


async def test_removed_then_sigterm_drains_like_a_deleted_pod(dataplane: DataPlane, sims: SimFactory) -> None:
    """The kubelet's order: out of EDS (during the preStop sleep), then SIGTERM."""
    a, b = sims.start("model-t", "model-t", args=SLOW)
    removal = await stream_through_removal(dataplane, "ai/t", a, b, sigterm=True)

    assert removal.in_flight
    assert removal.complete() == 4, removal.results
    assert a.proc is not None
    assert await asyncio.to_thread(a.proc.wait, 15) == 0  # A exited by itself once they were done
    assert removal.new.statuses == {200: 12}, removal.new.errors[:3]


async def test_control_a_replica_that_does_not_drain_cuts_its_streams(dataplane: DataPlane,
                                                                     sims: SimFactory) -> None:
    """The control for the tests above: the same streams fail when the replica aborts on SIGTERM."""
    a, b = sims.start("model-c", "model-c", args=(*SLOW, "--shutdown-timeout", "0"))
    removal = await stream_through_removal(dataplane, "ai/c", a, b, sigterm=True)

    assert removal.in_flight
    assert removal.complete() < 4, "no stream was cut; the drain tests prove nothing"
