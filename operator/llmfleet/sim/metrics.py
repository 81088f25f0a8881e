"""vLLM-named Prometheus metrics for the sim engine.

The names, label set (``model_name`` plus ``engine="0"``) and histogram bucket
boundaries are vLLM v1's, so dashboards, the autoscaler and anything else that
reads a vLLM replica reads a sim replica unchanged.

Standing in for Triton with its vLLM backend (``--serve-as triton``), it shows what that
backend shows: vLLM's counters and histograms but none of vLLM's queue, running or
KV-cache gauges, and Triton's own ``nv_inference_request_success`` and
``nv_inference_pending_request_count`` (labels ``model`` and ``version``); llmfleet then
derives the load from the histograms' sums, as it does for a real Triton replica.

All durations are wall-clock seconds as a client would measure them: with
``--time-scale s`` they are roughly ``s`` times the modelled GPU time (plus the
real overhead of this process).

Values live in plain ints/lists and are turned into metric families only when
``/metrics`` is scraped (a custom collector on a private CollectorRegistry). The
engine observes a histogram for every generated token; prometheus_client's
thread-safe Histogram.observe costs ~0.5 us against ~0.1 us here, about 5% of a
core at the ~100k tokens/s a time-scale-0 replica emits in the bench.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

# Bucket boundaries copied from vLLM's PrometheusStatLogger (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                       1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                           30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
                           7680.0)

# vLLM creates request_success for every FinishReason up front; so do we.
FINISH_REASONS = ("stop", "length", "abort")


class LatencyRecorder:
    """A lock-free histogram: the engine is single-threaded (one asyncio loop)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value (``le`` semantics: a value equal to a bound counts in it)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: cumulative counts keyed by ``le``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    # prometheus_client renders floats like "0.001" and "1.0"; match it.
    return repr(float(bound))


class EngineState(NamedTuple):
    """The scheduler's instantaneous state, read at scrape time."""

    running: int
    waiting: int
    kv_cache_usage: float


class SimMetrics(Collector):
    """Counters and histograms of one sim replica, exposed under vLLM's names."""

    def __init__(self, model_name: str, state: Callable[[], EngineState], *, serve_as: str = "vllm") -> None:
        self.model_name = model_name
        self._state = state
        self.serve_as = serve_as
        self._labels = (model_name, "0")
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.num_preemptions = 0
        self.prefix_cache_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0  # of those, found cached
        self.request_success = dict.fromkeys(FINISH_REASONS, 0)
        self.time_to_first_token = LatencyRecorder(TTFT_BUCKETS)
        self.inter_token_latency = LatencyRecorder(INTER_TOKEN_BUCKETS)
        self.e2e_request_latency = LatencyRecorder(REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = LatencyRecorder(REQUEST_LATENCY_BUCKETS)
        # A private registry: several sim servers can live in one process (tests)
        # and nothing else in llmfleet leaks into a replica's /metrics.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """Build the metric families (called by prometheus_client on each scrape)."""
        names = ["model_name", "engine"]
        labels = list(self._labels)
        state = self._state()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(labels, value)
            return c

        def histogram(name: str, doc: str, h: LatencyRecorder) -> HistogramMetricFamily:
            m = HistogramMetricFamily(name, doc, labels=names)
            m.add_metric(labels, h.cumulative(), h.sum)
            return m

        if self.serve_as == "triton":
            yield from self._triton(state)
        else:
            yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                        state.running)
            yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                        state.waiting)
            yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                        state.kv_cache_usage)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      self.num_preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                      self.prompt_tokens)
        yield counter("vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.", self.prefix_cache_queries)
        yield counter("vllm:prefix_cache_hits",
                      "Prefix cache hits, in terms of number of cached tokens.", self.prefix_cache_hits)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      self.generation_tokens)
        success = CounterMetricFamily("vllm:request_success",
                                      "Count of successfully processed requests.",
                                      labels=[*names, "finished_reason"])
        for reason, n in self.request_success.items():
            success.add_metric([*labels, reason], n)
        yield success
        yield histogram("vllm:time_to_first_token_seconds",
                        "Histogram of time to first token in seconds.", self.time_to_first_token)
        yield histogram("vllm:inter_token_latency_seconds",
                        "Histogram of inter-token latency in seconds.", self.inter_token_latency)
        yield histogram("vllm:e2e_request_latency_seconds",
                        "Histogram of e2e request latency in seconds.", self.e2e_request_latency)
        yield histogram("vllm:request_queue_time_seconds",
                        "Histogram of time spent in WAITING phase for request.",
                        self.request_queue_time)

    def _triton(self, state: EngineState) -> Iterator[Metric]:
        """Triton's series (names and labels from its documentation's samples)."""
        labels = {"model": self.model_name, "version": "1"}
        success = CounterMetricFamily("nv_inference_request_success",
                                      "Number of successful inference requests, all batch sizes",
                                      labels=list(labels))
        success.add_metric(list(labels.values()), sum(self.request_success.values()))
        yield success
        # Triton hands an LLM backend each request at once: nothing is pending in Triton itself.
        pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                    "Instantaneous number of pending requests awaiting execution per-model.",
                                    labels=list(labels))
        pending.add_metric(list(labels.values()), 0)
        yield pending
