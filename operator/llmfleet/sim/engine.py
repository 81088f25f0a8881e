"""The load model: a continuous-batching scheduler shaped like vLLM's.

One asyncio task runs the scheduler. Each iteration ("step"):

1. If the running sequences could not all grow by one token, preempt the most
   recently admitted ones back to the front of the queue (vLLM's recompute
   preemption: their KV is dropped and recomputed on readmission).
2. Admit waiting sequences first-come-first-served while fewer than
   ``max_num_seqs`` run and the sequence's prompt (plus tokens it already
   generated before a preemption) fits in the free KV cache. The head of the
   queue blocks the rest, as in vLLM's FCFS policy.
3. Sleep for the step's model time times ``time_scale``: prefill of the newly
   admitted tokens at ``prefill_tokens_per_second`` plus one decode pass that
   costs ``decode_step_ms + decode_step_ms_per_seq * batch_size``.
4. Every running sequence emits one token (the first token comes out of the
   prefill step, as on a GPU). Sequences that reached their length finish and
   free their KV.

TTFT therefore grows with queueing and with the prefill of everything admitted in
the same step, and inter-token latency grows with batch size: an overloaded
replica is visibly slower, which is what the autoscaler and router must notice.

A sequence holds ``prompt + generated`` tokens of KV cache while running.

With ``enable_prefix_caching`` (vLLM's automatic prefix caching), the full 16-token
blocks of every admitted prompt (and of a chat's answer, once it ends) stay in the cache,
named by a hash chained over the prompt (protocol.prefix_blocks); a later prompt's
leading blocks found there skip prefill (at least its last token is computed, as in
vLLM). Cached blocks live in the KV memory running sequences do not use (and in the
running prompts' own blocks): when that shrinks, the least recently used go.
``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` count prompt tokens looked
up and found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict, deque

from llmfleet.sim.config import SimConfig
from llmfleet.sim.metrics import EngineState, SimMetrics
from llmfleet.sim.protocol import PREFIX_BLOCK_TOKENS

log = logging.getLogger(__name__)

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"

# Scheduler lag (seconds) that later steps may make up for; beyond it time restarts.
_MAX_CATCH_UP = 0.005


class Sequence:
    """One request inside the engine."""

    __slots__ = (
        "arrival",
        "blocks",
        "finish_reason",
        "first_token_time",
        "generated",
        "kv_held",
        "last_token_time",
        "prompt_tokens",
        "scheduled",
        "state",
        "stream",
        "target_reason",
        "target_tokens",
        "waiter",
    )

    def __init__(self, prompt_tokens: int, target_tokens: int, target_reason: str,
                 stream: bool, arrival: float, blocks: tuple[int, ...] = ()) -> None:
        self.prompt_tokens = prompt_tokens
        self.blocks = blocks                  # the prompt's full KV blocks (prefix caching)
        self.target_tokens = target_tokens    # tokens generated before it finishes
        self.target_reason = target_reason    # finish_reason once it gets there
        self.stream = stream                  # wake the handler on every token?
        self.arrival = arrival
        self.scheduled: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time = 0.0
        self.generated = 0
        self.kv_held = 0
        self.state = WAITING
        self.finish_reason: str | None = None
        self.waiter: asyncio.Future[None] | None = None

    @property
    def finished(self) -> bool:
        """True once the sequence generated all its tokens or was aborted."""
        return self.state is FINISHED


class PrefixCache:
    """Cached KV blocks by hash, least recently used first."""

    def __init__(self) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: tuple[int, ...]) -> int:
        """How many of ``blocks``, from the first, are cached (those are used again)."""
        n = 0
        for block in blocks:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            n += 1
        return n

    def keep(self, blocks: tuple[int, ...], room: int) -> None:
        """Cache ``blocks`` (just computed), then evict down to ``room`` blocks."""
        for block in blocks:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        self.shrink(room)

    def shrink(self, room: int) -> None:
        while len(self._blocks) > max(0, room):
            self._blocks.popitem(last=False)


class Simulator:
    """Scheduler, KV-cache accounting and token emission for one replica."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.metrics = SimMetrics(config.model_name, self.state, serve_as=config.serve_as)
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._kv_used = 0
        self.prefix_cache = PrefixCache() if config.enable_prefix_caching else None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._deadline = 0.0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="llmfleet-sim-scheduler")

    async def close(self) -> None:
        """Stop scheduling and abort every sequence so their handlers return."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in [*self._waiting, *self._running]:
            self.abort(seq)

    # -- state -------------------------------------------------------------

    def state(self) -> EngineState:
        """Running/waiting counts and KV usage right now (for /metrics)."""
        return EngineState(len(self._running), len(self._waiting),
                           self._kv_used / self.config.kv_cache_tokens)

    @property
    def num_running(self) -> int:
        """Sequences in the batch."""
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Sequences queued for admission."""
        return len(self._waiting)

    @property
    def kv_used_tokens(self) -> int:
        """KV-cache tokens held by running sequences."""
        return self._kv_used

    # -- requests ----------------------------------------------------------

    def plan_output(self, prompt_tokens: int, max_tokens: int | None) -> tuple[int, str]:
        """How many tokens a request generates and the finish_reason it ends with.

        With ``max_tokens`` the sim always generates exactly that many ("length"),
        which keeps load tests predictable. Without it the length is drawn from
        ``--output-tokens`` and ends with "stop", unless the context window cuts it.
        """
        if max_tokens is not None:
            return max_tokens, "length"
        room = self.config.max_model_len - prompt_tokens
        want = self.config.output_tokens.sample(self.rng)
        return (room, "length") if want > room else (want, "stop")

    def submit(self, prompt_tokens: int, target_tokens: int, target_reason: str, *,
               stream: bool, blocks: tuple[int, ...] = ()) -> Sequence:
        """Queue a sequence; the caller awaits :meth:`wait` for its tokens. ``blocks``:
        its prompt's KV blocks (protocol.prefix_blocks), for the prefix cache.

        Times are ``time.monotonic()``, the clock asyncio's loop uses too.
        """
        seq = Sequence(prompt_tokens, target_tokens, target_reason, stream, time.monotonic(), blocks)
        self._waiting.append(seq)
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        return seq

    async def wait(self, seq: Sequence, seen: int = 0) -> None:
        """Return once ``seq`` has more than ``seen`` tokens (streams) or finished."""
        while not seq.finished and (not seq.stream or seq.generated <= seen):
            fut = asyncio.get_running_loop().create_future()
            seq.waiter = fut
            await fut

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence (client went away, shutdown), freeing its slot and KV."""
        if seq.state is WAITING:
            with contextlib.suppress(ValueError):
                self._waiting.remove(seq)
        elif seq.state is RUNNING:
            with contextlib.suppress(ValueError):
                self._running.remove(seq)
            self._kv_used -= seq.kv_held
            seq.kv_held = 0
        else:
            return
        self._finish(seq, "abort", time.monotonic())

    # -- scheduler ---------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        scale = self.config.time_scale
        while True:
            if not self._waiting and not self._running:
                self._idle = loop.create_future()
                await self._idle
                self._idle = None
                continue
            now = time.monotonic()
            model_seconds = self.begin_step(now)
            if not self._running:
                await asyncio.sleep(0)  # everything queued was aborted meanwhile
                continue
            if scale > 0:
                step = model_seconds * scale
                # Deadlines chain from the previous one so the loop's wake-up
                # latency (epoll rounds timeouts up to whole milliseconds) does not
                # stretch every step: the next step absorbs the lag. If we fell
                # further behind (a CPU stall), restart from now rather than
                # emitting a burst of free steps.
                if now - self._deadline > max(step, _MAX_CATCH_UP):
                    self._deadline = now + step
                else:
                    self._deadline += step
                await asyncio.sleep(self._deadline - time.monotonic())
            else:
                await asyncio.sleep(0)  # no model time, but let the handlers run
            self.end_step(time.monotonic())

    def begin_step(self, now: float) -> float:
        """Preempt and admit for one step; return the step's model time in seconds.

        Public so tests can drive the scheduler deterministically without the task.
        """
        cfg = self.config
        self._make_room()
        prefill_tokens = self._admit(now)
        batch = len(self._running)
        if batch == 0:
            return 0.0
        return (prefill_tokens / cfg.prefill_tokens_per_second
                + (cfg.decode_step_ms + cfg.decode_step_ms_per_seq * batch) / 1000)

    def _make_room(self) -> None:
        capacity = self.config.kv_cache_tokens
        running = self._running
        while running and self._kv_used + len(running) > capacity:
            victim = running.pop()
            self._kv_used -= victim.kv_held
            victim.kv_held = 0
            victim.state = WAITING
            self._waiting.appendleft(victim)
            self.metrics.num_preemptions += 1

    def _admit(self, now: float) -> int:
        cfg = self.config
        waiting, running = self._waiting, self._running
        # Keep one slot per already-running sequence for the token it emits this step.
        free = cfg.kv_cache_tokens - self._kv_used - len(running)
        prefill = 0
        while waiting and len(running) < cfg.max_num_seqs:
            seq = waiting[0]
            need = seq.prompt_tokens + seq.generated  # recompute after a preemption
            if need + 1 > free:
                break
            waiting.popleft()
            running.append(seq)
            seq.state = RUNNING
            seq.kv_held = need
            self._kv_used += need
            free -= need + 1
            if seq.scheduled is None:
                seq.scheduled = now
                self.metrics.request_queue_time.observe(now - seq.arrival)
                need -= self._cached_prefix(seq)
            prefill += need
        return prefill

    def _cached_prefix(self, seq: Sequence) -> int:
        """On a prompt's first admission: the tokens the prefix cache saves it (and its
        blocks cached for the next prompts)."""
        cache = self.prefix_cache
        if cache is None:
            return 0
        hit = min(cache.match(seq.blocks) * PREFIX_BLOCK_TOKENS, seq.prompt_tokens - 1)
        self.metrics.prefix_cache_queries += seq.prompt_tokens
        self.metrics.prefix_cache_hits += hit
        cache.keep(seq.blocks, self._cache_room())
        return hit

    def cache_blocks(self, blocks: tuple[int, ...]) -> None:
        """Keep the blocks of a finished chat's prompt and answer (its KV, computed)."""
        if self.prefix_cache is not None:
            self.prefix_cache.keep(blocks, self._cache_room())

    def _cache_room(self) -> int:
        """Blocks the prefix cache may hold: the KV memory running sequences do not use, and
        the running prompts' own blocks (in use and cached at once, as vLLM shares them)."""
        free = (self.config.kv_cache_tokens - self._kv_used) // PREFIX_BLOCK_TOKENS
        return free + sum(len(seq.blocks) for seq in self._running)

    def end_step(self, now: float) -> None:
        """Every running sequence emits one token; finished ones leave the batch."""
        m = self.metrics
        ttft, itl = m.time_to_first_token, m.inter_token_latency
        still: list[Sequence] = []
        running = self._running
        m.generation_tokens += len(running)
        self._kv_used += len(running)
        if self.prefix_cache is not None:
            self.prefix_cache.shrink(self._cache_room())
        for seq in running:
            seq.generated += 1
            seq.kv_held += 1
            if seq.first_token_time is None:
                seq.first_token_time = now
                ttft.observe(now - seq.arrival)
                m.prompt_tokens += seq.prompt_tokens
            else:
                itl.observe(now - seq.last_token_time)
            seq.last_token_time = now
            if seq.generated >= seq.target_tokens:
                self._kv_used -= seq.kv_held
                seq.kv_held = 0
                self._finish(seq, seq.target_reason, now)
            else:
                still.append(seq)
                w = seq.waiter
                if seq.stream and w is not None:
                    seq.waiter = None
                    if not w.done():
                        w.set_result(None)
        self._running = still

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        seq.state = FINISHED
        seq.finish_reason = reason
        m = self.metrics
        m.request_success[reason] += 1
        m.e2e_request_latency.observe(now - seq.arrival)
        w = seq.waiter
        if w is not None:
            seq.waiter = None
            if not w.done():
                w.set_result(None)
