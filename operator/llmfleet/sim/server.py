"""``llmfleet sim``: an OpenAI-compatible HTTP server backed by the simulated engine.

Endpoints (as vLLM serves them): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (with and without ``stream: true``), ``GET /health``
and ``GET /metrics``.

Model loading: with ``--load-seconds T`` the replica spends T model seconds (T x
``--time-scale`` wall seconds) "loading weights" after it starts listening: ``/health``
answers 503 and generation requests 503 until then, so a readiness probe keeps the
replica out of the routes and a scale-up is not free, as with a real engine.

Shutdown, as vLLM does it with ``--shutdown-timeout`` set:
SIGTERM (what the kubelet sends after a pod's preStop hook) starts a drain: the
listener closes, a request that still arrives on an open connection is answered 503
with ``Connection: close`` (``/health`` too), and requests already being served
(streams included) run to completion, for up to ``--shutdown-timeout`` model seconds
(scaled by ``--time-scale``); then what is left is aborted and the process exits.
SIGINT (Ctrl-C) stops at once, and also cuts a drain short.

Failure injection, for testing routing and supervision:

* ``--error-rate p``: a fraction p of valid generation requests is answered 500
  (OpenAI error shape) instead of being scheduled.
* ``--hang-rate p``: a fraction p never gets an answer (the connection stays open
  until the client gives up); hung requests do not occupy the batch.
* ``--crash-after N``: once N generation requests have been answered (successfully
  or with an error), the process exits with status 1 via ``os._exit`` - no cleanup,
  like a crashed engine - so a supervisor sees a dead replica.

Run in-process (tests, benches) with :func:`start_sim`; as a program with
:func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from llmfleet.sim.config import SERVE_AS, OutputLength, SimConfig
from llmfleet.sim.engine import Sequence as EngineSequence
from llmfleet.sim.engine import Simulator
from llmfleet.sim.protocol import (
    GenerationRequest,
    RequestError,
    StreamEncoder,
    chat_logprobs,
    chat_response,
    check_context_length,
    completion_logprobs,
    completion_response,
    error_body,
    filler_text,
    filler_token,
    parse_chat_request,
    parse_completion_request,
    parse_json_body,
    prefix_blocks,
)
from llmfleet.sim.quality import ANSWER_TOKENS, QualityModel, load_dataset

log = logging.getLogger("llmfleet.sim")

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(),
                        status=status, content_type=_JSON)


class SimServer:
    """One sim replica: the engine plus its aiohttp application.

    ``exit_fn`` is what ``--crash-after`` calls; tests replace ``os._exit`` with a
    recorder so the crash path can be checked without killing pytest.
    """

    def __init__(self, config: SimConfig, *, exit_fn: Callable[[int], Any] = os._exit) -> None:
        self.config = config
        self.engine = Simulator(config)
        self.port: int = config.port
        self.crashed = False
        self._exit_fn = exit_fn
        self._names = frozenset(config.served_model_names)
        self._adapters: dict[str, str] = {}  # LoRA adapters loaded at runtime: name -> path
        # A separate stream from the engine's, so turning faults on does not change
        # the output lengths a seed produces.
        seed = config.seed
        self._fault_rng = random.Random(None if seed is None else f"{seed}/faults")
        self._answered = 0
        self._hanging: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._in_flight = 0  # generation requests being handled
        self._idle = asyncio.Event()  # set whenever _in_flight drops to 0
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())
        self._loaded_at = 0.0  # monotonic time the simulated model load ends (set by start)
        self.quality = None if config.accuracy is None else QualityModel(
            config.accuracy, config.confidence_noise, seed=config.model_name,
            dataset=load_dataset(config.prompt_dataset) if config.prompt_dataset else None)
        self.app = self._build_app()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` for OpenAI clients (127.0.0.1 for wildcard hosts)."""
        host = self.config.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler and listen (``port`` 0 picks a free port)."""
        self._loaded_at = time.monotonic() + self.config.load_seconds * self.config.time_scale
        self.engine.start()
        # handler_cancellation: a client that disconnects cancels its handler, which
        # aborts the sequence and frees its batch slot, as vLLM does.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def drain_seconds(self) -> float:
        """Wall seconds :meth:`drain` waits at most: ``--shutdown-timeout`` scaled by ``--time-scale``."""
        return self.config.shutdown_timeout * self.config.time_scale

    async def _stop_taking_work(self) -> None:
        self._stopping = True
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()

    async def drain(self) -> bool:
        """Stop taking work and wait up to :attr:`drain_seconds` for the generation
        requests in flight (streams included) to finish; True if they all did.

        :meth:`stop` ends the server afterwards, aborting whatever is left; cancelling a
        drain is safe.
        """
        await self._stop_taking_work()
        if self._in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), self.drain_seconds)
            except TimeoutError:
                log.warning("shutdown timeout: aborting %d request(s) still in flight", self._in_flight)
        return self._in_flight == 0

    async def stop(self) -> None:
        """Stop listening, end in-flight requests and the scheduler (:meth:`drain` first to let them finish)."""
        await self._stop_taking_work()
        for fut in list(self._hanging):
            if not fut.done():
                fut.set_exception(RequestError(503, "The server is shutting down."))
        await self.engine.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- app ---------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._close_when_stopping, self._error_middleware],
                              client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/health", self._health)
        if self.config.serve_as == "triton":
            app.router.add_get("/health/ready", self._health)  # Triton's OpenAI frontend
        app.router.add_get("/metrics", self._metrics)
        if self.config.enable_lora:
            app.router.add_post("/v1/load_lora_adapter", self._load_lora_adapter)
            app.router.add_post("/v1/unload_lora_adapter", self._unload_lora_adapter)
        return app

    @web.middleware
    async def _close_when_stopping(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # While draining, a connection that is still open answers once more (503 for new
        # work) and closes. aiohttp's own pre_shutdown() would instead leave idle
        # keep-alive connections open but deaf until the very end.
        response = await handler(request)
        if self._stopping and not response.prepared:
            response.force_close()
        return response

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Every failure leaves as OpenAI-shaped JSON; a stack trace stays in our log.
        try:
            return await handler(request)
        except RequestError as exc:
            return _json_response(exc.body(), exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json_response(error_body(exc.status, exc.reason), exc.status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            return _json_response(error_body(500, "Internal server error"), 500)

    @property
    def loading(self) -> bool:
        """True while the simulated model load (``--load-seconds``) is still under way."""
        return time.monotonic() < self._loaded_at

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.loading or self._stopping else 200)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": self._created, "owned_by": "vllm",
                 "root": self.config.model_name, "parent": None,
                 "max_model_len": self.config.max_model_len}
                for name in self.config.served_model_names]
        data += [{"id": name, "object": "model", "created": self._created, "owned_by": "vllm", "root": path,
                  "parent": self.config.model_name, "max_model_len": self.config.max_model_len}
                 for name, path in self._adapters.items()]
        return _json_response({"object": "list", "data": data})

    async def _load_lora_adapter(self, request: web.Request) -> web.Response:
        # vLLM's answers (entrypoints/openai/serving_models.py): 400 for a missing field or an
        # adapter already loaded, plain-text success.
        body = parse_json_body(await request.read())
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            raise RequestError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self._adapters or name in self._names:
            raise RequestError(400, f"The lora adapter '{name}' has already been loaded.")
        self._adapters[name] = path
        log.info("loaded LoRA adapter %s from %s", name, path)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora_adapter(self, request: web.Request) -> web.Response:
        body = parse_json_body(await request.read())
        name = body.get("lora_name")
        if not name:
            raise RequestError(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        if self._adapters.pop(name, None) is None:
            raise RequestError(404, f"The lora adapter '{name}' cannot be found.")
        log.info("unloaded LoRA adapter %s", name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.engine.metrics.registry),
                            headers={"Content-Type": content_type})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_chat_request)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_completion_request)

    # -- generation --------------------------------------------------------

    async def _generate(self, request: web.Request,
                        parse: Callable[[dict[str, Any]], GenerationRequest]) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._serve_generation(request, parse)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _serve_generation(self, request: web.Request,
                                parse: Callable[[dict[str, Any]], GenerationRequest]) -> web.StreamResponse:
        cfg = self.config
        try:
            if self._stopping:
                raise RequestError(503, "The server is shutting down.")
            if self.loading:
                raise RequestError(503, "The model is still loading.")
            req = parse(parse_json_body(await request.read()))
            if req.model not in self._names and req.model not in self._adapters:
                raise RequestError(404, f"The model `{req.model}` does not exist.", param="model")
            check_context_length(req, cfg.max_model_len)
            if cfg.error_rate or cfg.hang_rate:
                r = self._fault_rng.random()
                if r < cfg.error_rate:
                    if cfg.error_status == 429:
                        raise RequestError(429, "Simulated overload (--error-rate, --error-status 429).",
                                           err_type="TooManyRequestsError")
                    raise RequestError(cfg.error_status, "Simulated engine failure (--error-rate).")
                if r < cfg.error_rate + cfg.hang_rate:
                    await self._hang()
        except RequestError as exc:
            return await self._answer(request, _json_response(exc.body(), exc.status))

        output = self._plan(req)
        blocks = prefix_blocks(req.whole_text) if self.config.enable_prefix_caching else ()
        seq = self.engine.submit(req.prompt_tokens, output.tokens, output.reason, stream=req.stream, blocks=blocks)
        try:
            if req.stream:
                resp = await self._stream(request, req, seq, output)
            else:
                await self.engine.wait(seq)
                resp = self._full_response(req, seq, output)
        finally:
            # Reached with an unfinished sequence only when the client went away
            # (handler cancelled, write failed): free its slot.
            if not seq.finished:
                self.engine.abort(seq)
        if blocks and req.kind == "chat" and seq.finish_reason != "abort":
            # The answer's KV stays cached too: the next turn sends it back in its history.
            self.engine.cache_blocks(prefix_blocks(f"{req.whole_text} <|assistant|> {output.text(seq.generated)}"))
        return await self._answer(request, resp)

    def _new_id(self, kind: str) -> str:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return f"{prefix}{self._id_prefix}{next(self._ids):010x}"

    def _plan(self, req: GenerationRequest) -> Output:
        """How long the answer is, how it ends, and (with answer quality) what it says."""
        if self.quality is None:
            return Output(*self.engine.plan_output(req.prompt_tokens, req.max_tokens), req)
        # A model answers at its own length (reasoning, then "Ans: ...") and is cut
        # short only when max_tokens or the context window is smaller.
        tokens, reason = self.engine.plan_output(req.prompt_tokens, None)
        tokens = max(tokens, ANSWER_TOKENS) if reason == "stop" else tokens
        if req.max_tokens is not None and req.max_tokens < tokens:
            tokens, reason = req.max_tokens, "length"
        return Output(tokens, reason, req, self.quality)

    def _full_response(self, req: GenerationRequest, seq: EngineSequence, output: Output) -> web.Response:
        if seq.finish_reason == "abort":
            return _json_response(error_body(503, "The server is shutting down."), 503)
        build = chat_response if req.kind == "chat" else completion_response
        n = seq.generated
        logprobs = None
        if req.logprobs is not None:
            tokens = [output.token(i) for i in range(n)]
            values = [output.logprob(i) for i in range(n)]
            logprobs = (chat_logprobs(tokens, values, req.logprobs) if req.kind == "chat"
                        else completion_logprobs(tokens, values, req.logprobs))
        return _json_response(build(self._new_id(req.kind), int(time.time()), req.model, output.text(n),
                                    seq.finish_reason or "stop", seq.prompt_tokens, n, logprobs))

    async def _stream(self, request: web.Request, req: GenerationRequest,
                      seq: EngineSequence, output: Output) -> web.StreamResponse:
        enc = StreamEncoder(req.kind, self._new_id(req.kind), int(time.time()), req.model)
        resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await resp.prepare(request)
        sent = 0
        try:
            while True:
                await self.engine.wait(seq, sent)
                n = seq.generated
                aborted = seq.finish_reason == "abort"
                parts: list[str] = []
                if n > sent and not aborted:
                    if sent == 0:
                        parts.append(enc.role_chunk())
                    # vLLM puts finish_reason on the chunk of the last token.
                    last = seq.finish_reason if seq.finished else None
                    if output.plain:
                        parts.extend(enc.token_chunk(i) for i in range(sent, n - 1))
                        parts.append(enc.token_chunk(n - 1, last))
                    else:
                        parts.extend(output.chunk(enc, i, last if i == n - 1 else None) for i in range(sent, n))
                    sent = n
                if seq.finished:
                    if aborted:
                        break  # shutdown: end the stream without [DONE], like a dying server
                    if req.include_usage:
                        parts.append(enc.usage_chunk(seq.prompt_tokens, seq.generated))
                    parts.append(enc.done())
                    await resp.write("".join(parts).encode())
                    break
                await resp.write("".join(parts).encode())
            await resp.write_eof()
        except ConnectionResetError:
            pass  # client gone; the caller aborts the sequence
        return resp

    async def _hang(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hanging.add(fut)
        try:
            await fut
        finally:
            self._hanging.discard(fut)

    async def _answer(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """Count a generation answer; the ``--crash-after``-th one takes the process down."""
        self._answered += 1
        limit = self.config.crash_after
        if limit is not None and self._answered >= limit:
            # Send this answer first so the client that completes the count is served.
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write_eof()
            self.crashed = True
            log.error("--crash-after %d reached: exiting without cleanup", limit)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            self._exit_fn(1)
        return resp


class Output:
    """One request's generated tokens: filler, or with answer quality, filler reasoning
    that ends in the answer (when the model got to finish), and each token's logprob."""

    def __init__(self, tokens: int, reason: str, req: GenerationRequest,
                 quality: QualityModel | None = None) -> None:
        self.tokens, self.reason, self.req, self.quality = tokens, reason, req, quality
        self.answer = quality.answer(req.prompt_text) if quality is not None else None
        # Where the answer starts: only a completion that was not cut short carries one.
        self._answer_at = tokens - ANSWER_TOKENS if self.answer is not None and reason == "stop" else tokens
        self.plain = quality is None and req.logprobs is None  # the fast path of filler chunks
        self._offset = 0  # characters streamed so far (completions' text_offset)

    def token(self, i: int) -> str:
        if self.answer is not None and i >= self._answer_at:
            return self.answer.text_tokens[i - self._answer_at]
        return filler_token(i)

    def text(self, n: int) -> str:
        if self.answer is None or n <= self._answer_at:
            return filler_text(n)
        return filler_text(self._answer_at) + "".join(self.answer.text_tokens[:n - self._answer_at])

    def logprob(self, i: int) -> float:
        if self.quality is None or self.answer is None:
            return DEFAULT_LOGPROB
        return self.quality.token_logprob(self.req.prompt_text, self.answer, i)

    def chunk(self, enc: StreamEncoder, i: int, finish_reason: str | None) -> str:
        token = self.token(i)
        logprobs = None
        if self.req.logprobs is not None:
            value = self.logprob(i)
            logprobs = (chat_logprobs([token], [value], self.req.logprobs) if self.req.kind == "chat"
                        else completion_logprobs([token], [value], self.req.logprobs, self._offset))
        self._offset += len(token)
        return enc.token_chunk_with(token, logprobs, finish_reason)


