"""Load signals: what the scraper derives and the scaler and load-aware routing consume.

Plain frozen data, no I/O. Per-replica numbers are averages over the replicas that were
sampled successfully; a ModelDeployment whose samples are missing or stale has
`fresh=False`, and nothing may scale it down on that basis.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica at one scrape (rates over the interval since its previous scrape)."""

    queue_depth: float  # requests waiting for a batch slot
    running_requests: float  # requests in the running batch
    kv_cache_utilization: float | None  # 0..1; None for an engine that reports no KV cache
    tokens_per_second: float  # generated tokens per second (counter rate)
    requests_per_second: float  # finished requests per second (counter rate)
    ttft_p50_seconds: float | None = None  # over requests finished in the interval
    ttft_p95_seconds: float | None = None


@dataclass(frozen=True)
class ModelLoad:
    """A ModelDeployment's load, from the replicas sampled in one round."""

    time: float  # when the round was taken (monotonic seconds)
    sampled_replicas: int  # replicas scraped successfully
    failed_replicas: int  # ready replicas whose scrape failed or timed out
    queue_depth: float  # per replica (average)
    running_requests: float  # per replica
    kv_cache_utilization: float | None  # per replica, over those that report it
    tokens_per_second: float  # per replica
    requests_per_second: float  # whole ModelDeployment
    ttft_p50_seconds: float | None = None  # whole ModelDeployment, merged histograms
    ttft_p95_seconds: float | None = None
    last_activity: float | None = None  # last time any request was queued, running or finished

    @property
    def fresh(self) -> bool:
        """Every ready replica answered: safe to scale down on."""
        return self.sampled_replicas > 0 and self.failed_replicas == 0

    def per_replica(self, metric: str) -> float:
        """The value of an autoscaling metric (the CRD's names) per replica."""
        metrics = {
            "queueDepth": self.queue_depth,
            "runningRequests": self.running_requests,
            "kvCacheUtilization": self.kv_cache_utilization,
            "tokensPerSecond": self.tokens_per_second,
        }
        if metric not in metrics:
            raise KeyError(metric)
        return metric_value(metrics, metric) or 0.0

    def status(self, capacity: float | None = None) -> dict:
        """`status.load` as the CRD declares it; ``capacity`` as learned by ``learn_capacity``."""
        out = {
            "queueDepth": round(self.queue_depth, 2),
            "runningRequests": round(self.running_requests, 2),
            "tokensPerSecond": round(self.tokens_per_second, 1),
            "sampledReplicas": self.sampled_replicas,
        }
        if self.kv_cache_utilization is not None:
            out["kvCacheUtilization"] = round(self.kv_cache_utilization, 3)
        if self.ttft_p95_seconds is not None:
            out["ttftP95Seconds"] = round(self.ttft_p95_seconds, 3)
        if capacity is not None:
            out["capacityTokensPerSecond"] = round(capacity, 1)
        return out


def metric_value(load: dict, metric: str) -> float | None:
    """An autoscaling metric (the CRD's names) per replica, from ``status.load``.

    ``runningRequests`` is the requests in flight: running plus waiting for a batch
    slot, since a full batch hides any further demand.
    """
    value = load.get(metric)
    if value is None:
        return None
    if metric == "runningRequests":
        return float(value) + float(load.get("queueDepth") or 0.0)
    return float(value)


CAPACITY_FLOOR = 0.5  # below half its target, a replica's rate says little about its rate at the target
CAPACITY_WEIGHT = 0.25  # weight of a new sample in the running average


def capacity_sample(load: dict, metric: str, target: float) -> float | None:
    """Generated tokens/s one replica would serve at its autoscaling target, from one
    ``status.load``; None when the load is too light to tell.

    Running requests and KV cache fill grow with the rate a replica serves, so a
    replica at CAPACITY_FLOOR of its target or more is scaled to the target.
    ``queueDepth`` is 0 until a batch is full: its sample is the rate of a saturated
    replica (any queue at all). For ``tokensPerSecond`` it is the target itself.
    """
    if metric == "tokensPerSecond":
        return target
    tps = float(load.get("tokensPerSecond") or 0.0)
    if tps <= 0:
        return None
    queued = float(load.get("queueDepth") or 0.0) > 0
    if metric == "queueDepth":
        return tps if queued else None
    if metric == "runningRequests":
        # Tokens come from the running batch, not from what waits beside it; a queue
        # means the batch is full, and a target beyond a full batch adds no tokens.
        utilization = float(load.get("runningRequests") or 0.0) / target
        if utilization < CAPACITY_FLOOR:
            return None
        return tps / (max(utilization, 1.0) if queued else utilization)
    utilization = float(load.get(metric) or 0.0) / target
    return tps / utilization if utilization >= CAPACITY_FLOOR else None


def learn_capacity(previous: float | None, load: ModelLoad, metric: str, target: float) -> float | None:
    """``capacity_sample`` as a running average over fresh loads; without a usable sample
    the previous value stands (capacity is remembered while the load is light)."""
    sample = capacity_sample(load.status(), metric, target) if load.fresh else None
    if sample is None:
        return previous
    if previous is None or metric == "tokensPerSecond":
        return sample
    return previous + CAPACITY_WEIGHT * (sample - previous)
