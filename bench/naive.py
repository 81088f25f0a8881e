"""The naive baseline for the benchmark: vLLM production-stack's KEDA autoscaling, as a pure function.

What the production stack ships and documents (``tutorials/20-keda-autoscaling.md``,
``tutorials/assets/values-20-keda.yaml``, the chart's ``scaledobject-vllm.yaml``): a
KEDA ScaledObject with one Prometheus trigger on ``vllm:num_requests_waiting``,
``threshold: '5'``, ``pollingInterval: 15``, ``cooldownPeriod: 360``,
``minReplicaCount: 1`` (0 in the scale-to-zero variant, which adds a keepalive
trigger that is active while any request arrived in the last minute).

KEDA hands 1 <-> N to a HorizontalPodAutoscaler with an External metric and an
``AverageValue`` target of 5, and does 0 <-> 1 itself. Modelled here, per poll:

* the controller looks every 15 s (KEDA's pollingInterval and the HPA's default sync
  period); calls in between hold;
* desired = ``ceil(sum waiting / 5)``, unless ``sum / (5 x replicas)`` is within the
  HPA's 10 % tolerance of 1 (then the current count);
* HPA default behaviour: scale up at once, at most ``max(2 x n, n + 4)`` per 15 s;
  scale down to the highest recommendation of the last 300 s (from the first poll:
  a restarted HPA has no history);
* bounds ``[max(1, minReplicaCount), maxReplicaCount]``;
* ``cooldownPeriod`` only applies to 1 -> 0 (it is not a scale-down delay): with
  ``minReplicaCount: 0``, KEDA scales to zero once no trigger has been active for
  360 s (at once when none ever was), and back to 1 on the first poll that sees one.

What it does not know, which is the point of the comparison: replicas that exist but
are still loading the model (the External-metric path ignores pod readiness), and
whether the scrape is complete (a missing pod's series just drops out of the sum).

The documented query, ``vllm:num_requests_waiting`` without ``sum()``, returns one
series per pod, and KEDA's Prometheus scaler refuses a result with several elements
("returned multiple elements"), so with two or more replicas the HPA cannot read the
metric and holds. ``literal_query=True`` models that; the default models the intended
``sum(vllm:num_requests_waiting)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from llmfleet.autoscale.scaler import (
    SCALE_UP_LIMIT,
    TOO_FEW_REPLICAS,
    TOO_MANY_REPLICAS,
    Decision,
    Observation,
    ScalingPolicy,
)

METRIC = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class NaivePolicy:
    """A production-stack KEDA ScaledObject (with the HPA defaults it runs through)."""

    min_replicas: int = 1  # minReplicaCount; 0 enables scale to zero
    max_replicas: int = 2  # maxReplicaCount (the tutorial's 2)
    threshold: float = 5.0  # the trigger's threshold: waiting requests per replica
    polling_interval: float = 15.0  # KEDA pollingInterval = HPA sync period (both 15 s)
    cooldown_period: float = 360.0  # KEDA cooldownPeriod: idle time before 1 -> 0
    keepalive_seconds: float = 60.0  # scale-to-zero variant: rate(...[1m]) > 0 keeps it active
    scale_down_window: float = 300.0  # HPA default scaleDown stabilizationWindowSeconds
    tolerance: float = 0.1  # HPA default tolerance
    literal_query: bool = False  # the query as documented (no sum): fails with 2+ replicas

    @classmethod
    def like(cls, policy: ScalingPolicy, **overrides: object) -> NaivePolicy:
        """The baseline with the same bounds as one of our policies (0 min if it scales to zero)."""
        fields: dict = {
            "min_replicas": 0 if policy.scale_to_zero else policy.min_replicas,
            "max_replicas": policy.max_replicas,
        }
        fields.update(overrides)
        return cls(**fields)

    @property
    def hpa_min(self) -> int:
        return max(1, self.min_replicas)


@dataclass(frozen=True)
class NaiveState:
    last_poll: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, HPA recommendation) over the down window
    last_active: float | None = None  # KEDA's lastActiveTime
    last_scale_time: float | None = None


def naive_decide(policy: NaivePolicy, obs: Observation, state: NaiveState | None = None) -> Decision[NaiveState]:
    """What KEDA + the HPA would ask for at ``obs.now``; same Decision shape as ``decide``."""
    state = state or NaiveState()
    now, current, load = obs.now, obs.replicas, obs.load
    if state.last_poll is not None and now - state.last_poll < policy.polling_interval:
        why = f"between polls (every {policy.polling_interval:g} s)"
        return Decision(current, current, why, None, None, current, state)

    # What Prometheus would return: the sum over the series it has (missing pods drop out).
    sampled = load.sampled_replicas if load is not None else 0
    waiting = load.queue_depth * sampled if load is not None and sampled > 0 else 0.0
    recent = load is not None and (
        load.requests_per_second > 0
        or (load.last_activity is not None and now - load.last_activity <= policy.keepalive_seconds)
    )
    keepalive = policy.min_replicas == 0 and (obs.wake or recent)
    active = waiting > 0 or keepalive  # activationThreshold defaults to 0
    last_active = now if active else state.last_active
    polled = replace(state, last_poll=now, last_active=last_active)

    def decision(desired: int, reason: str, rec: int, new: NaiveState, limited=None, limited_reason=None):
        if desired != current:
            new = replace(new, last_scale_time=now)
        return Decision(current, desired, reason, limited, limited_reason, rec, new)

    # KEDA's own 0 <-> 1.
    if current == 0:
        if active:
            return decision(policy.hpa_min, "KEDA activation: a trigger is active", policy.hpa_min, polled)
        if policy.min_replicas > 0:
            return decision(policy.hpa_min, "KEDA: below minReplicaCount", policy.hpa_min, polled)
        return decision(0, "KEDA: no trigger active", 0, polled)
    if policy.min_replicas == 0 and not active and (
        state.last_active is None or now - state.last_active >= policy.cooldown_period
    ):
        return decision(0, f"KEDA: no trigger active for {policy.cooldown_period:g} s (cooldownPeriod)", 0,
                        replace(polled, recommendations=()))

    # The HPA: bounds first (even without a metric), then the metric.
    if not policy.hpa_min <= current <= policy.max_replicas:
        desired = min(max(current, policy.hpa_min), policy.max_replicas)
        word = "above maxReplicaCount" if current > policy.max_replicas else "below minReplicaCount"
        return decision(desired, f"HPA: {word} {desired}", current, polled)
    if load is None or sampled == 0 or (policy.literal_query and sampled > 1):
        why = "query returned multiple elements" if load is not None and sampled > 1 else "no metric"
        return decision(current, f"HPA holds: FailedGetExternalMetric ({why})", current, polled)
    existing = max(1, obs.ready_replicas + obs.starting_replicas)  # the scale subresource's status.replicas
    ratio = waiting / (policy.threshold * existing)
    rec = existing if abs(ratio - 1) <= policy.tolerance else math.ceil(waiting / policy.threshold - 1e-9)
    recs = (*tuple((t, r) for t, r in state.recommendations if t > now - policy.scale_down_window), (now, rec))
    down_rec = max(r for _, r in recs)
    candidate = current
    if rec > current:
        candidate = rec
    elif down_rec < current:
        candidate = down_rec
    limited = limited_reason = None
    cap = max(2 * current, current + 4)  # polls are a whole period apart: the period starts at `current`
    if candidate > cap and cap < policy.max_replicas:  # else maxReplicaCount is what binds
        candidate, limited_reason = cap, SCALE_UP_LIMIT
        limited = f"HPA scale-up limit: at most {cap} replicas per 15 s"
    desired = min(max(candidate, policy.hpa_min), policy.max_replicas)
    if limited is None and desired == policy.max_replicas and rec > desired:
        limited_reason, limited = TOO_MANY_REPLICAS, f"wants {rec}; maxReplicaCount is {desired}"
    elif limited is None and desired == policy.hpa_min and rec < desired:
        limited_reason, limited = TOO_FEW_REPLICAS, f"wants {rec}; minReplicaCount is {desired}"
    if abs(ratio - 1) <= policy.tolerance:
        word = f"within {policy.tolerance:.0%} of"
    else:
        word = "over" if ratio > 1 else "under"
    reason = f"{METRIC} {waiting:.1f} {word} threshold {policy.threshold:g}×{existing}"
    return decision(desired, reason, rec, replace(polled, recommendations=recs), limited, limited_reason)
