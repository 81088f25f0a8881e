"""The autoscaling oracle: the fewest replica-seconds that would have met the SLO for a
share of a trace's requests, knowing the whole trace in advance.

Offline and pure. A replica is modelled as the sim serves: ``slots`` requests at once
(its --max-num-seqs), each taking its prefill (prompt tokens / prefill rate) and then one
decode step per output token; a step takes ``step_ms + step_ms_per_seq × slots`` (a full
batch: the conservative case). A request waits, first come first served, until a slot is
free on the replicas there are; its time to first token is that wait, its prefill and
one step. The oracle picks a replica count per bucket of time: with perfect knowledge a
replica is started one model load ahead and is Ready exactly when its bucket begins, so
only Ready replica-seconds count (the benches' ``replica_seconds``); what the early
starts cost on top is reported as ``allocated``.

The search: left to right, each bucket gets the fewest replicas with which every
request arriving in it meets the SLO (100 % where the peak count allows it); then,
while the share stays at or above the goal, the bucket whose one replica fewer costs the
fewest requests within the SLO gives it up (greedy, so an upper bound of the true
minimum: llmfleet's ratio to it is, if anything, flattering to the oracle).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaModel:
    slots: int  # --max-num-seqs
    step_ms: float  # --decode-step-ms
    step_ms_per_seq: float  # --decode-step-ms-per-seq
    prefill_tps: float  # --prefill-tokens-per-second

    @property
    def step(self) -> float:
        """Seconds per decode step at a full batch."""
        return (self.step_ms + self.step_ms_per_seq * self.slots) / 1000

    def first_token(self, prompt: int) -> float:
        return prompt / self.prefill_tps + self.step

    def service(self, prompt: int, output: int) -> float:
        return prompt / self.prefill_tps + output * self.step


Trace = Sequence[tuple[float, int, int]]  # (arrival, prompt tokens, output tokens), by arrival


def within_slo(trace: Trace, counts: Sequence[int], bucket: float, model: ReplicaModel, slo: float) -> list[bool]:
    """Per request, whether its time to first token meets ``slo`` with ``counts[b]``
    replicas during bucket b (the last count holds after the last bucket)."""
    def capacity(t: float) -> int:
        return counts[min(int(t // bucket), len(counts) - 1)] * model.slots

    running: list[float] = []  # end times
    out, earliest = [], 0.0
    for at, prompt, output in trace:
        t = max(at, earliest)  # first come, first served
        while True:
            while running and running[0] <= t:
                heapq.heappop(running)
            if len(running) < capacity(t):
                break
            boundary = (math.floor(t / bucket) + 1) * bucket
            t = min(running[0], boundary) if boundary / bucket < len(counts) else running[0]
        earliest = t
        heapq.heappush(running, t + model.service(prompt, output))
        out.append(t - at + model.first_token(prompt) <= slo)
    return out


@dataclass(frozen=True)
class Oracle:
    counts: tuple[int, ...]  # replicas per bucket
    bucket: float
    share: float  # of the trace's requests within the SLO
    replica_seconds: float  # Ready replicas, integrated
    allocated_replica_seconds: float  # plus one model load per replica started


def oracle(trace: Trace, duration: float, model: ReplicaModel, slo: float, *, goal: float = 0.95,
           min_replicas: int = 1, max_replicas: int, load_seconds: float, bucket: float = 10.0) -> Oracle:
    n = max(1, math.ceil(duration / bucket))
    counts = [min_replicas] * n
    arrivals = [int(at // bucket) for at, _, _ in trace]
    # 1. Left to right: the fewest replicas that serve every arrival of the bucket in time.
    for b in range(n):
        mine = [i for i, x in enumerate(arrivals) if x == b]
        if not mine:
            continue
        upto = trace[:mine[-1] + 1]
        while counts[b] < max_replicas and not all(within_slo(upto, counts[:b + 1], bucket, model, slo)[i]
                                                     for i in mine):
            counts[b] += 1

    def score(decrement: int | None = None) -> int:
        if decrement is not None:
            counts[decrement] -= 1
        try:
            return sum(within_slo(trace, counts, bucket, model, slo))
        finally:
            if decrement is not None:
                counts[decrement] += 1

    # 2. Give replicas back while the goal holds, the one that costs the fewest requests
    # within the SLO first (lazily: a bucket's cost is recomputed when it comes up).
    met, needed = score(), math.ceil(goal * len(trace))
    candidates = [(met - score(b), b) for b in range(n) if counts[b] > min_replicas]
    heapq.heapify(candidates)
    while candidates:
        _, b = heapq.heappop(candidates)
        kept = score(b)
        loss = met - kept
        if candidates and loss > candidates[0][0]:
            heapq.heappush(candidates, (loss, b))  # no longer the cheapest: look again later
            continue
        if kept < needed:
            continue  # the goal would not hold (and met only falls from here)
        counts[b] -= 1
        met = kept
        if counts[b] > min_replicas:
            heapq.heappush(candidates, (loss, b))
    starts = sum(max(0, y - x) for x, y in zip([0, *counts], counts, strict=False))
    ready = _ready_seconds(counts, bucket, duration)
    return Oracle(tuple(counts), bucket, met / len(trace) if trace else 1.0, ready, ready + starts * load_seconds)


def reactive_bound(trace: Trace, rises: Sequence[tuple[float, float]], duration: float, model: ReplicaModel,
                   slo: float, *, min_replicas: int, max_replicas: int, ready_after: float,
                   delay: float = 0.0, bucket: float = 1.0) -> tuple[float, float]:
    """The most any reactive scaler holding ``min_replicas`` between rises could keep
    within ``slo``, on this module's model of a replica: it asks for ``max_replicas`` at
    once ``delay`` seconds after each rise (start, end) begins, they are Ready
    ``ready_after`` seconds later, and it keeps them until the rise ends. Returns (share
    within the SLO, Ready replica-seconds). Where the share is under the goal even at
    ``delay`` 0, no scaler that reacts to the load meets it without holding more
    replicas before a rise (headroom)."""
    counts = []
    for i in range(max(1, math.ceil(duration / bucket))):
        t = i * bucket
        up = any(start + delay + ready_after <= t < end for start, end in rises)
        counts.append(max_replicas if up else min_replicas)
    met = within_slo(trace, counts, bucket, model, slo)
    return (sum(met) / len(trace) if trace else 1.0), _ready_seconds(counts, bucket, duration)


def _ready_seconds(counts: Sequence[int], bucket: float, duration: float) -> float:
    """Replica-seconds of ``counts[b]`` Ready replicas per bucket (the last one cut at ``duration``)."""
    return sum(c * min(bucket, duration - b * bucket) for b, c in enumerate(counts))
