"""The sim scheduler, driven step by step (begin_step/end_step) so batching, KV-cache
admission and preemption are checked without any timing."""

from __future__ import annotations

import asyncio

import pytest

from llmfleet.sim.config import OutputLength, SimConfig
from llmfleet.sim.engine import Simulator


def _engine(**changes: object) -> Simulator:
    return Simulator(SimConfig(seed=0, **changes))  # type: ignore[arg-type]


def _drain(engine: Simulator, max_steps: int = 10_000) -> int:
    """Run steps until nothing is left; return how many it took."""
    for step in range(max_steps):
        if not engine.num_running and not engine.num_waiting:
            return step
        engine.begin_step(0.0)
        engine.end_step(0.0)
    raise AssertionError("engine did not drain")


def test_batch_is_capped_by_max_num_seqs_and_step_time_grows_with_it() -> None:
    eng = _engine(max_num_seqs=2, decode_step_ms=10, decode_step_ms_per_seq=1,
                  prefill_tokens_per_second=1000)
    seqs = [eng.submit(100, 3, "length", stream=False) for _ in range(3)]
    # First step prefills two prompts (200 tokens at 1000/s) and decodes a batch of 2.
    assert eng.begin_step(0.0) == pytest.approx(0.2 + 0.012)
    assert (eng.num_running, eng.num_waiting) == (2, 1)
    eng.end_step(0.0)
    assert [s.generated for s in seqs] == [1, 1, 0]
    # Pure decode step: no prefill.
    assert eng.begin_step(0.0) == pytest.approx(0.012)
    eng.end_step(0.0)
    assert _drain(eng) == 4  # third step finishes the first two, then 3 for the last
    assert all(s.finished and s.generated == 3 and s.finish_reason == "length" for s in seqs)


def test_request_waits_until_kv_cache_has_room() -> None:
    eng = _engine(kv_cache_tokens=150, max_model_len=100)
    first = eng.submit(80, 5, "stop", stream=False)
    second = eng.submit(80, 5, "stop", stream=False)
    eng.begin_step(0.0)
    assert (eng.num_running, eng.num_waiting) == (1, 1)
    assert eng.state().kv_cache_usage == pytest.approx(80 / 150)
    eng.end_step(0.0)
    assert eng.kv_used_tokens == 81  # a sequence holds prompt + generated tokens
    for _ in range(4):
        eng.begin_step(0.0)
        eng.end_step(0.0)
    assert first.finished and eng.kv_used_tokens == 0
    assert second.generated == 0
    eng.begin_step(0.0)
    assert (eng.num_running, eng.num_waiting) == (1, 0)
    _drain(eng)
    assert second.finished and second.finish_reason == "stop"


def test_full_cache_preempts_newest_and_recomputes_it() -> None:
    eng = _engine(kv_cache_tokens=100, max_model_len=100)
    old = eng.submit(40, 50, "length", stream=False)
    new = eng.submit(40, 50, "length", stream=False)
    eng.begin_step(0.0)
    assert eng.num_running == 2
    _drain(eng)
    m = eng.metrics
    assert m.num_preemptions >= 1
    assert old.finished and new.finished
    assert old.generated == new.generated == 50
    # Prompt tokens are counted once per request, not again on recompute.
    assert m.prompt_tokens == 80
    assert m.generation_tokens == 100
    assert m.request_success["length"] == 2
    assert eng.kv_used_tokens == 0


def test_abort_frees_slot_and_cache() -> None:
    eng = _engine(max_num_seqs=1)
    running = eng.submit(10, 100, "length", stream=False)
    queued = eng.submit(10, 100, "length", stream=False)
    eng.begin_step(0.0)
    eng.end_step(0.0)
    eng.abort(queued)
    eng.abort(running)
    assert (eng.num_running, eng.num_waiting, eng.kv_used_tokens) == (0, 0, 0)
    assert running.finish_reason == queued.finish_reason == "abort"
    assert eng.metrics.request_success["abort"] == 2
    eng.abort(running)  # idempotent
    assert eng.metrics.request_success["abort"] == 2


def test_plan_output() -> None:
    eng = _engine(max_model_len=100, output_tokens=OutputLength.parse("30"))
    assert eng.plan_output(10, 5) == (5, "length")
    assert eng.plan_output(10, None) == (30, "stop")
    assert eng.plan_output(80, None) == (20, "length")  # cut by the context window


