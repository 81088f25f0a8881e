"""The xDS server: pushes the route table to every Envoy over ADS (gRPC, state of the world).

``update(table)`` builds the resources (pure, :mod:`llmfleet.envoy.resources`), gives
them a version and pushes them to every connected Envoy in the order the xDS
protocol's eventual-consistency rules ask for:

  CDS (new clusters added, none removed yet) → EDS → LDS → RDS → CDS (stale clusters
  removed, once no acknowledged route refers to them)

Endpoints follow clusters without waiting for the CDS ACK (Envoy warms a new or
changed cluster until its endpoints arrive), except that a cluster losing its last
endpoint keeps the old ones until the routes that move its traffic are acknowledged
(make before break, as for clusters); the listener and routes wait until
clusters and endpoints are acknowledged, so no route ever points at a cluster Envoy
does not have yet, and no cluster goes away while a route still sends to it. Only
what changed is sent: a weight change is one RDS response, a replica change one EDS.

A NACK stops that Envoy's sequence at the rejected type (Envoy keeps its last good
config; the rejected content is not resent) and is reported: ``last_nack``, the
``on_nack`` callback and the ``llmfleet_xds_nacks_total`` counter.

Until the first ``update()`` the server answers nothing, so an Envoy that reconnects
to a freshly restarted operator keeps serving its last config instead of being
emptied; once a table is set, its resources are sent (Envoy leaves unchanged
clusters and listeners alone).

A version is a hash of the resources' content (16 hex digits), so the same table has
the same version in every operator replica and across restarts: an Envoy that
reconnects to another replica, or to a restarted one, is told nothing new. An
``update`` with an identical result keeps the current version and pushes nothing.
Which of two versions is newer is this server's own business (a local generation
count, see :meth:`XdsServer.synced`).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import logging
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge

from llmfleet.envoy.accounting import AccessLogService, UsageMetrics
from llmfleet.envoy.bootstrap import STATS_ADDRESS_KEY, STATS_PORT_KEY
from llmfleet.envoy.ratelimit import RateLimitService
from llmfleet.envoy.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_ORDER,
    DataPlaneSettings,
    build_resources,
    referenced_clusters,
    resource_name,
)
from llmfleet.routing.table import RouteTable

log = logging.getLogger("llmfleet.xds")

LISTENER_MESSAGE = LISTENER_TYPE.rsplit("/", 1)[1]
SHORT_TYPE = {CLUSTER_TYPE: "cluster", ENDPOINT_TYPE: "endpoint", LISTENER_TYPE: "listener",
              ROUTE_TYPE: "route"}


# --------------------------------------------------------------------------- metrics


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.nacks = Counter("llmfleet_xds_nacks_total",
                             "xDS responses Envoy rejected, by resource type.", ["type"],
                             registry=registry)
        self.pushes = Counter("llmfleet_xds_pushes_total",
                              "xDS responses sent to Envoy, by resource type.", ["type"],
                              registry=registry)
        for short in SHORT_TYPE.values():  # at 0 from the start, so a rate or an alert sees the series
            self.nacks.labels(type=short)
            self.pushes.labels(type=short)
        self.connected = Gauge("llmfleet_xds_connected_envoys",
                               "Envoy ADS streams currently connected.", registry=registry)
        self.rate_limit_decisions = Counter(
            "llmfleet_ratelimit_decisions_total",
            "Rate-limit checks of tenants' requests by the rate-limit service (on the leader), by tenant, "
            "kind of limit (requests, tokens) and decision (allowed, refused).",
            ["tenant", "limit", "decision"], registry=registry)
        self.tenant_tokens = Counter(
            "llmfleet_ratelimit_tokens_total",
            "Tokens (prompt and completion) of tenants' finished responses, as Envoy reported them to the "
            "rate-limit service (tenants with a token limit).", ["tenant"], registry=registry)
        self.usage = UsageMetrics(registry)
        self.version = Gauge("llmfleet_xds_version",
                             "Configurations this xDS server has served since it started (1, 2, ...; "
                             "the xDS version itself is a hash of the content).", registry=registry)


# One set of collectors per registry: a second XdsServer on the same registry reuses them.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_METRICS_LOCK = threading.Lock()


def _metrics_for(registry: CollectorRegistry | None) -> _Metrics:
    if registry is None:
        from llmfleet.telemetry import REGISTRY

        registry = REGISTRY
    with _METRICS_LOCK:
        m = _METRICS.get(registry)
        if m is None:
            m = _METRICS[registry] = _Metrics(registry)
        return m


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Nack:
    """Envoy rejected a response: what, where, and Envoy's own error message."""

    node_id: str
    type_url: str
    version: str  # the version Envoy rejected (it keeps running the previous one)
    error: str  # Envoy's error_detail.message
    code: int  # Envoy's error_detail.code (a google.rpc.Code)
    at: float = field(default_factory=time.time)

    @property
    def type(self) -> str:
        return SHORT_TYPE.get(self.type_url, self.type_url)

    def __str__(self) -> str:
        return f"Envoy {self.node_id} rejected {self.type} version {self.version}: {self.error}"


