"""The ADS server's protocol rules, driven by a scripted client over real gRPC on 127.0.0.1.

Real Envoy is in tests/dataplane; here the client makes the orderings and failures
that Envoy only produces by chance observable and repeatable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2 as core_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry

from llmfleet.envoy.bootstrap import STATS_ADDRESS_KEY, STATS_PORT_KEY
from llmfleet.envoy.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from llmfleet.envoy.xds import Nack, XdsServer, stats_url
from llmfleet.routing.table import Cluster, Endpoint, Route, RouteTable, WeightedBackend


def _table(*clusters: str, weights: Sequence[int] | None = None) -> RouteTable:
    weights = weights or [1] * len(clusters)
    return RouteTable(
        routes=(Route("chat", tuple(WeightedBackend(c, w) for c, w in zip(clusters, weights, strict=True))),),
        clusters=tuple(Cluster(c, c.split("/")[1], (Endpoint("10.0.0.1", 8000),)) for c in clusters),
    )


class FakeEnvoy:
    """Speaks ADS like Envoy, one request at a time, as the test says."""

    def __init__(self, port: int, node_id: str = "envoy-1") -> None:
        self.node_id = node_id
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        self.received: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}
        self._first = True
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            resp = await self.call.read()
            if resp is grpc.aio.EOF:
                return
            self.received.put_nowait(resp)

    async def request(self, type_url: str, names: Sequence[str] = (), *, nonce: str = "", version: str = "",
                      error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names),
                                             response_nonce=nonce, version_info=version)
        if self._first:
            req.node.id = self.node_id
            self._first = False
        if error is not None:
            req.error_detail.code = 3
            req.error_detail.message = error
        await self.call.write(req)

    async def recv(self, type_url: str | None = None, timeout: float = 3.0) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.received.get(), timeout)
        if type_url is not None:
            assert resp.type_url == type_url, f"got {resp.type_url}, expected {type_url}"
        self.last[resp.type_url] = resp
        return resp

    async def nothing(self, wait: float = 0.2) -> None:
        await asyncio.sleep(wait)
        assert self.received.empty(), f"unexpected {self.received.get_nowait().type_url}"

    async def ack(self, resp: discovery_pb2.DiscoveryResponse, names: Sequence[str] = ()) -> None:
        await self.request(resp.type_url, names, nonce=resp.nonce, version=resp.version_info)

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        await self.channel.close()


def _unpack_assignment(any_) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment()
    any_.Unpack(assignment)
    return assignment


def _names(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for any_ in resp.resources:
        if resp.type_url == CLUSTER_TYPE:
            c = cluster_pb2.Cluster()
            any_.Unpack(c)
            out.append(c.name)
        elif resp.type_url == ROUTE_TYPE:
            rc = route_pb2.RouteConfiguration()
            any_.Unpack(rc)
            out.append(rc.name)
        else:
            out.append(any_.type_url)
    return out


@pytest.fixture
async def server() -> AsyncIterator[XdsServer]:
    nacks: list[Nack] = []
    srv = XdsServer(listener_port=8080, registry=CollectorRegistry(), on_nack=nacks.append)
    srv.seen_nacks = nacks  # type: ignore[attr-defined]
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop(0)


@pytest.fixture
async def envoy(server: XdsServer) -> AsyncIterator[FakeEnvoy]:
    assert server.port is not None
    client = FakeEnvoy(server.port)
    yield client
    await client.close()


async def _sync(server: XdsServer, envoy: FakeEnvoy, eds_names: Sequence[str]) -> None:
    """The initial exchange as Envoy does it: CDS, EDS, LDS, RDS, each acked."""
    await envoy.request(CLUSTER_TYPE)
    await envoy.request(LISTENER_TYPE)
    cds = await envoy.recv(CLUSTER_TYPE)
    await envoy.ack(cds)
    await envoy.request(ENDPOINT_TYPE, eds_names)
    await envoy.ack(await envoy.recv(ENDPOINT_TYPE), eds_names)
    lds = await envoy.recv(LISTENER_TYPE)
    await envoy.ack(lds)
    await envoy.request(ROUTE_TYPE, ["llmfleet"])
    await envoy.ack(await envoy.recv(ROUTE_TYPE), ["llmfleet"])
    await server.wait_acked(node_id=envoy.node_id, timeout=2)


async def test_nothing_is_sent_before_the_first_table(server: XdsServer, envoy: FakeEnvoy) -> None:
    """A restarted operator must not empty Envoy before it knows the routes."""
    await envoy.request(CLUSTER_TYPE)
    await envoy.request(LISTENER_TYPE)
    await envoy.nothing()
    server.update(_table("ai/a"))
    assert _names(await envoy.recv(CLUSTER_TYPE)) == ["ai/a"]


async def test_initial_sync_goes_cds_eds_lds_rds_each_after_an_ack(server: XdsServer, envoy: FakeEnvoy) -> None:
    version = server.update(_table("ai/a", "ai/b"))
    await envoy.request(CLUSTER_TYPE)
    await envoy.request(LISTENER_TYPE)
    cds = await envoy.recv(CLUSTER_TYPE)
    assert cds.version_info == version and _names(cds) == ["ai/a", "ai/b"]
    await envoy.nothing()  # no listener before clusters are in place
    await envoy.ack(cds)
    await envoy.nothing()  # endpoints only once Envoy asks for them
    await envoy.request(ENDPOINT_TYPE, ["ai/a"])
    await envoy.nothing()  # ...for all of its clusters
    await envoy.request(ENDPOINT_TYPE, ["ai/a", "ai/b"])
    eds = await envoy.recv(ENDPOINT_TYPE)
    assert len(eds.resources) == 2
    await envoy.nothing()
    await envoy.ack(eds, ["ai/a", "ai/b"])
    lds = await envoy.recv(LISTENER_TYPE)
    await envoy.ack(lds)
    await envoy.nothing()
    assert not server.synced(version)
    await envoy.request(ROUTE_TYPE, ["llmfleet"])
    rds = await envoy.recv(ROUTE_TYPE)
    await envoy.ack(rds, ["llmfleet"])
    await server.wait_acked(version, timeout=2)
    assert server.nodes() == ["envoy-1"]
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        assert server.acked_version(type_url) == version
        assert server.acked_version(type_url, "envoy-1") == version


async def test_weight_change_pushes_routes_only(server: XdsServer, envoy: FakeEnvoy) -> None:
    first = server.update(_table("ai/a", "ai/b", weights=[80, 20]))
    await _sync(server, envoy, ["ai/a", "ai/b"])
    version = server.update(_table("ai/a", "ai/b", weights=[50, 50]))
    rds = await envoy.recv(ROUTE_TYPE)
    assert rds.version_info == version
    await envoy.ack(rds, ["llmfleet"])
    await envoy.nothing()
    await server.wait_acked(version, timeout=2)
    assert server.acked_version(CLUSTER_TYPE) == first


async def test_identical_table_keeps_its_version_and_pushes_nothing(server: XdsServer, envoy: FakeEnvoy) -> None:
    first = server.update(_table("ai/a"))
    await _sync(server, envoy, ["ai/a"])
    assert server.update(_table("ai/a")) == first
    await envoy.nothing()


async def test_a_version_names_the_content_in_every_server() -> None:
    """Two operator replicas, or one before and after a restart, give the same table the
    same version, so an Envoy that reconnects to either is told nothing new."""
    one = XdsServer(listener_port=8080, registry=CollectorRegistry())
    two = XdsServer(listener_port=8080, registry=CollectorRegistry())
    a, b = _table("ai/a"), _table("ai/a", "ai/b")
    assert one.update(a) == two.update(a)
    assert one.update(b) == two.update(b) != one.update(a)
    assert two.update(_table("ai/a", "ai/b", weights=[7, 1])) not in (one.version, two.update(a))
    assert len(one.version or "") == 16


async def test_synced_places_versions_by_this_servers_own_history(server: XdsServer, envoy: FakeEnvoy) -> None:
    first = server.update(_table("ai/a"))
    await _sync(server, envoy, ["ai/a"])
    assert server.synced(first)
    assert not server.synced("0123456789abcdef")  # a version this server never served
    second = server.update(_table("ai/a", "ai/b"))
    assert server.synced(first) and not server.synced(second)  # runs first; second is newer


async def test_new_cluster_gets_endpoints_before_its_cds_ack_and_routes_after(
        server: XdsServer, envoy: FakeEnvoy) -> None:
    first = server.update(_table("ai/a"))
    await _sync(server, envoy, ["ai/a"])
    version = server.update(_table("ai/a", "ai/b"))
    cds = await envoy.recv(CLUSTER_TYPE)
    assert _names(cds) == ["ai/a", "ai/b"]
    # Envoy warms ai/b and asks for its endpoints before acknowledging the clusters.
    eds_nonce = envoy.last[ENDPOINT_TYPE].nonce
    await envoy.request(ENDPOINT_TYPE, ["ai/a", "ai/b"], nonce=eds_nonce, version=first)
    eds = await envoy.recv(ENDPOINT_TYPE)
    assert len(eds.resources) == 2
    await envoy.nothing()  # routes wait for both acks
    await envoy.ack(cds)
    await envoy.nothing()
    await envoy.ack(eds, ["ai/a", "ai/b"])
    rds = await envoy.recv(ROUTE_TYPE)
    assert rds.version_info == version
    await envoy.ack(rds, ["llmfleet"])
    await server.wait_acked(version, timeout=2)


async def test_changed_cluster_gets_its_unchanged_endpoints_again(server: XdsServer, envoy: FakeEnvoy) -> None:
    """Envoy rebuilds a changed cluster and warms it until endpoints arrive, changed or not."""
    server.update(_table("ai/a"))
    await _sync(server, envoy, ["ai/a"])
    renamed = RouteTable(routes=_table("ai/a").routes,
                         clusters=(Cluster("ai/a", "a-v2", (Endpoint("10.0.0.1", 8000),)),))
    version = server.update(renamed)
    cds = await envoy.recv(CLUSTER_TYPE)
    eds = await envoy.recv(ENDPOINT_TYPE)
    assert eds.resources == envoy.last[ENDPOINT_TYPE].resources
    await envoy.ack(cds)
    await envoy.ack(eds, ["ai/a"])
    await server.wait_acked(version, timeout=2)


async def test_removed_cluster_goes_only_after_routes_stop_using_it(server: XdsServer, envoy: FakeEnvoy) -> None:
    first = server.update(_table("ai/a", "ai/b"))
    await _sync(server, envoy, ["ai/a", "ai/b"])
    version = server.update(_table("ai/a"))
    rds = await envoy.recv(ROUTE_TYPE)  # first the routes move away from ai/b...
    await envoy.nothing()
    await envoy.ack(rds, ["llmfleet"])
    cds = await envoy.recv(CLUSTER_TYPE)  # ...then ai/b is removed
    assert _names(cds) == ["ai/a"]
    await envoy.ack(cds)
    assert not server.synced(version)
    await envoy.request(ENDPOINT_TYPE, ["ai/a"], nonce=envoy.last[ENDPOINT_TYPE].nonce, version=first)
    eds = await envoy.recv(ENDPOINT_TYPE)
    await envoy.ack(eds, ["ai/a"])
    await server.wait_acked(version, timeout=2)


async def test_a_cluster_losing_its_last_endpoint_keeps_it_until_the_routes_move_away(
        server: XdsServer, envoy: FakeEnvoy) -> None:
    """The only replica of ai/a goes: its traffic moves to ai/b first (RDS), and only then
    does its assignment empty (EDS); the other order answers ai/a's share with 503s."""
    server.update(_table("ai/a", "ai/b", weights=[80, 20]))
    await _sync(server, envoy, ["ai/a", "ai/b"])
    gone = RouteTable(routes=(Route("chat", (WeightedBackend("ai/b", 100),)),),
                      clusters=(Cluster("ai/a", "a", ()), Cluster("ai/b", "b", (Endpoint("10.0.0.1", 8000),))))
    version = server.update(gone)
    rds = await envoy.recv(ROUTE_TYPE)
    await envoy.nothing()  # ai/a keeps its endpoint while Envoy may still send to it
    await envoy.ack(rds, ["llmfleet"])
    eds = await envoy.recv(ENDPOINT_TYPE)
    emptied = {a.cluster_name: sum(len(loc.lb_endpoints) for loc in a.endpoints)
               for a in (_unpack_assignment(r) for r in eds.resources)}
    assert emptied == {"ai/a": 0, "ai/b": 1}
    await envoy.ack(eds, ["ai/a", "ai/b"])
    await server.wait_acked(version, timeout=2)


