"""The sim server over real HTTP on 127.0.0.1, driven with the official openai client
(plus raw httpx where the wire format itself is under test)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmfleet.sim.config import OutputLength, SimConfig
from llmfleet.sim.protocol import filler_text
from llmfleet.sim.server import SimServer, build_parser, config_from_args, main, start_sim

pytestmark = pytest.mark.timeout(30)

MODEL = "sim-model"
MSGS = [{"role": "user", "content": "hello there world"}]  # 3 + 3 + 6 = 12 prompt tokens
MSGS_TOKENS = 12

MakeSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """Start sim servers on 127.0.0.1:0 (time-scale 0 unless overridden); stop them after."""
    servers: list[SimServer] = []

    async def make(exit_fn: Callable[[int], Any] | None = None, **changes: Any) -> SimServer:
        cfg = SimConfig(**{"host": "127.0.0.1", "port": 0, "seed": 0, "time_scale": 0.0, **changes})
        server = await start_sim(cfg, exit_fn=exit_fn or _no_exit)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def _no_exit(code: int) -> None:
    raise AssertionError(f"unexpected exit({code})")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: never route 127.0.0.1 through a proxy from the environment.
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


def _client(server: SimServer, http: httpx.AsyncClient, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sim", max_retries=0,
                              http_client=http, **kw)


async def _scrape(server: SimServer, http: httpx.AsyncClient) -> dict[str, float]:
    """``/metrics`` parsed with prometheus_client; keys are sample names plus the
    finished_reason / le label where present."""
    text = (await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels["model_name"] == server.config.model_name
            extra = s.labels.get("finished_reason") or s.labels.get("le")
            out[s.name + (f"[{extra}]" if extra else "")] = s.value
    return out


# -- happy paths -----------------------------------------------------------

async def test_models_and_health(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim(served_model_names=("llama-8b", "chat"))
    models = await _client(server, http).models.list()
    assert [m.id for m in models.data] == ["llama-8b", "chat"]
    assert all(m.object == "model" for m in models.data)
    assert (await http.get(f"http://127.0.0.1:{server.port}/health")).status_code == 200


async def test_serving_as_triton_answers_its_health_path_and_metrics(make_sim: MakeSim,
                                                                     http: httpx.AsyncClient) -> None:
    vllm = await make_sim()
    assert (await http.get(f"http://127.0.0.1:{vllm.port}/health/ready")).status_code == 404
    server = await make_sim(serve_as="triton")
    base = f"http://127.0.0.1:{server.port}"
    assert (await http.get(f"{base}/health/ready")).status_code == 200
    await _client(server, http).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    metrics = (await http.get(f"{base}/metrics")).text
    # As Triton's vLLM backend: Triton's own series, vLLM's histograms, none of vLLM's gauges.
    assert 'nv_inference_request_success_total{model="' in metrics
    assert "vllm:e2e_request_latency_seconds_sum" in metrics
    assert "vllm:num_requests_running" not in metrics and "nv_trt_llm_request_metrics" not in metrics
    assert build_parser().parse_args(["--serve-as", "triton"]).serve_as == "triton"


async def test_chat_completion(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim()
    resp = await _client(server, http).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=5)
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == filler_text(5)
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == \
        (MSGS_TOKENS, 5, MSGS_TOKENS + 5)


async def test_chat_without_max_tokens_stops_naturally(make_sim: MakeSim,
                                                       http: httpx.AsyncClient) -> None:
    server = await make_sim(output_tokens=OutputLength.parse("7"))
    resp = await _client(server, http).chat.completions.create(model=MODEL, messages=MSGS)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 7


async def test_chat_stream_with_usage(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim(time_scale=0.01)
    stream = await _client(server, http).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first, *content, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in content) == filler_text(6)
    assert [c.choices[0].finish_reason for c in content] == [None] * 5 + ["length"]
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (MSGS_TOKENS, 6)


async def test_stream_wire_format_ends_with_done(make_sim: MakeSim,
                                                 http: httpx.AsyncClient) -> None:
    server = await make_sim()
    resp = await http.post(f"{server.base_url}/chat/completions", json={
        "model": MODEL, "messages": MSGS, "max_tokens": 3, "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len(payloads) == 1 + 3  # role chunk + one per token, no usage unless asked
    assert all("usage" not in p for p in payloads)


async def test_completions_plain_and_streamed(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim()
    client = _client(server, http)
    resp = await client.completions.create(model=MODEL, prompt="one two six", max_tokens=4)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == filler_text(4)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 4)

    stream = await client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=4,
                                             stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == filler_text(4)
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 4)


async def test_metrics_count_tokens_and_requests(make_sim: MakeSim,
                                                 http: httpx.AsyncClient) -> None:
    server = await make_sim(output_tokens=OutputLength.parse("3"))
    client = _client(server, http)
    await client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5)
    await client.chat.completions.create(model=MODEL, messages=MSGS)
    m = await _scrape(server, http)
    assert m["vllm:prompt_tokens_total"] == 2 * MSGS_TOKENS
    assert m["vllm:generation_tokens_total"] == 5 + 3
    assert m["vllm:request_success_total[length]"] == 1
    assert m["vllm:request_success_total[stop]"] == 1
    assert m["vllm:time_to_first_token_seconds_count"] == 2
    assert m["vllm:e2e_request_latency_seconds_count"] == 2
    assert m["vllm:inter_token_latency_seconds_count"] == 4 + 2
    assert m["vllm:e2e_request_latency_seconds_bucket[+Inf]"] == 2
    assert m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0
    assert m["vllm:kv_cache_usage_perc"] == 0


# -- errors ----------------------------------------------------------------

async def test_unknown_model_is_404(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim()
    with pytest.raises(openai.NotFoundError) as info:
        await _client(server, http).chat.completions.create(model="nope", messages=MSGS)
    assert info.value.status_code == 404
    body = info.value.response.json()
    assert body == {"error": {"message": "The model `nope` does not exist.",
                              "type": "NotFoundError", "param": "model", "code": 404}}


async def test_prompt_over_max_model_len_is_400(make_sim: MakeSim,
                                                http: httpx.AsyncClient) -> None:
    server = await make_sim(max_model_len=64)
    client = _client(server, http)
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model=MODEL, prompt="word " * 80, max_tokens=1)
    assert "maximum context length is 64 tokens" in info.value.response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=60)


async def test_invalid_max_tokens_names_the_field(make_sim: MakeSim,
                                                  http: httpx.AsyncClient) -> None:
    server = await make_sim()
    with pytest.raises(openai.BadRequestError) as info:
        await _client(server, http).chat.completions.create(model=MODEL, messages=MSGS,
                                                            max_tokens=0)
    error = info.value.response.json()["error"]
    assert error["param"] == "max_tokens" and "max_tokens" in error["message"]
    assert error["code"] == 400


@pytest.mark.parametrize(("path", "body", "field"), [
    ("chat/completions", b'{"model": "sim-model", "messages": [', None),
    ("chat/completions", b"not json", None),
    ("chat/completions", b'{"model": "sim-model"}', "messages"),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    ("completions", b'{"model": "sim-model"}', "prompt"),
    ("completions", b'{"model": "sim-model", "prompt": "hi", "max_tokens": -1}', "max_tokens"),
])
async def test_malformed_requests_are_400_with_field(make_sim: MakeSim, http: httpx.AsyncClient,
                                                     path: str, body: bytes,
                                                     field: str | None) -> None:
    server = await make_sim()
    resp = await http.post(f"{server.base_url}/{path}", content=body,
                           headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "BadRequestError"
    if field is None:
        assert "Invalid JSON" in error["message"]
    else:
        assert error["param"] == field and field in error["message"]


async def test_unexpected_exception_is_json_500_without_trace(
        make_sim: MakeSim, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_sim()

    def boom(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.engine, "plan_output", boom)
    resp = await http.post(f"{server.base_url}/chat/completions",
                           json={"model": MODEL, "messages": MSGS})
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == "Internal server error"
    assert "secret" not in resp.text and "Traceback" not in resp.text


async def test_unknown_route_and_method_are_json(make_sim: MakeSim,
                                                 http: httpx.AsyncClient) -> None:
    server = await make_sim()
    resp = await http.get(f"{server.base_url}/nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == 404
    resp = await http.get(f"{server.base_url}/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == 405


# -- load model --------------------------------------------------------------

async def test_queueing_shows_in_metrics_and_ttft(make_sim: MakeSim,
                                                  http: httpx.AsyncClient) -> None:
    # 4 slots, 8 long requests: 200 decode steps of 5 ms make each batch take ~1 s.
    server = await make_sim(max_num_seqs=4, time_scale=1.0, decode_step_ms=5.0,
                            decode_step_ms_per_seq=0.0)
    client = _client(server, http)

    async def ttft() -> float:
        t0 = time.perf_counter()
        first = None
        stream = await client.chat.completions.create(model=MODEL, messages=MSGS,
                                                      max_tokens=200, stream=True)
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
        assert first is not None
        return first

    async def wait_for(pred: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = await _scrape(server, http)
            if pred(m):
                return m
            await asyncio.sleep(0.01)
        raise AssertionError(f"metrics never matched; last: {m}")

    first = [asyncio.create_task(ttft()) for _ in range(4)]
    await wait_for(lambda m: m["vllm:num_requests_running"] == 4)
    queued = [asyncio.create_task(ttft()) for _ in range(4)]
    m = await wait_for(lambda m: m["vllm:num_requests_waiting"] == 4)
    assert m["vllm:num_requests_running"] == 4
    assert 0 < m["vllm:kv_cache_usage_perc"] < 1
    first_ttft = await asyncio.gather(*first)
    queued_ttft = await asyncio.gather(*queued)
    # Queued requests wait for the first batch (~1 s); only the order is asserted.
    assert min(queued_ttft) > max(first_ttft)
    m = await _scrape(server, http)
    assert m["vllm:time_to_first_token_seconds_count"] == 8
    assert m["vllm:request_queue_time_seconds_count"] == 8


async def test_client_disconnect_aborts_the_sequence(make_sim: MakeSim,
                                                     http: httpx.AsyncClient) -> None:
    server = await make_sim(time_scale=1.0, decode_step_ms=5.0)
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 1000}
    # Streamed: read one event, then hang up.
    async with http.stream("POST", f"{server.base_url}/chat/completions",
                           json={**body, "stream": True}) as resp:
        async for _ in resp.aiter_lines():
            break
    # Not streamed: give up waiting (the handler is cancelled server-side).
    with pytest.raises(httpx.ReadTimeout):
        await http.post(f"{server.base_url}/chat/completions", json=body, timeout=0.2)
    for _ in range(300):
        if server.engine.metrics.request_success["abort"] == 2:
            break
        await asyncio.sleep(0.01)
    assert server.engine.metrics.request_success["abort"] == 2
    assert server.engine.num_running == 0 and server.engine.kv_used_tokens == 0


# -- model loading -------------------------------------------------------------

async def test_load_seconds_keep_health_and_generation_503_until_loaded(
        make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    # 2 model seconds at time-scale 0.25: 0.5 s of wall time.
    t0 = time.monotonic()
    server = await make_sim(load_seconds=2.0, time_scale=0.25)
    base = f"http://127.0.0.1:{server.port}"
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 1}
    assert server.loading
    assert (await http.get(f"{base}/health")).status_code == 503
    resp = await http.post(f"{base}/v1/chat/completions", json=body)
    assert resp.status_code == 503 and "loading" in resp.json()["error"]["message"]
    while (await http.get(f"{base}/health")).status_code != 200:
        assert time.monotonic() - t0 < 5, "never finished loading"
        await asyncio.sleep(0.02)
    assert time.monotonic() - t0 >= 0.5 - 0.02  # not before the scaled load time
    assert not server.loading
    assert (await http.post(f"{base}/v1/chat/completions", json=body)).status_code == 200
    assert server.engine.metrics.request_success["length"] == 1  # the refused one never ran


async def test_load_seconds_cost_nothing_at_time_scale_zero(make_sim: MakeSim,
                                                            http: httpx.AsyncClient) -> None:
    server = await make_sim(load_seconds=600.0)  # the fixture's time-scale 0
    assert not server.loading
    assert (await http.get(f"http://127.0.0.1:{server.port}/health")).status_code == 200


# -- failure injection -------------------------------------------------------

async def test_error_rate_answers_500(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim(error_rate=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        await _client(server, http).chat.completions.create(model=MODEL, messages=MSGS)
    error = info.value.response.json()["error"]
    assert error["code"] == 500 and error["type"] == "InternalServerError"


async def test_error_rate_is_a_fraction(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim(error_rate=0.3)
    statuses = []
    for _ in range(200):
        resp = await http.post(f"{server.base_url}/chat/completions",
                               json={"model": MODEL, "messages": MSGS, "max_tokens": 1})
        statuses.append(resp.status_code)
    assert set(statuses) == {200, 500}
    assert 30 <= statuses.count(500) <= 90  # 60 expected; seeded, so not flaky


async def test_hang_rate_never_answers_and_stop_still_works(make_sim: MakeSim,
                                                            http: httpx.AsyncClient) -> None:
    server = await make_sim(hang_rate=1.0)
    client = _client(server, http, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model=MODEL, messages=MSGS)
    pending = asyncio.create_task(http.post(f"{server.base_url}/chat/completions",
                                            json={"model": MODEL, "messages": MSGS}))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await server.stop()
    assert time.monotonic() - t0 < 5
    resp = await pending
    assert resp.status_code == 503


async def test_crash_after_exits_once_n_requests_are_answered(
        make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    exits: list[int] = []
    server = await make_sim(crash_after=2, exit_fn=exits.append)
    client = _client(server, http)
    await client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
    assert exits == []
    resp = await client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
    assert resp.usage is not None and resp.usage.completion_tokens == 2  # the 2nd is served
    assert exits == [1] and server.crashed


def _sim_process(*args: str) -> subprocess.Popen[str]:
    """``python -m llmfleet.sim.server`` on 127.0.0.1 and a free port (see :func:`_port_of`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmfleet.sim.server", "--host", "127.0.0.1", "--port", "0",
         "--log-level", "error", *args],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _port_of(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    return int(proc.stdout.readline().rsplit(":", 1)[1])


def test_crash_after_kills_the_real_process() -> None:
    with _sim_process("--time-scale", "0", "--crash-after", "1") as proc:
        try:
            port = _port_of(proc)
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/completions", trust_env=False,
                              timeout=10, json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert resp.status_code == 200  # the N-th request is still answered
            assert proc.wait(timeout=10) == 1
        finally:
            if proc.poll() is None:
                proc.kill()


# -- graceful shutdown ---------------------------------------------------------

async def _first_chunk(stream: Any) -> tuple[Any, Any]:
    """The stream's first chunk (the request is being served) and an iterator over the rest."""
    chunks = stream.__aiter__()
    return await anext(chunks), chunks


def _chat_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_drain_lets_a_stream_in_flight_finish(make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    # 40 tokens of 10 ms: about 0.4 s, well inside the 5 s drain.
    server = await make_sim(time_scale=1.0, decode_step_ms=10.0, shutdown_timeout=5.0)
    stream = await _client(server, http).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=40, stream=True)
    first, rest = await _first_chunk(stream)
    drain = asyncio.create_task(server.drain())
    chunks = [first, *[c async for c in rest]]
    assert _chat_text(chunks) == filler_text(40)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert await drain is True
    assert server.engine.metrics.request_success["length"] == 1
    assert server.engine.metrics.request_success["abort"] == 0


async def test_requests_after_the_drain_begins_are_refused(make_sim: MakeSim,
                                                           http: httpx.AsyncClient) -> None:
    server = await make_sim(time_scale=1.0, decode_step_ms=10.0, shutdown_timeout=5.0)
    base = f"http://127.0.0.1:{server.port}"
    # An idle keep-alive connection, opened before the drain...
    async with httpx.AsyncClient(trust_env=False, timeout=5) as idle:
        assert (await idle.get(f"{base}/health")).status_code == 200
        # ...and a stream of about 1 s that keeps the drain going.
        stream = await _client(server, http).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=100, stream=True)
        first, rest = await _first_chunk(stream)
        drain = asyncio.create_task(server.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()
        # New connections are refused; an open one is answered 503 and closed.
        with pytest.raises(openai.APIConnectionError):
            await _client(server, http).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=1)
        resp = await idle.post(f"{server.base_url}/chat/completions",
                               json={"model": MODEL, "messages": MSGS, "max_tokens": 1})
        assert resp.status_code == 503 and "shutting down" in resp.json()["error"]["message"]
        assert resp.headers["connection"] == "close"
        with pytest.raises(httpx.ConnectError):
            await idle.get(f"{base}/health")
        assert _chat_text([first, *[c async for c in rest]]) == filler_text(100)
    assert await drain is True
    assert server.engine.metrics.request_success["length"] == 1  # only the stream ran


