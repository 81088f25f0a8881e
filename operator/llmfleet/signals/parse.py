"""One replica's ``/metrics`` text, reduced to the raw numbers llmfleet's load signals need.

Pure: text in, :class:`RawSample` out. Parsing is prometheus_client's
(``text_string_to_metric_families``); what is done here is picking the engine's series
(:class:`~llmfleet.engines.base.MetricNames`) and summing over their label sets: one
replica can report several label sets for one signal (vLLM labels every series with
``model_name`` and ``engine``, the data-parallel engine index; SGLang with ``tp_rank``,
``pp_rank`` and ``engine_type``).

Conventions:

* A signal the text does not carry is ``None``, never 0, and so is one with a NaN or
  infinite value: a number we cannot trust is unknown, not idle.
* Counts (queue, running, tokens, requests, histogram buckets) are summed over label
  sets. KV-cache utilization is a fraction of each engine's own cache, so it is
  averaged.
* prometheus_client's parser names a ``counter`` family without its ``_total``
  suffix (``vllm:generation_tokens``) while its samples keep it
  (``vllm:generation_tokens_total``), and it *adds* ``_total`` to the samples of a
  counter exposed without one. Series are therefore looked up by sample name, with and
  without ``_total``; family names are never used.
* A gauge or counter may be named with label matchers, ``name{label="value",...}``
  (Triton reports several signals as one gauge told apart by a label, e.g.
  ``nv_trt_llm_request_metrics{request_type="waiting"}``): only the samples with those
  label values count. Histograms are named by their base name alone.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from llmfleet.engines import get_engine
from llmfleet.engines.base import MetricNames

INF = math.inf
_SAMPLE_NAME = re.compile(r"[^{\s]+")  # a sample line starts with its name
_SELECTOR = re.compile(r'^(?P<name>[^{\s]+)(?:\{(?P<matchers>[^}]*)\})?$')
_MATCHER = re.compile(r'\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"(?P<value>[^"]*)"\s*(?:,|$)')


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram summed over label sets.

    ``buckets`` are ``(le, cumulative count)`` in ascending ``le`` order and always end
    with ``+Inf``, whose count is the number of observations.
    """

    buckets: tuple[tuple[float, float], ...]
    sum: float | None = None

    @property
    def count(self) -> float:
        """Number of observations (the ``+Inf`` bucket)."""
        return self.buckets[-1][1]

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(le for le, _ in self.buckets)


@dataclass(frozen=True)
class RawSample:
    """The numbers one scrape of one replica gave, before any rate is taken.

    Gauges are instantaneous; counters and the TTFT histogram are cumulative since the
    engine started. ``None`` means the text did not carry the signal (or carried NaN).
    """

    queue_depth: float | None = None
    running_requests: float | None = None
    kv_cache_utilization: float | None = None  # 0..1, averaged over engines
    generation_tokens_total: float | None = None
    generation_throughput: float | None = None  # tokens/s gauge (SGLang)
    finished_requests_total: float | None = None
    prompt_tokens_total: float | None = None
    ttft_seconds: Histogram | None = None
    request_latency_seconds_sum: float | None = None  # the e2e latency histogram's sum

    @property
    def derives_load(self) -> bool:
        """Without queue and running gauges, the TTFT and latency sums give them as rates."""
        return (self.queue_depth is None and self.running_requests is None
                and self.request_latency_seconds_sum is not None
                and self.ttft_seconds is not None and self.ttft_seconds.sum is not None)

    @property
    def missing_gauges(self) -> tuple[str, ...]:
        """The instantaneous signals this sample lacks and cannot derive (the KV cache is
        optional for an engine whose load is derived: it reports none)."""
        if self.derives_load:
            return ()
        return tuple(
            name
            for name in ("queue_depth", "running_requests", "kv_cache_utilization")
            if getattr(self, name) is None
        )

    @property
    def has_load_signals(self) -> bool:
        """Queue, running and KV-cache gauges are all present: the sample describes a load."""
        return not self.missing_gauges


def metric_names(engine_kind: str) -> MetricNames:
    """The series ``engine_kind`` (vllm, sglang, tensorrt-llm, sim) exposes per signal."""
    return get_engine(engine_kind).metric_names


def parse_sample(text: str, names: MetricNames | str) -> RawSample:
    """Parse one ``/metrics`` body (Prometheus text format 0.0.4).

    ``names`` is the engine's :class:`MetricNames` or its kind. Raises ``ValueError``
    when the text is not Prometheus exposition (the scraper records it as a parse
    error); a well-formed text without the engine's series gives ``None`` fields.
    """
    if isinstance(names, str):
        names = metric_names(names)
    series = _series_by_sample_name(_relevant_lines(text, _wanted(names)))
    kv = None
    for name in (names.kv_cache_utilization, *names.kv_cache_utilization_fallbacks):
        kv = _mean(_select(series, name))
        if kv is not None:
            break
    return RawSample(
        queue_depth=_sum(_select(series, names.queue_depth)),
        running_requests=_sum(_select(series, names.running_requests)),
        kv_cache_utilization=kv,
        generation_tokens_total=_counter(series, names.generation_tokens_total),
        generation_throughput=_sum(_select(series, names.generation_throughput)),
        finished_requests_total=_counter(series, names.finished_requests_total),
        prompt_tokens_total=_counter(series, names.prompt_tokens_total),
        ttft_seconds=_histogram(series, names.ttft_seconds_histogram),
        request_latency_seconds_sum=_sum(series.get(f"{names.request_latency_seconds_histogram}_sum"))
        if names.request_latency_seconds_histogram else None,
    )


