"""The OpenAI wire format as vLLM speaks it: request validation, token counting,
filler text and response shapes. Pure functions, no I/O, so the edge cases are
unit-testable without a server.

Token counting is an approximation (there is no tokenizer): every run of up to four
non-whitespace characters is one token, so a word of n characters costs ceil(n/4)
tokens and whitespace is free. That is close to real BPE tokenizers for English
(about four characters per token) and, importantly, deterministic. Chat prompts add
OpenAI's documented per-message overhead (3 tokens per message, 1 per ``name``, 3
to prime the reply) to stand in for the chat template.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llmfleet.api import openai

_TOKEN_RE = re.compile(r"\S{1,4}")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3

# vLLM puts the HTTP status into `code` and an exception-like name into `type`.
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed",
                500: "InternalServerError", 503: "ServiceUnavailableError"}


class RequestError(Exception):
    """A request the server answers with an OpenAI-shaped error instead of a result."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 err_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or _ERROR_TYPES.get(status, "BadRequestError")

    def body(self) -> dict[str, Any]:
        """The JSON body, in the shape current vLLM returns."""
        return error_body(self.status, self.message, param=self.param, err_type=self.err_type)


def error_body(status: int, message: str, *, param: str | None = None,
               err_type: str | None = None) -> dict[str, Any]:
    """OpenAI's error body as vLLM's ErrorResponse fills it (the HTTP status as ``code``)."""
    return openai.error_body(message, err_type or _ERROR_TYPES.get(status, "BadRequestError"),
                             param=param, code=status)


def count_text_tokens(text: str) -> int:
    """Approximate token count of ``text`` (see module docstring)."""
    return len(_TOKEN_RE.findall(text))


PREFIX_BLOCK_TOKENS = 16  # vLLM's default KV block size


def prefix_blocks(text: str) -> tuple[int, ...]:
    """The prompt's full KV blocks as vLLM's prefix cache names them: each block's hash
    chains the hash of the block before it, so two prompts share a block only when they
    share everything up to its end. Within one process (Python's string hash)."""
    tokens = _TOKEN_RE.findall(text)
    out: list[int] = []
    h = 0
    for i in range(0, len(tokens) - PREFIX_BLOCK_TOKENS + 1, PREFIX_BLOCK_TOKENS):
        h = hash((h, *tokens[i:i + PREFIX_BLOCK_TOKENS]))
        out.append(h)
    return tuple(out)


# ---------------------------------------------------------------------------
# Filler output
# ---------------------------------------------------------------------------

# Every word is at most four characters, so counting the generated text with
# count_text_tokens gives back exactly completion_tokens.
_FILLER_WORDS: tuple[str, ...] = ("Sim", "says", "this", "is", "a", "fake", "but", "well", "paced",
                 "stub", "of", "text", "from", "an", "LLM", "that", "has", "no",
                 "GPU", "at", "all", "so", "read", "it", "as", "mere", "load")
_FILLER_WORDS = tuple(w[:4] for w in _FILLER_WORDS)
_PERIOD = len(_FILLER_WORDS)
# Token i >= 1 is " " + word[i % period]; block = tokens 1..period, repeating.
_BLOCK_TOKENS = tuple(" " + _FILLER_WORDS[i % _PERIOD] for i in range(1, _PERIOD + 1))
_BLOCK = "".join(_BLOCK_TOKENS)
_BLOCK_OFFSETS = [0]
for _tok in _BLOCK_TOKENS:
    _BLOCK_OFFSETS.append(_BLOCK_OFFSETS[-1] + len(_tok))
# JSON-encoded tokens, ready to paste into hand-built stream chunks.
_TOKEN_JSON = tuple(json.dumps(" " + w) for w in _FILLER_WORDS)
_FIRST_TOKEN_JSON = json.dumps(_FILLER_WORDS[0])


def filler_token(i: int) -> str:
    """The i-th generated token (0-based)."""
    return _FILLER_WORDS[0] if i == 0 else " " + _FILLER_WORDS[i % _PERIOD]


def filler_token_json(i: int) -> str:
    """``json.dumps(filler_token(i))``, precomputed."""
    return _FIRST_TOKEN_JSON if i == 0 else _TOKEN_JSON[i % _PERIOD]


def filler_text(n: int) -> str:
    """The text of the first ``n`` generated tokens, in O(n/period) string work."""
    if n <= 0:
        return ""
    full, part = divmod(n - 1, _PERIOD)
    return _FILLER_WORDS[0] + _BLOCK * full + _BLOCK[:_BLOCK_OFFSETS[part]]


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

RequestKind = Literal["chat", "completion"]


