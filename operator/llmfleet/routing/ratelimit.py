"""Tenants' rate limits as token buckets: what the rate-limit service decides. Pure.

Envoy asks, before a tenant's request goes on, whether its requests bucket holds one
request and whether its tokens bucket is not empty (a check that takes nothing); when
the response has ended, it reports the tokens the response used, which are taken even
if that empties the bucket below zero. So a token limit is overshot by at most the
responses in flight when it ran out, and then the tenant waits until it refills.

A bucket starts full, holds at most its burst, and refills continuously at its rate.
A bucket whose limit did not change keeps its level when the tenants are reconfigured
(a key rotation does not hand out a fresh burst).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .table import RateLimit, TenantAccess

REQUESTS, TOKENS = "requests", "tokens"  # the kinds of limit, as Envoy names them in a descriptor


@dataclass
class _Bucket:
    limit: RateLimit
    level: float
    at: float

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(float(self.limit.burst), self.level + (now - self.at) * self.limit.per_second)
            self.at = now


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: RateLimit | None = None  # the limit that applied (None: the tenant has none of this kind)
    remaining: int = 0  # whole units left in the bucket after this decision
    retry_after: int = 0  # whole seconds until the bucket allows the request again (refused ones)


class Limiter:
    """Every tenant's buckets."""

    def __init__(self) -> None:
        self._limits: dict[tuple[str, str], RateLimit] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def configure(self, tenants: Iterable[TenantAccess] | None) -> None:
        limits: dict[tuple[str, str], RateLimit] = {}
        for tenant in tenants or ():
            if tenant.requests is not None:
                limits[(tenant.name, REQUESTS)] = tenant.requests
            if tenant.tokens is not None:
                limits[(tenant.name, TOKENS)] = tenant.tokens
        self._limits = limits
        self._buckets = {key: b for key, b in self._buckets.items() if limits.get(key) == b.limit}

    def decide(self, tenant: str, kind: str, hits: int, now: float) -> Decision:
        """Take ``hits`` from the tenant's ``kind`` bucket if it allows them.

        requests: allowed when the bucket holds ``hits``. tokens: ``hits`` 0 is the check
        before a request (allowed while the bucket is above zero); more is a response's
        tokens, always taken.
        """
        limit = self._limits.get((tenant, kind))
        if limit is None:
            return Decision(True)
        bucket = self._buckets.get((tenant, kind))
        if bucket is None:
            bucket = self._buckets[(tenant, kind)] = _Bucket(limit, float(limit.burst), now)
        bucket.refill(now)
        if kind == TOKENS and hits > 0:
            bucket.level -= hits  # already served: counted, never refused
            return Decision(True, limit, max(0, math.floor(bucket.level)))
        need = float(hits) if kind == REQUESTS else 1.0  # tokens: at least one left
        if bucket.level >= need:
            bucket.level -= hits
            return Decision(True, limit, max(0, math.floor(bucket.level)))
        wait = (need - bucket.level) / limit.per_second
        return Decision(False, limit, 0, max(1, math.ceil(wait)))
