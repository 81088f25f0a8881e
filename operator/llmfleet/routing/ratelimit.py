"""Tenants' rate limits as token buckets, and tenants' and RoutePolicies' budgets: what the
rate-limit service decides. Pure.

Envoy asks, before a tenant's request goes on, whether its requests bucket holds one
request and whether its tokens bucket is not empty (a check that takes nothing); when
the response has ended, it reports the tokens the response used, which are taken even
if that empties the bucket below zero. So a token limit is overshot by at most the
responses in flight when it ran out, and then the tenant waits until it refills.

A bucket starts full, holds at most its burst, and refills continuously at its rate.
A bucket whose limit did not change keeps its level when the tenants are reconfigured
(a key rotation does not hand out a fresh burst).

A concurrency cap counts requests in flight by their request ID: Envoy takes a slot
before a request and gives it back when the request's stream ends. A slot whose end
never came (an Envoy that died, a moment without the service) is freed after
SLOT_SECONDS, so a lost report cannot lock a tenant out for good.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..api.models import RATE_UNIT_SECONDS
from .table import BudgetLimit, RateLimit, Route, TenantAccess

# The kinds of limit, as Envoy names them in a descriptor; DONE gives a concurrency slot back;
# BUDGET checks a tenant's budgets, SPENT_PROMPT / SPENT_COMPLETION charge a response's tokens.
REQUESTS, TOKENS, CONCURRENCY, DONE = "requests", "tokens", "concurrency", "done"
BUDGET, SPENT_PROMPT, SPENT_COMPLETION = "budget", "spent-prompt", "spent-completion"
KINDS = (REQUESTS, TOKENS, CONCURRENCY, DONE, BUDGET, SPENT_PROMPT, SPENT_COMPLETION)
SLOT_SECONDS = 7200.0
# Envoy's local token buckets refill at most every 50 ms.
MIN_FILL_SECONDS = 0.05
_UNITS = {seconds: unit.value for unit, seconds in RATE_UNIT_SECONDS.items()}  # 60 → "minute"


def window_start(period: str, now: float) -> float:
    """The start (epoch seconds) of the calendar period, UTC, that ``now`` falls in."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "hour":
        t = t.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        t = t.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        t = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return t.timestamp()


def window_end(period: str, start: float) -> float:
    """The end (epoch seconds) of the calendar period that begins at ``start``."""
    t = dt.datetime.fromtimestamp(start, dt.UTC)
    if period == "hour":
        t += dt.timedelta(hours=1)
    elif period == "day":
        t += dt.timedelta(days=1)
    else:
        t = t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1)
    return t.timestamp()


@dataclass(frozen=True)
class LocalBucket:
    """A local request limit as Envoy's token bucket holds it: ``tokens`` added every ``fill_seconds``."""

    size: int
    tokens: int
    fill_seconds: float

    @property
    def retry_after(self) -> int:
        """Whole seconds a refused request waits at most for the next fill."""
        return max(1, math.ceil(self.fill_seconds))


def local_bucket(limit: RateLimit) -> LocalBucket:
    """The same rate as ``limit`` in whole tokens per fill, a fill at most every MIN_FILL_SECONDS.
    The bucket holds at least one fill (a burst smaller than that is raised to it)."""
    tokens = max(1, math.ceil(MIN_FILL_SECONDS * limit.per_second))
    return LocalBucket(max(limit.burst, tokens), tokens, tokens / limit.per_second)


@dataclass
class Spend:
    """What a tenant spent in one budget's current period."""

    window: float  # the period's start, epoch seconds
    dollars: float = 0.0
    tokens: int = 0

    def used(self, budget: BudgetLimit) -> float:
        """The share of the budget used (1.0: all of it)."""
        if budget.dollars is not None:
            return self.dollars / budget.dollars
        return self.tokens / budget.tokens if budget.tokens else 0.0


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


def limit_message(tenant: str, kind: str, limit: RateLimit, retry_after: int) -> str:
    """What a request refused by a rate limit is told."""
    unit = _UNITS.get(limit.seconds, f"{limit.seconds} s")
    where = " on this Envoy replica" if limit.local else ""
    return (f"Rate limit reached for {kind} of tenant {tenant}: limit {limit.limit} per {unit}{where}. "
            f"Please try again in {retry_after}s.")