async def test_drain_is_bounded_by_the_scaled_shutdown_timeout(make_sim: MakeSim,
                                                               http: httpx.AsyncClient) -> None:
    # 2 model seconds at time-scale 0.25: the drain gives up after 0.5 s, and the
    # stream (4000 tokens of 10 model ms: 10 s of wall time) is cut when the server stops.
    server = await make_sim(time_scale=0.25, decode_step_ms=10.0, shutdown_timeout=2.0)
    assert server.drain_seconds == 0.5
    stream = await _client(server, http).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=4000, stream=True)
    first, rest = await _first_chunk(stream)
    t0 = time.monotonic()
    assert await server.drain() is False
    assert 0.5 - 0.02 <= time.monotonic() - t0 < 2.0
    await server.stop()
    chunks = [first, *[c async for c in rest]]  # ends without [DONE], like a dying server
    assert 0 < len(_chat_text(chunks)) < len(filler_text(4000))
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)
    assert server.engine.metrics.request_success["abort"] == 1


async def test_drain_with_nothing_in_flight_returns_at_once(make_sim: MakeSim) -> None:
    server = await make_sim(time_scale=1.0, shutdown_timeout=60.0)
    t0 = time.monotonic()
    assert await server.drain() is True
    assert time.monotonic() - t0 < 1.0


