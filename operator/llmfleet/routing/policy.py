"""RoutePolicies + ModelDeployments + their ready pods → route table and policy status.

Pure: takes the objects as read from the API server (plain dicts) and returns the
route table for Envoy and, per policy, the status to write. The same inputs always
give the same outputs, so the controller can recompute everything on any change.

Strategies:
- weighted: the weights as written, renormalised over backends with ready replicas.
- failover: all traffic to the lowest priority that has ready replicas; backends of
  one priority share by weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.models import Backend, RoutePolicySpec, RouteStrategy, SpecError, parse_route_policy_spec
from ..render.deployment import SELECTOR_LABEL
from ..status.conditions import Condition
from .table import Cluster, Endpoint, HeaderRule, Retry, Route, RouteTable, WeightedBackend

SERVER_PORT_NAME = "http"
DEFAULT_SERVER_PORT = 8000


@dataclass(frozen=True)
class BackendState:
    """What routing needs to know about one ModelDeployment."""

    namespace: str
    name: str
    served_model: str
    endpoints: tuple[Endpoint, ...]

    @property
    def cluster(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PolicyResult:
    """Status for one RoutePolicy: conditions (without Programmed) and backends."""

    namespace: str
    name: str
    generation: int | None
    conditions: list[Condition]
    backends: list[dict] = field(default_factory=list)
    accepted: bool = True


@dataclass
class RoutingResult:
    table: RouteTable
    policies: list[PolicyResult]


def ready_endpoints(pods: list[dict]) -> dict[tuple[str, str], tuple[Endpoint, ...]]:
    """(namespace, ModelDeployment) → its ready, not-terminating pods as endpoints.

    Read from the pods themselves: EndpointSlices refuse loopback addresses, and a
    pod's readiness is what the model server's probe says.
    """
    out: dict[tuple[str, str], list[Endpoint]] = {}
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        owner = (meta.get("labels") or {}).get(SELECTOR_LABEL)
        ip = status.get("podIP")
        if not owner or not ip or meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            continue
        out.setdefault((meta["namespace"], owner), []).append(Endpoint(ip, _server_port(pod)))
    return {key: tuple(sorted(eps)) for key, eps in out.items()}


def _server_port(pod: dict) -> int:
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == SERVER_PORT_NAME:
                return int(port["containerPort"])
    return DEFAULT_SERVER_PORT


def backend_states(model_deployments: list[dict], pods: list[dict]) -> dict[tuple[str, str], BackendState]:
    endpoints = ready_endpoints(pods)
    states = {}
    for md in model_deployments:
        meta = md["metadata"]
        key = (meta["namespace"], meta["name"])
        served = ((md.get("spec") or {}).get("model") or {}).get("servedName") or meta["name"]
        states[key] = BackendState(meta["namespace"], meta["name"], served, endpoints.get(key, ()))
    return states


def _age_key(policy: dict) -> tuple[str, str, str]:
    meta = policy["metadata"]
    return (meta.get("creationTimestamp") or "", meta.get("namespace", ""), meta["name"])


def compute_routing(policies: list[dict], model_deployments: list[dict], pods: list[dict]) -> RoutingResult:
    """The route table and every policy's status."""
    states = backend_states(model_deployments, pods)
    routes: list[Route] = []
    used_clusters: dict[str, Cluster] = {}
    claimed: dict[str, dict] = {}  # public model name → the policy that owns it
    results = []
    for policy in sorted(policies, key=_age_key):
        meta = policy["metadata"]
        result = PolicyResult(meta["namespace"], meta["name"], meta.get("generation"), [])
        results.append(result)
        try:
            spec = parse_route_policy_spec(policy.get("spec") or {})
        except SpecError as exc:
            result.accepted = False
            result.conditions = [
                Condition("Accepted", False, "InvalidSpec", str(exc)),
                Condition("ResolvedRefs", False, "InvalidSpec", "the spec is refused"),
            ]
            continue
        owner = claimed.get(spec.model)
        if owner is not None:
            om = owner["metadata"]
            result.accepted = False
            result.conditions = [
                Condition(
                    "Accepted", False, "ModelNameConflict",
                    f'model name "{spec.model}" is already routed by RoutePolicy {om["namespace"]}/{om["name"]}, '
                    "which is older; rename one of them",
                ),
                Condition("ResolvedRefs", True, "NotEvaluated", "the policy is not accepted"),
            ]
            continue
        claimed[spec.model] = policy
        route, result.backends, missing = _route(spec, meta["namespace"], states, used_clusters)
        routes.append(route)
        result.conditions = [
            Condition("Accepted", True, "Accepted", f'routes model "{spec.model}" with strategy {spec.strategy.value}'),
            Condition("ResolvedRefs", False, "BackendNotFound",
                      f"ModelDeployment {', '.join(missing)} not found in namespace {meta['namespace']}")
            if missing else Condition("ResolvedRefs", True, "ResolvedRefs", "all backends exist"),
        ]
    table = RouteTable(
        routes=tuple(sorted(routes, key=lambda r: r.model)),
        clusters=tuple(sorted(used_clusters.values(), key=lambda c: c.name)),
    )
    return RoutingResult(table, results)


