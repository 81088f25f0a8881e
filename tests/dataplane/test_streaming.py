"""Streaming responses pass through Envoy intact and as they are generated."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from llmfleet.routing.table import Route
from tests.dataplane.conftest import CHAT, DataPlane, Sim, SimFactory, split, table_for

TOKENS = 12


@pytest.fixture(scope="module")
def slow(module_sims: SimFactory) -> Sim:
    """A backend that takes real time per token (12 tokens ≈ 0.5 s)."""
    (sim,) = module_sims.start("slow-model", args=("--time-scale", "1", "--decode-step-ms", "40",
                                                   "--output-tokens", str(TOKENS)))
    return sim


@pytest.fixture(scope="module")
def routed(dataplane: DataPlane, slow: Sim) -> DataPlane:
    dataplane.apply(table_for([Route("chat", split(("ai/slow", 1)))], {"ai/slow": [slow]}))
    return dataplane


async def test_openai_client_streams_chunks_and_usage(routed: DataPlane) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{routed.url}/v1", api_key="unused", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="chat", messages=CHAT["messages"], stream=True, stream_options={"include_usage": True})
        arrivals: list[float] = []
        text, usage, models, finish = [], None, set(), None
        async for chunk in stream:
            models.add(chunk.model)
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                    arrivals.append(time.monotonic())
                finish = choice.finish_reason or finish
    finally:
        await sdk.close()

    assert models == {"slow-model"}
    assert len(text) == TOKENS
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == TOKENS
    assert usage.total_tokens == usage.prompt_tokens + TOKENS
    # Tokens arrived as they were generated (~40 ms apart), not in one buffered lump.
    assert arrivals[-1] - arrivals[0] > 0.25, f"all tokens within {arrivals[-1] - arrivals[0]:.3f}s"


async def test_raw_event_stream_ends_with_done(routed: DataPlane) -> None:
    events: list[str] = []
    async with httpx.AsyncClient(base_url=routed.url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions",
                                 json={"model": "chat", **CHAT, "max_tokens": None, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line:
                    events.append(line)
    assert all(e.startswith("data: ") for e in events), events[:3]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for c in content if c) == TOKENS


async def test_concurrent_streams_are_not_serialised(routed: DataPlane) -> None:
    """Eight streams of ~0.5 s each finish in far less than 8 × 0.5 s."""
    sdk = openai.AsyncOpenAI(base_url=f"{routed.url}/v1", api_key="unused", max_retries=0)

    async def one() -> int:
        stream = await sdk.chat.completions.create(model="chat", messages=CHAT["messages"], stream=True)
        tokens = 0
        async for chunk in stream:
            tokens += sum(1 for choice in chunk.choices if choice.delta.content)
        return tokens

    try:
        t0 = time.monotonic()
        async with asyncio.timeout(30):
            counts = await asyncio.gather(*(one() for _ in range(8)))
        elapsed = time.monotonic() - t0
    finally:
        await sdk.close()
    assert counts == [TOKENS] * 8
    assert elapsed < 2.5, f"8 concurrent streams took {elapsed:.2f}s"