def _stream_events(http: httpx.Client, port: int, tokens: int, during: Callable[[], None]) -> list[str]:
    """Server-sent events of a streamed completion of ``tokens`` tokens; ``during()`` runs
    once the first has arrived."""
    events: list[str] = []
    with http.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json={
            "model": MODEL, "prompt": "hi", "max_tokens": tokens, "stream": True}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                if not events:
                    during()
                events.append(line)
    return events


def test_sigterm_drains_the_real_process() -> None:
    # 50 tokens of 20 ms: about 1 s; SIGTERM arrives after the first.
    with _sim_process("--time-scale", "1", "--decode-step-ms", "20", "--shutdown-timeout", "30") as proc:
        try:
            port = _port_of(proc)
            refused: list[bool] = []

            def sigterm() -> None:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=2)
                except httpx.ConnectError:
                    refused.append(True)

            with httpx.Client(trust_env=False, timeout=10) as http:
                events = _stream_events(http, port, 50, sigterm)
            assert refused == [True]  # listener closed while the stream went on
            assert events[-1] == "data: [DONE]"
            assert len(events) == 50 + 1
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sigint_cuts_a_drain_short() -> None:
    # 500 tokens of 20 ms would take 10 s; SIGTERM then SIGINT end it at once.
    with _sim_process("--time-scale", "1", "--decode-step-ms", "20", "--shutdown-timeout", "30") as proc:
        try:
            port = _port_of(proc)

            def sigterm_then_sigint() -> None:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                proc.send_signal(signal.SIGINT)

            t0 = time.monotonic()
            with httpx.Client(trust_env=False, timeout=10) as http:
                events = _stream_events(http, port, 500, sigterm_then_sigint)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - t0 < 5
            assert "data: [DONE]" not in events and len(events) < 500
        finally:
            if proc.poll() is None:
                proc.kill()


