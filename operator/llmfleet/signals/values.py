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
    kv_cache_utilization: float  # 0..1
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
    kv_cache_utilization: float  # per replica
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

    def status(self) -> dict:
        """`status.load` as the CRD declares it."""
        out = {
            "queueDepth": round(self.queue_depth, 2),
            "runningRequests": round(self.running_requests, 2),
            "kvCacheUtilization": round(self.kv_cache_utilization, 3),
            "tokensPerSecond": round(self.tokens_per_second, 1),
            "sampledReplicas": self.sampled_replicas,
        }
        if self.ttft_p95_seconds is not None:
            out["ttftP95Seconds"] = round(self.ttft_p95_seconds, 3)
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
