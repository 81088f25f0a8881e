"""Load signals from successive raw samples: rates, TTFT quantiles, whole-ModelDeployment load.

Pure and synchronous: :class:`LoadTracker` is fed samples with the time they were taken
(monotonic seconds) and never reads a clock.

* Rates need two samples of the same replica, so the first sample of a replica gives
  no :class:`ReplicaLoad`; such a replica counts as failed in :meth:`LoadTracker.model_load`
  until its second sample (its load is missing, not zero).
* A counter that went down means the engine restarted. As Prometheus' ``rate()`` does,
  the increase over that interval is then the counter's new value (it started from 0
  within the interval); rates are never negative.
* A counter absent from a sample counts as 0: engines create labelled counter series on
  their first increment (TensorRT-LLM), so a fresh replica has none yet.
* Tokens per second come from the engine's throughput gauge when it names one (SGLang
  only adds a request's tokens to its counter when the request finishes, so the
  counter lags by whole requests; the gauge is the scheduler's live decode rate, and 0
  when nothing runs), otherwise from the generated-tokens counter.
* TTFT quantiles use the histogram's bucket *increases* over the interval, i.e. the
  requests that got their first token since the previous sample, interpolated inside
  the bucket as Prometheus' ``histogram_quantile`` does.
* An engine without queue and running gauges (Triton's vLLM backend) has them derived
  by Little's law: the increase of the TTFT histogram's sum over the interval, per
  second, is the mean number of requests awaiting their first token (the queue, prefill
  included), and that of the end-to-end latency sum the mean number in the engine; the
  difference is the running batch. A request adds to a sum when it ends, so a derived
  load lags by about one request's duration. Such an engine reports no KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass

from llmfleet.signals.parse import INF, Histogram, RawSample
from llmfleet.signals.values import ModelLoad, ReplicaLoad

ReplicaKey = Hashable
ModelKey = Hashable

TTFT_QUANTILES = (0.5, 0.95)


# ---------------------------------------------------------------------------- histograms

def histogram_quantile(q: float, histogram: Histogram | None) -> float | None:
    """The ``q`` quantile (0 < q < 1) of a cumulative histogram, as Prometheus computes it.

    Linear interpolation inside the bucket holding the rank (the first bucket starts at
    0); a rank in the ``+Inf`` bucket gives the highest finite bound. None when the
    histogram is missing or has no observations.
    """
    if histogram is None or not 0 < q < 1:
        return None
    buckets = _monotonic(histogram.buckets)
    total = buckets[-1][1]
    if total <= 0 or len(buckets) < 2:
        return None
    rank = q * total
    # The first finite bucket whose cumulative count reaches the rank, else +Inf's.
    b = next((i for i, (_, count) in enumerate(buckets[:-1]) if count >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    upper, count = buckets[b]
    if b == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if b == 0 else buckets[b - 1]
    in_bucket = count - below
    return lower + (upper - lower) * ((rank - below) / in_bucket)


def histogram_increase(current: Histogram | None, previous: Histogram | None) -> Histogram | None:
    """Observations added between two samples of one histogram.

    ``previous`` None (first sample or after a restart) means everything in ``current``
    is new. None when ``current`` is missing or the bucket bounds changed.
    """
    if current is None:
        return None
    if previous is None:
        return current
    if current.bounds != previous.bounds:
        return None
    buckets = tuple(
        (le, max(0.0, now - before))
        for (le, now), (_, before) in zip(current.buckets, previous.buckets, strict=True)
    )
    total = None
    if current.sum is not None and previous.sum is not None:
        total = max(0.0, current.sum - previous.sum)
    return Histogram(buckets=buckets, sum=total)


def merge_histograms(histograms: Iterable[Histogram]) -> Histogram | None:
    """Sum histograms at the bucket bounds they all share (always including ``+Inf``)."""
    histograms = list(histograms)
    if not histograms:
        return None
    common = set.intersection(*(set(h.bounds) for h in histograms))
    if INF not in common:
        return None
    bounds = sorted(common)
    cumulative = [dict(h.buckets) for h in histograms]
    sums = [h.sum for h in histograms if h.sum is not None]
    return Histogram(
        buckets=tuple((le, math.fsum(c[le] for c in cumulative)) for le in bounds),
        sum=math.fsum(sums) if len(sums) == len(histograms) else None,
    )


def _monotonic(buckets: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    # Cumulative counts cannot decrease; a scrape racing an observation can make them
    # look as if they did. Prometheus evens that out the same way.
    out: list[tuple[float, float]] = []
    highest = 0.0
    for le, count in buckets:
        highest = max(highest, count)
        out.append((le, highest))
    return out


# ---------------------------------------------------------------------------- tracker

@dataclass
class _Replica:
    sample: RawSample  # the baseline for the next interval
    time: float
    load: ReplicaLoad | None  # over the interval ending at `time`; None on first sight
    ttft: Histogram | None  # TTFT observations in that interval
    last_activity: float | None


def _is_reset(previous: RawSample, current: RawSample) -> bool:
    """Some counter went down: the engine restarted between the two samples."""
    for field in ("generation_tokens_total", "finished_requests_total", "prompt_tokens_total",
                  "request_latency_seconds_sum"):
        before, now = getattr(previous, field), getattr(current, field)
        if before is not None and now is not None and now < before:
            return True
    before_h, now_h = previous.ttft_seconds, current.ttft_seconds
    if before_h is not None and now_h is not None and before_h.bounds == now_h.bounds:
        return any(n < b for (_, n), (_, b) in zip(now_h.buckets, before_h.buckets, strict=True))
    return False


def _increase(previous: float | None, current: float | None) -> float:
    if current is None:
        return 0.0
    return max(0.0, current - (previous or 0.0))


def _mean_of(values: Iterable[float | None]) -> float | None:
    """The mean of the values given (None ones left out); None when there are none."""
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


class LoadTracker:
    """Keeps each replica's previous sample and turns new samples into load signals.

    ``max_sample_age``: in :meth:`model_load`, a replica whose latest load is older than
    this (seconds) counts as failed: it was not sampled in this round.
    """

    def __init__(self, *, max_sample_age: float = 15.0) -> None:
        self.max_sample_age = max_sample_age
        self._replicas: dict[ReplicaKey, _Replica] = {}
        self._model_activity: dict[ModelKey, float] = {}

    @property
    def replica_keys(self) -> frozenset[ReplicaKey]:
        return frozenset(self._replicas)

    def latest(self, key: ReplicaKey) -> ReplicaLoad | None:
        """The load computed by the latest :meth:`observe` of ``key``."""
        replica = self._replicas.get(key)
        return None if replica is None else replica.load

    def observe(self, key: ReplicaKey, sample: RawSample, now: float) -> ReplicaLoad | None:
        """Record a sample of replica ``key`` taken at ``now``; its load over the interval.

        None on first sight (and when ``now`` is not after the previous sample), which
        starts a new baseline. A sample without the queue/running/KV gauges is ignored
        (None, the previous baseline stays): it cannot describe a load.
        """
        queue, running = sample.queue_depth, sample.running_requests
        kv = sample.kv_cache_utilization
        if sample.missing_gauges:
            return None
        previous = self._replicas.get(key)
        busy = (queue or 0) > 0 or (running or 0) > 0
        if previous is None or now <= previous.time or previous.sample.derives_load != sample.derives_load:
            last = now if busy else (previous.last_activity if previous else None)
            self._replicas[key] = _Replica(sample, now, None, None, last)
            return None

        interval = now - previous.time
        # After a restart every counter started again from 0 within the interval.
        base = RawSample() if _is_reset(previous.sample, sample) else previous.sample
        if queue is None or running is None:  # derived (sample.derives_load)
            assert sample.ttft_seconds is not None and sample.ttft_seconds.sum is not None
            awaiting = _increase(base.ttft_seconds.sum if base.ttft_seconds else None, sample.ttft_seconds.sum)
            in_engine = _increase(base.request_latency_seconds_sum, sample.request_latency_seconds_sum)
            queue = awaiting / interval
            running = max(0.0, in_engine - awaiting) / interval
            busy = queue > 0 or running > 0
        tokens = _increase(base.generation_tokens_total, sample.generation_tokens_total)
        finished = _increase(base.finished_requests_total, sample.finished_requests_total)
        if sample.generation_throughput is not None:
            tokens_per_second = sample.generation_throughput if running > 0 else 0.0
        else:
            tokens_per_second = tokens / interval
        ttft = histogram_increase(sample.ttft_seconds, base.ttft_seconds)
        p50, p95 = (histogram_quantile(q, ttft) for q in TTFT_QUANTILES)
        load = ReplicaLoad(
            queue_depth=queue,
            running_requests=running,
            kv_cache_utilization=kv,
            tokens_per_second=tokens_per_second,
            requests_per_second=finished / interval,
            ttft_p50_seconds=p50,
            ttft_p95_seconds=p95,
        )
        active = busy or finished > 0 or tokens > 0
        last = now if active else previous.last_activity
        self._replicas[key] = _Replica(sample, now, load, ttft, last)
        return load

    def forget(self, keys: Iterable[ReplicaKey]) -> None:
        """Drop replicas that are gone (deleted pods); their next sample is a first sight."""
        for key in keys:
            self._replicas.pop(key, None)

    def forget_models(self, keys: Iterable[ModelKey]) -> None:
        """Drop what is remembered about deleted ModelDeployments (their last activity)."""
        for key in keys:
            self._model_activity.pop(key, None)

    def model_load(
        self,
        replica_keys: Iterable[ReplicaKey],
        failed: Collection[ReplicaKey],
        now: float,
        *,
        model: ModelKey | None = None,
    ) -> ModelLoad:
        """The load of one ModelDeployment from its ready replicas' latest loads.

        ``replica_keys`` are its ready replicas, ``failed`` those whose scrape failed in
        this round (counted once even if also in ``replica_keys``). A replica without
        a load from the last ``max_sample_age`` seconds (first sight, never scraped)
        counts as failed too, so ``fresh`` is False and nothing scales down on it.
        Queue, running, KV and tokens/s are averages over the sampled replicas (0 when
        none was); requests/s is their sum; TTFT quantiles come from their merged
        histogram increases. ``last_activity`` is the latest time any of these replicas
        was seen busy or finishing requests; with ``model`` it is remembered for the
        ModelDeployment, so it survives its replicas being replaced.
        """
        keys = list(dict.fromkeys([*replica_keys, *failed]))
        failed_keys = set(failed)
        loads: list[ReplicaLoad] = []
        ttfts: list[Histogram] = []
        activity: list[float] = []
        for key in keys:
            replica = self._replicas.get(key)
            if replica is not None and replica.last_activity is not None:
                activity.append(replica.last_activity)
            if (
                key in failed_keys
                or replica is None
                or replica.load is None
                or now - replica.time > self.max_sample_age
            ):
                continue
            loads.append(replica.load)
            if replica.ttft is not None:
                ttfts.append(replica.ttft)
        if model is not None:
            if model in self._model_activity:
                activity.append(self._model_activity[model])
            if activity:
                self._model_activity[model] = max(activity)

        sampled = len(loads)

        def average(field: str) -> float:
            return math.fsum(getattr(load, field) for load in loads) / sampled if sampled else 0.0

        merged = merge_histograms(ttfts)
        p50, p95 = (histogram_quantile(q, merged) for q in TTFT_QUANTILES)
        return ModelLoad(
            time=now,
            sampled_replicas=sampled,
            failed_replicas=len(keys) - sampled,
            queue_depth=average("queue_depth"),
            running_requests=average("running_requests"),
            kv_cache_utilization=_mean_of(load.kv_cache_utilization for load in loads),
            tokens_per_second=average("tokens_per_second"),
            requests_per_second=math.fsum(load.requests_per_second for load in loads),
            ttft_p50_seconds=p50,
            ttft_p95_seconds=p95,
            last_activity=max(activity, default=None),
        )
