"""Answer quality in the simulator: accuracies as configured, a confidence signal in the
logprobs that follows correctness as loosely as asked, and the OpenAI logprobs shapes."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from llmfleet.sim.config import OutputLength, SimConfig
from llmfleet.sim.protocol import count_text_tokens
from llmfleet.sim.quality import ANSWER_TOKENS, QualityModel, load_dataset, score
from llmfleet.sim.server import SimServer, build_parser, config_from_args, start_sim

pytestmark = pytest.mark.timeout(60)
PROMPTS = [f"Question {i}: how many apples does Ana have after {i} trades?" for i in range(3000)]


def auc(model: QualityModel) -> float:
    """How often a right answer's first-token logprob beats a wrong one's (1: perfectly)."""
    answers = [(p, model.answer(p)) for p in PROMPTS]
    right = [model.token_logprob(p, a, 0) for p, a in answers if a.correct]
    wrong = [model.token_logprob(p, a, 0) for p, a in answers if not a.correct]
    rng = random.Random(0)
    return sum(rng.choice(right) > rng.choice(wrong) for _ in range(20_000)) / 20_000


@pytest.mark.parametrize("accuracy", [0.64, 0.86])
def test_a_deployment_answers_as_accurately_as_configured(accuracy):
    model = QualityModel(accuracy, seed="m")
    measured = sum(model.answer(p).correct for p in PROMPTS) / len(PROMPTS)
    assert abs(measured - accuracy) < 0.03


def test_answers_are_deterministic_per_deployment_and_harder_prompts_fail_more():
    a, again, other = QualityModel(0.7, seed="a"), QualityModel(0.7, seed="a"), QualityModel(0.7, seed="b")
    assert [a.answer(p) for p in PROMPTS[:200]] == [again.answer(p) for p in PROMPTS[:200]]
    assert [a.answer(p).correct for p in PROMPTS[:200]] != [other.answer(p).correct for p in PROMPTS[:200]]
    by_difficulty = sorted(PROMPTS, key=lambda p: a.item(p).difficulty)
    easy, hard = by_difficulty[:1000], by_difficulty[-1000:]
    assert sum(a.answer(p).correct for p in easy) > sum(a.answer(p).correct for p in hard) + 300
    # A stronger model is right on a superset-like share: the weak one's right answers mostly hold.
    strong = QualityModel(0.9, seed="a")
    assert sum(strong.answer(p).correct for p in PROMPTS) > sum(a.answer(p).correct for p in PROMPTS)


def test_confidence_follows_correctness_as_loosely_as_the_noise_says():
    sharp, default, blurred = (QualityModel(0.64, noise, seed="m") for noise in (0.3, 1.5, 4.0))
    assert auc(sharp) > auc(default) > auc(blurred) > 0.5
    assert 0.7 < auc(default) < 0.95  # informative, not an oracle


def test_a_dataset_sets_gold_answers_and_difficulty_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "easy one", "answer": 7, "difficulty": -30}) + "\n"
                    + json.dumps({"prompt": "hard one", "answer": 8, "difficulty": 30}) + "\n")
    model = QualityModel(0.5, dataset=load_dataset(path))
    easy, hard = model.answer("easy one"), model.answer("hard one")
    assert easy.correct and easy.text_tokens == (" Ans:", " 0007", ".")
    assert not hard.correct and hard.text_tokens[1] != " 0008"
    assert score("reasoning Ans: 0007.", "easy one", load_dataset(path))
    assert not score("reasoning Ans: 0008.", "easy one", load_dataset(path))
    assert not score("reasoning cut sh", "easy one", load_dataset(path))
    path.write_text(json.dumps({"prompt": "p", "answer": 7}) + "\n" + json.dumps({"prompt": "q", "answer": -1}))
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: \"answer\" must be an integer within 0..9999"):
        load_dataset(path)


def test_quality_flags_parse_and_bad_values_name_the_flag():
    config = config_from_args(build_parser().parse_args(["--accuracy", "0.64", "--confidence-noise", "2"]))
    assert (config.accuracy, config.confidence_noise) == (0.64, 2.0)
    with pytest.raises(ValueError, match="--accuracy must be within"):
        SimConfig(accuracy=1.5)
    with pytest.raises(ValueError, match="--prompt-dataset needs --accuracy"):
        SimConfig(prompt_dataset="x.jsonl")


MakeSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def sim() -> AsyncIterator[MakeSim]:
    servers: list[SimServer] = []

    async def make(**changes: Any) -> SimServer:
        config = SimConfig(**{"host": "127.0.0.1", "port": 0, "seed": 0, "time_scale": 0.0,
                              "output_tokens": OutputLength("fixed", 20.0), **changes})
        server = await start_sim(config, exit_fn=lambda code: None)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-model", "messages": [{"role": "user", "content": content}], **extra}


async def post(server: SimServer, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.post(f"{server.base_url}{path}", json=body)


async def test_a_chat_answer_ends_with_its_verdict_and_carries_logprobs(sim):
    server = await sim(accuracy=0.64)
    model = server.quality
    right = wrong = 0
    for prompt in PROMPTS[:40]:
        body = (await post(server, "/chat/completions", chat(prompt, logprobs=True, top_logprobs=2))).json()
        choice = body["choices"][0]
        text = choice["message"]["content"]
        assert choice["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 20
        assert count_text_tokens(text) == 20
        tokens = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == text and len(tokens) == 20
        assert all(len(t["top_logprobs"]) == 2 and t["top_logprobs"][0]["token"] == t["token"] for t in tokens)
        verdict = model.answer(prompt)
        assert score(text, prompt) is verdict.correct
        mean = sum(t["logprob"] for t in tokens) / len(tokens)
        assert abs(mean - math.log(verdict.confidence)) < 0.6
        right, wrong = right + verdict.correct, wrong + (not verdict.correct)
    assert right and wrong


async def test_an_answer_cut_by_max_tokens_has_none_and_says_length(sim):
    server = await sim(accuracy=0.99)
    body = (await post(server, "/chat/completions", chat(PROMPTS[0], max_tokens=10))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and "Ans:" not in choice["message"]["content"]
    assert choice["logprobs"] is None  # not asked for
    body = (await post(server, "/chat/completions", chat(PROMPTS[0], max_tokens=500))).json()
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 20


async def test_a_streamed_answer_is_the_same_answer_with_the_same_logprobs(sim):
    server = await sim(accuracy=0.64)
    whole = (await post(server, "/chat/completions", chat(PROMPTS[1], logprobs=True))).json()["choices"][0]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client, client.stream(
            "POST", f"{server.base_url}/chat/completions", json=chat(PROMPTS[1], logprobs=True, stream=True)) as r:
        chunks = [json.loads(line[6:]) async for line in r.aiter_lines()
                  if line.startswith("data: {")]
    pieces = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert "".join(p["delta"]["content"] for p in pieces) == whole["message"]["content"]
    assert [p["logprobs"]["content"][0]["logprob"] for p in pieces] == \
        [t["logprob"] for t in whole["logprobs"]["content"]]
    assert pieces[-1]["finish_reason"] == "stop"


async def test_completions_logprobs_have_openais_shape(sim):
    server = await sim(accuracy=0.64)
    body = (await post(server, "/completions", {"model": "sim-model", "prompt": PROMPTS[2], "logprobs": 1})).json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"] and len(logprobs["token_logprobs"]) == 20
    assert [choice["text"][o:o + len(t)] for o, t in zip(logprobs["text_offset"], logprobs["tokens"],
                                                          strict=True)] == logprobs["tokens"]
    assert all(len(top) == 1 for top in logprobs["top_logprobs"])
    assert re.search(r" Ans: \d{4}\.$", choice["text"])  # the answer's ANSWER_TOKENS tokens end it
    assert logprobs["tokens"][-ANSWER_TOKENS:][0] == " Ans:"


async def test_bad_logprobs_requests_name_the_field(sim):
    server = await sim()
    r = await post(server, "/chat/completions", chat("hi", top_logprobs=3))
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = await post(server, "/chat/completions", chat("hi", logprobs=True, top_logprobs=99))
    assert r.status_code == 400 and "within 0..20" in r.json()["error"]["message"]
    # Without answer quality, logprobs still come, for filler text.
    body = (await post(server, "/chat/completions", chat("hi", logprobs=True, max_tokens=3))).json()
    assert [t["token"] for t in body["choices"][0]["logprobs"]["content"]] == ["Sim", " says", " this"]
