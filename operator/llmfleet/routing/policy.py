"""RoutePolicies + ModelDeployments + their ready pods → route table and policy status.

Pure: takes the objects as the store holds them (typed views) and returns the route
table for Envoy and, per policy, the status to write. The same inputs always give the
same outputs, so the controller can recompute everything on any change, and every
operator replica computes the same table from the same cluster state.

Strategies:
- weighted: the weights as written, renormalised over backends with ready replicas.
- failover: all traffic to the lowest priority that has ready replicas; backends of
  one priority share by weight.
- cost: fill the cheapest backend (cost.perReplicaHour over the tokens/s a replica
  serves at its autoscaling target) up to that target — past it while the backend may
  still scale up, so that it does — then the next cheapest; demand beyond every
  target is spread by capacity. Loads come from status.load.
- latency: shares proportional to ready replicas over (TTFT p95 × (1 + queue depth)),
  a quarter of that for backends over the policy's SLO.
cost and latency step from the previous weights once per new load sample or change of
ready replicas: half way, or straight to a goal a few points away, and not at all for
smaller moves (a damped control loop that settles: the loads they read respond to the
weights they set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..api.models import Backend, RouteMatch, RoutePolicySpec, RouteStrategy, backend_key
from ..api.models import Cascade as CascadeSpec
from ..kube.views import ModelDeploymentView, PodView, Ref, RoutePolicyView
from ..signals.values import capacity_sample
from ..status.conditions import WantedCondition
from .budgets import budget_limits, policy_subject, spent_to_downgrade
from .table import (
    Cascade,
    CascadeStage,
    Cluster,
    Endpoint,
    Fallback,
    PrefixAffinity,
    Retry,
    Route,
    RouteTable,
    Rule,
    RuleMatch,
    TokenPrices,
    WeightedBackend,
    cluster_name,
)

HOLD = object()  # marks `previous` weights to keep: no new load sample since they were set


@dataclass(frozen=True)
class BackendState:
    """What routing needs to know about one ModelDeployment."""

    namespace: str
    name: str
    served_model: str
    endpoints: tuple[Endpoint, ...]
    cost_per_replica_hour: float | None = None
    load: dict | None = None  # status.load as the autoscaler writes it
    metric: str = "queueDepth"  # the autoscaling metric and its per-replica target
    target: float | None = None
    scale_to_zero: bool = False  # autoscaling.scaleToZero.idleSeconds > 0
    max_replicas: int | None = None  # autoscaling.maxReplicas, else spec.replicas
    declared_prices: tuple[float | None, float | None] = (None, None)  # (input, output) per million tokens

    @property
    def cluster(self) -> str:
        return cluster_name(self.namespace, self.name)

    def output_price(self, capacity: float | None) -> float | None:
        """A generated token's price: the declared one, else a replica-hour over what a
        replica generates in an hour at ``capacity`` tokens/s (None: no cost, or no capacity)."""
        if self.declared_prices[1] is not None:
            return self.declared_prices[1] / 1e6
        if self.cost_per_replica_hour is None or not capacity:
            return None
        return self.cost_per_replica_hour / 3600 / capacity

    def prices(self) -> TokenPrices | None:
        """What its tokens cost, for usage accounting (None: no cost set at all)."""
        if self.cost_per_replica_hour is None and self.declared_prices == (None, None):
            return None
        capacity = (self.load or {}).get("capacityTokensPerSecond")
        return TokenPrices((self.declared_prices[0] or 0.0) / 1e6, self.output_price(capacity))

    def to_cluster(self) -> Cluster:
        """Its Envoy cluster in the route table."""
        return Cluster(self.cluster, self.served_model, self.endpoints, self.prices())


@dataclass
class PolicyResult:
    """Status for one RoutePolicy: conditions (without Programmed) and backends."""

    namespace: str
    name: str
    generation: int | None
    conditions: list[WantedCondition]
    backends: list[dict] = field(default_factory=list)
    accepted: bool = True
    model: str | None = None  # the public model name it routes, once accepted


@dataclass
class RoutingResult:
    table: RouteTable
    policies: list[PolicyResult]
    loads: dict[tuple[str, str], dict | None] = field(default_factory=dict)  # status.load used, per backend


def ready_endpoints(pods: Iterable[PodView]) -> dict[Ref, tuple[Endpoint, ...]]:
    """(namespace, ModelDeployment) → the endpoints of its serving replicas.

    Read from the pods themselves: EndpointSlices refuse loopback addresses, and a
    pod's readiness is what the model server's probe says.

    A replica that has loaded LoRA adapters is also an endpoint of each of them, under
    (namespace, "MODELDEPLOYMENT/ADAPTER") (a backend's key).
    """
    out: dict[Ref, list[Endpoint]] = {}
    for pod in pods:
        if pod.model_deployment and (endpoint := pod.endpoint) is not None:
            for key in (pod.model_deployment, *(backend_key(pod.model_deployment, a) for a, _ in pod.adapters)):
                out.setdefault((pod.namespace, key), []).append(Endpoint(*endpoint))
    return {key: tuple(sorted(eps)) for key, eps in out.items()}


def backend_states(model_deployments: Iterable[ModelDeploymentView],
                   endpoints: Mapping[Ref, tuple[Endpoint, ...]]) -> dict[Ref, BackendState]:
    """Per backend key: each ModelDeployment, and each adapter it declares (served under the
    adapter's name by the replicas that loaded it, at the base model's cost and load)."""
    states = {}
    for md in model_deployments:
        base = BackendState(md.namespace, md.name, md.served_model, endpoints.get(md.ref, ()),
                            cost_per_replica_hour=md.cost_per_replica_hour, load=md.load, metric=md.metric,
                            target=md.target, scale_to_zero=md.scale_to_zero,
                            max_replicas=md.max_replicas, declared_prices=md.declared_prices)
        states[md.ref] = base
        for adapter in md.adapters:
            key = backend_key(md.name, adapter)
            # An adapter is loaded into a replica that already serves: it cannot wake one.
            states[(md.namespace, key)] = dataclasses.replace(
                base, name=key, served_model=adapter, endpoints=endpoints.get((md.namespace, key), ()),
                scale_to_zero=False)
    return states


def _row_id(b: Backend) -> dict[str, str]:
    """How a status row names its backend."""
    return {"modelDeployment": b.model_deployment} | ({"adapter": b.adapter} if b.adapter else {})


def _row_key(row: dict) -> str | None:
    name = row.get("modelDeployment")
    return backend_key(name, row.get("adapter")) if name else None


def _missing_name(b: Backend) -> str:
    return f"{b.model_deployment} with adapter {b.adapter}" if b.adapter else b.model_deployment


def _not_found(b: Backend) -> str:
    return f"ModelDeployment {_missing_name(b)} not found"


def _age_key(policy: RoutePolicyView) -> tuple[str, str, str]:
    return (policy.created, policy.namespace, policy.name)


def compute_routing(
    policies: Sequence[RoutePolicyView], model_deployments: Sequence[ModelDeploymentView],
    endpoints: Mapping[Ref, tuple[Endpoint, ...]], activator: Endpoint | None = None,
    previous_loads: dict[Ref, dict | None] | None = None, *, now: float = 0.0,
) -> RoutingResult:
    """The route table and every policy's status.

    `now` (epoch seconds) tells which budget periods in the policies' status.budgets are
    current: a policy whose downgrading budget is spent in its current period sends all
    its traffic to its cheapest backend (at 0, none is current).

    With `activator`, a route none of whose backends has a ready replica sends its
    traffic to the backends that scale to zero, through the activator, which wakes
    them and holds the requests until a replica is ready.

    `previous_loads` are the loads of the previous computation (RoutingResult.loads):
    cost and latency take one damped step per new load sample or change of a backend's
    ready replicas, and hold their weights when recomputed for another reason (their
    own status write, an unrelated change).
    """
    states = backend_states(model_deployments, endpoints)
    routes: list[Route] = []
    used_clusters: dict[str, Cluster] = {}
    claimed: dict[str, RoutePolicyView] = {}  # public model name → the policy that owns it
    results = []
    for policy in sorted(policies, key=_age_key):
        namespace = policy.namespace
        result = PolicyResult(namespace, policy.name, policy.generation, [])
        results.append(result)
        spec = policy.spec
        if spec is None:
            result.accepted = False
            result.conditions = [
                WantedCondition("Accepted", False, "InvalidSpec", policy.invalid or "the spec is refused"),
                WantedCondition("ResolvedRefs", False, "InvalidSpec", "the spec is refused"),
            ]
            continue
        owner = claimed.get(spec.model)
        if owner is not None:
            result.accepted = False
            result.conditions = [
                WantedCondition(
                    "Accepted", False, "ModelNameConflict",
                    f'model name "{spec.model}" is already routed by RoutePolicy {owner.namespace}/{owner.name}, '
                    "which is older; rename one of them",
                ),
                WantedCondition("ResolvedRefs", True, "NotEvaluated", "the policy is not accepted"),
            ]
            continue
        claimed[spec.model] = policy
        result.model = spec.model
        rows = policy.status.get("backends") or []
        previous: dict = {_row_key(b): b.get("weight") for b in rows}
        ready_before = {_row_key(b): b.get("readyReplicas", 0) for b in rows}
        if previous_loads is not None and all(
            (st := states.get((namespace, b.key))) is None
            or (st.load == previous_loads.get((namespace, b.key))
                and len(st.endpoints) == ready_before.get(b.key))
            for b in spec.backends
        ):
            previous = {**previous, HOLD: True}
        route, result.backends, missing = _route(spec, namespace, states, used_clusters, previous, activator)
        if spec.budgets:
            budgets = budget_limits(spec.budgets)
            route = dataclasses.replace(
                route, budgets=budgets, budget_subject=policy_subject(namespace, policy.name),
                downgraded=spent_to_downgrade(budgets, policy.status.get("budgets"), now))
        routes.append(route)
        result.conditions = [
            WantedCondition("Accepted", True, "Accepted",
                            f'routes model "{spec.model}" with strategy {spec.strategy.value}'),
            WantedCondition("ResolvedRefs", False, "BackendNotFound",
                            f"ModelDeployment {', '.join(missing)} not found in namespace {namespace}")
            if missing else WantedCondition("ResolvedRefs", True, "ResolvedRefs", "all backends exist"),
        ]
    table = RouteTable(
        routes=tuple(sorted(routes, key=lambda r: r.model)),
        clusters=tuple(sorted(used_clusters.values(), key=lambda c: c.name)),
    )
    loads = {key: dict(state.load) if state.load else None for key, state in states.items()}
    return RoutingResult(table, results, loads)


def _route(spec: RoutePolicySpec, namespace: str, states, used_clusters, previous, activator
           ) -> tuple[Route, list[dict], list[str]]:
    missing: list[str] = []
    slo = spec.slo.ttft_p95_milliseconds / 1000 if spec.slo else None
    cascade = None
    if spec.strategy is RouteStrategy.CASCADE:
        cascade, split, backend_status = _cascade(spec, namespace, states, used_clusters, missing)
    else:
        split, backend_status = _split(spec.strategy, spec.backends, namespace, states, used_clusters, missing,
                                       slo, previous, activator)
    rules = []
    for rule in spec.rules:
        rule_split, _ = _split(rule.strategy or spec.strategy, rule.backends, namespace, states, used_clusters,
                               missing, slo, {}, activator)
        rules.append(Rule(_rule_match(rule.match), rule_split, rule.max_tokens))
    retry = Retry(
        attempts=spec.retry.attempts,
        per_try_timeout_seconds=spec.retry.per_try_timeout_seconds,
        on=tuple(r.value for r in spec.retry.retry_on),
    )
    fallback, fallback_status = _fallback(spec, namespace, states, used_clusters, missing)
    cheapest = _cheapest(spec, namespace, states)
    if cheapest is not None:
        used_clusters.setdefault(cheapest.cluster, cheapest.to_cluster())
    affinity = spec.prefix_affinity
    prefix = PrefixAffinity(affinity.prefix_chars, round(affinity.max_load_factor * 100)) if affinity else None
    return (Route(spec.model, split, tuple(rules), retry, fallback, cascade,
                  cheapest=cheapest.cluster if cheapest else None, prefix=prefix),
            backend_status + fallback_status, sorted(set(missing)))


def _cheapest(spec: RoutePolicySpec, namespace: str, states: Mapping[Ref, BackendState]) -> BackendState | None:
    """The policy's ready backend with the lowest price per output token (declared, or its
    replica-hour over its learned capacity); the first listed on a tie. None: none priced."""
    names = [b.key for b in spec.backends]
    names += [b.key for rule in spec.rules for b in rule.backends]
    names += [b.key for b in (spec.fallback.backends if spec.fallback else [])]
    best: tuple[float, BackendState] | None = None
    for name in dict.fromkeys(names):
        state = states.get((namespace, name))
        prices = state.prices() if state is not None and state.endpoints else None
        if state is not None and prices is not None and prices.output is not None \
                and (best is None or prices.output < best[0]):
            best = (prices.output, state)
    return best[1] if best else None


def _cascade(spec: RoutePolicySpec, namespace, states, used_clusters, missing
             ) -> tuple[Cascade | None, tuple[WeightedBackend, ...], list[dict]]:
    """The ready stages in order; the last one also takes the route's traffic (what Envoy
    falls back on), and a status row per backend."""
    settings = spec.cascade or CascadeSpec()
    stages, skipped = [], {}
    for b in spec.backends:
        state = states.get((namespace, b.key))
        if state is None:
            missing.append(_missing_name(b))
            skipped[b.key] = _not_found(b)
        elif not state.endpoints:
            skipped[b.key] = "no ready replicas: skipped by the cascade"
        else:
            used_clusters[state.cluster] = state.to_cluster()
            stages.append(CascadeStage(b.key, state.cluster, state.served_model))
    place = {s.backend: i for i, s in enumerate(stages, 1)}
    ready = {s.backend: len(used_clusters[s.cluster].endpoints) for s in stages}

    def reason(name: str) -> str:
        i = place[name]
        return (f"stage {i} of {len(stages)}: answers unless an escalation condition holds" if i < len(stages)
                else f"stage {i} of {len(stages)}: the last stage, answers what the others escalate")

    status = [{**_row_id(b), "weight": 100 if place.get(b.key) == 1 else 0,
               "readyReplicas": ready.get(b.key, 0),
               "reason": skipped.get(b.key) or reason(b.key)} for b in spec.backends]
    if not stages:
        return None, (), status
    cascade = Cascade(tuple(stages), settings.min_mean_logprob, settings.escalate_on_length,
                      settings.escalate_on_empty, tuple(p.lower() for p in settings.refusal_patterns),
                      spec.retry.per_try_timeout_seconds)
    return cascade, (WeightedBackend(stages[-1].cluster, 100),), status


def _fallback(spec: RoutePolicySpec, namespace, states, used_clusters, missing) -> tuple[Fallback | None, list[dict]]:
    """The ready fallback clusters, in order, and a status row for each fallback backend
    the split does not already list."""
    if spec.fallback is None:
        return None, []
    listed = {b.key for b in spec.backends}
    limit = spec.fallback.max_in_flight_per_replica
    saturated = f" or that is saturated ({limit} requests in flight per replica)" if limit else ""
    clusters, rows = [], []
    for i, b in enumerate(spec.fallback.backends, 1):
        state = states.get((namespace, b.key))
        if state is None:
            missing.append(_missing_name(b))
            reason = f"fallback {i}: {_not_found(b)}"
        elif not state.endpoints:
            reason = f"fallback {i}: no ready replicas, skipped"
        else:
            used_clusters[state.cluster] = state.to_cluster()
            clusters.append(state.cluster)
            reason = f"fallback {i}: takes requests the backend before it fails{saturated}"
        if b.key not in listed:
            rows.append({**_row_id(b), "weight": 0,
                         "readyReplicas": len(state.endpoints) if state else 0, "reason": reason})
    on = tuple(r.value for r in spec.fallback.retry_on)
    return (Fallback(tuple(clusters), on, limit) if clusters else None), rows


def _rule_match(match: RouteMatch) -> RuleMatch:
    def lower(items: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k.lower(), v) for k, v in items.items()))

    size = match.prompt_bytes
    return RuleMatch(
        headers=lower(match.headers),
        header_patterns=lower(match.header_patterns),
        headers_present=tuple(sorted({h.lower() for h in match.headers_present})),
        endpoint=match.endpoint.value if match.endpoint is not None else None,
        body=tuple(sorted(match.body.items())),
        prompt_bytes=(size.min, size.max) if size is not None else None,
    )


def _split(strategy, backends: list[Backend], namespace, states, used_clusters, missing, slo=None, previous=None,
           activator=None):
    """Effective weights (percent, summing to 100 when anything is ready) and status rows."""
    rows: list[tuple[Backend, int, int | None, str]] = []
    candidates: list[tuple[Backend, BackendState]] = []
    for b in backends:
        state = states.get((namespace, b.key))
        if state is None:
            missing.append(_missing_name(b))
            rows.append((b, 0, None, _not_found(b)))
            continue
        used_clusters[state.cluster] = state.to_cluster()
        candidates.append((b, state))

    ready = [(b, s) for b, s in candidates if s.endpoints and b.weight > 0]
    waking: set[str] = set()
    if not ready and activator is not None:
        # Nothing serves: backends that scale to zero are reached through the activator.
        for b, s in candidates:
            if s.scale_to_zero and b.weight > 0:
                used_clusters[s.cluster] = Cluster(s.cluster, s.served_model, (activator,))
                waking.add(b.key)
        ready = [(b, s) for b, s in candidates if b.key in waking]
    active: list[tuple[Backend, BackendState]] = []
    serving_priority = None
    load_reasons: dict[str, str] = {}
    demand: dict[str, float] = {}  # cost: tokens/s each backend should carry once scaled
    if strategy is RouteStrategy.FAILOVER and ready:
        serving_priority = min(b.priority for b, _ in ready)
        active = [(b, s) for b, s in ready if b.priority == serving_priority]
    else:
        active = ready
    if strategy in (RouteStrategy.COST, RouteStrategy.LATENCY) and active:
        shape = _cost_shares if strategy is RouteStrategy.COST else _latency_shares
        targets, load_reasons, demand = shape([s for _, s in active], slo)
        names = [b.key for b, _ in active]
        held = [(previous or {}).get(n) or 0 for n in names]
        if (previous or {}).get(HOLD) and sum(held) > 0:
            percents = _percentages(held)  # no new load sample: no new step
        else:
            percents = _percentages(_damp(names, targets, previous or {}))
    else:
        percents = _percentages([b.weight for b, _ in active])
    share = {b.key: p for (b, _), p in zip(active, percents, strict=False)}

    for b, s in candidates:
        n = len(s.endpoints)
        weight = share.get(b.key, 0)
        if b.key in waking:
            reason = "scaled to zero: requests wake it through the activator and wait for a replica"
        elif not s.endpoints:
            reason = "no ready replicas; its share goes to the others" if ready else "no ready replicas"
        elif b.weight == 0:
            reason = "weight 0"
        elif b.key in load_reasons:
            reason = load_reasons[b.key]
        elif strategy is RouteStrategy.FAILOVER:
            if b.priority == serving_priority:
                reason = f"priority {b.priority}: serving with {n} ready replica(s)"
            else:
                reason = f"standby: priority {b.priority}, priority {serving_priority} is serving"
        else:
            reason = f"weight {b.weight} of {sum(x.weight for x, _ in active)} over ready backends"
        rows.append((b, weight, n, reason))

    order = {b.key: i for i, b in enumerate(backends)}
    rows.sort(key=lambda r: order[r[0].key])
    status = [
        {**_row_id(b), "weight": w, "readyReplicas": n or 0, "reason": reason}
        | ({"demandTokensPerSecond": float(f"{demand[b.key]:.2g}")} if b.key in demand
           else {})  # two significant digits: a steady demand does not rewrite status
        for b, w, n, reason in rows
    ]
    split = tuple(
        WeightedBackend(s.cluster, share[b.key])
        for b, s in active
        if share.get(b.key, 0) > 0
    )
    return split, status


def _per_replica(state: BackendState, key: str) -> float | None:
    value = (state.load or {}).get(key)
    return float(value) if value is not None else None


OVERFILL = 1.2  # a backend that may still grow is filled this far past its target (the scaler's band is 10 %)
CAPACITY_GROWTH = 1.5  # a backend of unknown capacity may get up to this much more than it serves
IDLE_PROBE_SHARE = 0.25  # an idle backend of unknown capacity gets at most this share of demand at once


def _cost_shares(states: list[BackendState], slo) -> tuple[list[float], dict[str, str], dict[str, float]]:
    """Fill the cheapest backend up to what it serves at its autoscaling target, then the next.

    Capacity is per replica at the target: ``status.load.capacityTokensPerSecond``,
    which the autoscaler learns and keeps while the load is light, else what the
    current load says (``capacity_sample``). A backend's price per token is its
    replica price over that capacity (where unknown, the typical known one: the ranking
    falls back to the price per replica-hour).

    Demand is what all the route's backends serve now, a saturated one's scaled up by
    its requests in flight over those running (what waits would be served too). A
    backend below maxReplicas is filled to OVERFILL times its ready capacity, so its
    own autoscaler sees it over target and adds replicas; as they get ready its room
    grows and the overflow comes back from the dearer backends, which then idle (and
    scale to zero if they may). At maxReplicas it gets its target capacity. A backend
    over the policy's TTFT SLO gets no more than it serves now. Demand beyond every
    room is spread by capacity; with no demand measured, shares follow capacity.
    """
    learned: dict[str, float | None] = {}
    for s in states:
        load = s.load or {}
        known = load.get("capacityTokensPerSecond")
        learned[s.name] = float(known) if known else (capacity_sample(load, s.metric, s.target) if s.target else None)
    known_rates = [r for r in learned.values() if r]
    typical = sum(known_rates) / len(known_rates) if known_rates else 1.0
    per_1k = {s.name: (s.output_price(learned[s.name] or typical) or 0.0) * 1000 for s in states}

    served = {s.name: (_per_replica(s, "tokensPerSecond") or 0.0) * len(s.endpoints) for s in states}
    demand = sum(_offered(s, served[s.name]) for s in states)
    room, notes = {}, {}
    for s in states:
        room[s.name], notes[s.name] = _room(s, learned[s.name], served[s.name], demand, slo)
    order = sorted(states, key=lambda s: (per_1k[s.name], s.name))
    # What each backend should carry once scaled: the same filling with every backend
    # at maxReplicas; its autoscaler provisions for it (status.backends[].demandTokensPerSecond).
    wanted, _ = _fill(order, demand, {s.name: (learned[s.name] or 0.0) * (s.max_replicas or len(s.endpoints))
                                      for s in states})
    if demand <= 0:
        # No traffic measured (yet): by capacity, so that the first requests find room;
        # a dear backend that gets none of them idles all the same.
        shares = {s.name: (learned[s.name] or typical) * len(s.endpoints) for s in states}
    else:
        shares, remaining = _fill(order, demand, room)
        if remaining > 1e-9:  # more demand than every room: spread by capacity
            total = sum(room.values())
            for name, cap in room.items():
                shares[name] += remaining * (cap / total if total else 1 / len(states))
    reasons = {}
    for s in states:
        price = (f"${per_1k[s.name]:.4f}/1k tokens"
                 if s.cost_per_replica_hour is not None or s.declared_prices[1] is not None else "no cost set (free)")
        reasons[s.name] = f"cost rank {order.index(s) + 1}: {price}; {notes[s.name]}"
    return [shares[s.name] for s in states], reasons, wanted


def _room(s: BackendState, rate: float | None, served: float, demand: float, slo: float | None
          ) -> tuple[float, str]:
    """The tokens/s cost routing may send a backend now, and why."""
    n = len(s.endpoints)
    if rate is not None:
        grows = s.max_replicas is not None and n < s.max_replicas
        room = rate * n * (OVERFILL if grows else 1.0)
        note = (f"{rate:.0f} tokens/s per replica at target, {n} ready"
                + (f" (may grow to {s.max_replicas})" if grows else " (at its maximum)"))
    else:
        # The load says little about capacity yet: grow step by step, not all at once.
        room = served * CAPACITY_GROWTH if served > 0 else demand * IDLE_PROBE_SHARE
        note = "capacity not measured yet"
    ttft = _per_replica(s, "ttftP95Seconds")
    if slo is not None and ttft is not None and ttft > slo and served > 0:
        room = min(room, served)
        note += f"; TTFT p95 {ttft * 1000:.0f} ms over the {slo * 1000:.0f} ms SLO: held"
    return room, note


def _fill(order: list[BackendState], demand: float, room: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Each backend in ``order`` takes what is left of ``demand``, up to its room; and what is left."""
    taken, remaining = {}, demand
    for s in order:
        taken[s.name] = min(remaining, room[s.name])
        remaining -= taken[s.name]
    return taken, max(remaining, 0.0)


