"""Cascade: what a weak → strong cascade through Envoy keeps of the strong model's quality,
and at what cost, on the quality-aware simulator.

Two ``llmfleet sim`` processes play a pair whose accuracies differ as RouteLLM's GSM8K
pair does (``--accuracy 0.64`` and ``0.86``, the default ``--confidence-noise``), behind
a real Envoy programmed by our xDS server with a ``cascade`` route (weak first). The
prompts are split in two halves by a seeded shuffle:

1. **Calibration** (first half): each prompt goes straight to each sim; the weak answer's
   mean token logprob and both verdicts give the quality–cost curve over thresholds.
   The threshold is the cheapest one (fewest escalations) that keeps at least ``--keep``
   of strong-only quality on this half with 95 % confidence (a one-sided bound on the
   paired per-prompt differences): the bare estimate on one half overshoots on the
   other by a few points.
2. **Report** (second half): the same curve, offline, against weak-only, strong-only and
   a random split at equal cost; then every prompt through Envoy's cascade at the chosen
   threshold: quality (answers scored against the gold answer), escalation share, cost,
   and the latency escalations add (cascade latency of escalated requests minus the
   strong model's own latency, p50/p95).

Cost is per call, in units of a weak call: a strong call costs ``--price-ratio`` (100 by
default: RouteLLM's GPT-4 vs Mixtral 8x7B prices differ about that much); answers have
the same length on both. A cascade request costs a weak call, plus a strong call when
escalated. Prints tables and writes ``bench/results/cascade.json``.

    .venv/bin/python bench/bench_cascade.py          # ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from llmfleet_devcluster.cluster import free_port
from llmfleet_devcluster.envoy import EnvoyProcess
from llmfleet_devcluster.waiting import stop_process
from llmfleet_devcluster.xds import BackgroundXdsServer
from prometheus_client import CollectorRegistry

from bench_sim import start_server
from fleet import percentile, write_result
from llmfleet.envoy.bootstrap import bootstrap
from llmfleet.routing.table import Cascade, CascadeStage, Cluster, Endpoint, Route, RouteTable, WeightedBackend
from llmfleet.sim.quality import score

LOCALHOST = "127.0.0.1"
RESULT = Path(__file__).resolve().parent / "results" / "cascade.json"
WEAK, STRONG = ("weak", "model-weak", 0.64), ("strong", "model-strong", 0.86)


def prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    items = [f"Word problem {i}: a baker sells {i % 17 + 3} trays of {i % 11 + 5} rolls; how many rolls?"
             for i in range(n)]
    random.Random(seed).shuffle(items)
    return items[: n // 2], items[n // 2:]


async def ask(client: httpx.AsyncClient, url: str, model: str, prompt: str, logprobs: bool) -> dict:
    start = time.perf_counter()
    body: dict = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if logprobs:
        body["logprobs"] = True
    r = await client.post(f"{url}/v1/chat/completions", json=body)
    r.raise_for_status()
    answer = r.json()
    choice = answer["choices"][0]
    logs = [t["logprob"] for t in ((choice.get("logprobs") or {}).get("content") or [])]
    return {"prompt": prompt, "correct": score(choice["message"]["content"], prompt),
            "mean_logprob": sum(logs) / len(logs) if logs else None, "seconds": time.perf_counter() - start,
            "stage": r.headers.get("x-llmfleet-cascade-stage")}


async def ask_all(url: str, model: str, items: list[str], *, logprobs: bool = False,
                  concurrency: int = 8) -> list[dict]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        async def one(prompt: str) -> dict:
            async with limit:
                return await ask(client, url, model, prompt, logprobs)
        return await asyncio.gather(*(one(p) for p in items))


def curve(weak: list[dict], strong: list[dict], price_ratio: float, keep: float) -> list[dict]:
    """Quality and cost at each threshold (every distinct weak mean logprob, plus never).

    ``sure`` says whether the cascade keeps at least ``keep`` of strong-only quality with
    95 % confidence on these prompts (one-sided, on the paired per-prompt differences
    cascade - keep x strong), so a threshold chosen on one half holds on the other."""
    n = len(weak)
    strong_ok = {r["prompt"]: r["correct"] for r in strong}
    strong_quality = sum(strong_ok.values()) / n
    points = []
    for t in sorted({r["mean_logprob"] for r in weak} | {float("-inf")}):
        right = [strong_ok[r["prompt"]] if r["mean_logprob"] < t else r["correct"] for r in weak]
        share = sum(r["mean_logprob"] < t for r in weak) / n
        quality = sum(right) / n
        diffs = [c - keep * strong_ok[r["prompt"]] for c, r in zip(right, weak, strict=True)]
        mean = sum(diffs) / n
        sd = (sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)) ** 0.5
        cost = (1 + share * price_ratio) / price_ratio  # relative to strong-only
        points.append({"threshold": t, "escalated": share, "quality": quality,
                       "kept": quality / strong_quality if strong_quality else None, "cost": cost,
                       "sure": mean - 1.645 * sd / n ** 0.5 >= 0})
    return points


def random_split_quality(cost: float, weak_quality: float, strong_quality: float, price_ratio: float) -> float:
    """A random split between the two at the same cost (no weak call for the strong share)."""
    strong_share = min(1.0, max(0.0, (cost * price_ratio - 1) / (price_ratio - 1)))
    return (1 - strong_share) * weak_quality + strong_share * strong_quality


def choose(points: list[dict]) -> dict:
    """The cheapest threshold that surely keeps the quality asked for (else the best one)."""
    good = [p for p in points if p["sure"]]
    return min(good, key=lambda p: p["escalated"]) if good else max(points, key=lambda p: p["quality"])


def cascade_table(threshold: float, ports: dict[str, int]) -> RouteTable:
    stages = tuple(CascadeStage(name, f"bench/{name}", served) for name, served, _ in (WEAK, STRONG))
    clusters = tuple(Cluster(f"bench/{name}", served, (Endpoint(LOCALHOST, ports[name]),))
                     for name, served, _ in (WEAK, STRONG))
    route = Route("chat", (WeightedBackend("bench/strong", 100),),
                  cascade=Cascade(stages, min_mean_logprob=threshold))
    return RouteTable((route,), clusters)


def run_split(seed: int, args: argparse.Namespace, direct: dict[str, str], ports: dict[str, int],
              xds: BackgroundXdsServer, url: str) -> dict:
    """Calibrate on one half, report on the other (directly and through Envoy's cascade)."""
    calibrate, report = prompts(args.prompts, seed)
    cal_weak = asyncio.run(ask_all(direct["weak"], "model-weak", calibrate, logprobs=True))
    cal_strong = asyncio.run(ask_all(direct["strong"], "model-strong", calibrate))
    chosen = choose(curve(cal_weak, cal_strong, args.price_ratio, args.keep))
    rep_weak = asyncio.run(ask_all(direct["weak"], "model-weak", report, logprobs=True))
    rep_strong = asyncio.run(ask_all(direct["strong"], "model-strong", report))
    xds.wait_acked(xds.update(cascade_table(chosen["threshold"], ports)), timeout=20)
    through = asyncio.run(ask_all(url, "chat", report))

    n = len(report)
    weak_q = sum(r["correct"] for r in rep_weak) / n
    strong_q = sum(r["correct"] for r in rep_strong) / n
    escalated = [r for r in through if r["stage"] == "strong"]
    quality = sum(r["correct"] for r in through) / n
    share = len(escalated) / n
    strong_seconds = sorted(r["seconds"] for r in rep_strong)
    added = {f"p{q}": (percentile(sorted(r["seconds"] for r in escalated), q) or 0)
             - (percentile(strong_seconds, q) or 0) for q in (50, 95)} if escalated else {}
    return {"seed": seed, "threshold": chosen["threshold"], "calibration_point": chosen,
            "curve": curve(rep_weak, rep_strong, args.price_ratio, args.keep),
            "weak_only": weak_q, "strong_only": strong_q, "quality": quality, "kept": quality / strong_q,
            "escalated": share, "cost": (1 + share * args.price_ratio) / args.price_ratio,
            "added_latency_s": added,
            "goal_met": quality / strong_q >= args.keep and (1 + share * args.price_ratio) / args.price_ratio <= 0.5}


def print_curve(split: dict, args: argparse.Namespace) -> None:
    points = split["curve"]
    print(f"\nSplit seed {split['seed']}, report half: the whole quality-cost curve over thresholds\n")
    print(f"{'mean-logprob threshold':>22} {'escalated':>9} {'quality':>8} {'of strong':>9} {'cost':>6} "
          f"{'random split, same cost':>24}")
    for p in [*points[:: max(1, len(points) // 15)], points[-1]]:
        t = "never" if p["threshold"] == float("-inf") else f"{p['threshold']:.3f}"
        rnd = random_split_quality(p["cost"], split["weak_only"], split["strong_only"], args.price_ratio)
        print(f"{t:>22} {p['escalated']:>9.0%} {p['quality']:>8.1%} {p['kept']:>9.1%} {p['cost']:>6.1%} {rnd:>24.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000, help="prompts, half to calibrate and half to report")
    ap.add_argument("--keep", type=float, default=0.95, help="share of strong-only quality the threshold keeps")
    ap.add_argument("--price-ratio", type=float, default=100.0, help="a strong call's cost in weak calls")
    ap.add_argument("--time-scale", type=float, default=0.05, help="the sims' --time-scale")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7],
                    help="one calibration/report split per seed")
    args = ap.parse_args()

    procs, ports = {}, {}
    for name, served, accuracy in (WEAK, STRONG):
        procs[name], ports[name] = start_server(None, ["--served-model-name", served, "--accuracy", str(accuracy),
                                                       "--output-tokens", "64", "--time-scale", str(args.time_scale)])
    listener = free_port()
    xds = BackgroundXdsServer(listener_port=listener, listener_address=LOCALHOST, registry=CollectorRegistry())
    workdir = Path(tempfile.mkdtemp(prefix="bench-cascade-"))
    envoy = EnvoyProcess(bootstrap(LOCALHOST, xds.start(LOCALHOST, 0), "bench-cascade", free_port()), workdir)
    try:
        direct = {name: f"http://{LOCALHOST}:{port}" for name, port in ports.items()}
        version = xds.update(cascade_table(0.0, ports))
        envoy.start()
        envoy.wait_ready()
        xds.wait_acked(version, timeout=20)
        splits = [run_split(seed, args, direct, ports, xds, f"http://{LOCALHOST}:{listener}") for seed in args.seeds]
    finally:
        envoy.stop()
        xds.close()
        for proc in procs.values():
            stop_process(proc)

    n = args.prompts // 2
    print(f"\nCascade weak ({WEAK[2]:.0%}) -> strong ({STRONG[2]:.0%}) through Envoy; per split, the threshold is "
          f"chosen on {n} calibration prompts and reported on the other {args.prompts - n}\n")
    print(f"{'split':>6} {'threshold':>9} {'weak only':>9} {'strong':>7} {'cascade':>8} {'of strong':>9} "
          f"{'escalated':>9} {'cost':>6} {'+p50 ms':>8} {'+p95 ms':>8}  goal")
    for r in splits:
        lat = r["added_latency_s"]
        print(f"{r['seed']:>6} {r['threshold']:>9.3f} {r['weak_only']:>9.1%} {r['strong_only']:>7.1%} "
              f"{r['quality']:>8.1%} {r['kept']:>9.1%} {r['escalated']:>9.0%} {r['cost']:>6.1%} "
              f"{lat.get('p50', 0) * 1000:>8.0f} {lat.get('p95', 0) * 1000:>8.0f}  "
              f"{'met' if r['goal_met'] else 'MISSED'}")
    mean = {k: sum(r[k] for r in splits) / len(splits) for k in ("kept", "cost", "escalated")}
    met = sum(r["goal_met"] for r in splits)
    print(f"{'mean':>6} {'':>9} {'':>9} {'':>7} {'':>8} {mean['kept']:>9.1%} {mean['escalated']:>9.0%} "
          f"{mean['cost']:>6.1%}")
    print(f"\ngoal (>= {args.keep:.0%} of strong-only quality at <= 50% of its cost, on the report half): "
          f"met in {met} of {len(splits)} splits")
    print(f"weak only costs {1 / args.price_ratio:.0%} of strong only; a random split at a cascade's cost keeps "
          "what the curve's last column says")
    print_curve(splits[0], args)
    for r in splits:
        r["curve"] = [{**p, "threshold": None if p["threshold"] == float("-inf") else p["threshold"]}
                      for p in r["curve"]]
        r["calibration_point"] = {**r["calibration_point"], "threshold": r["threshold"]}
    result = {"prompts": args.prompts, "price_ratio": args.price_ratio, "keep": args.keep,
              "accuracy": {"weak": WEAK[2], "strong": STRONG[2]}, "splits": splits, "mean": mean,
              "goal_met_splits": met}
    return write_result(RESULT, result)


if __name__ == "__main__":
    sys.exit(main())
