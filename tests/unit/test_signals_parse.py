"""Parsing engines' /metrics text into raw samples.

Fixtures in tests/data/metrics/ follow each engine's real exposition: vLLM v1 with two
data-parallel engines (labels engine/model_name, ``_created`` series, histograms whose
names end in ``_total``), vLLM v0 (``gpu_cache_usage_perc``), SGLang (scheduler gauges
labelled by tp/pp rank, tokenizer counters by model only), trtllm-serve
(tensorrt_llm/metrics/collector.py names) and Triton (the samples its documentation prints,
for the TensorRT-LLM and the vLLM backend; each file says where it came from).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmfleet.engines import all_engines
from llmfleet.engines.base import MetricNames
from llmfleet.signals.parse import INF, Histogram, RawSample, metric_names, parse_sample, parse_selector
from llmfleet.sim.config import SimConfig
from llmfleet.sim.server import SimServer

DATA = Path(__file__).parent.parent / "data" / "metrics"


def fixture(name: str) -> str:
    return (DATA / name).read_text()


def test_vllm_v1_sums_engines_and_finish_reasons():
    sample = parse_sample(fixture("vllm.txt"), "vllm")
    assert sample.queue_depth == 3 + 1
    assert sample.running_requests == 12 + 9
    assert sample.kv_cache_utilization == pytest.approx((0.5 + 0.25) / 2)  # a fraction: averaged
    assert sample.generation_tokens_total == 70000 + 50000
    assert sample.finished_requests_total == (15 + 4 + 1) + (8 + 2 + 0)
    assert sample.prompt_tokens_total == 48213 + 40120
    assert sample.generation_throughput is None
    ttft = sample.ttft_seconds
    assert ttft is not None
    assert ttft.bounds[:5] == (0.001, 0.005, 0.01, 0.02, 0.04) and ttft.bounds[-1] == INF
    assert len(ttft.buckets) == 23
    assert dict(ttft.buckets)[0.06] == 5 + 3
    assert dict(ttft.buckets)[0.25] == 18 + 10
    assert ttft.count == 30
    assert ttft.sum == pytest.approx(3.1 + 1.05)
    assert sample.has_load_signals


def test_vllm_v0_falls_back_to_gpu_cache_usage():
    sample = parse_sample(fixture("vllm-v0.txt"), "vllm")
    assert sample.kv_cache_utilization == pytest.approx(0.12)
    assert (sample.queue_depth, sample.running_requests) == (0, 4)
    assert sample.finished_requests_total == 24
    assert sample.ttft_seconds is not None and sample.ttft_seconds.count == 24


def test_newer_kv_name_wins_when_both_are_exposed():
    text = (
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.7\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
    )
    assert parse_sample(text, "vllm").kv_cache_utilization == pytest.approx(0.1)


def test_sglang_names():
    sample = parse_sample(fixture("sglang.txt"), "sglang")
    assert (sample.queue_depth, sample.running_requests) == (2, 7)
    assert sample.kv_cache_utilization == pytest.approx(0.28)  # sglang:token_usage
    assert sample.generation_throughput == pytest.approx(412.5)  # sglang:gen_throughput
    assert sample.generation_tokens_total == 7_557_572
    assert sample.finished_requests_total == 83  # sglang:num_requests_total
    assert sample.prompt_tokens_total == 8_128_902
    assert sample.ttft_seconds == Histogram(
        buckets=((0.1, 0), (0.2, 20), (0.4, 70), (0.6, 80), (INF, 83)), sum=25.5
    )


def test_tensorrt_llm_names():
    sample = parse_sample(fixture("tensorrt-llm.txt"), "tensorrt-llm")
    assert (sample.queue_depth, sample.running_requests) == (5, 16)
    assert sample.kv_cache_utilization == pytest.approx(0.61)
    assert sample.generation_tokens_total == 46500
    assert sample.finished_requests_total == 155
    assert sample.ttft_seconds is not None and sample.ttft_seconds.count == 155


def test_triton_tensorrt_llm_backend_names():
    # The samples printed in the tensorrtllm_backend README and Triton's metrics guide.
    sample = parse_sample(fixture("triton-tensorrt-llm.txt"), "triton")
    # nv_trt_llm_request_metrics: request_type="waiting" 1, "scheduled" 1 (not "max" 512,
    # "context" 1 or "active" 0, which a name-only lookup would have summed in).
    assert (sample.queue_depth, sample.running_requests) == (1, 1)
    # nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}, not used/free/max.
    assert sample.kv_cache_utilization == pytest.approx(0.4875)
    assert sample.has_load_signals
    assert sample.finished_requests_total == 161  # nv_inference_request_success, untyped
    # The TensorRT-LLM backend reports no token counters and no TTFT histogram.
    assert sample.generation_tokens_total is None and sample.ttft_seconds is None


def test_triton_vllm_backend_reports_no_load_gauges_but_the_sums_they_derive_from():
    # The vLLM backend re-exports vLLM's counters and histograms only: queue and running
    # come from the TTFT and end-to-end latency sums (llmfleet.signals.load), no KV cache.
    sample = parse_sample(fixture("triton-vllm.txt"), "triton")
    assert (sample.queue_depth, sample.running_requests, sample.kv_cache_utilization) == (None, None, None)
    assert sample.derives_load and sample.missing_gauges == ()
    assert sample.request_latency_seconds_sum == pytest.approx(0.08686184883117676)
    assert (sample.generation_tokens_total, sample.prompt_tokens_total) == (16, 10)
    assert sample.finished_requests_total == 161
    assert sample.ttft_seconds == Histogram(buckets=((0.001, 0), (INF, 1)), sum=pytest.approx(0.0323312282))


def test_label_matchers_select_samples():
    assert parse_selector('m{a="x", b="y"}') == ("m", {"a": "x", "b": "y"})
    assert parse_selector("vllm:num_requests_waiting") == ("vllm:num_requests_waiting", {})
    for bad in ("m{a=x}", 'm{a="x"', "m n"):
        with pytest.raises(ValueError):
            parse_selector(bad)
    names = MetricNames(
        queue_depth='g{kind="waiting"}', running_requests='g{kind="running"}',
        kv_cache_utilization='kv{kind="fraction"}', finished_requests_total='done_total{reason="stop"}',
    )
    text = (
        "# TYPE g gauge\n"
        'g{kind="waiting",model="a"} 2\ng{kind="waiting",model="b"} 3\ng{kind="running",model="a"} 4\n'
        'g{kind="max",model="a"} 512\n'
        'kv{kind="fraction",model="a"} 0.25\nkv{kind="fraction",model="b"} 0.75\nkv{kind="used",model="a"} 9\n'
        "# TYPE done counter\n"
        'done_total{reason="stop"} 5\ndone_total{reason="length"} 7\n'
    )
    sample = parse_sample(text, names)
    assert (sample.queue_depth, sample.running_requests) == (5, 4)  # summed over the matching label sets
    assert sample.kv_cache_utilization == pytest.approx(0.5)  # averaged
    assert sample.finished_requests_total == 5
    # A label value nobody reports: a gauge is missing, a counter not yet incremented is 0.
    other = MetricNames(queue_depth='g{kind="queued"}', running_requests="g", kv_cache_utilization="kv",
                        finished_requests_total='done_total{reason="abort"}')
    sample = parse_sample(text, other)
    assert sample.queue_depth is None and sample.finished_requests_total == 0


def test_the_simulator_reads_as_vllm():
    # The sim's own exposition (not started: no socket needed to render /metrics).
    server = SimServer(SimConfig(port=0, served_model_names=("a", "b")))
    text = generate_latest(server.engine.metrics.registry).decode()
    sample = parse_sample(text, "sim")
    assert sample == parse_sample(text, "vllm")
    assert sample.has_load_signals
    assert (sample.queue_depth, sample.running_requests, sample.kv_cache_utilization) == (0, 0, 0)
    assert sample.generation_tokens_total == 0 and sample.finished_requests_total == 0
    assert sample.ttft_seconds is not None and sample.ttft_seconds.count == 0


def test_the_simulator_serving_as_triton_reads_as_triton():
    server = SimServer(SimConfig(port=0, served_model_names=("a",), serve_as="triton"))
    text = generate_latest(server.engine.metrics.registry).decode()
    sample = parse_sample(text, "triton")
    assert sample.has_load_signals and sample.ttft_seconds is not None
    assert "vllm:num_requests_waiting" not in text  # Triton's gauges instead of vLLM's
    assert not parse_sample(text, "vllm").has_load_signals


def test_every_engine_names_every_signal():
    for engine in all_engines():
        names = engine.metric_names
        assert names.queue_depth and names.running_requests and names.kv_cache_utilization
        assert names.generation_tokens_total or names.generation_throughput, engine.kind
        assert names.finished_requests_total and names.ttft_seconds_histogram, engine.kind
        for counter in (names.generation_tokens_total, names.finished_requests_total,
                        names.prompt_tokens_total):
            assert counter is None or counter.endswith("_total"), counter
    assert metric_names("sim") == metric_names("vllm")


# -- the parser's counter-suffix conventions ------------------------------------------

def test_parser_strips_total_from_counter_family_names_but_not_samples():
    text = (
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="m"} 42.0\n'
    )
    (family,) = text_string_to_metric_families(text)
    assert family.name == "vllm:generation_tokens"  # what the parser does
    assert family.samples[0].name == "vllm:generation_tokens_total"
    assert _counters(text).generation_tokens_total == 42


def test_counter_typed_without_total_suffix():
    # A counter exposed as "x" with TYPE counter: the parser renames its samples to x_total.
    text = "# TYPE vllm:generation_tokens counter\nvllm:generation_tokens 7\n"
    assert _counters(text).generation_tokens_total == 7


def test_untyped_counter_keeps_its_name():
    text = 'vllm:generation_tokens_total{model_name="m"} 9\nvllm:request_success_total 3\n'
    sample = _counters(text)
    assert sample.generation_tokens_total == 9 and sample.finished_requests_total == 3


def test_histogram_whose_name_ends_in_total_is_not_a_counter():
    # vllm:iteration_tokens_total is a histogram; it must not be mistaken for anything.
    sample = parse_sample(fixture("vllm.txt"), "vllm")
    assert sample.generation_tokens_total == 120000


def _counters(text: str) -> RawSample:
    return parse_sample(text, "vllm")


# -- missing and broken values ---------------------------------------------------------

def test_missing_metrics_are_none_not_zero():
    sample = parse_sample('vllm:num_requests_waiting{engine="0"} 0\n', "vllm")
    assert sample.queue_depth == 0
    assert sample.running_requests is None and sample.kv_cache_utilization is None
    assert sample.generation_tokens_total is None and sample.finished_requests_total is None
    assert sample.ttft_seconds is None
    assert not sample.has_load_signals
    assert sample.missing_gauges == ("running_requests", "kv_cache_utilization")


def test_empty_and_foreign_text_parse_to_nothing():
    assert parse_sample("", "vllm") == RawSample()
    assert parse_sample(fixture("sglang.txt"), "vllm") == RawSample()  # wrong engine kind


@pytest.mark.parametrize(
    "line",
    [
        'vllm:num_requests_running{engine="0"} NaN',
        'vllm:num_requests_running{engine="0"} +Inf',
    ],
)
def test_non_finite_gauge_is_unknown(line: str):
    text = f'{line}\nvllm:num_requests_running{{engine="1"}} 3\n'
    assert parse_sample(text, "vllm").running_requests is None


def test_nan_counter_and_histogram_are_unknown():
    text = (
        "vllm:generation_tokens_total NaN\n"
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{le="0.1"} NaN\n'
        'vllm:time_to_first_token_seconds_bucket{le="+Inf"} 3\n'
    )
    sample = parse_sample(text, "vllm")
    assert sample.generation_tokens_total is None and sample.ttft_seconds is None


def test_histogram_without_inf_bucket_is_unknown():
    text = (
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{le="0.1"} 3\n'
    )
    assert parse_sample(text, "vllm").ttft_seconds is None


def test_histogram_label_sets_with_different_bounds_meet_at_common_ones():
    text = (
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1"} 1\n'
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5"} 2\n'
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf"} 3\n'
        'vllm:time_to_first_token_seconds_bucket{engine="1",le="0.5"} 4\n'
        'vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf"} 5\n'
    )
    ttft = parse_sample(text, "vllm").ttft_seconds
    assert ttft == Histogram(buckets=((0.5, 6), (INF, 8)), sum=None)


def test_malformed_text_raises_value_error():
    with pytest.raises(ValueError):
        parse_sample('vllm:num_requests_running{engine="0" 3\n', "vllm")


# -- properties -------------------------------------------------------------------------

values = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@given(st.lists(st.tuples(values, st.floats(0, 1)), min_size=1, max_size=8))
def test_gauges_sum_and_kv_averages_over_any_label_sets(engines: list[tuple[float, float]]):
    lines = []
    for i, (waiting, kv) in enumerate(engines):
        lines.append(f'vllm:num_requests_waiting{{engine="{i}",model_name="m"}} {waiting!r}')
        lines.append(f'vllm:kv_cache_usage_perc{{engine="{i}",model_name="m"}} {kv!r}')
    sample = parse_sample("\n".join(lines) + "\n", "vllm")
    assert sample.queue_depth == pytest.approx(math.fsum(w for w, _ in engines))
    assert sample.kv_cache_utilization == pytest.approx(math.fsum(k for _, k in engines) / len(engines))
    assert 0 <= sample.kv_cache_utilization <= 1 + 1e-12
