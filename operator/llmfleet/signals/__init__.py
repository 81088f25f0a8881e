"""Load signals from the model servers' own Prometheus metrics.

Every ready replica's metrics endpoint is scraped (:mod:`.scrape`), parsed into the
raw numbers of one sample (:mod:`.parse`), and successive samples are turned into
per-replica and per-ModelDeployment load (:mod:`.load`): the
:class:`~llmfleet.signals.values.ReplicaLoad` and
:class:`~llmfleet.signals.values.ModelLoad` the scaler and load-aware routing use.

Which series carries which signal is each engine's ``metric_names``
(:class:`~llmfleet.engines.base.MetricNames`), one table for all of llmfleet:

* vLLM (``vllm:`` prefix; sim exposes the same names): queue ``num_requests_waiting``,
  running ``num_requests_running``, KV cache ``kv_cache_usage_perc`` (older versions:
  ``gpu_cache_usage_perc``), tokens/s from ``generation_tokens_total``, requests/s from
  ``request_success_total`` (all finish reasons), TTFT ``time_to_first_token_seconds``.
* SGLang (``sglang:``): ``num_queue_reqs``, ``num_running_reqs``, ``token_usage``,
  tokens/s from the ``gen_throughput`` gauge, requests/s from ``num_requests_total``,
  ``time_to_first_token_seconds``. SGLang counts a request's generated tokens only
  when it finishes, so its token counter lags by whole requests; the gauge is the
  scheduler's live decode rate (taken as 0 when nothing runs).
* TensorRT-LLM (``trtllm_``, on ``/prometheus/metrics``): ``num_requests_waiting``,
  ``num_requests_running``, ``kv_cache_utilization``, ``generation_tokens_total``,
  ``request_success_total``, ``time_to_first_token_seconds``.
"""

from __future__ import annotations

from llmfleet.signals.load import (
    LoadTracker,
    histogram_increase,
    histogram_quantile,
    merge_histograms,
)
from llmfleet.signals.parse import Histogram, RawSample, metric_names, parse_sample
from llmfleet.signals.scrape import ScrapeError, Scraper, ScrapeTarget, scrape

__all__ = [
    "Histogram",
    "LoadTracker",
    "RawSample",
    "ScrapeError",
    "ScrapeTarget",
    "Scraper",
    "histogram_increase",
    "histogram_quantile",
    "merge_histograms",
    "metric_names",
    "parse_sample",
    "scrape",
]