@dataclass(slots=True)
class GenerationRequest:
    """What the engine needs from a validated /v1/(chat/)completions body."""

    kind: RequestKind
    model: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    prompt_text: str = ""  # what answer quality keys on: the last user message, or the prompt
    logprobs: int | None = None  # None: not asked for; k: with k top alternatives per token
    whole_text: str = ""  # the whole prompt (every message, with its role), what a prefix cache keys on


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode the request body; malformed JSON is a 400 like vLLM's."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = (f"{exc.msg} at line {exc.lineno} column {exc.colno}"
                  if isinstance(exc, json.JSONDecodeError) else "body is not UTF-8")
        raise RequestError(400, f"Invalid JSON body: {detail}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "Request body must be a JSON object")
    return body


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _common(body: dict[str, Any], max_tokens_fields: tuple[str, ...]) -> tuple[str, int | None, bool, bool]:
    model = body.get("model")
    if model is None:
        raise RequestError(400, "model: field required", param="model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model: must be a non-empty string", param="model")

    max_tokens: int | None = None
    # Chat accepts the newer max_completion_tokens too; vLLM prefers it.
    for field in max_tokens_fields:
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value):
            raise RequestError(400, f"{field}: must be an integer, got {value!r}", param=field)
        if value < 1:
            raise RequestError(400, f"{field} must be at least 1, got {value}.", param=field)
        if max_tokens is None:
            max_tokens = value

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream: must be a boolean, got {stream!r}", param="stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise RequestError(400, "Stream options (`stream_options`) can only be defined when `stream=True`.",
                               param="stream_options")
        if not isinstance(options, dict):
            raise RequestError(400, "stream_options: must be an object", param="stream_options")
        flag = options.get("include_usage", False)
        if flag is not None and not isinstance(flag, bool):
            raise RequestError(400, "stream_options.include_usage: must be a boolean",
                               param="stream_options.include_usage")
        include_usage = bool(flag)

    n = body.get("n", 1)
    if n is not None and n != 1:
        # One sequence per request keeps the load model simple; clients rarely ask.
        raise RequestError(400, f"n: only n=1 is supported by the sim engine, got {n!r}", param="n")
    return model, max_tokens, stream, include_usage


def _content_tokens(content: object, where: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content)
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RequestError(400, f"{where}[{j}]: must be an object with a 'type'",
                                   param=f"{where}[{j}]")
            text = part.get("text")
            if part["type"] == "text":
                if not isinstance(text, str):
                    raise RequestError(400, f"{where}[{j}].text: must be a string",
                                       param=f"{where}[{j}].text")
                total += count_text_tokens(text)
            # Non-text parts (images, audio) cost nothing here: sim has no encoder.
        return total
    raise RequestError(400, f"{where}: must be a string, a list of content parts or null",
                       param=where)


def parse_chat_request(body: dict[str, Any]) -> GenerationRequest:
    """Validate a /v1/chat/completions body; ``RequestError`` names the bad field."""
    model, max_tokens, stream, include_usage = _common(
        body, ("max_completion_tokens", "max_tokens"))
    messages = body.get("messages")
    if messages is None:
        raise RequestError(400, "messages: field required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages: must be a non-empty list of message objects",
                           param="messages")
    tokens = TOKENS_REPLY_PRIMING
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(400, f"{where}: must be an object", param=where)
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(400, f"{where}.role: field required (a string)", param=f"{where}.role")
        tokens += TOKENS_PER_MESSAGE + _content_tokens(msg.get("content"), f"{where}.content")
        if msg.get("name"):
            tokens += TOKENS_PER_NAME
        if msg.get("tool_calls"):
            tokens += count_text_tokens(json.dumps(msg["tool_calls"]))
    user = [m for m in messages if m.get("role") == "user"]
    whole = " ".join(f"<|{m['role']}|> {_text(m.get('content'))}" for m in messages)
    return GenerationRequest("chat", model, tokens, max_tokens, stream, include_usage,
                             _text(user[-1].get("content")) if user else "", _chat_logprobs(body), whole)


def _text(content: object) -> str:
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


def _top(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOGPROBS:
        raise RequestError(400, f"{field}: must be an integer within 0..{MAX_LOGPROBS}, got {value!r}", param=field)
    return value


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat: ``logprobs: true``, with ``top_logprobs`` alternatives per token."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise RequestError(400, f"logprobs: must be a boolean, got {wanted!r}", param="logprobs")
    if top is not None and not wanted:
        raise RequestError(400, "top_logprobs: needs logprobs set to true", param="top_logprobs")
    return (_top(top, "top_logprobs") if top is not None else 0) if wanted else None


def parse_completion_request(body: dict[str, Any]) -> GenerationRequest:
    """Validate a /v1/completions body; ``RequestError`` names the bad field."""
    model, max_tokens, stream, include_usage = _common(body, ("max_tokens",))
    prompt = body.get("prompt")
    if prompt is None:
        raise RequestError(400, "prompt: field required", param="prompt")
    # OpenAI allows a string, token ids, or a batch of either; sim serves one
    # sequence per request, so a batch must have exactly one element.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = count_text_tokens(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        tokens = len(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise RequestError(400, "prompt: batched prompts are not supported by the sim engine; "
                                "send one prompt per request", param="prompt")
    else:
        raise RequestError(400, "prompt: must be a string or a list of token ids", param="prompt")
    if tokens == 0:
        raise RequestError(400, "prompt: must not be empty", param="prompt")
    wanted = body.get("logprobs")
    return GenerationRequest("completion", model, tokens, max_tokens, stream, include_usage,
                             prompt if isinstance(prompt, str) else "",
                             None if wanted is None else _top(wanted, "logprobs"),
                             prompt if isinstance(prompt, str) else " ".join(map(str, prompt)))