def test_histograms_record_every_request_and_token() -> None:
    eng = _engine()
    for _ in range(3):
        eng.submit(5, 4, "length", stream=False)
    _drain(eng)
    m = eng.metrics
    assert m.time_to_first_token.count == 3
    assert m.inter_token_latency.count == 3 * 3
    assert m.e2e_request_latency.count == 3
    assert m.request_queue_time.count == 3


async def test_time_scale_zero_serves_many_requests_without_sleeping() -> None:
    eng = _engine(time_scale=0.0, max_num_seqs=16, decode_step_ms=1000)
    eng.start()
    try:
        seqs = [eng.submit(10, 20, "length", stream=i % 2 == 0) for i in range(200)]

        async def consume(seq) -> int:  # noqa: ANN001
            seen = 0
            while not seq.finished:
                await eng.wait(seq, seen)
                seen = seq.generated
            return seq.generated

        # 1000 ms decode steps would take minutes if anything slept.
        counts = await asyncio.wait_for(asyncio.gather(*map(consume, seqs)), timeout=10)
        assert counts == [20] * 200
        assert eng.metrics.generation_tokens == 4000
    finally:
        await eng.close()


def _metric(eng: Simulator, name: str) -> float:
    value = eng.metrics.registry.get_sample_value(name, {"model_name": "sim-model", "engine": "0"})
    assert value is not None, name
    return value


def test_a_prompt_sharing_a_cached_prefix_skips_its_prefill_and_the_counters_say_so() -> None:
    from llmfleet.sim.protocol import count_text_tokens, prefix_blocks

    system = "You are a careful assistant for the llmfleet docs. " * 20
    first = f"<|system|> {system} <|user|> how do I install it"
    second = f"{first} <|assistant|> with helm <|user|> and then"
    eng = _engine(enable_prefix_caching=True, prefill_tokens_per_second=1000, decode_step_ms=0,
                  decode_step_ms_per_seq=0)
    n1, n2 = count_text_tokens(first), count_text_tokens(second)
    eng.submit(n1, 1, "length", stream=False, blocks=prefix_blocks(first))
    assert eng.begin_step(0.0) == pytest.approx(n1 / 1000), "nothing cached yet: the whole prompt"
    eng.end_step(0.0)
    eng.submit(n2, 1, "length", stream=False, blocks=prefix_blocks(second))
    cached = len(prefix_blocks(first)) * 16
    assert cached > n1 - 16
    assert eng.begin_step(0.0) == pytest.approx((n2 - cached) / 1000), "only what follows the cached blocks"
    eng.end_step(0.0)
    assert _metric(eng, "vllm:prefix_cache_queries_total") == n1 + n2
    assert _metric(eng, "vllm:prefix_cache_hits_total") == cached
    # Another conversation shares nothing but what its blocks share (the same system prompt).
    other = f"<|system|> {system} <|user|> something else entirely"
    eng.submit(count_text_tokens(other), 1, "length", stream=False, blocks=prefix_blocks(other))
    eng.begin_step(0.0)
    eng.end_step(0.0)
    assert _metric(eng, "vllm:prefix_cache_hits_total") > cached


def test_cached_blocks_give_way_to_running_sequences_and_caching_is_off_by_default() -> None:
    from llmfleet.sim.protocol import count_text_tokens, prefix_blocks

    text = "word " * 600
    eng = _engine(enable_prefix_caching=True, kv_cache_tokens=1000, max_model_len=1000)
    eng.submit(count_text_tokens(text), 1, "length", stream=False, blocks=prefix_blocks(text))
    _drain(eng)
    assert eng.prefix_cache is not None and len(eng.prefix_cache) == 600 // 16
    eng.submit(900, 50, "length", stream=False)  # needs most of the KV memory: the cache shrinks
    eng.begin_step(0.0)
    eng.end_step(0.0)
    assert len(eng.prefix_cache) <= (1000 - 901) // 16
    off = _engine()
    assert off.prefix_cache is None
    off.submit(10, 1, "length", stream=False, blocks=prefix_blocks(text))
    _drain(off)
    assert _metric(off, "vllm:prefix_cache_hits_total") == 0
