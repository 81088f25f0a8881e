"""Pure parts of the sim engine: token counting, filler text, request validation,
config parsing. No server, no event loop."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet.sim.config import OutputLength, SimConfig
from llmfleet.sim.protocol import (
    RequestError,
    StreamEncoder,
    check_context_length,
    count_text_tokens,
    filler_text,
    filler_token,
    filler_token_json,
    parse_chat_request,
    parse_completion_request,
    parse_json_body,
)


@pytest.mark.parametrize(("text", "tokens"), [
    ("", 0), ("   \n\t", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("a b c", 3),
    ("Hello, world!", 4),  # "Hell" "o," "worl" "d!"
])
def test_count_text_tokens(text: str, tokens: int) -> None:
    assert count_text_tokens(text) == tokens


@given(st.integers(min_value=0, max_value=3000))
def test_filler_text_is_its_tokens_and_counts_back(n: int) -> None:
    # Clients that re-count the output get completion_tokens back.
    text = filler_text(n)
    assert text == "".join(filler_token(i) for i in range(n))
    assert count_text_tokens(text) == n


@given(st.integers(min_value=0, max_value=500))
def test_filler_token_json_matches_token(i: int) -> None:
    assert json.loads(filler_token_json(i)) == filler_token(i)


def test_chat_prompt_tokens_include_message_overhead() -> None:
    req = parse_chat_request({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},         # 3 + "be" "brie" "f"
        {"role": "user", "name": "bob", "content": [{"type": "text", "text": "hello there"},
                                                    {"type": "image_url", "image_url": {}}]},
    ]})  # 3 + 1 (name) + "hell" "o" "ther" "e"; the image costs nothing
    assert req.prompt_tokens == 3 + (3 + 3) + (3 + 1 + 4)
    assert (req.kind, req.model, req.max_tokens, req.stream, req.include_usage) == \
        ("chat", "m", None, False, False)


@pytest.mark.parametrize("prompt", ["one two", ["one two"], [11, 12], [[11, 12]]])
def test_completion_prompt_forms(prompt: object) -> None:
    assert parse_completion_request({"model": "m", "prompt": prompt}).prompt_tokens == 2


def test_chat_prefers_max_completion_tokens_like_vllm() -> None:
    req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 50, "max_completion_tokens": 7,
                              "stream": True, "stream_options": {"include_usage": True}})
    assert (req.max_tokens, req.stream, req.include_usage) == (7, True, True)


_MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": _MSG}, "model"),
    ({"model": 3, "messages": _MSG}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text"),
    ({"model": "m", "messages": _MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": _MSG, "max_tokens": -3}, "max_tokens"),
    ({"model": "m", "messages": _MSG, "max_tokens": "5"}, "max_tokens"),
    ({"model": "m", "messages": _MSG, "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": _MSG, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"model": "m", "messages": _MSG, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": _MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "messages": _MSG, "n": 2}, "n"),
])
def test_invalid_chat_requests_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body)
    assert info.value.status == 400
    assert info.value.param == param
    assert param.split("[")[0] in info.value.message
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body", [
    {"model": "m"}, {"model": "m", "prompt": ""}, {"model": "m", "prompt": 5},
    {"model": "m", "prompt": ["a", "b"]}, {"model": "m", "prompt": [1, "x"]},
    {"model": "m", "prompt": []},
])
def test_invalid_completion_prompts(body: dict) -> None:
    with pytest.raises(RequestError) as info:
        parse_completion_request(body)
    assert info.value.status == 400
    assert info.value.param == "prompt"
    assert "prompt" in info.value.message


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_malformed_bodies_are_400(raw: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_json_body(raw)
    assert info.value.status == 400


def test_context_length_checks() -> None:
    ok = parse_completion_request({"model": "m", "prompt": "w " * 60, "max_tokens": 40})
    check_context_length(ok, 100)  # 60 + 40 fits exactly
    too_long = parse_completion_request({"model": "m", "prompt": "w " * 60, "max_tokens": 41})
    with pytest.raises(RequestError) as info:
        check_context_length(too_long, 100)
    assert info.value.status == 400
    assert "maximum context length is 100 tokens" in info.value.message
    assert "101 tokens (60 in the prompt, 41 in the completion)" in info.value.message
    no_max = parse_completion_request({"model": "m", "prompt": "w " * 100})
    with pytest.raises(RequestError):
        check_context_length(no_max, 100)


def test_stream_encoder_chunks_are_openai_json() -> None:
    enc = StreamEncoder("chat", "chatcmpl-1", 123, 'a "quoted" model')
    role = json.loads(enc.role_chunk().removeprefix("data: "))
    assert role["object"] == "chat.completion.chunk"
    assert role["model"] == 'a "quoted" model'
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = json.loads(enc.token_chunk(3, "length").removeprefix("data: "))
    assert last["choices"][0]["delta"] == {"content": filler_token(3)}
    assert last["choices"][0]["finish_reason"] == "length"
    use = json.loads(enc.usage_chunk(5, 4).removeprefix("data: "))
    assert use["choices"] == [] and use["usage"]["total_tokens"] == 9
    cmpl = StreamEncoder("completion", "cmpl-1", 1, "m")
    assert cmpl.role_chunk() == ""
    assert json.loads(cmpl.token_chunk(0).removeprefix("data: "))["choices"][0]["text"] == "Sim"


@pytest.mark.parametrize(("text", "low", "high"), [
    ("17", 17, 17), ("uniform:50:200", 50, 200), ("normal:100:30", 1, 10_000),
])
def test_output_length_parse_and_sample(text: str, low: int, high: int) -> None:
    spec = OutputLength.parse(text)
    assert str(OutputLength.parse(str(spec))) == str(spec)
    rng = random.Random(4)
    samples = [spec.sample(rng) for _ in range(500)]
    assert all(low <= s <= high for s in samples)


@pytest.mark.parametrize("text", ["0", "-4", "x", "uniform:5", "uniform:9:3", "uniform:1.5:3",
                                  "normal:0:1", "normal:10:-1", "poisson:3:4"])
def test_output_length_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        OutputLength.parse(text)


@pytest.mark.parametrize(("changes", "flag"), [
    ({"kv_cache_tokens": 100, "max_model_len": 200}, "--kv-cache-tokens"),
    ({"error_rate": 1.5}, "--error-rate"),
    ({"error_rate": 0.6, "hang_rate": 0.6}, "--hang-rate"),
    ({"max_num_seqs": 0}, "--max-num-seqs"),
    ({"time_scale": -1.0}, "--time-scale"),
    ({"crash_after": 0}, "--crash-after"),
    ({"served_model_names": ()}, "--served-model-name"),
])
def test_config_validation_names_the_flag(changes: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        SimConfig(**changes)
