"""Prefix-cache-aware routing against least request, on the same multi-turn chat trace.

Four ``llmfleet sim`` replicas with vLLM's automatic prefix caching (``--enable-prefix-caching``:
a prompt's leading 16-token blocks still in a replica's KV cache skip prefill) serve one
public model through a real Envoy configured by our xDS server. Two arms, each on fresh
replicas (empty caches) and the same seeded trace:

* ``least-request``: the route as llmfleet builds it without prefix affinity;
* ``prefix``: the RoutePolicy's ``prefixAffinity`` (ring hash on the first user message's
  leading characters, with bounded load: ``hash_balance_factor``).

The trace: ``--users`` conversations run at once, each ``--turns`` turns long; every one
starts with the same system prompt, then its own first question; each later turn sends
the whole history (the answers the replicas gave included) plus a new question, as chat
clients do. Answers vary in length (``max_tokens`` drawn per turn around
``--answer-tokens``): with one fixed length, the conversations that share a replica
finish in the same step and come back together, so their prefills land in the same step
turn after turn and the median TTFT depends on how those convoys happened to form. Each
user sends its next turn when the previous answer has ended, after ``--think`` seconds on
average (default 0: a closed loop), and the users start ``--stagger`` seconds apart.
Streams, so time to first token is measured at the client. Every loop is bounded by the
trace's request count and by ``--timeout`` seconds.

Reported per arm: the replicas' prefix-cache hit rate (``vllm:prefix_cache_hits`` over
``vllm:prefix_cache_queries``, in tokens), TTFT p50/p95, requests and generated tokens per
second, and each replica's share of the requests against a fair share. Goals (issue 17):
prefix TTFT p50 at least 2x lower than least request's, hit rate >= 75 %, no replica over
1.25x its fair share. Prints a table and writes ``bench/results/prefix.json``.

    .venv/bin/python bench/bench_prefix.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from llmfleet_devcluster.envoy import find_envoy
from llmfleet_devcluster.waiting import stop_process

from bench_dataplane import CLUSTER, LOCALHOST, PUBLIC_MODEL, SERVED_MODEL, EnvoyPath
from bench_sim import _percentile, start_server
from llmfleet.envoy.resources import DataPlaneSettings
from llmfleet.routing.table import Cluster, Endpoint, PrefixAffinity, Route, RouteTable, WeightedBackend

RESULTS = Path(__file__).resolve().parent / "results" / "prefix.json"
GOALS = {"ttft_p50_ratio": 2.0, "hit_rate": 0.75, "max_share": 1.25}
WORDS = ("fleet", "model", "replica", "route", "token", "cache", "prompt", "batch", "latency", "budget",
         "tenant", "scale", "envoy", "engine", "prefix", "kernel", "tensor", "quant", "gpu", "node")


def _text(rng: random.Random, tokens: int) -> str:
    """About ``tokens`` sim tokens of words (the sim counts up to 4 characters a token)."""
    out, n = [], 0
    while n < tokens:
        word = rng.choice(WORDS)
        out.append(word)
        n += (len(word) + 3) // 4
    return " ".join(out)


def make_trace(users: int, turns: int, seed: int, system_tokens: int, question_tokens: int,
               answer_tokens: int, think_seconds: float) -> dict[str, Any]:
    """Each turn: the user's question, the answer's length (``max_tokens``: uniform between
    half and 1.5x ``answer_tokens``, as answers vary) and the pause before the user sends it
    (reading and typing: exponential, mean ``think_seconds``; the first turn's is 0)."""
    rng = random.Random(seed)
    lo, hi = max(1, answer_tokens // 2), max(1, answer_tokens * 3 // 2)
    return {"system": "You are the fleet assistant. " + _text(rng, system_tokens),
            "questions": [[_text(rng, question_tokens) + f" (user {u}, turn {t})?" for t in range(turns)]
                          for u in range(users)],
            "answer_tokens": [[rng.randint(lo, hi) for _ in range(turns)] for _ in range(users)],
            "think_seconds": [[rng.expovariate(1 / think_seconds) if t and think_seconds > 0 else 0.0
                               for t in range(turns)] for _ in range(users)]}


class Arm:
    """Fresh sim replicas, our xDS server and an Envoy routing to them (bench_dataplane's
    EnvoyPath with this bench's route table)."""

    def __init__(self, workdir: Path, replicas: int, sim_args: list[str], prefix: PrefixAffinity | None) -> None:
        self.sims = [start_server(None, sim_args) for _ in range(replicas)]
        endpoints = tuple(Endpoint(LOCALHOST, port) for _, port in self.sims)
        self.path = EnvoyPath(workdir, endpoints[0].port, DataPlaneSettings(access_log=False), 1,
                              f"bench-prefix-{id(self)}")
        self.path.table = RouteTable(routes=(Route(PUBLIC_MODEL, (WeightedBackend(CLUSTER, 1),), prefix=prefix),),
                                     clusters=(Cluster(CLUSTER, SERVED_MODEL, endpoints),))
        self.url = f"http://{LOCALHOST}:{self.path.listener_port}"

    def start(self) -> None:
        self.path.start(None)

    def stop(self) -> None:
        try:
            self.path.stop()
        finally:
            for proc, _ in self.sims:
                stop_process(proc)

    def counters(self) -> list[dict[str, float]]:
        """Per replica: requests finished, prefix-cache queries and hits (tokens)."""
        out = []
        for _, port in self.sims:
            text = httpx.get(f"http://{LOCALHOST}:{port}/metrics", timeout=5).text
            values: dict[str, float] = {"requests": 0.0, "queries": 0.0, "hits": 0.0}
            for line in text.splitlines():
                m = re.match(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+(\S+)$", line)
                if not m:
                    continue
                name, value = m.group(1), float(m.group(2))
                if name == "vllm:request_success_total":
                    values["requests"] += value
                elif name == "vllm:prefix_cache_queries_total":
                    values["queries"] = value
                elif name == "vllm:prefix_cache_hits_total":
                    values["hits"] = value
            out.append(values)
        return out


async def _turn(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str, int]:
    """One streamed turn: (TTFT seconds, the answer's text, tokens generated)."""
    start = time.perf_counter()
    ttft, parts, tokens = None, [], 0
    body = {"model": PUBLIC_MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(delta)
    if ttft is None:
        raise RuntimeError("a stream without content")
    return ttft, "".join(parts), tokens


async def drive(url: str, trace: dict[str, Any], *, stagger: float, timeout: float) -> dict[str, Any]:
    ttfts: list[float] = []
    tokens = errors = 0
    users = len(trace["questions"])
    deadline = time.monotonic() + timeout

    async def user(u: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        await asyncio.sleep(u * stagger)
        messages = [{"role": "system", "content": trace["system"]}]
        for question, max_tokens, think in zip(trace["questions"][u], trace["answer_tokens"][u],
                                               trace["think_seconds"][u], strict=True):
            await asyncio.sleep(think)
            if time.monotonic() > deadline:
                return
            messages.append({"role": "user", "content": question})
            try:
                ttft, answer, n = await _turn(client, messages, max_tokens)
            except (httpx.HTTPError, RuntimeError):
                errors += 1
                return
            ttfts.append(ttft)
            tokens += n
            messages.append({"role": "assistant", "content": answer})

    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(user(u, client) for u in range(users))), timeout + 30)
        wall = time.perf_counter() - start
    ttfts.sort()
    return {"requests": len(ttfts), "errors": errors, "seconds": round(wall, 2),
            "ttft_p50_ms": round(_percentile(ttfts, 0.5) * 1000, 1),
            "ttft_p95_ms": round(_percentile(ttfts, 0.95) * 1000, 1),
            "requests_per_second": round(len(ttfts) / wall, 2), "tokens_per_second": round(tokens / wall, 1)}


def run_arm(name: str, prefix: PrefixAffinity | None, trace: dict[str, Any], args: argparse.Namespace,
            workdir: Path) -> dict[str, Any]:
    sim_args = ["--enable-prefix-caching", "--time-scale", str(args.time_scale), "--max-model-len", "16384",
                "--kv-cache-tokens", str(args.kv_cache_tokens),
                "--prefill-tokens-per-second", str(args.prefill_tokens_per_second)]
    arm = Arm(workdir / name, args.replicas, sim_args, prefix)
    try:
        arm.start()
        before = arm.counters()
        result = asyncio.run(drive(arm.url, trace, stagger=args.stagger, timeout=args.timeout))
        after = arm.counters()
    finally:
        arm.stop()
    per = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    queries, hits = sum(p["queries"] for p in per), sum(p["hits"] for p in per)
    counts = [int(p["requests"]) for p in per]
    fair = sum(counts) / len(counts) if counts else 0
    return {"arm": name, **result, "hit_rate": round(hits / queries, 3) if queries else 0.0,
            "replica_requests": counts, "max_share": round(max(counts) / fair, 2) if fair else 0.0}


def print_report(report: dict[str, Any]) -> None:
    t = report["trace"]
    print(f"\nprefix-aware routing: {t['users']} users x {t['turns']} turns, {report['replicas']} sim replicas "
          f"(time scale {report['time_scale']}), through Envoy {report['envoy']}")
    print(f"{'arm':<14} {'req':>5} {'err':>4} {'hit rate':>9} {'TTFT p50':>9} {'TTFT p95':>9} {'req/s':>7} "
          f"{'tok/s':>7} {'max share':>10}  per replica")
    for a in report["arms"]:
        print(f"{a['arm']:<14} {a['requests']:>5} {a['errors']:>4} {a['hit_rate'] * 100:>8.1f}% "
              f"{a['ttft_p50_ms']:>7.0f}ms {a['ttft_p95_ms']:>7.0f}ms {a['requests_per_second']:>7.2f} "
              f"{a['tokens_per_second']:>7.0f} {a['max_share']:>9.2f}x  {a['replica_requests']}")
    print("\ngoals:")
    for g in report["goals"]:
        print(f"  {g['goal']:<52} {g['measured']:<12} {'met' if g['met'] else 'NOT met'}")


def evaluate(arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    lr, px = arms["least-request"], arms["prefix"]
    ratio = lr["ttft_p50_ms"] / px["ttft_p50_ms"] if px["ttft_p50_ms"] else 0.0
    return [
        {"goal": f"TTFT p50 at least {GOALS['ttft_p50_ratio']:g}x lower than least request", "measured":
         f"{ratio:.2f}x", "met": ratio >= GOALS["ttft_p50_ratio"]},
        {"goal": f"prefix-cache hit rate >= {GOALS['hit_rate']:.0%}", "measured": f"{px['hit_rate']:.1%}",
         "met": px["hit_rate"] >= GOALS["hit_rate"]},
        {"goal": f"no replica over {GOALS['max_share']:g}x its fair share", "measured": f"{px['max_share']:.2f}x",
         "met": px["max_share"] <= GOALS["max_share"]},
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=48, help="conversations at once (default %(default)s)")
    p.add_argument("--turns", type=int, default=6, help="turns per conversation (default %(default)s)")
    p.add_argument("--replicas", type=int, default=4, help="sim replicas (default %(default)s)")
    p.add_argument("--system-tokens", type=int, default=400, help="shared system prompt (default %(default)s)")
    p.add_argument("--question-tokens", type=int, default=250, help="each user message (default %(default)s)")
    p.add_argument("--answer-tokens", type=int, default=48,
                   help="mean answer length, uniform from half to 1.5x (default %(default)s)")
    p.add_argument("--think", type=float, default=0.0,
                   help="mean seconds a user pauses before the next turn (default %(default)s)")
    p.add_argument("--time-scale", type=float, default=1.0, help="sim time scale (default %(default)s)")
    p.add_argument("--kv-cache-tokens", type=int, default=262_144, help="per replica (default %(default)s)")
    p.add_argument("--prefill-tokens-per-second", type=float, default=8000.0,
                   help="each replica's prefill speed (default %(default)s)")
    p.add_argument("--stagger", type=float, default=0.05, help="seconds between users' starts (default %(default)s)")
    p.add_argument("--prefix-chars", type=int, default=256, help="prefixAffinity.prefixChars (default %(default)s)")
    p.add_argument("--max-load-factor", type=float, default=1.15,
                   help="prefixAffinity.maxLoadFactor (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per arm at most (default %(default)s)")
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    trace = make_trace(args.users, args.turns, args.seed, args.system_tokens, args.question_tokens,
                       args.answer_tokens, args.think)
    prefix = PrefixAffinity(args.prefix_chars, round(args.max_load_factor * 100))
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as tmp:
        for name, affinity in (("least-request", None), ("prefix", prefix)):
            arms[name] = run_arm(name, affinity, trace, args, Path(tmp))
    report = {"trace": {"users": args.users, "turns": args.turns, "system_tokens": args.system_tokens,
                        "question_tokens": args.question_tokens, "answer_tokens": args.answer_tokens,
                        "think_seconds": args.think, "seed": args.seed},
              "replicas": args.replicas, "time_scale": args.time_scale, "prefix_chars": args.prefix_chars,
              "max_load_factor": args.max_load_factor, "envoy": _envoy_version(), "machine": platform.node(),
              "cpus": len(__import__("os").sched_getaffinity(0)), "arms": list(arms.values()),
              "goals": evaluate(arms), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


def _envoy_version() -> str:
    import subprocess

    out = subprocess.run([str(find_envoy()), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version: \S+/(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