# -- command line --------------------------------------------------------------

def test_cli_flags_map_to_config() -> None:
    args = build_parser().parse_args([
        "--host", "127.0.0.1", "--port", "9000", "--served-model-name", "a", "b",
        "--max-num-seqs", "8", "--kv-cache-tokens", "10000", "--prefill-tokens-per-second", "500",
        "--decode-step-ms", "20", "--decode-step-ms-per-seq", "0.5", "--max-model-len", "4096",
        "--output-tokens", "uniform:50:200", "--time-scale", "0.1", "--error-rate", "0.01",
        "--hang-rate", "0.02", "--crash-after", "100", "--seed", "7", "--load-seconds", "60",
        "--shutdown-timeout", "30"])
    cfg = config_from_args(args)
    assert cfg == SimConfig(
        host="127.0.0.1", port=9000, served_model_names=("a", "b"), max_num_seqs=8,
        kv_cache_tokens=10000, prefill_tokens_per_second=500, decode_step_ms=20,
        decode_step_ms_per_seq=0.5, max_model_len=4096,
        output_tokens=OutputLength("uniform", 50, 200), time_scale=0.1, load_seconds=60,
        shutdown_timeout=30, error_rate=0.01,
        hang_rate=0.02, crash_after=100, seed=7)
    assert config_from_args(build_parser().parse_args([])) == SimConfig()
    assert config_from_args(build_parser().parse_args(["--model", "m"])).served_model_names == ("m",)


