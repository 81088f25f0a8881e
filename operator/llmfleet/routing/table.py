"""The route table: everything the data plane needs to know, as plain frozen data.

The routing core computes it from RoutePolicies, ModelDeployment status and ready pods;
the Envoy builders turn it into xDS resources. Nothing here knows about Kubernetes or
Envoy, so both sides are tested without either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready replica of a model server."""

    address: str
    port: int
    weight: int = 1  # relative, for load-aware balancing within a cluster


@dataclass(frozen=True)
class Cluster:
    """One ModelDeployment as an upstream: its replicas and the model name it serves."""

    name: str  # stable and unique: "<namespace>/<model deployment>"
    served_model: str  # what the engine answers to; the request body's model is rewritten to it
    endpoints: tuple[Endpoint, ...] = ()
    prices: TokenPrices | None = None  # what its tokens cost (usage accounting); None: no cost set


@dataclass(frozen=True)
class TokenPrices:
    """What one token costs on a backend, in the currency of its cost.perReplicaHour."""

    input: float  # per prompt token
    output: float | None  # per generated token; None: not known yet (no declared price, no capacity learned)


def cluster_name(namespace: str, model_deployment: str) -> str:
    return f"{namespace}/{model_deployment}"


@dataclass(frozen=True)
class WeightedBackend:
    cluster: str  # Cluster.name
    weight: int  # > 0; backends with weight 0 are left out of the table


@dataclass(frozen=True)
class Retry:
    attempts: int = 2  # retries after the first try
    per_try_timeout_seconds: int = 120
    on: tuple[str, ...] = ("connect-failure", "reset", "503")  # RoutePolicy retry.on values


ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                  "embeddings": "/v1/embeddings"}


@dataclass(frozen=True)
class RuleMatch:
    """What a request must carry, all of it, for a rule to apply (header names lower-case)."""

    headers: tuple[tuple[str, str], ...] = ()  # exact values
    header_patterns: tuple[tuple[str, str], ...] = ()  # RE2, matching the whole value
    headers_present: tuple[str, ...] = ()
    endpoint: str | None = None  # a key of ENDPOINT_PATHS
    body: tuple[tuple[str, str], ...] = ()  # ("user", "alice"), ("metadata.tier", "gold"): exact strings
    prompt_bytes: tuple[int | None, int | None] | None = None  # the body's size, inclusive bounds


@dataclass(frozen=True)
class Rule:
    """Requests that match go to `backends` instead of the default split."""

    match: RuleMatch
    backends: tuple[WeightedBackend, ...]
    max_tokens: int | None = None  # a cap on the request's max_tokens


@dataclass(frozen=True)
class Fallback:
    """Clusters a failed attempt moves on to, in order, and what counts as failed."""

    clusters: tuple[str, ...]  # Cluster.name, ready ones only
    on: tuple[str, ...] = ("5xx", "429", "reset", "connect-failure")  # RoutePolicy retryOn values
    max_in_flight_per_replica: int | None = None  # beyond this, the split's backend is saturated: go on at once


@dataclass(frozen=True)
class CascadeStage:
    backend: str  # the ModelDeployment's name, for the response header naming the stage
    cluster: str  # Cluster.name
    served_model: str


@dataclass(frozen=True)
class Cascade:
    """Stages tried in order; an answer is returned unless a condition says escalate."""

    stages: tuple[CascadeStage, ...]  # ready ones only, cheapest first
    min_mean_logprob: float | None = None
    on_length: bool = True
    on_empty: bool = True
    refusals: tuple[str, ...] = ()  # lower-case
    timeout_seconds: int = 120  # per stage


@dataclass(frozen=True)
class PrefixAffinity:
    """Consistent hashing with bounded load on the request's leading content."""

    chars: int = 256  # of the first user message (chat) or the prompt (completions)
    balance_percent: int = 125  # Envoy's hash_balance_factor: at most this percent of the average load


@dataclass(frozen=True)
class Route:
    """One public model name (what clients put in the body's "model")."""

    model: str
    backends: tuple[WeightedBackend, ...]  # the split; empty = no ready backend (503)
    rules: tuple[Rule, ...] = ()
    retry: Retry = field(default_factory=Retry)
    fallback: Fallback | None = None
    cascade: Cascade | None = None
    # The RoutePolicy's budgets (on all its traffic), and the name the rate-limit service
    # keeps their spend under (budget_subject); empty: none.
    budgets: tuple[BudgetLimit, ...] = ()
    budget_subject: str | None = None
    # The cheapest ready backend (lowest price per output token): where a spent budget
    # that downgrades sends traffic. None: no ready backend has a price.
    cheapest: str | None = None
    downgraded: bool = False  # a downgrading budget of the policy is spent: every request goes to `cheapest`
    prefix: PrefixAffinity | None = None  # balance each backend's replicas by the request's prefix


ALL_MODELS = "*"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` units at most, refilled at ``limit`` per ``seconds``."""

    limit: int
    seconds: int
    burst: int
    local: bool = False  # counted by each Envoy on its own bucket, not by the rate-limit service

    @property
    def per_second(self) -> float:
        return self.limit / self.seconds


@dataclass(frozen=True)
class BudgetLimit:
    """What a tenant or a RoutePolicy's traffic may spend per calendar period (UTC): dollars or tokens."""

    period: str  # "hour", "day" or "month"
    dollars: float | None = None
    tokens: int | None = None
    warn_percent: int = 80
    # Once spent, until the next period: "refuse" (429 insufficient_quota), "downgrade" (to the
    # cheapest backend of each public model) or "notify" (Events and a condition only).
    action: str = "refuse"

    @property
    def refuse(self) -> bool:
        return self.action == "refuse"


@dataclass(frozen=True)
class TenantAccess:
    """A tenant as the ingress knows it: its keys, the public models it may call, its limits."""

    name: str  # "<namespace>/<name>": the client Envoy authenticates and names in x-llmfleet-tenant
    keys: tuple[str, ...] = field(repr=False)  # never in a repr, so never in a log line
    models: tuple[str, ...] = ()  # public model names, or (ALL_MODELS,)
    requests: RateLimit | None = None
    tokens: RateLimit | None = None
    max_concurrent: int | None = None  # requests in flight at once, across every Envoy
    budgets: tuple[BudgetLimit, ...] = ()
    downgraded: bool = False  # a downgrading budget is spent: its requests go to each model's cheapest backend

    def may_call(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    # None: no Tenant exists and the ingress is open, as before tenants; otherwise every
    # request needs the key of one of these (none at all: every request is refused).
    tenants: tuple[TenantAccess, ...] | None = None
    # Where Envoy asks for tenants' rate limits (the leading operator replica); None: unknown.
    rate_limit_service: Endpoint | None = None

    def cluster(self, name: str) -> Cluster | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, Cluster]:
        return {c.name: c for c in self.clusters}

    @functools.cached_property
    def models(self) -> frozenset[str]:
        """The public model names it routes."""
        return frozenset(r.model for r in self.routes)

    @functools.cached_property
    def tenant_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tenants or ())
