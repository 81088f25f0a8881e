"""The capacity the autoscaler learns per replica (status.load.capacityTokensPerSecond)."""

from __future__ import annotations

from llmfleet.signals.values import ModelLoad, learn_capacity


def load(tps, running=0.0, queue=0.0, failed=0):
    return ModelLoad(time=0.0, sampled_replicas=2, failed_replicas=failed, queue_depth=queue,
                     running_requests=running, kv_cache_utilization=0.1, tokens_per_second=tps,
                     requests_per_second=1.0)


def test_a_replica_at_half_its_target_or_more_is_scaled_to_the_target():
    # 3 requests running of a target of 6 at 150 tokens/s: 300 tokens/s at the target.
    assert learn_capacity(None, load(150, running=3), "runningRequests", 6) == 300


def test_waiting_requests_add_no_tokens():
    # A full batch of 8 with 12 waiting serves what 8 serve: at a target of 6, 6/8 of it;
    # at a target of 10 (beyond the batch), all of it.
    assert learn_capacity(None, load(160, running=8, queue=12), "runningRequests", 6) == 120
    assert learn_capacity(None, load(160, running=8, queue=12), "runningRequests", 10) == 160


def test_light_or_partial_loads_keep_what_was_learned():
    assert learn_capacity(280.0, load(40, running=1), "runningRequests", 6) == 280.0
    assert learn_capacity(None, load(40, running=1), "runningRequests", 6) is None
    assert learn_capacity(280.0, load(150, running=3, failed=1), "runningRequests", 6) == 280.0


def test_new_samples_move_a_running_average_a_quarter_of_the_way():
    assert learn_capacity(200.0, load(150, running=3), "runningRequests", 6) == 225.0


def test_queue_depth_learns_the_rate_of_a_saturated_replica_only():
    assert learn_capacity(None, load(400, running=8, queue=0), "queueDepth", 4) is None
    assert learn_capacity(None, load(400, running=8, queue=2), "queueDepth", 4) == 400


def test_a_tokens_per_second_target_is_the_capacity():
    assert learn_capacity(123.0, load(0), "tokensPerSecond", 500) == 500