async def test_a_cluster_losing_one_of_several_endpoints_changes_at_once(server: XdsServer, envoy: FakeEnvoy) -> None:
    two = RouteTable(routes=_table("ai/a").routes,
                     clusters=(Cluster("ai/a", "a", (Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000))),))
    server.update(two)
    await _sync(server, envoy, ["ai/a"])
    version = server.update(_table("ai/a"))
    eds = await envoy.recv(ENDPOINT_TYPE)  # no route changes: endpoints go straight away
    await envoy.ack(eds, ["ai/a"])
    await server.wait_acked(version, timeout=2)


async def test_nack_is_reported_and_not_resent(server: XdsServer, envoy: FakeEnvoy) -> None:
    first = server.update(_table("ai/a", "ai/b"))
    await _sync(server, envoy, ["ai/a", "ai/b"])
    bad = server.update(_table("ai/a", "ai/b", weights=[7, 1]))
    rds = await envoy.recv(ROUTE_TYPE)
    await envoy.request(ROUTE_TYPE, ["llmfleet"], nonce=rds.nonce, version=first, error="route: bad weight")

    await envoy.nothing()  # the same content is not pushed again
    nack = server.last_nack
    assert nack is not None
    assert (nack.node_id, nack.type, nack.version, nack.error, nack.code) == (
        "envoy-1", "route", bad, "route: bad weight", 3)
    assert server.seen_nacks == [nack]  # type: ignore[attr-defined]
    assert server._metrics.nacks.labels(type="route")._value.get() == 1
    assert server.acked_version(ROUTE_TYPE) == first
    with pytest.raises(TimeoutError, match=f"last NACK: Envoy envoy-1 rejected route version {bad}: route: bad weight"):
        await server.wait_acked(bad, timeout=0.3)

    # A follow-up request with the same nonce (Envoy re-subscribing) is not an ACK.
    await envoy.request(ROUTE_TYPE, ["llmfleet"], nonce=rds.nonce, version=first)
    await envoy.nothing()
    assert server.acked_version(ROUTE_TYPE) == first

    good = server.update(_table("ai/a", "ai/b", weights=[9, 1]))
    rds = await envoy.recv(ROUTE_TYPE)
    await envoy.ack(rds, ["llmfleet"])
    await server.wait_acked(good, timeout=2)
    assert server.last_nack is None


