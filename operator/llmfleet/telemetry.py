"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmfleet.signals.scrape import SCRAPE_ERROR_REASONS

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "llmfleet_reconcile_total",
    "Reconciles by resource kind and result (success, error, invalid).",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "llmfleet_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
REPLICAS = Gauge(
    "llmfleet_modeldeployment_replicas",
    "Replicas of a ModelDeployment: spec (desired) and ready.",
    ["namespace", "name", "state"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "llmfleet_api_errors_total",
    "Kubernetes API calls that failed, by operation.",
    ["operation"],
    registry=REGISTRY,
)
ROUTE_WEIGHT = Gauge(
    "llmfleet_route_weight",
    "Effective share of traffic (percent) a backend cluster gets for a public model name.",
    ["model", "cluster"],
    registry=REGISTRY,
)
DESIRED_REPLICAS = Gauge(
    "llmfleet_autoscaler_desired_replicas",
    "Replicas the autoscaler asks for, per ModelDeployment.",
    ["namespace", "name"],
    registry=REGISTRY,
)
SCRAPE_ERRORS = Counter(
    "llmfleet_scrape_errors_total",
    "Replica /metrics scrapes that failed, by reason (connect, timeout, status, parse, ...).",
    ["reason"],
    registry=REGISTRY,
)
for _reason in SCRAPE_ERROR_REASONS:
    SCRAPE_ERRORS.labels(_reason)  # at 0 until the first failure, so rates and alerts see the series
CONDITION = Gauge(
    "llmfleet_modeldeployment_condition",
    "A ModelDeployment's status conditions (Ready, Progressing, Degraded): 1 while True, else 0.",
    ["namespace", "name", "type"],
    registry=REGISTRY,
)
QUEUED = Gauge(
    "llmfleet_modeldeployment_queued_requests",
    "Requests waiting for a batch slot on a ModelDeployment's replicas (summed), as last scraped.",
    ["namespace", "name"],
    registry=REGISTRY,
)
RUNNING = Gauge(
    "llmfleet_modeldeployment_running_requests",
    "Requests in the running batch of a ModelDeployment's replicas (summed), as last scraped.",
    ["namespace", "name"],
    registry=REGISTRY,
)
BUDGET_USED = Gauge(
    "llmfleet_budget_used_ratio",
    "Share of a budget spent in its current period (1: all of it), by owner kind (Tenant, RoutePolicy), "
    "owner (namespace/name; a Tenant's is its tenant label in llmfleet_usage_*) and period; exported by the "
    "leader.",
    ["kind", "name", "period"],
    registry=REGISTRY,
)
BUDGET_WARN = Gauge(
    "llmfleet_budget_warn_ratio",
    "The share of a budget at which it warns (its warnAtPercent / 100), by owner kind, owner and period; "
    "exported by the leader.",
    ["kind", "name", "period"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "llmfleet_leader",
    "1 while this operator replica leads (the one that writes children, status and scale), else 0.",
    registry=REGISTRY,
)


def clear_leader_series() -> None:
    """Drop the per-object series only the leader keeps current, when this replica stops
    leading, so that a follower never exports a stale value beside the new leader's."""
    for gauge in (REPLICAS, CONDITION, DESIRED_REPLICAS, QUEUED, RUNNING, BUDGET_USED, BUDGET_WARN):
        gauge.clear()