@dataclass(frozen=True)
class _Res:
    msg: Message
    digest: bytes


def _digest(msg: Message) -> bytes:
    """A hash of ``msg``'s content, the same in every process. Deterministic serialization
    sorts maps, but not those inside an Any (packed when the message was built, in the
    process's own map order): the listener carries one, its access log's JSON format (a
    Struct), so it is hashed in canonical JSON. The other types hold no map in an Any
    (tests/unit/test_envoy_xds.py builds one table in several processes to keep it so)."""
    if msg.DESCRIPTOR.full_name == LISTENER_MESSAGE:
        return hashlib.sha256(json_format.MessageToJson(msg, sort_keys=True, indent=None).encode()).digest()
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).digest()


def _no_endpoints(assignment: Message) -> bool:
    return not any(locality.lb_endpoints for locality in assignment.endpoints)


def _set_key(resources: Mapping[str, _Res]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(resources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(resources[name].digest)
    return h.digest()


VERSION_HEX_DIGITS = 16  # 64 bits of the content hash: a version names one content
GENERATIONS_KEPT = 256  # versions this server can still place in time (synced(version))


@dataclass(frozen=True)
class _Snapshot:
    version: str
    generation: int
    resources: dict[str, dict[str, _Res]]
    key: bytes

    @classmethod
    def build(cls, generation: int, resources: Mapping[str, Sequence[Message]]) -> _Snapshot:
        by_type: dict[str, dict[str, _Res]] = {t: {} for t in TYPE_ORDER}
        for type_url, items in resources.items():
            if type_url not in by_type:
                raise ValueError(f"unsupported resource type {type_url}")
            for msg in items:
                name = resource_name(msg)
                if name in by_type[type_url]:
                    raise ValueError(f"duplicate {SHORT_TYPE[type_url]} resource {name!r}")
                by_type[type_url][name] = _Res(msg, _digest(msg))
        h = hashlib.sha256()
        for t in TYPE_ORDER:
            h.update(t.encode())
            h.update(_set_key(by_type[t]))
        key = h.digest()
        return cls(key.hex()[:VERSION_HEX_DIGITS], generation, by_type, key)


@dataclass
class _TypeState:
    """One resource type on one ADS stream."""

    names: frozenset[str] | None = None  # None: Envoy has not asked for this type
    pending: bool = False  # a response is out, its ACK/NACK not back yet
    sent_nonce: str = ""
    sent_key: bytes | None = None
    sent_version: str = ""
    sent: dict[str, _Res] = field(default_factory=dict)
    acked_key: bytes | None = None
    acked_version: str = ""
    acked: dict[str, _Res] = field(default_factory=dict)
    nacked_key: bytes | None = None


@dataclass
class _NodeStatus:
    node_id: str
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # type URL → version
    synced_generation: int = 0
    synced_version: str = ""  # the version of synced_generation ("" before the first)
    stats_url: str = ""  # where it serves its counters ("" when its bootstrap names no stats port)


def stats_url(peer: str, node: Any) -> str:
    """Where an Envoy serves its counters: at the address and port its node metadata
    names, else at the address its xDS stream comes from (gRPC's peer,
    "ipv4:10.0.0.5:41234" or "ipv6:%5B::1%5D:41234"); "" when it names no port."""
    fields = node.metadata.fields
    if STATS_PORT_KEY not in fields:
        return ""
    host = fields[STATS_ADDRESS_KEY].string_value if STATS_ADDRESS_KEY in fields else ""
    if not host:
        kind, _, address = urllib.parse.unquote(peer).partition(":")
        if kind not in ("ipv4", "ipv6"):
            return ""
        host = address.rsplit(":", 1)[0]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{int(fields[STATS_PORT_KEY].number_value)}"


# --------------------------------------------------------------------------- stream


class _Stream:
    """The server's side of one Envoy's ADS stream: what was sent, what was acked."""

    def __init__(self, server: XdsServer, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.node_id: str | None = None
        self.types = {t: _TypeState() for t in TYPE_ORDER}
        self.out: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = asyncio.Queue()
        self._nonces = itertools.count(1)
        self._force_eds = False
        self.closed = False

    # -- requests -----------------------------------------------------------

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> None:
        if self.node_id is None:
            self.node_id = req.node.id or self.peer
            self.server._node_connected(self, stats_url(self.peer, req.node))
        st = self.types.get(req.type_url)
        if st is None:
            log.warning("Envoy %s asked for unsupported type %s", self.node_id, req.type_url)
            return
        if req.response_nonce:
            if req.response_nonce != st.sent_nonce:
                return  # superseded by a later response; Envoy will answer that one
            # Only the first request naming a nonce answers it; later ones with the same
            # nonce change the subscription (after a NACK they carry the old version).
            if st.pending:
                st.pending = False
                if req.HasField("error_detail") and (req.error_detail.code or req.error_detail.message):
                    st.nacked_key = st.sent_key
                    self.server._record_nack(Nack(self.node_id, req.type_url, st.sent_version,
                                                  req.error_detail.message, req.error_detail.code))
                elif req.version_info == st.sent_version:
                    st.acked_key, st.acked, st.acked_version = st.sent_key, st.sent, st.sent_version
                    st.nacked_key = None
                    self.server._record_ack(self, req.type_url)
                else:
                    st.nacked_key = st.sent_key  # not accepted, though Envoy gave no reason
                    log.warning("Envoy %s did not accept %s version %s (still at %r)", self.node_id,
                                SHORT_TYPE[req.type_url], st.sent_version, req.version_info)
        st.names = frozenset(req.resource_names)
        self.pump()

    # -- what this Envoy should have ---------------------------------------

    def _retained_clusters(self, snap: _Snapshot) -> dict[str, _Res]:
        """Clusters gone from the table that an acknowledged route still sends to."""
        refs: set[str] = set()
        for rc in self.types[ROUTE_TYPE].acked.values():
            refs |= referenced_clusters(rc.msg)
        current = snap.resources[CLUSTER_TYPE]
        return {n: r for n, r in self.types[CLUSTER_TYPE].acked.items() if n not in current and n in refs}

    def _desired(self, type_url: str, snap: _Snapshot) -> dict[str, _Res]:
        current = snap.resources[type_url]
        if type_url == CLUSTER_TYPE:
            return {**current, **self._retained_clusters(snap)}
        if type_url == LISTENER_TYPE:
            return dict(current)
        names = self.types[type_url].names or frozenset()
        out = {n: current[n] for n in names if n in current}
        if type_url == ENDPOINT_TYPE:
            retained = self._retained_clusters(snap)
            acked = self.types[ENDPOINT_TYPE].acked
            out.update({n: acked[n] for n in names if n not in out and n in retained and n in acked})
            if not self._routes_settled(snap):
                # Make before break: a cluster losing its last endpoint keeps the ones
                # Envoy has until the routes that take its traffic away are acknowledged;
                # sent first, the empty assignment would answer that traffic with 503s.
                out.update({n: acked[n] for n, res in out.items()
                            if n in acked and _no_endpoints(res.msg) and not _no_endpoints(acked[n].msg)})
        return out

    def _routes_settled(self, snap: _Snapshot) -> bool:
        """Whether Envoy has acknowledged the routes it should have (or takes none yet)."""
        st = self.types[ROUTE_TYPE]
        return st.names is None or _set_key(self._desired(ROUTE_TYPE, snap)) == st.acked_key

    def _eds_names_needed(self) -> set[str]:
        """Endpoint resources Envoy needs for the clusters it has been sent."""
        names = set()
        for name, res in self.types[CLUSTER_TYPE].sent.items():
            c = res.msg
            if c.type == c.EDS:
                names.add(c.eds_cluster_config.service_name or name)
        return names

    # -- sending ------------------------------------------------------------

    def pump(self) -> None:
        """Send what this Envoy needs next, in xDS order.

        CDS then EDS, LDS then RDS: endpoints may follow clusters before the CDS ACK
        (Envoy warms a new or changed cluster until its endpoints arrive, and may hold
        the ACK until then), and likewise routes after the listener. The listener and
        routes wait until clusters and endpoints are acknowledged, so a route never
        points at a cluster Envoy does not have.
        """
        snap = self.server._snapshot
        if snap is None or self.closed:
            return
        status: dict[str, str] = {}  # type URL → "done" | "inflight" | "blocked"
        for type_url in TYPE_ORDER:
            status[type_url] = self._pump_type(type_url, snap, status)
        if all(s == "done" for s in status.values()):
            self.server._node_synced(self, snap)

    def _pump_type(self, type_url: str, snap: _Snapshot, status: dict[str, str]) -> str:
        st = self.types[type_url]
        clusters_done = status.get(CLUSTER_TYPE) == "done" and status.get(ENDPOINT_TYPE) == "done"
        if type_url == ENDPOINT_TYPE and status[CLUSTER_TYPE] == "blocked":
            return "blocked"
        if type_url == LISTENER_TYPE and not clusters_done:
            return "blocked"
        if type_url == ROUTE_TYPE and (not clusters_done or status[LISTENER_TYPE] == "blocked"):
            return "blocked"
        if st.pending:
            return "inflight"
        if st.names is None:
            # Envoy subscribes to EDS once it has clusters and to RDS once it has the
            # listener; until it does, there is nothing to answer, but it is not done.
            if type_url == ENDPOINT_TYPE and self._eds_names_needed():
                return "blocked"
            if type_url == ROUTE_TYPE and self.types[LISTENER_TYPE].sent:
                return "blocked"
            return "done"
        if type_url == ENDPOINT_TYPE and not self._eds_names_needed() <= st.names:
            return "blocked"  # Envoy has not asked for the new clusters' endpoints yet
        desired = self._desired(type_url, snap)
        key = _set_key(desired)
        force = type_url == ENDPOINT_TYPE and self._force_eds
        if key != st.sent_key or force:
            if key == st.nacked_key and not force:
                return "blocked"  # rejected before; wait for a different version
            self._send(type_url, desired, key, snap.version)
            return "inflight"
        return "done" if st.acked_key == key else "blocked"

    def _send(self, type_url: str, desired: dict[str, _Res], key: bytes, version: str) -> None:
        st = self.types[type_url]
        if type_url == CLUSTER_TYPE:
            # A changed cluster is rebuilt by Envoy and warms until it gets endpoints
            # again, even unchanged ones: resend EDS after it.
            before = st.sent
            self._force_eds = self._force_eds or any(
                n in before and before[n].digest != r.digest for n, r in desired.items())
        elif type_url == ENDPOINT_TYPE:
            self._force_eds = False
        resp = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url,
                                               nonce=str(next(self._nonces)))
        for name in sorted(desired):
            resp.resources.add().Pack(desired[name].msg)
        st.pending, st.sent_nonce, st.sent_key, st.sent_version, st.sent = (
            True, resp.nonce, key, version, desired)
        self.server._metrics.pushes.labels(type=SHORT_TYPE[type_url]).inc()
        log.debug("push %s v%s (%d resources) to %s", SHORT_TYPE[type_url], version,
                  len(desired), self.node_id)
        self.out.put_nowait(resp)


# --------------------------------------------------------------------------- server


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._server._serve_stream(request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "llmfleet serves state-of-the-world ADS only (api_type: GRPC)")


class XdsServer:
    """ADS server for Envoy; asyncio, runs on the loop that calls :meth:`start`.

    ``update``/``set_resources`` may be called from any thread. Callbacks run on the
    server's loop and must not block.
    """

    def __init__(
        self,
        *,
        listener_port: int = 8080,
        listener_address: str = "0.0.0.0",
        settings: DataPlaneSettings | None = None,
        registry: CollectorRegistry | None = None,
        on_nack: Callable[[Nack], Any] | None = None,
        on_synced: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.listener_port = listener_port
        self.listener_address = listener_address
        self.settings = settings or DataPlaneSettings()
        self.on_nack = on_nack
        self.on_synced = on_synced  # (node_id, version) once an Envoy runs that version
        self._metrics = _metrics_for(registry)
        self._snapshot: _Snapshot | None = None
        self._generations: dict[str, int] = {}  # version → the latest generation that served it
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._streams: set[_Stream] = set()
        self._nodes: dict[str, _NodeStatus] = {}
        self._changed: asyncio.Condition | None = None
        self._wakes: set[asyncio.Future[None]] = set()
        self.last_nack: Nack | None = None
        self.nacks: collections.deque[Nack] = collections.deque(maxlen=32)
        self.port: int | None = None
        self.started: float | None = None  # monotonic time start() began serving
        # Served next to ADS: tenants' rate limits (Envoys use the leader's).
        self.rate_limits = RateLimitService(self._metrics.rate_limit_decisions, self._metrics.tenant_tokens)
        # And Envoys' request logs: usage per tenant, model and backend.
        self.accounting = AccessLogService(self._metrics.usage)

    # -- lifecycle ----------------------------------------------------------

    async def start(self, address: str = "0.0.0.0", port: int = 0) -> int:
        """Listen for Envoys (plaintext gRPC); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        server = grpc.aio.server(options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # Envoy pings its idle ADS connection (bootstrap connection_keepalive); gRPC's
            # default policy answers pings more often than every 5 min with GOAWAY, which
            # would drop every Envoy's stream every few pings.
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        self.rate_limits.add_to(server)
        self.accounting.add_to(server)
        host = f"[{address}]" if ":" in address else address
        self.port = server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"xDS server could not listen on {host}:{port}")
        await server.start()
        self._server = server
        self.started = time.monotonic()
        log.info("xDS server listening on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace: float | None = 0.5) -> None:
        """Stop listening and close every stream (Envoy keeps its config)."""
        if self._server is not None:
            for s in list(self._streams):
                s.closed = True
                s.out.put_nowait(None)
            await self._server.stop(grace)
            self._server = None

    # -- input --------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """Version of the resources being served (None before the first update)."""
        snap = self._snapshot
        return snap.version if snap else None

    def update(self, table: RouteTable) -> str:
        """Build the resources for ``table`` and push them; returns their version."""
        self.rate_limits.configure(table)
        self.accounting.configure(table)
        return self.set_resources(build_resources(
            table, listener_port=self.listener_port, listener_address=self.listener_address,
            settings=self.settings))

    def set_resources(self, resources: Mapping[str, Sequence[Message]]) -> str:
        """Serve exactly these resources (by type URL); returns their version."""
        with self._lock:
            previous = self._snapshot
            generation = previous.generation + 1 if previous else 1
            snap = _Snapshot.build(generation, resources)
            if previous is not None and previous.key == snap.key:
                return previous.version
            self._snapshot = snap
            self._generations.pop(snap.version, None)
            self._generations[snap.version] = generation
            while len(self._generations) > GENERATIONS_KEPT:
                del self._generations[next(iter(self._generations))]
        self._metrics.version.set(snap.generation)
        log.info("xDS resources version %s: %s", snap.version,
                 ", ".join(f"{len(snap.resources[t])} {SHORT_TYPE[t]}" for t in TYPE_ORDER))
        self._in_loop(self._push_all)
        return snap.version

    def _in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def _push_all(self) -> None:
        for s in list(self._streams):
            s.pump()

    # -- state --------------------------------------------------------------

    def nodes(self) -> list[str]:
        """IDs of the Envoys currently connected."""
        return sorted(n.node_id for n in self._nodes.values() if n.streams > 0)

    def node_versions(self) -> dict[str, str]:
        """Connected Envoy → the version it runs in full ("" until it has synced once)."""
        return {n.node_id: n.synced_version for n in self._nodes.values() if n.streams > 0}

    def stats_urls(self) -> dict[str, str]:
        """Connected Envoy → where it serves its counters (those that say)."""
        return {n.node_id: n.stats_url for n in self._nodes.values() if n.streams > 0 and n.stats_url}

    def generation(self, version: str) -> int | None:
        """Where ``version`` stands in this server's history (higher is newer; None:
        a version it never served, or one long gone)."""
        return self._generations.get(version)

    def acked_version(self, type_url: str, node_id: str | None = None) -> str | None:
        """Version of ``type_url`` resources that Envoy ``node_id`` acknowledged.

        Without ``node_id``: the version every connected Envoy acknowledged, or None
        when they differ or none is connected.
        """
        if node_id is not None:
            node = self._nodes.get(node_id)
            return node.acked.get(type_url) if node else None
        versions = {n.acked.get(type_url) for n in self._nodes.values() if n.streams > 0}
        return versions.pop() if len(versions) == 1 else None

    def synced(self, version: str | None = None, node_id: str | None = None) -> bool:
        """Whether Envoy ``node_id`` (default: every connected one, at least one) runs
        ``version`` (default: the current one) or later, every type acknowledged."""
        version = version or self.version
        if version is None:
            return False
        generation = self._generations.get(version)
        if generation is None:
            return False  # not a version this server served (or one long gone)
        if node_id is not None:
            node = self._nodes.get(node_id)
            return node is not None and node.synced_generation >= generation
        connected = [n for n in self._nodes.values() if n.streams > 0]
        return bool(connected) and all(n.synced_generation >= generation for n in connected)

    async def wait_acked(self, version: str | None = None, *, node_id: str | None = None,
                         timeout: float = 10.0) -> None:
        """Wait until :meth:`synced`; ``TimeoutError`` says what is missing."""
        assert self._changed is not None, "start() the server first"
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.synced(version, node_id)), timeout)
            except TimeoutError:
                raise TimeoutError(self._describe(version, node_id)) from None

    def _describe(self, version: str | None, node_id: str | None) -> str:
        want = version or self.version
        parts = [f"Envoy did not acknowledge version {want} in time"]
        for n in self._nodes.values():
            if node_id is None or n.node_id == node_id:
                acked = ", ".join(f"{SHORT_TYPE[t]}={v}" for t, v in sorted(n.acked.items()))
                parts.append(f"{n.node_id} (streams={n.streams}): synced={n.synced_generation} {acked}")
        if not self._nodes:
            parts.append("no Envoy has connected")
        if self.last_nack:
            parts.append(f"last NACK: {self.last_nack}")
        return "; ".join(parts)

    # -- callbacks from streams ---------------------------------------------

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def _wake() -> None:
            async with cond:
                cond.notify_all()

        task = asyncio.ensure_future(_wake())
        self._wakes.add(task)  # a reference, so the task is not collected before it runs
        task.add_done_callback(self._wakes.discard)

    def _node(self, node_id: str) -> _NodeStatus:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _NodeStatus(node_id)
        return node

    def _node_connected(self, stream: _Stream, stats: str) -> None:
        assert stream.node_id is not None
        node = self._node(stream.node_id)
        node.streams += 1
        node.stats_url = stats
        # A new stream starts from nothing: it is synced only once it has acked again.
        node.synced_generation, node.synced_version = 0, ""
        self._metrics.connected.inc()
        log.info("Envoy %s connected (%s)", stream.node_id, stream.peer)
        self._notify()

    def _record_ack(self, stream: _Stream, type_url: str) -> None:
        assert stream.node_id is not None
        node = self._node(stream.node_id)
        node.acked[type_url] = stream.types[type_url].acked_version
        last = self.last_nack
        if last is not None and last.node_id == stream.node_id and last.type_url == type_url:
            self.last_nack = None
        self._notify()

    def _record_nack(self, nack: Nack) -> None:
        log.warning("%s", nack)
        self.last_nack = nack
        self.nacks.append(nack)
        self._metrics.nacks.labels(type=nack.type).inc()
        if self.on_nack is not None:
            try:
                self.on_nack(nack)
            except Exception:
                log.exception("on_nack callback failed")
        self._notify()

    def _node_synced(self, stream: _Stream, snap: _Snapshot) -> None:
        assert stream.node_id is not None
        node = self._node(stream.node_id)
        if node.synced_generation >= snap.generation:
            return
        node.synced_generation, node.synced_version = snap.generation, snap.version
        log.info("Envoy %s runs version %s", stream.node_id, snap.version)
        if self.on_synced is not None:
            try:
                self.on_synced(stream.node_id, snap.version)
            except Exception:
                log.exception("on_synced callback failed")
        self._notify()

    # -- the stream ---------------------------------------------------------

    async def _serve_stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stream = _Stream(self, context.peer())
        self._streams.add(stream)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    stream.on_request(req)
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            except Exception:
                log.exception("xDS stream from %s failed", stream.node_id or stream.peer)
            finally:
                stream.out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (resp := await stream.out.get()) is not None:
                await context.write(resp)
        finally:
            stream.closed = True
            reader.cancel()
            self._streams.discard(stream)
            if stream.node_id is not None:
                node = self._node(stream.node_id)
                node.streams -= 1
                self._metrics.connected.dec()
                log.info("Envoy %s disconnected", stream.node_id)
                self._notify()

