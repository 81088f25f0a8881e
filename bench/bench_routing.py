"""Routing strategies: heterogeneous backends, p95 TTFT and cost per 1k tokens per strategy.

One RoutePolicy over two `sim` ModelDeployments on the dev cluster, with autoscaling
off and a fixed replica count each, so only the routing differs:

  fast   expensive, quick replicas (H100-class price; short decode steps, fast prefill)
  slow   cheap, slow replicas (L4-class price; 3x longer decode steps, 4x slower prefill)

For each strategy — `weighted` 50/50 (the round-robin reference), `latency` (with the
policy's slo) and `cost` — the bench PATCHes spec.strategy, waits for Programmed=True,
drives the same open-loop Poisson load through a real Envoy until the weights in
status.backends have settled (the load strategies read status.load, which the
operator's autoscaler loop writes every --autoscale-interval, and move half way each
recompute), then measures for a fixed time: TTFT p50/p95 (streaming, client-side),
each backend's share of requests, and cost per 1k generated tokens.

Cost per 1k tokens = 1000 x sum_b tokens_b x price_b / sum_b tokens_b, where price_b =
perReplicaHour_b / 3600 / capacity_b is what one token costs on backend b when its
replicas run full batches (capacity_b = max_num_seqs / decode step time at a full batch,
tokens/s per replica, from the sim's flags). It is what the routing decision would cost
if each backend were scaled to the tokens routed to it; with the fixed replicas of this
bench the bill itself does not depend on the strategy.

    .venv/bin/python bench/bench_routing.py          # ~5 minutes

Prints a table and writes bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from fleet import (  # noqa: E402 - sets sys.path for llmfleet
    GROUP, REPO, VERSION, Request, Stack, Watcher, open_loop, pair, percentile, route_policy, sim_md, summarize,
    write_result,
)
from kubernetes import client

NS = "routing"
MODEL = "chat-routing"
STRATEGIES = ("weighted", "latency", "cost")


def backends(a: argparse.Namespace) -> dict[str, dict]:
    return {
        "fast": {"decode_step_ms": 15.0, "decode_step_ms_per_seq": 0.5, "prefill_tps": 16000.0,
                 "per_replica_hour": a.fast_price},
        "slow": {"decode_step_ms": 45.0, "decode_step_ms_per_seq": 1.5, "prefill_tps": 4000.0,
                 "per_replica_hour": a.slow_price},
    }


def sim_args(b: dict, a: argparse.Namespace) -> list:
    return ["--max-num-seqs", a.max_num_seqs, "--kv-cache-tokens", 65536, "--decode-step-ms", b["decode_step_ms"],
            "--decode-step-ms-per-seq", b["decode_step_ms_per_seq"], "--prefill-tokens-per-second", b["prefill_tps"],
            "--time-scale", a.time_scale]


def capacity_tps(b: dict, a: argparse.Namespace) -> float:
    """Generated tokens/s of one replica at a full batch (model time)."""
    return a.max_num_seqs / ((b["decode_step_ms"] + b["decode_step_ms_per_seq"] * a.max_num_seqs) / 1000)


def make_trace(a: argparse.Namespace, seconds: float, seed: int) -> list[Request]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(a.rps)
        if t >= seconds:
            return out
        out.append(Request(t * a.time_scale, rng.randint(*a.prompt_tokens), rng.randint(*a.output_tokens)))


class WeightWatcher(Watcher):
    """Polls the RoutePolicy's effective weights and the backends' status.load every 0.2 s."""

    def __init__(self, stack: Stack) -> None:
        super().__init__("weights")
        self.stack = stack
        self.changes: list[dict] = []  # every change of weights or of a backend's load
        self.current: dict[str, int] = {}
        self.last_change = time.monotonic()

    def run(self) -> None:
        api = self.stack.new_api()
        custom = client.CustomObjectsApi(api)
        last_loads: dict[str, dict] = {}
        try:
            while not self._stop_event.is_set():
                try:
                    rp = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "routepolicies", "chat")
                    mds = custom.list_namespaced_custom_object(GROUP, VERSION, NS, "modeldeployments")["items"]
                except client.ApiException:
                    self._stop_event.wait(0.2)
                    continue
                now = time.monotonic()
                weights = {b["modelDeployment"]: b.get("weight", 0) for b in (rp.get("status") or {}).get("backends")
                           or []}
                loads = {m["metadata"]["name"]: (m.get("status") or {}).get("load") or {} for m in mds}
                entry = {}
                if weights != self.current:
                    entry["weights"] = weights
                    entry["reasons"] = {b["modelDeployment"]: b.get("reason") for b in rp["status"]["backends"]}
                    self.current, self.last_change = weights, now
                if loads != last_loads:
                    entry["loads"] = loads
                    last_loads = loads
                if entry:
                    self.changes.append({"t": now, **entry})
                self._stop_event.wait(0.2)
        finally:
            api.close()


def damping_check(changes: list[dict]) -> dict:
    """How many times the weights moved between two consecutive status.load updates.

    The load strategies are documented to move half way per recompute "a damped loop: the
    loads they read respond to the weights they set"; a recompute per load update gives one
    change per update. More means recomputes without new load data (e.g. triggered by the
    policy's own status write), which makes the damping moot.
    """
    counts, current = [], None
    for c in changes:
        if "loads" in c:
            if current is not None and current > 0:
                counts.append(current)
            current = 1 if "weights" in c else 0
        elif "weights" in c and current is not None:
            current += 1
    return {"load_updates_followed_by_weight_changes": len(counts),
            "mean_weight_changes": round(sum(counts) / len(counts), 2) if counts else None,
            "max_weight_changes": max(counts) if counts else None}


def run_strategy(stack: Stack, strategy: str, a: argparse.Namespace, watcher: WeightWatcher, prices: dict,
                 served: dict[str, str]) -> dict:
    S = a.time_scale
    stack.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "routepolicies", "chat",
                                                {"spec": {"strategy": strategy}})
    t_patch = time.monotonic()
    stack.wait_programmed(NS, "chat")
    programmed_after = time.monotonic() - t_patch
    print(f"[{strategy}] Programmed after {programmed_after:.2f} s; warming up until the weights settle ...",
          flush=True)

    trace = make_trace(a, a.max_warmup + a.measure, a.seed)
    stop = threading.Event()
    box: dict = {}
    t0_box: list[float] = []
    loader = threading.Thread(target=lambda: box.update(zip(("results", "t0"), open_loop(
        stack.url, MODEL, trace, timeout=a.timeout * S, on_start=t0_box.append, stop=stop))), daemon=True)
    loader.start()
    while not t0_box:
        time.sleep(0.01)
    t0 = t0_box[0]
    settle = a.settle_intervals * a.autoscale_interval * S
    while True:
        now = time.monotonic()
        quiet = now - max(watcher.last_change, t0)
        if now - t0 >= a.min_warmup * S and quiet >= settle:
            settled = True
            break
        if now - t0 >= a.max_warmup * S:
            settled = False
            break
        time.sleep(0.1)
    m_start = time.monotonic()
    weights_at_start = dict(watcher.current)
    time.sleep(a.measure * S)
    m_end = time.monotonic()
    stop.set()
    loader.join(timeout=a.timeout * S + 30)
    results = box["results"]
    window = [r for r in results if m_start <= t0 + r.at < m_end]
    changes_in_window = [c for c in watcher.changes if m_start <= c["t"] < m_end and "weights" in c]

    fast_weights = [weights_at_start.get("fast", 0)] + [c["weights"].get("fast", 0) for c in changes_in_window]
    ok = [r for r in window if r.ok]
    by_model = {name: [r for r in ok if r.model == served[name]] for name in served}
    tokens = {name: sum(r.tokens for r in rs) for name, rs in by_model.items()}
    total_tokens = sum(tokens.values())
    cost_1k = (1000 * sum(tokens[n] * prices[n] for n in tokens) / total_tokens) if total_tokens else None
    ttft = [r.ttft / S * 1000 for r in ok]
    summary = summarize(window)
    out = {
        "strategy": strategy,
        "programmed_after_s": round(programmed_after, 2),
        "settled": settled,
        "warmup_s": round((m_start - t0) / S, 1),
        "weights_at_start": weights_at_start,
        "weights_at_end": dict(watcher.current),
        "weight_changes_during_measurement": len(changes_in_window),
        "fast_weight_range_during_measurement": [min(fast_weights), max(fast_weights)],
        "sent": summary.sent, "ok": summary.ok, "failed": summary.failed, "errors": summary.errors,
        "ttft_p50_ms": round(statistics.median(ttft)) if ttft else None,
        "ttft_p95_ms": round(percentile(ttft, 95)) if ttft else None,
        "ttft_p99_ms": round(percentile(ttft, 99)) if ttft else None,
        "within_slo": round(sum(1 for x in ttft if x <= a.slo_ms) / len(window), 4) if window else None,
        "share": {n: round(len(rs) / len(ok), 3) if ok else None for n, rs in by_model.items()},
        "ttft_p95_ms_by_backend": {n: (round(percentile([r.ttft / S * 1000 for r in rs], 95)) if rs else None)
                                   for n, rs in by_model.items()},
        "tokens": tokens,
        "cost_per_1k_tokens": round(cost_1k, 6) if cost_1k is not None else None,
    }
    print(f"[{strategy}] warm-up {out['warmup_s']:.0f} s ({'settled' if settled else 'NOT settled'}), weights "
          f"{weights_at_start} -> {watcher.current}; p95 {out['ttft_p95_ms']} ms, share {out['share']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--time-scale", type=float, default=1.0, help="sim --time-scale; durations below scale with it")
    p.add_argument("--replicas", type=int, default=2, help="replicas of each backend")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--fast-price", type=float, default=4.0, help="fast backend's cost.perReplicaHour")
    p.add_argument("--slow-price", type=float, default=0.8, help="slow backend's cost.perReplicaHour")
    p.add_argument("--rps", type=float, default=6.0, help="offered load, requests/s (real time)")
    p.add_argument("--prompt-tokens", type=pair, default=(100, 400))
    p.add_argument("--output-tokens", type=pair, default=(32, 96))
    p.add_argument("--slo-ms", type=float, default=500.0, help="spec.slo.ttftP95Milliseconds (latency strategy)")
    p.add_argument("--autoscale-interval", type=float, default=2.0,
                   help="operator --autoscale-interval: how often status.load (and so the load-aware weights) "
                        "is refreshed")
    p.add_argument("--min-warmup", type=float, default=15.0)
    p.add_argument("--max-warmup", type=float, default=60.0)
    p.add_argument("--settle-intervals", type=float, default=4.0,
                   help="weights unchanged for this many autoscale intervals = settled")
    p.add_argument("--measure", type=float, default=60.0, help="measured seconds per strategy")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--output", type=Path, default=REPO / "bench/results/routing.json")
    a = p.parse_args(argv)
    S = a.time_scale
    kinds = [k for k in a.strategies.split(",") if k]
    bk = backends(a)
    served = {name: f"{name}-served" for name in bk}
    caps = {name: capacity_tps(b, a) for name, b in bk.items()}
    prices = {name: b["per_replica_hour"] / 3600 / caps[name] for name, b in bk.items()}
    for name, b in bk.items():
        print(f"backend {name}: {caps[name]:.0f} tokens/s per replica at a full batch, "
              f"${b['per_replica_hour']:g}/replica-hour -> ${prices[name] * 1000:.5f} per 1k tokens", flush=True)

    runs: dict[str, dict] = {}
    loadavg_start = os.getloadavg()
    t_start = time.monotonic()
    with Stack("routing", autoscale_interval=a.autoscale_interval * S) as stack:
        print(f"stack up (logs: {stack.logdir})", flush=True)
        docs = [sim_md(NS, name, served[name], sim_args(b, a), replicas=a.replicas,
                       cost_per_replica_hour=b["per_replica_hour"]) for name, b in bk.items()]
        docs.append(route_policy(NS, "chat", MODEL, [{"modelDeployment": n, "weight": 50} for n in bk],
                                 strategy="weighted", slo={"ttftP95Milliseconds": int(a.slo_ms)}))
        stack.apply(docs)
        stack.fleet.wait_ready(a.replicas * len(bk), NS, timeout=90)
        stack.wait_programmed(NS, "chat")
        stack.wait_served(MODEL)
        watcher = WeightWatcher(stack)
        watcher.start()
        try:
            for strategy in kinds:
                runs[strategy] = run_strategy(stack, strategy, a, watcher, prices, served)
        finally:
            watcher.stop()
        t_first = watcher.changes[0]["t"] if watcher.changes else 0.0
        damping = damping_check(watcher.changes)
        timeline = [{**c, "t": round((c["t"] - t_first) / S, 2)} for c in watcher.changes]
    wall = time.monotonic() - t_start

    print(f"\nRouting strategies: {a.replicas}x fast (${a.fast_price:g}/h) + {a.replicas}x slow "
          f"(${a.slow_price:g}/h), {a.rps:g} req/s open-loop Poisson, {a.measure:g} s measured per strategy")
    print(f"{'strategy':<9} {'sent':>5} {'fail':>4} {'p50 ms':>7} {'p95 ms':>7} {'in SLO':>7} "
          f"{'fast %':>7} {'slow %':>7} {'$/1k tok':>9} {'fast weight':>12} {'changes':>8} {'settled':>8}")
    for s, r in runs.items():
        lo, hi = r["fast_weight_range_during_measurement"]
        w = f"{lo}" if lo == hi else f"{lo}..{hi}"
        print(f"{s:<9} {r['sent']:>5} {r['failed']:>4} {r['ttft_p50_ms']:>7} {r['ttft_p95_ms']:>7} "
              f"{r['within_slo']:>7.1%} {100 * r['share']['fast']:>6.1f}% {100 * r['share']['slow']:>6.1f}% "
              f"{r['cost_per_1k_tokens']:>9.5f} {w:>12} {r['weight_changes_during_measurement']:>8} "
              f"{('yes' if r['settled'] else 'no'):>8}")
    if damping["load_updates_followed_by_weight_changes"]:
        print(f"  damping: after a status.load update the weights changed {damping['mean_weight_changes']:.1f} times "
              f"on average before the next one ({damping['load_updates_followed_by_weight_changes']} updates; "
              f"a half-way step per load update would change them once)")
    ref = runs.get("weighted")
    if ref:
        for s, r in runs.items():
            if s != "weighted":
                print(f"  {s} vs weighted 50/50: p95 TTFT {r['ttft_p95_ms'] / ref['ttft_p95_ms'] - 1:+.0%}, "
                      f"cost per 1k tokens {r['cost_per_1k_tokens'] / ref['cost_per_1k_tokens'] - 1:+.0%}")

    result = {
        "bench": "routing",
        "time_scale": S,
        "wall_seconds": round(wall, 1),
        "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
        "cost_definition": "cost_per_1k_tokens = 1000 * sum_b tokens_b * price_b / sum_b tokens_b; price_b = "
                           "perReplicaHour_b / 3600 / capacity_b, capacity_b = generated tokens/s of one replica "
                           "at a full batch (max_num_seqs / decode step at a full batch)",
        "backends": {n: {**b, "sim_args": [str(x) for x in sim_args(b, a)], "replicas": a.replicas,
                         "capacity_tokens_per_s": round(caps[n], 1),
                         "price_per_1k_tokens": round(prices[n] * 1000, 6)} for n, b in bk.items()},
        "load": {"rps": a.rps, "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens,
                 "arrivals": "Poisson, open loop, streaming", "measure_s": a.measure, "seed": a.seed},
        "slo_ms": a.slo_ms,
        "autoscale_interval_s": a.autoscale_interval,
        "runs": runs,
        "damping_check": damping,
        "weights_timeline": timeline,
    }
    return write_result(a.output, result, f"  (wall {wall:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