async def test_stale_nonce_is_ignored(server: XdsServer, envoy: FakeEnvoy) -> None:
    initial = server.update(_table("ai/a", "ai/b"))
    await _sync(server, envoy, ["ai/a", "ai/b"])
    server.update(_table("ai/a", "ai/b", weights=[2, 1]))
    first = await envoy.recv(ROUTE_TYPE)
    await envoy.request(ROUTE_TYPE, ["llmfleet"], nonce="not-the-latest", version=first.version_info)
    await envoy.nothing()
    assert server.acked_version(ROUTE_TYPE) == initial
    await envoy.ack(first, ["llmfleet"])
    await server.wait_acked(timeout=2)


async def test_every_connected_envoy_gets_updates(server: XdsServer, envoy: FakeEnvoy) -> None:
    assert server.port is not None
    other = FakeEnvoy(server.port, node_id="envoy-2")
    try:
        server.update(_table("ai/a", "ai/b"))
        await _sync(server, envoy, ["ai/a", "ai/b"])
        await _sync(server, other, ["ai/a", "ai/b"])
        version = server.update(_table("ai/a", "ai/b", weights=[3, 1]))
        for client in (envoy, other):
            await client.ack(await client.recv(ROUTE_TYPE), ["llmfleet"])
        await server.wait_acked(version, timeout=2)
        assert server.nodes() == ["envoy-1", "envoy-2"]
        assert server.synced(version, node_id="envoy-2")
    finally:
        await other.close()


