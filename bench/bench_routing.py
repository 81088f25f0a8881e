"""Routing strategies with autoscaling: dollars, TTFT SLO and weight stability per strategy.

One RoutePolicy over two autoscaled `sim` ModelDeployments on the dev cluster:

  fast   expensive, quick replicas (H100-class price; short decode steps, fast prefill)
  slow   cheap, slow replicas (L4-class price; 3x longer decode steps, 4x slower prefill)

Both autoscale the same way (minReplicas 1, maxReplicas 6, runningRequests target 6 of
8 batch slots, scale-down stabilization 60 s, scaleToZero after 30 idle seconds; a new
replica loads its model for --load-seconds, 15 s). For each strategy — `weighted` 50/50 (the reference), `cost` and
`latency` (both with the policy's TTFT SLO) — the bench starts from the same state in
a fresh namespace (each backend at 1 ready replica, the policy Programmed) and replays
the same open-loop Poisson trace through a real Envoy: a warm-up, then the measured
window. It samples each backend's pods every 0.25 s and the policy's weights every 0.2 s.

Dollars = sum over backends of replica-seconds x perReplicaHour / 3600, where a replica
counts from when its pod exists (a loading replica holds its GPU too) until it is gone;
reported over the whole trace and over the measured window. "In SLO" = requests whose
TTFT (client-side, streaming) is within the SLO, of all sent.

    .venv/bin/python bench/bench_routing.py          # ~25 minutes

Prints a table and writes bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from kubernetes import client

from fleet import (
    GROUP,
    REPO,
    VERSION,
    Request,
    Sampler,
    Stack,
    Watcher,
    open_loop,
    pair,
    percentile,
    replica_seconds,
    route_policy,
    sim_md,
    summarize,
    write_result,
)

STRATEGIES = ("weighted", "cost", "latency")


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
            "--load-seconds", a.load_seconds, "--time-scale", a.time_scale]


def autoscaling(a: argparse.Namespace) -> dict:
    return {"minReplicas": 1, "maxReplicas": a.max_replicas, "metric": "runningRequests", "target": a.target,
            "scaleDownStabilizationSeconds": int(a.scale_down_seconds),
            "scaleToZero": {"idleSeconds": int(a.idle_seconds)}}


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
    """Polls a RoutePolicy's effective weights and its backends' status.load every 0.2 s."""

    def __init__(self, stack: Stack, namespace: str, name: str) -> None:
        super().__init__(f"weights-{namespace}")
        self.stack, self.namespace, self.name = stack, namespace, name
        self.changes: list[dict] = []  # every change of weights or of a backend's load
        self.current: dict[str, int] = {}

    def run(self) -> None:
        api = self.stack.new_api()
        custom = client.CustomObjectsApi(api)
        last_loads: dict[str, dict] = {}
        try:
            while not self._stop_event.is_set():
                try:
                    rp = custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "routepolicies",
                                                             self.name)
                    mds = custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                               "modeldeployments")["items"]
                except client.ApiException:
                    self._stop_event.wait(0.2)
                    continue
                now = time.monotonic()
                rows = (rp.get("status") or {}).get("backends") or []
                weights = {b["modelDeployment"]: b.get("weight", 0) for b in rows}
                loads = {m["metadata"]["name"]: (m.get("status") or {}).get("load") or {} for m in mds}
                entry = {}
                if weights != self.current:
                    entry["weights"] = weights
                    entry["reasons"] = {b["modelDeployment"]: b.get("reason") for b in rows}
                    self.current = weights
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

    The load strategies step once per new load sample; more would mean recomputes
    without new load data (e.g. triggered by the policy's own status write).
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


def run_strategy(stack: Stack, strategy: str, a: argparse.Namespace, bk: dict[str, dict]) -> dict:
    S = a.time_scale
    ns, model = f"routing-{strategy}", f"chat-{strategy}"
    served = {name: f"{name}-served" for name in bk}
    docs = [sim_md(ns, name, served[name], sim_args(b, a), autoscaling=autoscaling(a),
                   cost_per_replica_hour=b["per_replica_hour"]) for name, b in bk.items()]
    docs.append(route_policy(ns, "chat", model, [{"modelDeployment": n, "weight": 50} for n in bk],
                             strategy=strategy, slo={"ttftP95Milliseconds": int(a.slo_ms)}))
    stack.apply(docs)
    stack.fleet.wait_ready(len(bk), ns, timeout=120 * max(1.0, S))
    stack.wait_programmed(ns, "chat", timeout=60)
    stack.wait_served(model)
    samplers = {name: Sampler(stack, ns, name, period=0.25) for name in bk}
    watcher = WeightWatcher(stack, ns, "chat")
    for w in (*samplers.values(), watcher):
        w.start()
    trace = make_trace(a, a.warmup + a.measure, a.seed)
    print(f"[{strategy}] {len(bk)} backends at 1 replica, Programmed; replaying {len(trace)} requests over "
          f"{a.warmup + a.measure:g} s ...", flush=True)
    try:
        results, t0 = open_loop(stack.url, model, trace, timeout=a.timeout * S)
        end = time.monotonic()
    finally:
        for w in (*samplers.values(), watcher):
            w.stop()
    trace_end = t0 + (a.warmup + a.measure) * S
    m_start = t0 + a.warmup * S
    windows = {"trace": (t0, trace_end), "measured": (m_start, trace_end)}
    out: dict = {"strategy": strategy, "namespace": ns}
    for label, (lo, hi) in windows.items():
        sent = [r for r in results if lo <= t0 + r.at < hi]
        ok = [r for r in sent if r.ok]
        ttft = [r.ttft / S * 1000 for r in ok]
        rs = {n: replica_seconds(sm.samples, lo, hi, "existing") / S for n, sm in samplers.items()}
        dollars = sum(rs[n] * bk[n]["per_replica_hour"] / 3600 for n in bk)
        summary = summarize(sent)
        by_model = {n: [r for r in ok if r.model == served[n]] for n in bk}
        changes = [c for c in watcher.changes if lo <= c["t"] < hi and "weights" in c]
        out[label] = {
            "seconds": round((hi - lo) / S, 1),
            "sent": summary.sent, "ok": summary.ok, "failed": summary.failed, "errors": summary.errors,
            "ttft_p50_ms": round(statistics.median(ttft)) if ttft else None,
            "ttft_p95_ms": round(percentile(ttft, 95)) if ttft else None,
            "within_slo": round(sum(1 for x in ttft if x <= a.slo_ms) / len(sent), 4) if sent else None,
            "share": {n: round(len(v) / len(ok), 3) if ok else None for n, v in by_model.items()},
            "replica_seconds": {n: round(v, 1) for n, v in rs.items()},
            "dollars": round(dollars, 5),
            "dollars_per_hour": round(dollars / ((hi - lo) / S) * 3600, 3),
            "weight_changes": len(changes),
            "weight_changes_per_minute": round(len(changes) / ((hi - lo) / S) * 60, 2),
            "fast_weight_range": [min(w := [c["weights"].get("fast", 0) for c in changes] or
                                      [watcher.current.get("fast", 0)]), max(w)],
        }
    out["peak_replicas"] = {n: max((x.existing for x in sm.samples), default=0) for n, sm in samplers.items()}
    out["damping_check"] = damping_check(watcher.changes)
    out["timeline"] = [{**c, "t": round((c["t"] - t0) / S, 2)} for c in watcher.changes]
    out["replicas_timeline"] = {n: [(round((x.t - t0) / S, 1), x.existing, x.ready) for i, x in enumerate(sm.samples)
                                    if i == 0 or (x.existing, x.ready) != (sm.samples[i - 1].existing,
                                                                           sm.samples[i - 1].ready)]
                                for n, sm in samplers.items()}
    out["drain_s"] = round((end - trace_end) / S, 1)
    m = out["measured"]
    print(f"[{strategy}] whole trace ${out['trace']['dollars']:.4f}, in SLO {out['trace']['within_slo']:.1%}; "
          f"measured ${m['dollars']:.4f}, in SLO {m['within_slo']:.1%}, share {m['share']}, "
          f"{m['weight_changes']} weight changes", flush=True)
    stack.delete_namespace(ns)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--time-scale", type=float, default=1.0, help="sim --time-scale; durations below scale with it")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-replicas", type=int, default=6, help="autoscaling.maxReplicas of each backend")
    p.add_argument("--target", type=float, default=6.0, help="runningRequests target per replica")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="autoscaling.scaleToZero.idleSeconds")
    p.add_argument("--scale-down-seconds", type=float, default=60.0,
                   help="autoscaling.scaleDownStabilizationSeconds (shorter than the default 300 so that every "
                        "strategy's replicas settle within the warm-up)")
    p.add_argument("--load-seconds", type=float, default=15.0, help="model load time of a new replica")
    p.add_argument("--fast-price", type=float, default=4.0, help="fast backend's cost.perReplicaHour")
    p.add_argument("--slow-price", type=float, default=0.8, help="slow backend's cost.perReplicaHour")
    p.add_argument("--rps", type=float, default=6.0, help="offered load, requests/s (real time)")
    p.add_argument("--prompt-tokens", type=pair, default=(100, 400))
    p.add_argument("--output-tokens", type=pair, default=(32, 96))
    p.add_argument("--slo-ms", type=float, default=500.0, help="spec.slo.ttftP95Milliseconds")
    p.add_argument("--autoscale-interval", type=float, default=2.0, help="operator --autoscale-interval")
    p.add_argument("--warmup", type=float, default=240.0, help="seconds of the trace before the measured window")
    p.add_argument("--measure", type=float, default=180.0, help="measured seconds at the end of the trace")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--output", type=Path, default=REPO / "bench/results/routing.json")
    a = p.parse_args(argv)
    kinds = [k for k in a.strategies.split(",") if k]
    bk = backends(a)
    for name, b in bk.items():
        cap = capacity_tps(b, a)
        print(f"backend {name}: {cap:.0f} tokens/s per replica at a full batch, ${b['per_replica_hour']:g}/replica-hour"
              f" -> ${b['per_replica_hour'] / 3600 / cap * 1000:.5f} per 1k tokens at a full batch", flush=True)

    runs: dict[str, dict] = {}
    loadavg_start = os.getloadavg()
    t_start = time.monotonic()
    with Stack("routing", autoscale_interval=a.autoscale_interval * a.time_scale) as stack:
        print(f"stack up (logs: {stack.logdir})", flush=True)
        for strategy in kinds:
            runs[strategy] = run_strategy(stack, strategy, a, bk)
    wall = time.monotonic() - t_start

    print(f"\nRouting strategies with autoscaling: fast (${a.fast_price:g}/h) + slow (${a.slow_price:g}/h), each "
          f"1..{a.max_replicas} replicas (runningRequests target {a.target:g}, scale to zero after "
          f"{a.idle_seconds:g} s, {a.load_seconds:g} s model load); {a.rps:g} req/s open-loop Poisson for "
          f"{a.warmup + a.measure:g} s, the last {a.measure:g} s measured; TTFT SLO {a.slo_ms:g} ms")
    print(f"{'strategy':<9} {'window':<9} {'sent':>5} {'fail':>4} {'p50 ms':>7} {'p95 ms':>7} {'in SLO':>7} "
          f"{'fast %':>7} {'slow %':>7} {'fast r-s':>9} {'slow r-s':>9} {'$/hour':>7} {'changes/min':>12}")
    for s, r in runs.items():
        for label in ("trace", "measured"):
            x = r[label]
            print(f"{s:<9} {label:<9} {x['sent']:>5} {x['failed']:>4} {x['ttft_p50_ms']:>7} {x['ttft_p95_ms']:>7} "
                  f"{x['within_slo']:>7.1%} {100 * (x['share']['fast'] or 0):>6.1f}% "
                  f"{100 * (x['share']['slow'] or 0):>6.1f}% {x['replica_seconds']['fast']:>9.0f} "
                  f"{x['replica_seconds']['slow']:>9.0f} {x['dollars_per_hour']:>7.2f} "
                  f"{x['weight_changes_per_minute']:>12.1f}")
    ref = runs.get("weighted")
    if ref:
        for s, r in runs.items():
            if s != "weighted":
                print(f"  {s} vs weighted 50/50: dollars {r['trace']['dollars'] / ref['trace']['dollars'] - 1:+.0%} "
                      f"over the trace, {r['measured']['dollars'] / ref['measured']['dollars'] - 1:+.0%} measured; "
                      f"p95 TTFT {r['trace']['ttft_p95_ms'] / ref['trace']['ttft_p95_ms'] - 1:+.0%}")

    result = {
        "bench": "routing",
        "time_scale": a.time_scale,
        "wall_seconds": round(wall, 1),
        "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
        "dollars_definition": "sum_b replica_seconds_b * perReplicaHour_b / 3600; a replica counts while its pod "
                              "exists and is not terminating (loading included)",
        "backends": {n: {**b, "sim_args": [str(x) for x in sim_args(b, a)], "autoscaling": autoscaling(a),
                         "full_batch_tokens_per_s": round(capacity_tps(b, a), 1)} for n, b in bk.items()},
        "load": {"rps": a.rps, "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens,
                 "arrivals": "Poisson, open loop, streaming", "warmup_s": a.warmup, "measure_s": a.measure,
                 "seed": a.seed},
        "slo_ms": a.slo_ms,
        "autoscale_interval_s": a.autoscale_interval,
        "runs": runs,
    }
    return write_result(a.output, result, f"  (wall {wall:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
