"""The autoscaling bench's baseline (bench/naive.py): production-stack KEDA + HPA defaults."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from llmfleet.autoscale.scaler import SCALE_UP_LIMIT, TOO_MANY_REPLICAS, Decision, Observation, ScalingPolicy
from llmfleet.signals.values import ModelLoad

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the baseline lives with its bench
from naive import NaivePolicy, NaiveState, naive_decide


def load(t, waiting, n, failed=0, rps=None, last_activity=None):
    """`waiting` requests per replica on `n` sampled replicas."""
    return ModelLoad(time=t, sampled_replicas=n, failed_replicas=failed, queue_depth=waiting,
                     running_requests=0.0, kv_cache_utilization=0.0, tokens_per_second=0.0,
                     requests_per_second=(1.0 if waiting else 0.0) if rps is None else rps,
                     last_activity=last_activity)


def obs(t, replicas, waiting=None, ready=None, starting=0, **kw):
    ready = replicas if ready is None else ready
    sampled = kw.pop("sampled", ready)
    return Observation(t, replicas, ready, starting, None if waiting is None else load(t, waiting, sampled, **kw))


def test_defaults_are_the_production_stack_ones():
    p = NaivePolicy()
    assert (p.threshold, p.polling_interval, p.cooldown_period, p.min_replicas, p.max_replicas) == (5, 15, 360, 1, 2)
    assert (p.scale_down_window, p.tolerance) == (300, 0.1)


def test_like_copies_bounds_and_scale_to_zero():
    ours = ScalingPolicy(min_replicas=2, max_replicas=9, metric="queueDepth", target=4, idle_seconds=600)
    assert (NaivePolicy.like(ours).min_replicas, NaivePolicy.like(ours).max_replicas) == (0, 9)
    assert NaivePolicy.like(ours, cooldown_period=100).cooldown_period == 100
    no_zero = ScalingPolicy(min_replicas=2, max_replicas=9, metric="queueDepth", target=4)
    assert NaivePolicy.like(no_zero).min_replicas == 2


def test_desired_is_total_waiting_over_the_threshold():
    d = naive_decide(NaivePolicy(max_replicas=10), obs(0, 2, 9.0))
    assert isinstance(d, Decision) and isinstance(d.state, NaiveState)
    assert d.desired == 4  # ceil(18 / 5)
    assert d.event.text == "ScaledUp 2→4: vllm:num_requests_waiting 18.0 over threshold 5×2"


def test_only_every_polling_interval():
    p = NaivePolicy(max_replicas=10)
    d = naive_decide(p, obs(0, 2, 0.0))
    d = naive_decide(p, obs(10, 2, 50.0), d.state)
    assert (d.desired, d.reason) == (2, "between polls (every 15 s)")
    assert naive_decide(p, obs(15, 2, 50.0), d.state).desired == 6  # ceil(100 / 5) = 20, at most 2 + 4


def test_tolerance_band():
    d = naive_decide(NaivePolicy(max_replicas=10), obs(0, 2, 5.4))
    assert d.desired == 2 and d.reason == "vllm:num_requests_waiting 10.8 within 10% of threshold 5×2"


def test_scale_down_waits_for_the_hpa_window_only():
    p = NaivePolicy(max_replicas=10)
    d = naive_decide(p, obs(0, 6, 5.0))  # 30 waiting: 6 replicas, in band
    t = 0
    while True:
        t += 15
        d = naive_decide(p, obs(t, 6, 0.0), d.state)
        if d.changed:
            break
    assert t == 300 and d.desired == 1  # cooldownPeriod plays no part with minReplicaCount 1


def test_scales_up_at_most_double_or_plus_four_per_poll():
    p = NaivePolicy(max_replicas=100)
    d = naive_decide(p, obs(0, 1, 100.0))
    assert d.desired == 5 and d.limited_reason == SCALE_UP_LIMIT
    d = naive_decide(p, obs(15, 5, 100.0, ready=1, starting=4, sampled=1), d.state)
    assert d.desired == 10


def test_ignores_replicas_still_loading():
    # The backlog that builds while new replicas load is asked for again.
    p = NaivePolicy(max_replicas=20)
    d = naive_decide(p, obs(0, 2, 10.0))  # 20 waiting -> 4
    assert d.desired == 4
    d = naive_decide(p, obs(15, 4, 20.0, ready=2, starting=2, sampled=2), d.state)  # 40 waiting -> 8
    assert d.desired == 8


def test_partial_scrape_scales_down():
    # A pod whose series is missing drops out of the sum: the naive stack scales down on it.
    p = NaivePolicy(max_replicas=10, scale_down_window=0)
    d = naive_decide(p, obs(0, 4, 5.0, sampled=1, failed=3))
    assert d.desired == 1


def test_literal_query_fails_with_two_replicas():
    p = NaivePolicy(max_replicas=10, literal_query=True)
    d = naive_decide(p, obs(0, 2, 50.0))
    assert d.desired == 2 and d.reason == "HPA holds: FailedGetExternalMetric (query returned multiple elements)"
    assert naive_decide(p, obs(0, 1, 50.0)).desired == 5


def test_at_max():
    d = naive_decide(NaivePolicy(), obs(0, 2, 50.0))
    assert d.desired == 2 and d.limited_reason == TOO_MANY_REPLICAS


def test_scale_to_zero_after_cooldown_and_back():
    p = NaivePolicy(min_replicas=0, max_replicas=4)
    d = naive_decide(p, obs(0, 1, 0.0, last_activity=0.0, rps=0.0))  # active: a request in the last minute
    assert d.desired == 1
    t = 0
    while d.desired:
        t += 15
        d = naive_decide(p, obs(t, 1, 0.0, rps=0.0, last_activity=0.0), d.state)
    assert t == 420 and d.event.text == "ScaledDown 1→0: KEDA: no trigger active for 360 s (cooldownPeriod)"
    d = naive_decide(p, Observation(t + 15, 0, 0, 0, None), d.state)
    assert d.desired == 0
    d = naive_decide(p, Observation(t + 30, 0, 0, 0, None, wake=True), d.state)
    assert d.event.text == "ScaledUp 0→1: KEDA activation: a trigger is active"


def test_zero_with_a_minimum_goes_back_to_it():
    d = naive_decide(NaivePolicy(min_replicas=2, max_replicas=4), Observation(0, 0, 0, 0, None))
    assert d.event.text == "ScaledUp 0→2: KEDA: below minReplicaCount"


@settings(max_examples=40, deadline=None)
@given(
    mn=st.integers(0, 3), extra=st.integers(0, 10),
    steps=st.lists(st.tuples(st.floats(1, 30), st.integers(0, 15), st.one_of(st.none(), st.floats(0, 100)),
                             st.booleans()), min_size=1, max_size=50),
)
def test_naive_stays_in_bounds(mn, extra, steps):
    p = NaivePolicy(min_replicas=mn, max_replicas=max(1, mn) + extra)
    state, t = None, 0.0
    for dt, replicas, waiting, wake in steps:
        t += dt
        ld = None if waiting is None or not replicas else load(t, waiting, replicas)
        o = Observation(t, replicas, replicas, 0, ld, wake)
        d = naive_decide(p, o, state)
        state = d.state
        if d.reason.startswith("between polls"):
            continue
        assert p.hpa_min <= d.desired <= p.max_replicas or (d.desired == 0 and mn == 0)
