"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

LEADER = Gauge(
    "llmfleet_leader",
    "1 while this operator replica leads (the one that writes children, status and scale), else 0.",
    registry=REGISTRY,
)