@pytest.mark.parametrize("argv", [["--output-tokens", "lots"], ["--error-rate", "2"], ["--load-seconds", "-1"],
                                  ["--shutdown-timeout", "-1"],
                                  ["--kv-cache-tokens", "10"], ["--bogus"]])
def test_cli_rejects_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


async def test_a_conversations_next_turn_finds_its_history_and_answer_in_the_prefix_cache(
        make_sim: MakeSim, http: httpx.AsyncClient) -> None:
    server = await make_sim(enable_prefix_caching=True)
    client = _client(server, http)
    history = [{"role": "system", "content": "You answer questions about llmfleet. " * 12},
               {"role": "user", "content": "How does the operator route a request to a model? " * 4}]
    first = await client.chat.completions.create(model=MODEL, messages=history, max_tokens=40)
    m = await _scrape(server, http)
    assert m["vllm:prefix_cache_hits_total"] == 0 and m["vllm:prefix_cache_queries_total"] == first.usage.prompt_tokens
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And how does it scale it?"}]
    second = await client.chat.completions.create(model=MODEL, messages=history, max_tokens=4)
    m = await _scrape(server, http)
    hits = m["vllm:prefix_cache_hits_total"]
    # All of the first turn and its answer but the last partial block and the new question.
    assert first.usage.prompt_tokens + 40 - 16 <= hits < second.usage.prompt_tokens, (hits, second.usage)
    assert m["vllm:prefix_cache_queries_total"] == first.usage.prompt_tokens + second.usage.prompt_tokens


def test_prefix_caching_is_vllms_flag_and_off_by_default() -> None:
    assert config_from_args(build_parser().parse_args([])).enable_prefix_caching is False
    assert config_from_args(build_parser().parse_args(["--enable-prefix-caching"])).enable_prefix_caching
    assert not config_from_args(build_parser().parse_args(["--no-enable-prefix-caching"])).enable_prefix_caching