def check_context_length(req: GenerationRequest, max_model_len: int) -> None:
    """Reject prompts that cannot fit, with vLLM's wording (400)."""
    what = "messages" if req.kind == "chat" else "prompt"
    if req.max_tokens is None:
        if req.prompt_tokens >= max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your request has {req.prompt_tokens} input tokens. Please reduce the length "
                f"of the input {what}.", param=what)
    elif req.prompt_tokens + req.max_tokens > max_model_len:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {req.prompt_tokens + req.max_tokens} tokens ({req.prompt_tokens} in the "
            f"{what}, {req.max_tokens} in the completion). Please reduce the length of the "
            f"{what} or completion.", param=what)


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------

def _alternatives(token: str, logprob: float, k: int) -> list[tuple[str, float]]:
    """The sampled token and k - 1 less likely ones sharing what probability is left."""
    rest = max(1e-9, 1.0 - math.exp(logprob))
    others = [w for w in (" " + w for w in _FILLER_WORDS) if w != token][:max(0, k - 1)]
    return [(token, logprob)] + [(w, math.log(rest / (j + 2))) for j, w in enumerate(others)]


def chat_logprobs(tokens: Sequence[str], logprobs: Sequence[float], top: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one stream chunk)."""
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in _alternatives(t, lp, top)]
                                                         if top else []}
                        for t, lp in zip(tokens, logprobs, strict=True)]}


def completion_logprobs(tokens: Sequence[str], logprobs: Sequence[float], top: int,
                        offset: int = 0) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion (or of one stream chunk); ``offset``
    is where the first token starts in the whole text."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": list(tokens), "token_logprobs": list(logprobs),
            "top_logprobs": [dict(_alternatives(t, lp, top)) for t, lp in zip(tokens, logprobs, strict=True)]
            if top else None,
            "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI usage object."""
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def chat_response(rid: str, created: int, model: str, text: str, finish_reason: str,
                  prompt_tokens: int, completion_tokens: int, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Non-streaming ``chat.completion`` object."""
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": text, "tool_calls": []},
                     "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_response(rid: str, created: int, model: str, text: str, finish_reason: str,
                        prompt_tokens: int, completion_tokens: int,
                        logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Non-streaming ``text_completion`` object."""
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                     "finish_reason": finish_reason, "stop_reason": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


class StreamEncoder:
    """Builds the server-sent events of one streamed response, vLLM style.

    Chat: a first chunk with ``delta: {role: assistant, content: ""}``, one chunk
    per token, the last token's chunk carrying ``finish_reason`` (as vLLM does),
    then optionally a usage chunk with empty ``choices``, then ``data: [DONE]``.
    Token chunks are assembled from precomputed JSON fragments because they are
    the hot path when many streams run at once.
    """

    __slots__ = ("_head", "_obj", "created", "kind", "model", "rid")

    def __init__(self, kind: RequestKind, rid: str, created: int, model: str) -> None:
        self.kind = kind
        self.rid = rid
        self.created = created
        self.model = model
        self._obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self._head = ('data: {"id":' + json.dumps(rid) + ',"object":"' + self._obj
                      + '","created":' + str(created) + ',"model":' + json.dumps(model)
                      + ',"choices":[{"index":0,')

    def role_chunk(self) -> str:
        """The chat stream's opening chunk (empty for completions)."""
        if self.kind != "chat":
            return ""
        return (self._head + '"delta":{"role":"assistant","content":""},'
                '"logprobs":null,"finish_reason":null}]}\n\n')

    def token_chunk(self, i: int, finish_reason: str | None = None) -> str:
        """The chunk carrying generated token ``i``."""
        tok = filler_token_json(i)
        fr = "null" if finish_reason is None else '"' + finish_reason + '"'
        if self.kind == "chat":
            return (self._head + '"delta":{"content":' + tok + '},"logprobs":null,'
                    '"finish_reason":' + fr + ',"stop_reason":null}]}\n\n')
        return (self._head + '"text":' + tok + ',"logprobs":null,"finish_reason":' + fr
                + ',"stop_reason":null}]}\n\n')

    def token_chunk_with(self, token: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> str:
        """A token chunk with any text and its logprobs (the slower path: answer quality or
        logprobs asked for)."""
        choice: dict[str, Any] = {"index": 0}
        if self.kind == "chat":
            choice["delta"] = {"content": token}
        else:
            choice["text"] = token
        choice.update(logprobs=logprobs, finish_reason=finish_reason, stop_reason=None)
        chunk = {"id": self.rid, "object": self._obj, "created": self.created, "model": self.model,
                 "choices": [choice]}
        return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        """The ``include_usage`` chunk: empty choices plus usage."""
        chunk = {"id": self.rid, "object": self._obj, "created": self.created,
                 "model": self.model, "choices": [],
                 "usage": usage(prompt_tokens, completion_tokens)}
        return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n"

    @staticmethod
    def done() -> str:
        """The stream terminator."""
        return "data: [DONE]\n\n"
