"""Envoy's rate-limit service (``envoy.service.ratelimit.v3``), served by the operator.

Every Envoy asks one place, the leader (the route table names it), so a tenant's limit
holds across Envoy replicas. The decisions are the pure ``routing.ratelimit.Limiter``'s;
this module only reads Envoy's descriptors and answers in its terms: a refusal carries
OpenAI's 429 body (``rate_limit_exceeded``) and ``Retry-After``. When the service cannot
be reached, Envoy lets requests through (``failure_mode_deny: false``): losing the limit
for a moment is better than refusing everyone.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import Counter

from ..api import openai
from ..routing.budgets import subject_owner
from ..routing.ratelimit import (
    BUDGET,
    CONCURRENCY,
    DONE,
    KINDS,
    REQUESTS,
    SPENT_COMPLETION,
    SPENT_PROMPT,
    TOKENS,
    Decision,
    Limiter,
    limit_message,
)
from ..routing.table import RouteTable
from .accounting import backend_of
from .resources import RATE_LIMIT_KIND, RATE_LIMIT_POLICY, RATE_LIMIT_REQUEST, RATE_LIMIT_TENANT


def refusal(tenant: str, kind: str, decision: Decision) -> dict[str, Any]:
    """OpenAI's 429 body for a refused request."""
    if kind == BUDGET:
        return openai.error_body(
            f"You exceeded your current quota: a budget of {subject_owner(tenant)} is spent. "
            f"It renews in {decision.retry_after}s.", "insufficient_quota", code="insufficient_quota")
    limit = decision.limit
    assert limit is not None
    if kind == CONCURRENCY:
        return openai.error_body(
            f"Too many requests in flight for tenant {tenant}: at most {limit.limit} at once. "
            f"Please try again in {decision.retry_after}s.", "requests", code="rate_limit_exceeded")
    return openai.error_body(limit_message(tenant, kind, limit, decision.retry_after), kind,
                             code="rate_limit_exceeded")


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """Answers ShouldRateLimit from the current tenants' limits and the tenants' and
    RoutePolicies' budgets (``configure``, any thread)."""

    def __init__(self, decisions: Counter, tokens: Counter, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.limiter = Limiter()
        self.table = RouteTable()  # the clusters' prices, for budgets
        self.lock = threading.Lock()  # held while the limiter changes: take it to read spend consistently
        self._clock, self._wall = clock, wall
        self._decisions, self._tokens = decisions, tokens

    def configure(self, table: RouteTable) -> None:
        with self.lock:
            self.table = table
            self.limiter.configure(table.tenants, table.routes)

    def add_to(self, server: grpc.aio.Server) -> None:
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, server)

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest,
                              context: grpc.aio.ServicerContext) -> rls_pb2.RateLimitResponse:
        return self.decide(request)

    def decide(self, request: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        refused: tuple[str, str, Decision] | None = None
        taken: list[tuple[str, str]] = []  # concurrency slots this call took
        spent: list[tuple[str, int]] = []  # requests taken from buckets by this call
        now = self._clock()
        for descriptor in request.descriptors:
            entries = {e.key: e.value for e in descriptor.entries}
            # Whose limit: a tenant's, or a RoutePolicy's budget (its subject).
            tenant = entries.get(RATE_LIMIT_TENANT) or entries.get(RATE_LIMIT_POLICY, "")
            kind = entries.get(RATE_LIMIT_KIND, "")
            hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else (request.hits_addend or 1)
            request_id = entries.get(RATE_LIMIT_REQUEST, "")
            with self.lock:
                if not tenant or kind not in KINDS:
                    decision = Decision(True)
                elif kind in (SPENT_PROMPT, SPENT_COMPLETION):
                    self._charge(tenant, kind, entries.get("destination_cluster", ""), hits)
                    decision = Decision(True)
                elif kind == BUDGET:
                    decision = self.limiter.check_budgets(tenant, self._wall())
                    if not decision.allowed:
                        self._decisions.labels(tenant, kind, "refused").inc()
                elif kind == DONE:
                    self.limiter.release_slot(tenant, request_id)
                    decision = Decision(True)
                elif kind == CONCURRENCY:
                    decision = self.limiter.take_slot(tenant, request_id, now)
                    if decision.allowed and decision.limit is not None:
                        taken.append((tenant, request_id))
                else:
                    decision = self.limiter.decide(tenant, kind, hits, now)
                    if kind == REQUESTS and decision.allowed and decision.limit is not None:
                        spent.append((tenant, hits))
            status = response.statuses.add(
                code=rls_pb2.RateLimitResponse.OK if decision.allowed else rls_pb2.RateLimitResponse.OVER_LIMIT,
                limit_remaining=decision.remaining)
            if decision.limit is not None:
                status.duration_until_reset.FromSeconds(decision.retry_after or decision.limit.seconds)
                if kind == TOKENS and hits > 0:
                    self._tokens.labels(tenant).inc(hits)
                else:
                    self._decisions.labels(tenant, kind, "allowed" if decision.allowed else "refused").inc()
            if not decision.allowed and refused is None:
                refused = (tenant, kind, decision)
        if refused is not None:
            with self.lock:
                for tenant, request_id in taken:  # the request does not go on: its slot is free
                    self.limiter.release_slot(tenant, request_id)
                for tenant, hits in spent:  # nor did it use up a request of its limit
                    self.limiter.give_back(tenant, REQUESTS, hits)
            tenant, kind, decision = refused
            response.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
            response.raw_body = json.dumps(refusal(tenant, kind, decision)).encode()
            response.response_headers_to_add.extend([
                base_pb2.HeaderValue(key="retry-after", value=str(decision.retry_after)),
                base_pb2.HeaderValue(key="content-type", value="application/json"),
            ])
        return response

    def _charge(self, tenant: str, kind: str, cluster_name: str, tokens: int) -> None:
        """A response's prompt or completion tokens, at the price of the cluster that answered."""
        cluster = self.table.cluster(backend_of(cluster_name, self.table))
        prices = cluster.prices if cluster is not None else None
        price = None if prices is None else (prices.input if kind == SPENT_PROMPT else prices.output)
        self.limiter.charge(tenant, tokens * (price or 0.0), tokens, self._wall())