def _offered(state: BackendState, served: float) -> float:
    """The tokens/s a backend is asked for: what it serves, and for a queue beside a full
    batch, that much more per request waiting (the queue's growth is demand unserved)."""
    load = state.load or {}
    running = float(load.get("runningRequests") or 0.0)
    queued = float(load.get("queueDepth") or 0.0)
    return served * (running + queued) / running if running > 0 and queued > 0 else served


def _latency_shares(states: list[BackendState], slo: float | None
                    ) -> tuple[list[float], dict[str, str], dict[str, float]]:
    """Shares ∝ ready replicas / (TTFT p95 × (1 + queue)); a quarter over the SLO."""
    ttft = {s.name: _per_replica(s, "ttftP95Seconds") for s in states}
    known = sorted(t for t in ttft.values() if t)
    prior = known[len(known) // 2] if known else (slo / 2 if slo else 0.1)
    scores, reasons = [], {}
    for s in states:
        observed = ttft[s.name]
        latency = max(observed or prior, 0.001)
        queue = _per_replica(s, "queueDepth") or 0.0
        score = len(s.endpoints) / (latency * (1 + queue))
        over = slo is not None and observed is not None and observed > slo
        if over:
            score /= 4
        scores.append(score)
        seen = f"TTFT p95 {observed * 1000:.0f} ms" if observed is not None else "no TTFT measured yet"
        beyond = f", over the {slo * 1000:.0f} ms SLO" if over and slo is not None else ""
        reasons[s.name] = f"{seen}, queue {queue:.1f}{beyond}"
    return scores, reasons, {}


SETTLE_POINTS = 2  # goals within this many percentage points of the weights leave them as they are
SNAP_POINTS = 6  # goals within this many points are taken at once; farther ones half way


def _damp(names: list[str], targets: list[float], previous: dict[str, int]) -> list[float]:
    """Step from the previous weights (percent) towards the targets: hold within
    SETTLE_POINTS (noise) unless a backend is to be emptied or filled from nothing,
    jump within SNAP_POINTS, else move half way."""
    total = sum(targets)
    if total <= 0:
        return targets
    goal = [t * 100 / total for t in targets]
    if not any(previous.get(n) for n in names):
        return goal
    held = [float(previous.get(n) or 0) for n in names]
    gap = max(abs(g - h) for g, h in zip(goal, held, strict=True))
    if gap <= SETTLE_POINTS and [g == 0 for g in goal] == [h == 0 for h in held]:
        return held  # (a backend to be emptied is emptied, so it can idle and scale down)
    if gap <= SNAP_POINTS:
        return goal
    return [h / 2 + g / 2 for h, g in zip(held, goal, strict=True)]


def _percentages(weights: Sequence[float]) -> list[int]:
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
