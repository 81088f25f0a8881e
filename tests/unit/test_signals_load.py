"""Rates, TTFT quantiles and ModelDeployment aggregation from raw samples (no I/O)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet.signals.values import ReplicaLoad
from llmfleet.signals.load import (
    LoadTracker,
    histogram_increase,
    histogram_quantile,
    merge_histograms,
)
from llmfleet.signals.parse import INF, Histogram, RawSample, parse_sample

DATA = Path(__file__).parent.parent / "data" / "metrics"


def hist(*buckets: tuple[float, float], total: float | None = None) -> Histogram:
    return Histogram(buckets=tuple(buckets), sum=total)


def sample(
    *,
    queue: float = 0,
    running: float = 0,
    kv: float = 0.0,
    tokens: float | None = 0,
    finished: float | None = 0,
    throughput: float | None = None,
    ttft: Histogram | None = None,
) -> RawSample:
    return RawSample(
        queue_depth=queue,
        running_requests=running,
        kv_cache_utilization=kv,
        generation_tokens_total=tokens,
        generation_throughput=throughput,
        finished_requests_total=finished,
        prompt_tokens_total=None,
        ttft_seconds=ttft,
    )


# -- histogram_quantile -------------------------------------------------------------

def test_quantiles_of_the_vllm_fixture_by_hand():
    ttft = parse_sample((DATA / "vllm.txt").read_text(), "vllm").ttft_seconds
    # 30 requests; cumulative 0.06:8, 0.08:15, 0.25:28, 0.5:29.
    # p50: rank 15 is the last of (0.06, 0.08]: 0.06 + 0.02 * (15 - 8) / (15 - 8) = 0.08
    assert histogram_quantile(0.5, ttft) == pytest.approx(0.08)
    # p95: rank 28.5 falls in (0.25, 0.5], which holds 1: 0.25 + 0.25 * 0.5 / 1 = 0.375
    assert histogram_quantile(0.95, ttft) == pytest.approx(0.375)


def test_quantile_in_first_bucket_starts_from_zero():
    h = hist((1.0, 4), (2.0, 8), (INF, 8))
    assert histogram_quantile(0.25, h) == pytest.approx(0.5)  # rank 2 of 4 in [0, 1]


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    h = hist((0.1, 1), (0.5, 2), (INF, 10))
    assert histogram_quantile(0.95, h) == 0.5


@pytest.mark.parametrize(
    "h, q",
    [
        (None, 0.5),
        (hist((0.1, 0), (INF, 0)), 0.5),  # no observations
        (hist((INF, 5)), 0.5),  # only +Inf: nothing to interpolate
        (hist((0.1, 1), (INF, 2)), 0.0),
        (hist((0.1, 1), (INF, 2)), 1.0),
    ],
)
def test_quantile_is_none_when_undefined(h: Histogram | None, q: float):
    assert histogram_quantile(q, h) is None


def test_quantile_evens_out_non_monotonic_buckets():
    # A scrape racing an observation; Prometheus makes the counts monotonic too.
    h = hist((0.1, 5), (0.2, 4), (0.4, 10), (INF, 10))
    assert histogram_quantile(0.5, h) == pytest.approx(0.1)


@st.composite
def histograms(draw: st.DrawFn) -> Histogram:
    bounds = sorted(draw(st.sets(st.floats(0.001, 1000, allow_nan=False), min_size=1, max_size=12)))
    counts = draw(st.lists(st.integers(0, 1000), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    cumulative = map(float, itertools.accumulate(counts))
    return Histogram(buckets=tuple(zip([*bounds, INF], cumulative, strict=True)))


@given(histograms(), st.floats(0.001, 0.999))
def test_quantile_lies_within_its_bucket(h: Histogram, q: float):
    value = histogram_quantile(q, h)
    if h.count == 0:
        assert value is None
        return
    assert value is not None
    finite = [le for le in h.bounds if le != INF]
    assert 0 <= value <= finite[-1]
    rank = q * h.count
    # The bucket holding the rank: the first whose cumulative count reaches it.
    b = next(i for i, (_, c) in enumerate(h.buckets) if c >= rank)
    if h.bounds[b] == INF:
        assert value == finite[-1]
    else:
        lower = 0.0 if b == 0 else h.bounds[b - 1]
        assert lower - 1e-9 <= value <= h.bounds[b] + 1e-9


@given(histograms(), st.floats(0.001, 0.999), st.floats(0.001, 0.999))
def test_quantile_is_monotone_in_q(h: Histogram, q1: float, q2: float):
    low, high = sorted((q1, q2))
    a, b = histogram_quantile(low, h), histogram_quantile(high, h)
    if a is None:
        assert b is None
    else:
        assert b is not None and a <= b + 1e-9


# -- increases and merging -------------------------------------------------------------

def test_histogram_increase_is_per_bucket():
    before = hist((0.1, 10), (0.5, 20), (INF, 30), total=6.0)
    after = hist((0.1, 10), (0.5, 28), (INF, 40), total=8.5)
    assert histogram_increase(after, before) == hist((0.1, 0), (0.5, 8), (INF, 10), total=2.5)
    assert histogram_increase(after, None) == after
    assert histogram_increase(None, before) is None
    assert histogram_increase(hist((0.2, 1), (INF, 1)), before) is None  # bounds changed


def test_merge_sums_at_shared_bounds():
    a = hist((0.1, 1), (0.5, 3), (INF, 4), total=1.0)
    b = hist((0.5, 2), (1.0, 5), (INF, 6), total=2.0)
    assert merge_histograms([a, b]) == hist((0.5, 5), (INF, 10), total=3.0)
    assert merge_histograms([]) is None
    assert merge_histograms([a, hist((0.5, 1), (INF, 1))]).sum is None  # one sum unknown


# -- LoadTracker.observe -------------------------------------------------------------------

def test_first_sight_gives_no_load():
    tracker = LoadTracker()
    assert tracker.observe("r", sample(queue=3, tokens=100), now=10.0) is None
    assert tracker.latest("r") is None


def test_rates_over_the_interval():
    tracker = LoadTracker()
    tracker.observe("r", sample(tokens=1000, finished=10), now=10.0)
    load = tracker.observe("r", sample(queue=2, running=8, kv=0.4, tokens=1600, finished=13), now=12.0)
    assert load == ReplicaLoad(
        queue_depth=2,
        running_requests=8,
        kv_cache_utilization=0.4,
        tokens_per_second=300.0,  # 600 tokens / 2 s
        requests_per_second=1.5,  # 3 requests / 2 s
    )
    assert tracker.latest("r") == load


def test_ttft_quantiles_come_from_bucket_increases():
    tracker = LoadTracker()
    before = hist((0.1, 10), (0.5, 20), (1.0, 30), (INF, 30))
    after = hist((0.1, 10), (0.5, 28), (1.0, 40), (INF, 40))
    tracker.observe("r", sample(ttft=before), now=0.0)
    load = tracker.observe("r", sample(ttft=after), now=5.0)
    assert load is not None
    # Increase: (0.1]: 0, (0.1, 0.5]: 8, (0.5, 1.0]: 2; 10 requests.
    # p50: rank 5 of the 8 in (0.1, 0.5]: 0.1 + 0.4 * 5 / 8 = 0.35
    assert load.ttft_p50_seconds == pytest.approx(0.35)
    # p95: rank 9.5, 1.5 into the 2 in (0.5, 1.0]: 0.5 + 0.5 * 1.5 / 2 = 0.875
    assert load.ttft_p95_seconds == pytest.approx(0.875)
    # (Since start, p50 would be 0.1 + 0.4 * 10 / 18 = 0.322: older requests would count.)


def test_no_requests_in_the_interval_means_no_ttft():
    tracker = LoadTracker()
    h = hist((0.1, 10), (INF, 12))
    tracker.observe("r", sample(ttft=h), now=0.0)
    load = tracker.observe("r", sample(ttft=h), now=5.0)
    assert load is not None and load.ttft_p50_seconds is None and load.ttft_p95_seconds is None


def test_counter_reset_is_a_restart_not_a_negative_rate():
    tracker = LoadTracker()
    tracker.observe("r", sample(tokens=50_000, finished=900, ttft=hist((0.1, 800), (INF, 900))), now=0.0)
    # The engine restarted within the interval: its counters started again from 0.
    load = tracker.observe("r", sample(tokens=400, finished=4, ttft=hist((0.1, 2), (INF, 4))), now=4.0)
    assert load is not None
    assert load.tokens_per_second == pytest.approx(100.0)
    assert load.requests_per_second == pytest.approx(1.0)
    assert load.ttft_p50_seconds == pytest.approx(0.1)  # rank 2 of 4, the 2 in (0, 0.1]
    # The restarted sample is the new baseline.
    load = tracker.observe("r", sample(tokens=800, finished=8, ttft=hist((0.1, 2), (INF, 4))), now=8.0)
    assert load is not None and load.tokens_per_second == pytest.approx(100.0)


def test_a_counter_that_appears_started_from_zero():
    # TensorRT-LLM creates its labelled counters on the first increment.
    tracker = LoadTracker()
    tracker.observe("r", sample(tokens=None, finished=None), now=0.0)
    load = tracker.observe("r", sample(tokens=None, finished=None), now=1.0)
    assert load is not None and load.tokens_per_second == 0 and load.requests_per_second == 0
    load = tracker.observe("r", sample(tokens=30, finished=1), now=2.0)
    assert load is not None and load.tokens_per_second == 30 and load.requests_per_second == 1


def test_throughput_gauge_is_preferred_and_zero_when_idle():
    # SGLang: the counter only moves when requests finish; the gauge is the live rate.
    tracker = LoadTracker()
    tracker.observe("r", sample(running=5, tokens=0, throughput=400.0), now=0.0)
    load = tracker.observe("r", sample(running=5, tokens=0, throughput=412.5), now=2.0)
    assert load is not None and load.tokens_per_second == 412.5
    load = tracker.observe("r", sample(running=0, tokens=900, throughput=412.5), now=4.0)
    assert load is not None and load.tokens_per_second == 0.0  # nothing runs: stale gauge


def test_sample_without_gauges_is_ignored_and_keeps_the_baseline():
    tracker = LoadTracker()
    tracker.observe("r", sample(tokens=0), now=0.0)
    assert tracker.observe("r", RawSample(generation_tokens_total=500), now=1.0) is None
    load = tracker.observe("r", sample(tokens=1000), now=2.0)
    assert load is not None and load.tokens_per_second == 500.0  # over the 2 s since t=0


def test_time_not_advancing_rebaselines():
    tracker = LoadTracker()
    tracker.observe("r", sample(tokens=0), now=5.0)
    assert tracker.observe("r", sample(tokens=10), now=5.0) is None
    load = tracker.observe("r", sample(tokens=30), now=6.0)
    assert load is not None and load.tokens_per_second == 20.0


def test_forget_makes_the_next_sample_a_first_sight():
    tracker = LoadTracker()
    tracker.observe("r", sample(), now=0.0)
    tracker.forget(["r", "unknown"])
    assert "r" not in tracker.replica_keys
    assert tracker.observe("r", sample(), now=1.0) is None


@given(
    st.lists(
        st.tuples(st.floats(0.1, 10), st.floats(0, 1e6), st.floats(0, 1e4)), min_size=2, max_size=10
    )
)
def test_rates_are_never_negative(steps: list[tuple[float, float, float]]):
    tracker = LoadTracker()
    now = 0.0
    for dt, tokens, finished in steps:
        now += dt
        load = tracker.observe("r", sample(tokens=tokens, finished=finished), now=now)
        if load is not None:
            assert load.tokens_per_second >= 0 and load.requests_per_second >= 0
            assert math.isfinite(load.tokens_per_second)


# -- LoadTracker.model_load -------------------------------------------------------------------

def two_rounds(tracker: LoadTracker, second: dict[str, RawSample], first_time=0.0, second_time=2.0):
    for key in second:
        tracker.observe(key, sample(), now=first_time)
    for key, s in second.items():
        tracker.observe(key, s, now=second_time)


def test_model_load_averages_per_replica_and_sums_requests():
    tracker = LoadTracker()
    two_rounds(
        tracker,
        {
            "a": sample(queue=4, running=8, kv=0.6, tokens=800, finished=6,
                        ttft=hist((0.1, 2), (0.5, 4), (INF, 4))),
            "b": sample(queue=0, running=2, kv=0.2, tokens=200, finished=2,
                        ttft=hist((0.1, 0), (0.5, 4), (INF, 4))),
        },
    )
    load = tracker.model_load(["a", "b"], failed=(), now=2.0)
    assert (load.sampled_replicas, load.failed_replicas, load.fresh) == (2, 0, True)
    assert load.queue_depth == 2 and load.running_requests == 5
    assert load.kv_cache_utilization == pytest.approx(0.4)
    assert load.tokens_per_second == pytest.approx(250)  # (400 + 100) / 2 replicas
    assert load.requests_per_second == pytest.approx(4)  # 3 + 1, whole ModelDeployment
    # Merged: (0, 0.1]: 2, (0.1, 0.5]: 6 of 8 requests.
    # p50: rank 4, 2 into the 6 in (0.1, 0.5]: 0.1 + 0.4 * 2 / 6
    assert load.ttft_p50_seconds == pytest.approx(0.1 + 0.4 * 2 / 6)
    # p95: rank 7.6, 5.6 into it: 0.1 + 0.4 * 5.6 / 6
    assert load.ttft_p95_seconds == pytest.approx(0.1 + 0.4 * 5.6 / 6)
    assert load.time == 2.0 and load.last_activity == 2.0


def test_failed_replica_is_counted_not_averaged_as_zero():
    tracker = LoadTracker()
    two_rounds(tracker, {"a": sample(queue=6, running=4, kv=0.5), "b": sample(queue=6, running=4, kv=0.5)})
    load = tracker.model_load(["a", "b"], failed={"b"}, now=2.0)
    assert (load.sampled_replicas, load.failed_replicas) == (1, 1)
    assert not load.fresh
    assert load.queue_depth == 6 and load.running_requests == 4  # not diluted by b


def test_failed_keys_outside_replica_keys_still_count():
    tracker = LoadTracker()
    two_rounds(tracker, {"a": sample()})
    load = tracker.model_load(["a"], failed=["c"], now=2.0)
    assert (load.sampled_replicas, load.failed_replicas) == (1, 1)


def test_first_sight_and_stale_replicas_make_the_load_not_fresh():
    tracker = LoadTracker(max_sample_age=5.0)
    two_rounds(tracker, {"a": sample(queue=1)})
    tracker.observe("new", sample(), now=2.0)  # first sight: no rates yet
    load = tracker.model_load(["a", "new", "never-scraped"], failed=(), now=2.0)
    assert (load.sampled_replicas, load.failed_replicas, load.fresh) == (1, 2, False)
    stale = tracker.model_load(["a"], failed=(), now=8.0)  # a's load is 6 s old
    assert (stale.sampled_replicas, stale.failed_replicas, stale.fresh) == (0, 1, False)


def test_all_failed_is_not_fresh_and_not_a_load():
    tracker = LoadTracker()
    load = tracker.model_load(["a", "b"], failed={"a", "b"}, now=1.0)
    assert (load.sampled_replicas, load.failed_replicas, load.fresh) == (0, 2, False)
    assert load.ttft_p95_seconds is None and load.last_activity is None


def test_last_activity_is_the_latest_busy_or_finishing_moment():
    tracker = LoadTracker()
    tracker.observe("a", sample(finished=10), now=0.0)
    assert tracker.model_load(["a"], (), now=0.0).last_activity is None  # idle at first sight
    tracker.observe("a", sample(finished=10), now=5.0)
    assert tracker.model_load(["a"], (), now=5.0).last_activity is None
    tracker.observe("a", sample(finished=11), now=10.0)  # a request finished in between
    assert tracker.model_load(["a"], (), now=10.0).last_activity == 10.0
    tracker.observe("a", sample(finished=11), now=15.0)
    assert tracker.model_load(["a"], (), now=15.0).last_activity == 10.0
    tracker.observe("a", sample(finished=11, queue=1), now=20.0)  # queued
    assert tracker.model_load(["a"], (), now=20.0).last_activity == 20.0
    tracker.observe("b", sample(running=2), now=25.0)  # busy at first sight counts
    assert tracker.model_load(["a", "b"], (), now=25.0).last_activity == 25.0


def test_last_activity_of_a_model_outlives_its_replicas():
    tracker = LoadTracker()
    two_rounds(tracker, {"old": sample(running=1)})
    assert tracker.model_load(["old"], (), now=2.0, model="ns/md").last_activity == 2.0
    tracker.forget(["old"])  # the pod was replaced
    tracker.observe("new", sample(), now=30.0)
    assert tracker.model_load(["new"], (), now=30.0, model="ns/md").last_activity == 2.0
    assert tracker.model_load(["new"], (), now=30.0).last_activity is None  # without the key
    tracker.forget_models(["ns/md"])
    assert tracker.model_load(["new"], (), now=31.0, model="ns/md").last_activity is None


def _derived(ttft_sum: float, latency_sum: float, finished: float = 0) -> RawSample:
    """A sample of an engine without load gauges (Triton's vLLM backend)."""
    return RawSample(finished_requests_total=finished, generation_tokens_total=0,
                     ttft_seconds=hist((1.0, finished), (INF, finished), total=ttft_sum),
                     request_latency_seconds_sum=latency_sum)


def test_without_gauges_queue_and_running_are_derived_by_littles_law():
    tracker = LoadTracker()
    assert tracker.observe("r", _derived(10.0, 40.0), now=100.0) is None  # rates need two samples
    # Over 2 s, requests spent 3 s awaiting their first token and 8 s in the engine:
    # 1.5 awaiting on average, 2.5 decoding.
    load = tracker.observe("r", _derived(13.0, 48.0, finished=2), now=102.0)
    assert load is not None
    assert (load.queue_depth, load.running_requests, load.kv_cache_utilization) == (1.5, 2.5, None)
    model = tracker.model_load(["r"], [], 102.0)
    assert model.kv_cache_utilization is None and "kvCacheUtilization" not in model.status()
    assert model.status()["queueDepth"] == 1.5 and model.per_replica("runningRequests") == 4.0
    idle = tracker.observe("r", _derived(13.0, 48.0, finished=2), now=104.0)
    assert idle is not None and (idle.queue_depth, idle.running_requests) == (0.0, 0.0)
    # A restarted engine: its sums started again from 0 within the interval.
    restarted = tracker.observe("r", _derived(1.0, 2.0), now=106.0)
    assert restarted is not None and (restarted.queue_depth, restarted.running_requests) == (0.5, 0.5)


def test_kv_cache_is_averaged_over_the_replicas_that_report_it():
    tracker = LoadTracker()
    for key, s in (("gauges", sample(kv=0.6)), ("derived", _derived(0.0, 0.0))):
        tracker.observe(key, s, now=1.0)
    tracker.observe("gauges", sample(kv=0.6), now=2.0)
    tracker.observe("derived", _derived(0.0, 0.0), now=2.0)
    assert tracker.model_load(["gauges", "derived"], [], 2.0).kv_cache_utilization == pytest.approx(0.6)