@functools.cache  # a few selectors per engine, parsed on every scrape otherwise
def parse_selector(selector: str) -> tuple[str, dict[str, str]]:
    """``name{label="value",...}`` as the sample name and the label values it requires."""
    match = _SELECTOR.match(selector.strip())
    if not match:
        raise ValueError(f"not a series selector: {selector!r}")
    matchers: dict[str, str] = {}
    rest = match.group("matchers") or ""
    while rest.strip():
        m = _MATCHER.match(rest)
        if not m:
            raise ValueError(f"not a label matcher list: {rest!r} in {selector!r}")
        matchers[m.group("label")] = m.group("value")
        rest = rest[m.end():]
    return match.group("name"), matchers


def _select(series: dict[str, list[Sample]], selector: str | None) -> list[Sample] | None:
    """The samples of ``selector``'s series that carry its label values (None when none do)."""
    if not selector:
        return None
    name, matchers = parse_selector(selector)
    samples = [s for s in series.get(name, ()) if all(s.labels.get(k) == v for k, v in matchers.items())]
    return samples or None


def _wanted(names: MetricNames) -> frozenset[str]:
    """Every sample and family name the engine's signals can appear under."""
    wanted = {parse_selector(n)[0] for n in (names.queue_depth, names.running_requests,
                                              names.kv_cache_utilization,
                                              *names.kv_cache_utilization_fallbacks)}
    if names.generation_throughput:
        wanted.add(parse_selector(names.generation_throughput)[0])
    for counter in (names.generation_tokens_total, names.finished_requests_total,
                    names.prompt_tokens_total):
        if counter:
            base = parse_selector(counter)[0].removesuffix("_total")
            wanted |= {base, base + "_total"}
    if names.ttft_seconds_histogram:
        base = names.ttft_seconds_histogram
        wanted |= {base, base + "_bucket", base + "_count", base + "_sum"}
    if names.request_latency_seconds_histogram:
        wanted |= {names.request_latency_seconds_histogram, names.request_latency_seconds_histogram + "_sum"}
    return frozenset(wanted)


def _relevant_lines(text: str, wanted: frozenset[str]) -> str:
    """Only the samples, HELP and TYPE lines of the wanted metrics.

    A vLLM replica exposes ~1,500 lines, most of them histograms llmfleet does not use;
    dropping them first makes parsing about ten times cheaper. This only selects lines
    by the metric name they start with; prometheus_client still parses what is kept.
    """
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] in wanted:
                kept.append(line)
            continue
        name = _SAMPLE_NAME.match(line)
        if name and name.group() in wanted:
            kept.append(line)
    kept.append("")
    return "\n".join(kept)


def _series_by_sample_name(text: str) -> dict[str, list[Sample]]:
    series: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(sample)
    return series


def _values(samples: Iterable[Sample] | None) -> list[float] | None:
    """The samples' values; None when there are none or any is NaN/infinite."""
    if not samples:
        return None
    values = [float(s.value) for s in samples]
    if not all(math.isfinite(v) for v in values):
        return None
    return values


def _sum(samples: Iterable[Sample] | None) -> float | None:
    values = _values(samples)
    return None if values is None else math.fsum(values)


def _mean(samples: Iterable[Sample] | None) -> float | None:
    values = _values(samples)
    return None if values is None else math.fsum(values) / len(values)


def _counter(series: dict[str, list[Sample]], selector: str | None) -> float | None:
    if not selector:
        return None
    name = parse_selector(selector)[0]
    alternative = name.removesuffix("_total") if name.endswith("_total") else name + "_total"
    for candidate in (name, alternative):
        if candidate in series:
            samples = _select(series, candidate + selector[len(name):])
            # A counter with no matching label set yet has not been incremented: 0 then.
            return _sum(samples) if samples else 0.0
    return None


def _histogram(series: dict[str, list[Sample]], name: str | None) -> Histogram | None:
    """The histogram summed over label sets, at the bucket bounds every label set has.

    Engines use one set of bounds per histogram, so the intersection is normally all of
    them; it keeps the cumulative counts exact if two label sets ever disagree.
    """
    if not name or f"{name}_bucket" not in series:
        return None
    per_labelset: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for sample in series[f"{name}_bucket"]:
        labels = dict(sample.labels)
        le = labels.pop("le", None)
        value = float(sample.value)
        if le is None or not math.isfinite(value):
            return None
        try:
            bound = float(le)  # "+Inf" parses to inf
        except ValueError:
            return None
        per_labelset.setdefault(tuple(sorted(labels.items())), {})[bound] = value
    common = set.intersection(*(set(b) for b in per_labelset.values()))
    if INF not in common:
        return None
    buckets = tuple(
        (bound, math.fsum(b[bound] for b in per_labelset.values())) for bound in sorted(common)
    )
    return Histogram(buckets=buckets, sum=_sum(series.get(f"{name}_sum")))