def _route(spec: RoutePolicySpec, namespace: str, states, used_clusters) -> tuple[Route, list[dict], list[str]]:
    missing: list[str] = []
    split, backend_status = _split(spec.strategy, spec.backends, namespace, states, used_clusters, missing)
    rules = []
    for rule in spec.rules:
        rule_split, _ = _split(spec.strategy, rule.backends, namespace, states, used_clusters, missing)
        headers = tuple(sorted((k.lower(), v) for k, v in rule.match.headers.items()))
        rules.append(HeaderRule(headers, rule_split))
    retry = Retry(
        attempts=spec.retry.attempts,
        per_try_timeout_seconds=spec.retry.per_try_timeout_seconds,
        on=tuple(r.value for r in spec.retry.retry_on),
    )
    return Route(spec.model, split, tuple(rules), retry), backend_status, sorted(set(missing))


def _split(strategy, backends: list[Backend], namespace, states, used_clusters, missing):
    """Effective weights (percent, summing to 100 when anything is ready) and status rows."""
    rows = []
    candidates: list[tuple[Backend, BackendState]] = []
    for b in backends:
        state = states.get((namespace, b.model_deployment))
        if state is None:
            missing.append(b.model_deployment)
            rows.append((b, 0, None, f"ModelDeployment {b.model_deployment} not found"))
            continue
        used_clusters[state.cluster] = Cluster(state.cluster, state.served_model, state.endpoints)
        candidates.append((b, state))

    ready = [(b, s) for b, s in candidates if s.endpoints and b.weight > 0]
    active: list[tuple[Backend, BackendState]] = []
    serving_priority = None
    if strategy is RouteStrategy.FAILOVER and ready:
        serving_priority = min(b.priority for b, _ in ready)
        active = [(b, s) for b, s in ready if b.priority == serving_priority]
    else:
        active = ready
    percents = _percentages([b.weight for b, _ in active])
    share = {b.model_deployment: p for (b, _), p in zip(active, percents)}

    for b, s in candidates:
        n = len(s.endpoints)
        weight = share.get(b.model_deployment, 0)
        if not s.endpoints:
            reason = "no ready replicas; its share goes to the others" if ready else "no ready replicas"
        elif b.weight == 0:
            reason = "weight 0"
        elif strategy is RouteStrategy.FAILOVER:
            if b.priority == serving_priority:
                reason = f"priority {b.priority}: serving with {n} ready replica(s)"
            else:
                reason = f"standby: priority {b.priority}, priority {serving_priority} is serving"
        else:
            reason = f"weight {b.weight} of {sum(x.weight for x, _ in active)} over ready backends"
        rows.append((b, weight, n, reason))

    order = {b.model_deployment: i for i, b in enumerate(backends)}
    rows.sort(key=lambda r: order[r[0].model_deployment])
    status = [
        {"modelDeployment": b.model_deployment, "weight": w, "readyReplicas": n or 0, "reason": reason}
        for b, w, n, reason in rows
    ]
    split = tuple(
        WeightedBackend(s.cluster, share[b.model_deployment])
        for b, s in active
        if share.get(b.model_deployment, 0) > 0
    )
    return split, status


def _percentages(weights: list[int]) -> list[int]:
    """Integer percentages proportional to `weights`, summing to exactly 100
    (largest remainder), so status and Envoy agree to the point."""
    total = sum(weights)
    if total <= 0:
        return [0] * len(weights)
    exact = [w * 100 / total for w in weights]
    floors = [int(x) for x in exact]
    leftover = 100 - sum(floors)
    by_remainder = sorted(range(len(weights)), key=lambda i: (exact[i] - floors[i], -i), reverse=True)
    for i in by_remainder[:leftover]:
        floors[i] += 1
    return floors