SAME_TABLE_EVERYWHERE = """
from llmfleet.envoy.xds import XdsServer
from llmfleet.routing.table import Cluster, Endpoint, Retry, Route, RouteTable, Rule, RuleMatch, WeightedBackend
clusters = (Cluster("a/small", "llama-8b", (Endpoint("127.0.0.2", 8000), Endpoint("127.0.0.3", 8000))),
            Cluster("a/big", "llama-70b", (Endpoint("10.96.0.9", 18001),)))
backends = (WeightedBackend("a/small", 70), WeightedBackend("a/big", 30))
gold = Rule(RuleMatch(headers=(("x-tier", "gold"),)), backends[1:])
routes = (Route("chat", backends, (gold,), Retry(3, 60, ("reset",))), Route("code", backends[:1]))
print(XdsServer().update(RouteTable(routes, clusters)))
"""


def test_one_table_has_one_version_in_every_process():
    """Operator replicas are separate processes: the same table must get the same version
    in each (maps inside packed Any values are ordered per process)."""
    import subprocess
    import sys

    versions = {subprocess.run([sys.executable, "-c", SAME_TABLE_EVERYWHERE], capture_output=True, text=True,
                               check=True, env={"PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in range(4)}
    assert len(versions) == 1, versions


@pytest.mark.parametrize("peer, metadata, expected", [
    ("ipv4:10.0.0.5:41234", {STATS_PORT_KEY: 19001}, "http://10.0.0.5:19001"),
    ("ipv6:%5B::1%5D:41234", {STATS_PORT_KEY: 19001}, "http://[::1]:19001"),
    # Behind a proxy that changes the source address, the pod says where it is.
    ("ipv4:10.96.0.1:41234", {STATS_PORT_KEY: 19001, STATS_ADDRESS_KEY: "10.0.0.5"}, "http://10.0.0.5:19001"),
    ("ipv4:10.96.0.1:41234", {STATS_PORT_KEY: 19001, STATS_ADDRESS_KEY: "fd00::5"}, "http://[fd00::5]:19001"),
    ("ipv4:10.0.0.5:41234", {}, ""),  # its bootstrap names no stats port
    ("unix:/tmp/xds.sock", {STATS_PORT_KEY: 19001}, ""),
])
def test_an_envoys_counters_are_read_where_it_says_else_where_its_stream_comes_from(peer, metadata, expected) -> None:
    node = core_pb2.Node(id="envoy-1")
    node.metadata.update(metadata)
    assert stats_url(peer, node) == expected
