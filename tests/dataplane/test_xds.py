"""The data plane survives the control plane; Envoy's rejections are reported."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmfleet.envoy.resources import ENDPOINT_TYPE
from llmfleet.routing.table import Cluster, Endpoint, Route, RouteTable
from tests.dataplane.conftest import KEEPALIVE, DataPlane, Sim, SimFactory, post_many, split, table_for


@pytest.fixture(scope="module")
def ab(module_sims: SimFactory) -> tuple[Sim, Sim]:
    a, b = module_sims.start("model-a", "model-b")
    return a, b


def _only(sim: Sim, cluster: str, ab: tuple[Sim, Sim]) -> RouteTable:
    a, b = ab
    return table_for([Route("chat", split((cluster, 1)))], {"ai/a": [a], "ai/b": [b]})


async def test_ads_stream_survives_envoy_keepalive_pings(dataplane: DataPlane) -> None:
    """gRPC servers by default answer frequent pings with GOAWAY; ours must not."""
    stat = "cluster.llmfleet_xds.upstream_cx_total"

    def connections() -> int:
        return dataplane.envoy.stats(stat.replace(".", r"\."))[stat]

    before = connections()
    await asyncio.sleep(6 * KEEPALIVE)
    assert connections() == before
    assert dataplane.xds.server.nodes() == ["dataplane-test"]


async def test_envoy_keeps_routing_without_xds_and_resyncs_when_it_returns(
        dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    before = await asyncio.to_thread(dataplane.apply, _only(ab[0], "ai/a", ab))

    await asyncio.to_thread(dataplane.xds.close)  # the operator is gone
    result = await post_many(dataplane.url, 100, concurrency=4)
    assert result.models == {"model-a": 100}

    # A fresh operator that has not computed its table yet must not wipe Envoy's config.
    await asyncio.to_thread(dataplane.restart_xds)
    deadline = time.monotonic() + 5
    while not dataplane.xds.server.nodes() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert dataplane.xds.server.nodes() == ["dataplane-test"], "Envoy did not reconnect"
    result = await post_many(dataplane.url, 50, concurrency=4)
    assert result.models == {"model-a": 50}

    # Its first table reaches Envoy over the new stream.
    version = await asyncio.to_thread(dataplane.apply, _only(ab[1], "ai/b", ab))
    assert version != before  # versions name content: a new table, a new version
    result = await post_many(dataplane.url, 100, concurrency=4)
    assert result.models == {"model-b": 100}


async def test_nack_is_reported_and_last_good_config_keeps_serving(
        dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    a, b = ab
    good = table_for([Route("chat", split(("ai/a", 1)))], {"ai/a": [a]})
    await asyncio.to_thread(dataplane.apply, good)
    nacks_before = dataplane.nack_count("endpoint")
    seen = len(dataplane.nacks)

    # A replica address Envoy cannot use (EDS needs an IP) - Envoy must say no.
    bad = RouteTable(routes=good.routes, clusters=(
        Cluster("ai/a", "model-a", (Endpoint("model-a.invalid", a.port),)),))
    bad_version = dataplane.xds.update(bad)
    deadline = time.monotonic() + 10
    while len(dataplane.nacks) == seen and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    nack = dataplane.xds.server.last_nack
    assert nack is not None, "no NACK reported"
    assert dataplane.nacks[-1] == nack  # the on_nack callback saw it too
    assert nack.type_url == ENDPOINT_TYPE and nack.version == bad_version
    assert nack.node_id == "dataplane-test"
    assert "malformed IP address: model-a.invalid" in nack.error
    assert dataplane.nack_count("endpoint") == nacks_before + 1
    assert not dataplane.xds.server.synced(bad_version)
    assert dataplane.xds.server.acked_version(ENDPOINT_TYPE) != bad_version

    # Envoy kept its last good endpoints.
    result = await post_many(dataplane.url, 50, concurrency=4)
    assert result.models == {"model-a": 50}

    # The next good table is accepted and clears the error.
    await asyncio.to_thread(dataplane.apply, table_for([Route("chat", split(("ai/b", 1)))], {"ai/b": [b]}))
    assert dataplane.xds.server.last_nack is None
    result = await post_many(dataplane.url, 50, concurrency=4)
    assert result.models == {"model-b": 50}