class Limiter:
    """Every tenant's buckets."""

    def __init__(self) -> None:
        self._limits: dict[tuple[str, str], RateLimit] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._caps: dict[str, int] = {}
        self._slots: dict[str, dict[str, float]] = {}  # tenant → request ID → when its slot was taken
        self._budgets: dict[str, tuple[BudgetLimit, ...]] = {}
        self._spend: dict[tuple[str, str], Spend] = {}  # (tenant, period) → spend in its current window

    def configure(self, tenants: Iterable[TenantAccess] | None, routes: Iterable[Route] = ()) -> None:
        """The tenants' limits and budgets, and the budgets of the routes' policies (counted
        under their budget_subject)."""
        tenants = tuple(tenants or ())
        limits: dict[tuple[str, str], RateLimit] = {}
        caps: dict[str, int] = {}
        for tenant in tenants or ():
            if tenant.requests is not None and not tenant.requests.local:  # a local one is Envoy's own
                limits[(tenant.name, REQUESTS)] = tenant.requests
            if tenant.tokens is not None:
                limits[(tenant.name, TOKENS)] = tenant.tokens
            if tenant.max_concurrent is not None:
                caps[tenant.name] = tenant.max_concurrent
        self._budgets = {t.name: t.budgets for t in tenants or () if t.budgets}
        self._budgets.update({r.budget_subject: r.budgets for r in routes if r.budget_subject and r.budgets})
        self._limits, self._caps = limits, caps
        self._buckets = {key: b for key, b in self._buckets.items() if limits.get(key) == b.limit}
        self._slots = {name: slots for name, slots in self._slots.items() if name in caps}

    def take_slot(self, tenant: str, request_id: str, now: float) -> Decision:
        """A slot for one request in flight, if the tenant has one free."""
        cap = self._caps.get(tenant)
        if cap is None:
            return Decision(True)
        limit = RateLimit(cap, 1, cap)
        slots = self._slots.setdefault(tenant, {})
        for rid in [r for r, at in slots.items() if now - at > SLOT_SECONDS]:
            del slots[rid]  # its end was never reported
        if len(slots) >= cap:
            return Decision(False, limit, 0, 1)
        slots[request_id] = now
        return Decision(True, limit, cap - len(slots))

    # ---- budgets (wall-clock time: calendar periods)

    def _spend_in(self, tenant: str, period: str, now: float) -> Spend:
        start = window_start(period, now)
        spend = self._spend.get((tenant, period))
        if spend is None or spend.window != start:
            spend = self._spend[(tenant, period)] = Spend(start)  # a new period starts from nothing
        return spend

    def charge(self, tenant: str, dollars: float, tokens: int, now: float) -> None:
        """A response's cost, against every budget period of the tenant."""
        for period in {b.period for b in self._budgets.get(tenant, ())}:
            spend = self._spend_in(tenant, period, now)
            spend.dollars += dollars
            spend.tokens += tokens

    def check_budgets(self, tenant: str, now: float) -> Decision:
        """Refused while a budget that refuses is spent: until its next period."""
        for budget in self._budgets.get(tenant, ()):
            spend = self._spend_in(tenant, budget.period, now)
            if budget.refuse and spend.used(budget) >= 1.0:
                retry = max(1, math.ceil(window_end(budget.period, spend.window) - now))
                return Decision(False, None, 0, retry)
        return Decision(True)

    def spending(self, tenant: str, now: float) -> list[tuple[BudgetLimit, Spend]]:
        """Each budget of the tenant with what was spent in its current period."""
        return [(b, self._spend_in(tenant, b.period, now)) for b in self._budgets.get(tenant, ())]

    def seed(self, tenant: str, period: str, spend: Spend, now: float) -> None:
        """What an earlier leader recorded (the tenant's status), if it is still this period's."""
        if spend.window == window_start(period, now):
            current = self._spend.get((tenant, period))
            if current is None or current.window != spend.window or current.dollars < spend.dollars \
                    or current.tokens < spend.tokens:
                self._spend[(tenant, period)] = Spend(spend.window, spend.dollars, spend.tokens)

    def release_slot(self, tenant: str, request_id: str) -> None:
        """The request's stream ended (or it was refused after all): its slot is free."""
        self._slots.get(tenant, {}).pop(request_id, None)

    def give_back(self, tenant: str, kind: str, hits: int) -> None:
        """Return ``hits`` a refused request took from a bucket (another limit refused it)."""
        bucket = self._buckets.get((tenant, kind))
        if bucket is not None:
            bucket.level = min(float(bucket.limit.burst), bucket.level + hits)

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