DEFAULT_LOGPROB = math.log(0.98)  # without answer quality: a model sure of every token


async def start_sim(config: SimConfig, *, exit_fn: Callable[[int], Any] = os._exit) -> SimServer:
    """Start a sim replica on the running event loop; ``await server.stop()`` ends it."""
    server = SimServer(config, exit_fn=exit_fn)
    await server.start()
    return server


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _output_length(text: str) -> OutputLength:
    try:
        return OutputLength.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "llmfleet sim") -> argparse.ArgumentParser:
    """The ``llmfleet sim`` flags (vLLM's names where vLLM has the same knob)."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Simulated OpenAI-compatible LLM server that behaves like a GPU "
                    "server under load (continuous batching, KV cache, vLLM metrics).")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    p.add_argument("--served-model-name", nargs="+", metavar="NAME", default=None,
                   help=f"model name(s) the server answers to (default {d.model_name})")
    p.add_argument("--model", default=None,
                   help="accepted for vLLM compatibility; the served name when "
                        "--served-model-name is not given")
    p.add_argument("--serve-as", choices=SERVE_AS, default=d.serve_as,
                   help="the server to stand in for: vllm, or triton (Triton's OpenAI frontend with its vLLM "
                        "backend: /health/ready, Triton's series and vLLM's counters and histograms, no "
                        "load gauges) (default %(default)s)")
    g = p.add_argument_group("load model")
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs,
                   help="max running sequences in the batch (default %(default)s)")
    g.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens,
                   help="KV-cache capacity in tokens; a sequence holds prompt+generated "
                        "tokens (default %(default)s)")
    g.add_argument("--prefill-tokens-per-second", type=float, default=d.prefill_tokens_per_second,
                   help="prompt processing speed (default %(default)s)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=d.enable_prefix_caching,
                   help="vLLM's automatic prefix caching: a prompt's leading 16-token blocks still in the KV "
                        "cache from an earlier request skip prefill; cached blocks are evicted, least "
                        "recently used first, as running sequences need the room (default: off)")
    g.add_argument("--decode-step-ms", type=float, default=d.decode_step_ms,
                   help="base model time of one decode step for the whole batch (default %(default)s)")
    g.add_argument("--decode-step-ms-per-seq", type=float, default=d.decode_step_ms_per_seq,
                   help="added to each decode step per running sequence (default %(default)s)")
    g.add_argument("--max-model-len", type=int, default=d.max_model_len,
                   help="context window: prompt + completion tokens (default %(default)s)")
    g.add_argument("--output-tokens", type=_output_length, default=d.output_tokens,
                   help="output length when a request sets no max_tokens: N, uniform:LOW:HIGH "
                        "or normal:MEAN:STD (default %(default)s)")
    g.add_argument("--time-scale", type=float, default=d.time_scale,
                   help="wall seconds per model second: 0.1 runs 10x faster than real time, "
                        "0 never sleeps (default %(default)s)")
    g.add_argument("--load-seconds", type=float, default=d.load_seconds,
                   help="model time to load the weights after start: /health and generation "
                        "answer 503 until it has passed; scaled by --time-scale (default %(default)s)")
    g.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout,
                   help="on SIGTERM, model time to let in-flight requests finish while new ones are "
                        "refused, then abort the rest; 0 aborts at once; scaled by --time-scale; "
                        "SIGINT never waits (default %(default)s)")
    lora = p.add_argument_group("LoRA adapters")
    lora.add_argument("--enable-lora", action="store_true",
                      help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter, as vLLM does with "
                           "VLLM_ALLOW_RUNTIME_LORA_UPDATING; loaded adapters answer under their names")
    lora.add_argument("--max-loras", type=int, default=d.max_loras,
                      help="accepted for vLLM's flag (default %(default)s)")
    lora.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank,
                      help="accepted for vLLM's flag (default %(default)s)")
    f = p.add_argument_group("failure injection")
    f.add_argument("--error-rate", type=float, default=d.error_rate,
                   help="fraction of requests answered with HTTP 500 (default %(default)s)")
    f.add_argument("--error-status", type=int, default=d.error_status,
                   help="HTTP status of --error-rate's failures: 429, 500, 502, 503 or 504 (default %(default)s)")
    f.add_argument("--hang-rate", type=float, default=d.hang_rate,
                   help="fraction of requests that are never answered (default %(default)s)")
    f.add_argument("--crash-after", type=int, default=None, metavar="N",
                   help="exit the process hard (status 1) after answering N requests")
    f.add_argument("--seed", type=int, default=None,
                   help="seed for output lengths and failure injection (default: random)")
    q = p.add_argument_group("answer quality (off unless --accuracy is given)")
    q.add_argument("--accuracy", type=float, default=None,
                   help="share of prompts answered correctly, on prompts of the default difficulty spread; "
                        "answers end in 'Ans: NNNN.' and logprobs carry the model's confidence")
    q.add_argument("--confidence-noise", type=float, default=d.confidence_noise,
                   help="how loosely confidence (mean token logprob) follows correctness, in logit units "
                        "(default %(default)s)")
    q.add_argument("--prompt-dataset", default=None, metavar="FILE",
                   help="JSON Lines of {prompt, answer, difficulty}: the gold answer and difficulty of the "
                        "prompts it lists (others get both from a hash of their text)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="(default %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Turn parsed flags into a validated :class:`SimConfig` (``ValueError`` if invalid)."""
    names = tuple(args.served_model_name or ([args.model] if args.model else SimConfig().served_model_names))
    return SimConfig(
        host=args.host, port=args.port, served_model_names=names, serve_as=args.serve_as,
        max_num_seqs=args.max_num_seqs, kv_cache_tokens=args.kv_cache_tokens,
        prefill_tokens_per_second=args.prefill_tokens_per_second,
        enable_prefix_caching=args.enable_prefix_caching,
        decode_step_ms=args.decode_step_ms, decode_step_ms_per_seq=args.decode_step_ms_per_seq,
        max_model_len=args.max_model_len, output_tokens=args.output_tokens,
        time_scale=args.time_scale, load_seconds=args.load_seconds,
        shutdown_timeout=args.shutdown_timeout, error_rate=args.error_rate, error_status=args.error_status,
        hang_rate=args.hang_rate, crash_after=args.crash_after, seed=args.seed, accuracy=args.accuracy,
        confidence_noise=args.confidence_noise, prompt_dataset=args.prompt_dataset,
        enable_lora=args.enable_lora, max_loras=args.max_loras, max_lora_rank=args.max_lora_rank)


async def serve(config: SimConfig) -> None:
    """Run a replica until SIGTERM (drain, then exit) or SIGINT (exit at once)."""
    server = await start_sim(config)
    # Parsed by benches and supervisors that start us with --port 0.
    print(f"llmfleet sim: serving {list(config.served_model_names)} on "
          f"{config.host}:{server.port}", flush=True)
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    async def interrupted() -> None:
        while await signals.get() != signal.SIGINT:
            pass  # a repeated SIGTERM changes nothing

    try:
        if await signals.get() == signal.SIGTERM:
            log.info("SIGTERM: draining for up to %.3g s", server.drain_seconds)
            tasks = {asyncio.ensure_future(server.drain()), asyncio.ensure_future(interrupted())}
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llmfleet sim``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
