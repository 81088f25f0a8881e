"""Usage accounting: every request's log entry from every Envoy → counters per tenant,
public model and backend.

Each Envoy streams its requests' entries (Envoy's gRPC access log service) to the
operator replica its xDS stream reaches, every ``usage_flush_seconds``; every replica
counts what it receives, so a fleet-wide number is the sum over replicas (what a
Prometheus ``sum`` gives). An entry names the tenant (the header the ingress set after
authentication), the public model, the cluster that answered, the status code, the
tokens the usage Lua read from the response and, for a stream, when its first token
came. Labels are bounded: a tenant, model or backend the route table does not know is
counted as "" (a client cannot mint label values).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..routing.table import RouteTable, TokenPrices
from .resources import (
    COMPLETION_TOKENS_KEY,
    FIRST_TOKEN_KEY,
    HEALTH_ROUTE,
    METADATA_NAMESPACE,
    MODEL_KEY,
    PROMPT_TOKENS_KEY,
    TENANT_HEADER,
)

log = logging.getLogger(__name__)
LABELS = ("tenant", "model", "backend")
# Seconds: a chat's first token and a whole long generation.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TOKEN_TIME_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Usage:
    """One request, as accounting counts it."""

    tenant: str
    model: str
    backend: str  # the answering ModelDeployment's cluster, "<namespace>/<name>"
    code: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # until the last byte went to the client
    first_token_seconds: float | None  # a stream's first token (None: not a stream)


def _field(struct: Any, key: str) -> Any:
    value = struct.fields.get(key)
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


def _seconds(duration: Any) -> float:
    return duration.seconds + duration.nanos / 1e9


def backend_of(upstream_cluster: str, table: RouteTable) -> str:
    """The ModelDeployment cluster behind an entry's upstream cluster (a policy's copy
    of it, "cascade:<model>:<ns>/<name>", or a gate's, names it last)."""
    if table.cluster(upstream_cluster) is not None:
        return upstream_cluster
    name = upstream_cluster.rpartition(":")[2]
    return name if table.cluster(name) is not None else ""


def usage_of(entry: accesslog_pb2.HTTPAccessLogEntry, table: RouteTable) -> Usage:
    """What one log entry says, with labels the table knows."""
    common = entry.common_properties
    ours = common.metadata.filter_metadata.get(METADATA_NAMESPACE)

    def meta(key: str) -> Any:
        return _field(ours, key) if ours is not None else None

    tenant = entry.request.request_headers.get(TENANT_HEADER, "")
    model = meta(MODEL_KEY) or ""
    first = meta(FIRST_TOKEN_KEY)
    return Usage(
        tenant=tenant if tenant in table.tenant_names else "",
        model=model if model in table.models else "",
        backend=backend_of(common.upstream_cluster, table),
        code=entry.response.response_code.value,
        prompt_tokens=int(meta(PROMPT_TOKENS_KEY) or 0),
        completion_tokens=int(meta(COMPLETION_TOKENS_KEY) or 0),
        seconds=_seconds(common.duration) if common.HasField("duration") else 0.0,
        first_token_seconds=float(first) / 1000 if first is not None else None,
    )


def cost_of(usage: Usage, prices: TokenPrices | None) -> float | None:
    """What a request cost: its tokens at its backend's prices (None: no price known)."""
    if prices is None or prices.output is None:
        return None
    return usage.prompt_tokens * prices.input + usage.completion_tokens * prices.output


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("llmfleet_usage_requests", "Requests through the ingress, by tenant, public "
                                "model, answering backend and status code.", [*LABELS, "code"], registry=registry)
        self.tokens = Counter("llmfleet_usage_tokens", "Tokens of the responses (usage), by tenant, model, backend "
                              "and kind (prompt, completion).", [*LABELS, "kind"], registry=registry)
        self.cost = Counter("llmfleet_usage_cost", "What the responses cost: prompt and completion tokens at their "
                            "backend's prices (cost.perMillion*Tokens, else perReplicaHour over the learned "
                            "capacity), in the currency of cost.perReplicaHour.", LABELS, registry=registry)
        self.seconds = Histogram("llmfleet_usage_request_duration_seconds", "Time from a request to the last byte "
                                 "of its answer.", LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("llmfleet_usage_time_to_first_token_seconds", "Streams: time from the request "
                                     "to its first token.", LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.per_token = Histogram("llmfleet_usage_time_per_output_token_seconds", "Streams: time per generated "
                                   "token after the first.", LABELS, buckets=TOKEN_TIME_BUCKETS, registry=registry)

    def record(self, usage: Usage, prices: TokenPrices | None) -> None:
        labels = (usage.tenant, usage.model, usage.backend)
        self.requests.labels(*labels, str(usage.code)).inc()
        if usage.prompt_tokens:
            self.tokens.labels(*labels, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(*labels, "completion").inc(usage.completion_tokens)
        cost = cost_of(usage, prices)
        if cost:
            self.cost.labels(*labels).inc(cost)
        if not usage.backend:
            return  # refused or answered by Envoy itself: no latency worth a histogram
        self.seconds.labels(*labels).observe(usage.seconds)
        if usage.first_token_seconds is not None:
            self.first_token.labels(*labels).observe(usage.first_token_seconds)
            if usage.completion_tokens > 1:
                self.per_token.labels(*labels).observe(
                    max(0.0, usage.seconds - usage.first_token_seconds) / (usage.completion_tokens - 1))


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):
    """Receives Envoys' request logs; counts them against the current route table."""

    def __init__(self, metrics: UsageMetrics) -> None:
        self.metrics = metrics
        self._table = RouteTable()
        self._lock = threading.Lock()

    def configure(self, table: RouteTable) -> None:
        with self._lock:
            self._table = table

    def add_to(self, server: grpc.aio.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, server)

    def count(self, message: als_pb2.StreamAccessLogsMessage) -> None:
        with self._lock:
            table = self._table
        for entry in message.http_logs.log_entry:
            if entry.common_properties.route_name == HEALTH_ROUTE:
                continue  # a readiness probe, nobody's usage
            usage = usage_of(entry, table)
            cluster = table.cluster(usage.backend) if usage.backend else None
            self.metrics.record(usage, cluster.prices if cluster is not None else None)

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                               context: grpc.aio.ServicerContext) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            try:
                self.count(message)
            except Exception:
                log.exception("could not count an access log message")
        return als_pb2.StreamAccessLogsResponse()
