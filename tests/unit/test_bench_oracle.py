"""The autoscaling bench's oracle (bench/oracle.py): the fewest replica-seconds that meet
the SLO for a share of a trace known in advance."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the oracle lives with its bench
from oracle import ReplicaModel, oracle, reactive_bound, within_slo

MODEL = ReplicaModel(slots=2, step_ms=100.0, step_ms_per_seq=0.0, prefill_tps=1000.0)  # 0.1 s per token


def steady(rate: float, seconds: float, output: int = 10) -> list[tuple[float, int, int]]:
    return [(i / rate, 100, output) for i in range(int(rate * seconds))]


def test_a_request_waits_for_a_free_slot_and_misses_the_slo_when_it_waits_too_long() -> None:
    # Each request holds a slot 1.1 s; 2 slots, 4 at once: the last two wait 1.1 s.
    trace = [(0.0, 100, 10)] * 4
    assert within_slo(trace, [1], 10, MODEL, slo=1.0) == [True, True, False, False]
    assert within_slo(trace, [2], 10, MODEL, slo=1.0) == [True] * 4
    # More replicas from the next bucket on: a waiting request starts when they come.
    assert within_slo([(0.0, 100, 100)] * 3, [1, 2], 0.5, MODEL, slo=1.0) == [True, True, True]


def test_the_oracle_follows_the_load_and_meets_its_goal() -> None:
    # 1 req/s of 1.1 s requests needs one replica (2 slots); 4 req/s needs 3.
    trace = steady(1, 60) + [(60 + t, p, o) for t, p, o in steady(4, 60)] + [(120 + t, p, o)
                                                                            for t, p, o in steady(1, 60)]
    best = oracle(trace, 180, MODEL, slo=1.0, max_replicas=6, load_seconds=30, bucket=10)
    assert best.share >= 0.95
    assert max(best.counts[:6]) == 1 and max(best.counts[12:]) == 1
    assert 2 <= max(best.counts[6:12]) <= 3
    assert best.replica_seconds == 10 * sum(best.counts) < 6 * 180
    assert best.allocated_replica_seconds > best.replica_seconds  # replicas started one load ahead


def test_a_lower_goal_never_costs_more() -> None:
    trace = steady(3, 60) + [(60 + t, p, o) for t, p, o in steady(6, 30)]
    loose = oracle(trace, 90, MODEL, slo=1.0, goal=0.9, max_replicas=8, load_seconds=30)
    strict = oracle(trace, 90, MODEL, slo=1.0, goal=0.99, max_replicas=8, load_seconds=30)
    assert loose.share >= 0.9 and strict.share >= 0.99
    assert loose.replica_seconds <= strict.replica_seconds


def test_the_reactive_bound_falls_as_a_scaler_asks_later() -> None:
    # 1 req/s (one replica), then 2.5 req/s for 60 s (needs 2): replicas Ready 10 s after asked.
    trace = steady(1, 60) + [(60 + t, p, o) for t, p, o in steady(2.5, 60)] + [(120 + t, p, o)
                                                                              for t, p, o in steady(1, 60)]
    bound = {d: reactive_bound(trace, [(60, 120)], 180, MODEL, 1.0, min_replicas=1, max_replicas=3,
                               ready_after=10, delay=d) for d in (0, 10, 20)}
    shares = [bound[d][0] for d in (0, 10, 20)]
    assert shares[0] > shares[1] > shares[2]  # every second of detection costs requests
    assert shares[0] < 0.95  # one replica meets 2.5 req/s for a load time even when asked at once
    # Held from Ready to the rise's end: 180 s of one replica plus 2 more for 50 s.
    assert bound[0][1] == 180 + 2 * 50
    assert reactive_bound(trace, [(60, 120)], 180, MODEL, 1.0, min_replicas=2, max_replicas=2,
                          ready_after=10)[0] == 1.0  # replicas held before the rise meet it
