"""A cascade through a real Envoy and quality-aware sims: the cheap stage's answer comes
back unless an escalation condition holds, exactly then, and clients see one answer."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from llmfleet.routing.table import Cascade, CascadeStage, Route
from llmfleet.sim.quality import QualityModel
from tests.dataplane.conftest import DataPlane, Sim, SimFactory, split, table_for

THRESHOLD = -0.35
PROMPTS = [f"Question {i}: what is {i} times {i + 7}?" for i in range(40)]
QUALITY = ("--output-tokens", "8")


@pytest.fixture(scope="module")
def stages(module_sims: SimFactory) -> tuple[Sim, Sim]:
    (weak,) = module_sims.start("model-weak", args=(*QUALITY, "--accuracy", "0.64"))
    (strong,) = module_sims.start("model-strong", args=(*QUALITY, "--accuracy", "0.86"))
    return weak, strong


def cascade_table(weak: Sim, strong: Sim, **conditions) -> object:
    cascade = Cascade((CascadeStage("weak", "ai/weak", "model-weak"), CascadeStage("strong", "ai/strong", "model-strong")),
                      **{"min_mean_logprob": THRESHOLD, **conditions})
    route = Route("chat", split(("ai/strong", 1)), cascade=cascade)
    return table_for([route], {"ai/weak": [weak], "ai/strong": [strong]})


async def ask(dataplane: DataPlane, prompt: str, **extra) -> httpx.Response:
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=30) as client:
        return await client.post("/v1/chat/completions", json={
            "model": "chat", "messages": [{"role": "user", "content": prompt}], **extra})


def weak_mean_logprob(prompt: str) -> float:
    """What the weak stage's answer's mean token logprob is (the sim's quality model)."""
    model = QualityModel(0.64, seed="model-weak")
    answer = model.answer(prompt)
    return sum(model.token_logprob(prompt, answer, i) for i in range(8)) / 8


async def test_a_cascade_escalates_exactly_when_the_answer_is_not_confident_enough(
        dataplane: DataPlane, stages: tuple[Sim, Sim]) -> None:
    await asyncio.to_thread(dataplane.apply, cascade_table(*stages))
    answered = {}
    for prompt in PROMPTS:
        r = await ask(dataplane, prompt)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "chat"  # the public name, whichever stage answered
        answered[prompt] = r.headers["x-llmfleet-cascade-stage"]
        expected = "strong" if weak_mean_logprob(prompt) < THRESHOLD else "weak"
        assert answered[prompt] == expected, (prompt, weak_mean_logprob(prompt), dict(r.headers))
        if expected == "strong":
            assert r.headers["x-llmfleet-cascade-escalations"] == "weak: low confidence"
    assert set(answered.values()) == {"weak", "strong"}  # the threshold splits this set


async def test_length_refusal_and_errors_escalate_and_the_last_stage_always_answers(
        dataplane: DataPlane, stages: tuple[Sim, Sim], sims: SimFactory) -> None:
    weak, strong = stages
    await asyncio.to_thread(dataplane.apply, cascade_table(weak, strong, min_mean_logprob=None))
    cut = await ask(dataplane, PROMPTS[0], max_tokens=2)  # both stages cut short: the last one's answer stands
    assert cut.status_code == 200 and cut.headers["x-llmfleet-cascade-stage"] == "strong"
    assert cut.headers["x-llmfleet-cascade-escalations"] == "weak: length"
    assert cut.json()["choices"][0]["finish_reason"] == "length"
    plain = await ask(dataplane, PROMPTS[0])
    assert plain.headers["x-llmfleet-cascade-stage"] == "weak"  # no condition holds

    await asyncio.to_thread(dataplane.apply, cascade_table(weak, strong, min_mean_logprob=None, refusals=("ans:",)))
    refused = await ask(dataplane, PROMPTS[0])
    assert refused.headers["x-llmfleet-cascade-escalations"] == "weak: refusal"

    (failing,) = sims.start("model-weak", args=(*QUALITY, "--accuracy", "0.64", "--error-rate", "1"))
    await asyncio.to_thread(dataplane.apply, cascade_table(failing, strong, min_mean_logprob=None))
    failed = await ask(dataplane, PROMPTS[0])
    assert failed.status_code == 200 and failed.headers["x-llmfleet-cascade-escalations"] == "weak: HTTP 500"


async def test_a_streaming_client_gets_the_chosen_answer_as_events(
        dataplane: DataPlane, stages: tuple[Sim, Sim]) -> None:
    await asyncio.to_thread(dataplane.apply, cascade_table(*stages))
    whole = (await ask(dataplane, PROMPTS[3])).json()
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=30) as client, client.stream(
            "POST", "/v1/chat/completions", json={"model": "chat", "stream": True,
                                                  "stream_options": {"include_usage": True},
                                                  "messages": [{"role": "user", "content": PROMPTS[3]}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["content"] == whole["choices"][0]["message"]["content"]
    assert chunks[0]["model"] == "chat" and chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[-1]["usage"] == whole["usage"]
