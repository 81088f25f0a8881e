"""The control plane at scale: N ModelDeployments + M RoutePolicies converge on the dev cluster.

    .venv/bin/python bench/bench_scale.py                 # 1,000 MDs + 200 RPs (5 backends each)
    .venv/bin/python bench/bench_scale.py --models 200    # smaller

A dev cluster of fake H100 nodes (KWOK) gets `kubectl apply --server-side` of N `vllm`
ModelDeployments of 1 replica and N/5 RoutePolicies of 5 backends each, plus a probe
policy over two `sim` ModelDeployments whose real replicas answer. `llmfleet run`
runs as its own process with a ServiceAccount's token, so the API server's audit log
holds every request it makes, and an Envoy is connected to its xDS server.

Measured, from the moment the apply returns:
- time until every ModelDeployment is Ready and every RoutePolicy Programmed;
- reconcile latency p50/p99 (the operator's own histogram);
- the operator's peak RSS (VmHWM);
- the operator's API requests by verb, during convergence and over 60 s of idle
  afterwards (from the audit log; watch requests listed apart);
- RoutePolicy PATCH → Envoy serving the new split, p50/p99, at that size.
Prints a table and writes JSON (bench/results/scale.json).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from llmfleet_devcluster.cluster import DevCluster, NodePool, free_port
from llmfleet_devcluster.envoy import EnvoyProcess
from llmfleet_devcluster.operator_process import OperatorProcess
from llmfleet_devcluster.simfleet import FleetView

from fleet import REPO, percentile, route_policy, sim_md, write_result
from llmfleet.envoy.bootstrap import bootstrap

NS = "scale"
SA = "llmfleet-bench"
PROBE_MODEL = "probe-bench"
GOALS = {"converge_seconds": 60, "peak_rss_mib": 300, "idle_requests_per_second": 1.0, "propagation_p99_ms": 1000}


def vllm_md(name: str) -> dict:
    return {"apiVersion": "llmfleet.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "servedName": name},
                     "engine": {"kind": "vllm"}, "replicas": 1,
                     "accelerator": {"product": "NVIDIA-H100-80GB-HBM3"}}}


def objects(models: int, per_policy: int) -> list[dict]:
    docs: list[dict] = [vllm_md(f"m{i:04d}") for i in range(models)]
    for p in range(models // per_policy):
        backends = [{"modelDeployment": f"m{i:04d}", "weight": 20}
                    for i in range(p * per_policy, (p + 1) * per_policy)]
        docs.append(route_policy(NS, f"r{p:04d}", f"public-{p:04d}", backends))
    docs += [sim_md(NS, "probe-a", "probe-a", ["--time-scale", "0"]), sim_md(NS, "probe-b", "probe-b",
                                                                            ["--time-scale", "0"])]
    docs.append(route_policy(NS, "probe", PROBE_MODEL, probe_backends(100)))
    return docs


def probe_backends(first: int) -> list[dict]:
    return [{"modelDeployment": "probe-a", "weight": first}, {"modelDeployment": "probe-b", "weight": 100 - first}]


def service_account_kubeconfig(cluster: DevCluster, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (audited), not as the admin."""
    cluster.kubectl("create", "serviceaccount", SA, "-n", "default")
    cluster.kubectl("create", "clusterrolebinding", SA, "--clusterrole=cluster-admin",
                    f"--serviceaccount=default:{SA}")
    token = cluster.kubectl("create", "token", SA, "-n", "default", "--duration=4h").stdout.strip()
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def audit_counts(audit_log: Path, user: str, start: float, end: float) -> collections.Counter:
    """Requests by `verb resource` in [start, end) (wall-clock seconds)."""
    import datetime as dt

    counts: collections.Counter = collections.Counter()
    with open(audit_log) as f:
        for line in f:
            event = json.loads(line)
            if event["user"]["username"] != user or event.get("stage") != "ResponseComplete":
                continue
            at = dt.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if start <= at < end:
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", event["requestURI"]) + (f"/{ref['subresource']}"
                                                                       if ref.get("subresource") else "")
                counts[f"{event['verb']} {resource}"] += 1
    return counts


def by_verb(counts: collections.Counter) -> dict[str, int]:
    verbs: collections.Counter = collections.Counter()
    for key, n in counts.items():
        verbs[key.split()[0]] += n
    return dict(sorted(verbs.items()))


def histogram_quantiles(metrics: str, name: str, kind: str) -> dict[str, float | None]:
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket") and f'kind="{kind}"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out: dict[str, float | None] = {}
    for q in (0.5, 0.99):
        rank = q * total
        out[f"p{int(q * 100)}_ms"] = next((round(le * 1000, 1) for le, c in buckets if c >= rank), None) \
            if total else None
    out["count"] = total
    return out


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--backends-per-policy", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--changes", type=int, default=20, help="RoutePolicy PATCHes for the propagation probe")
    parser.add_argument("--timeout", type=float, default=900, help="give up converging after this long")
    parser.add_argument("--output", type=Path, default=REPO / "bench/results/scale.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="llmfleet-bench-scale-"))
    nodes = max(4, -(-(args.models + 10) // 100))  # 100 pods a node at most
    pools = (NodePool("gpu-h100", nodes, 128, "NVIDIA-H100-80GB-HBM3", cpu="512", memory="4096Gi", pods=110),)
    cluster = DevCluster(pools, workdir=work / "cluster", system_node=False).start()
    stops = []
    result: dict = {"bench": "control-plane-scale", "models": args.models,
                    "policies": args.models // args.backends_per_policy,
                    "backends_per_policy": args.backends_per_policy}
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.wait_established("routepolicies.llmfleet.io", "modeldeployments.llmfleet.io", timeout=30)
        kubeconfig = service_account_kubeconfig(cluster, work / "operator.kubeconfig")
        operator = OperatorProcess(kubeconfig, cluster.logdir)
        operator.autoscale_interval = 5.0  # the default: what a user runs
        operator.start()
        stops.append(operator.stop)
        envoy = EnvoyProcess(bootstrap("127.0.0.1", operator.xds_port, "bench", free_port()), work / "envoy")
        envoy.start()
        stops.append(envoy.stop)
        envoy.wait_ready(timeout=60)
        user = f"system:serviceaccount:default:{SA}"

        cluster.kubectl("create", "namespace", NS)
        docs = objects(args.models, args.backends_per_policy)
        manifest = work / "objects.yaml"
        manifest.write_text(yaml.safe_dump_all(docs))
        applied_at = time.time()
        t0 = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-f", str(manifest), timeout=600)
        apply_seconds = time.monotonic() - t0
        t0, converged_at = time.monotonic(), time.time()
        converged = False
        while time.monotonic() - t0 < args.timeout:
            mds = json.loads(cluster.kubectl("get", "md", "-n", NS, "-o", "json", timeout=120).stdout)["items"]
            rps = json.loads(cluster.kubectl("get", "rp", "-n", NS, "-o", "json", timeout=120).stdout)["items"]
            ready = sum(any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (m.get("status") or {}).get("conditions", [])) for m in mds)
            programmed = sum(any(c["type"] == "Programmed" and c["status"] == "True"
                                 for c in (r.get("status") or {}).get("conditions", [])) for r in rps)
            print(f"\r{time.monotonic() - t0:6.1f} s: {ready}/{len(mds)} Ready, {programmed}/{len(rps)} Programmed",
                  end="", flush=True)
            if len(mds) == len([d for d in docs if d["kind"] == "ModelDeployment"]) and ready == len(mds) \
                    and programmed == len(rps) == len([d for d in docs if d["kind"] == "RoutePolicy"]):
                converged, converged_at = True, time.time()
                break
            time.sleep(1.0)
        print()
        result.update(apply_seconds=round(apply_seconds, 1), converged=converged,
                      converge_seconds=round(converged_at - applied_at - apply_seconds, 1) if converged else None)
        metrics = operator.metrics()
        result["reconcile_ModelDeployment"] = histogram_quantiles(metrics, "llmfleet_reconcile_duration_seconds",
                                                                   "ModelDeployment")
        result["reconcile_RoutePolicy"] = histogram_quantiles(metrics, "llmfleet_reconcile_duration_seconds",
                                                               "RoutePolicy")
        converging = audit_counts(cluster.audit_log, user, applied_at, converged_at)
        result["requests_converging"] = by_verb(converging)
        result["requests_converging_top"] = dict(converging.most_common(12))

        # Idle: nothing changes; what does the operator still ask?
        time.sleep(5)
        idle_start = time.time()
        time.sleep(args.idle_seconds)
        idle = audit_counts(cluster.audit_log, user, idle_start, time.time())
        non_watch = sum(n for k, n in idle.items() if not k.startswith("watch "))
        result["requests_idle"] = by_verb(idle)
        result["requests_idle_top"] = dict(idle.most_common(12))
        result["idle_requests_per_second"] = round(non_watch / args.idle_seconds, 2)

        # Propagation at this size: PATCH the probe policy, wait until Envoy serves it.
        FleetView(cluster.logdir).wait_ready(2, NS, timeout=60)
        url = f"http://127.0.0.1:{operator.envoy_listener_port}/v1/chat/completions"
        body = {"model": PROBE_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        samples: list[float] = []
        with httpx.Client(timeout=5) as http:
            def served() -> str | None:
                try:
                    r = http.post(url, json=body)
                    return r.json().get("model") if r.status_code == 200 else None
                except httpx.HTTPError:
                    return None

            for i in range(args.changes):
                first = 0 if i % 2 == 0 else 100
                expected = "probe-b" if first == 0 else "probe-a"
                t0 = time.perf_counter()
                cluster.kubectl("patch", "rp", "probe", "-n", NS, "--type=merge", "-p",
                                json.dumps({"spec": {"backends": probe_backends(first)}}))
                while served() != expected:
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError(f"change {i}: Envoy did not serve {expected} within 30 s")
                samples.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.3)
        result["propagation_ms"] = {"p50": round(percentile(samples, 50), 1), "p99": round(percentile(samples, 99), 1),
                                    "max": round(max(samples), 1), "changes": len(samples)}
        assert operator.proc is not None
        peak, current = rss_mib(operator.proc.pid)
        result["operator_rss_mib"] = {"peak": round(peak, 1), "end": round(current, 1)}
    finally:
        for stop in reversed(stops):
            stop()
        cluster.stop()

    result["goals"] = GOALS
    result["goals_met"] = {
        "converge_seconds": bool(result.get("converge_seconds") is not None
                                 and result["converge_seconds"] < GOALS["converge_seconds"]),
        "peak_rss_mib": result.get("operator_rss_mib", {}).get("peak", 1e9) < GOALS["peak_rss_mib"],
        "idle_requests_per_second": result.get("idle_requests_per_second", 1e9) < GOALS["idle_requests_per_second"],
        "propagation_p99_ms": result.get("propagation_ms", {}).get("p99", 1e9) < GOALS["propagation_p99_ms"],
    }
    result["loadavg"] = os.getloadavg()
    print(f"\n{result['models']} ModelDeployments + {result['policies']} RoutePolicies "
          f"({result['backends_per_policy']} backends each), apply {result.get('apply_seconds')} s")
    rows = [
        ("all Ready + Programmed after the apply", f"{result.get('converge_seconds')} s", "< 60 s",
         result["goals_met"]["converge_seconds"]),
        ("operator peak RSS", f"{result.get('operator_rss_mib', {}).get('peak')} MiB", "< 300 MiB",
         result["goals_met"]["peak_rss_mib"]),
        ("API requests at idle (watches aside)", f"{result.get('idle_requests_per_second')}/s", "< 1/s",
         result["goals_met"]["idle_requests_per_second"]),
        ("RoutePolicy PATCH -> Envoy, p99", f"{result.get('propagation_ms', {}).get('p99')} ms", "< 1000 ms",
         result["goals_met"]["propagation_p99_ms"]),
    ]
    for label, value, goal, met in rows:
        print(f"  {label:<42} {value:>12}   goal {goal:<10} {'met' if met else 'NOT met'}")
    for kind in ("ModelDeployment", "RoutePolicy"):
        q = result.get(f"reconcile_{kind}", {})
        print(f"  reconcile {kind:<32} p50 {q.get('p50_ms')} ms, p99 {q.get('p99_ms')} ms ({q.get('count')})")
    print(f"  requests while converging: {result.get('requests_converging')}")
    print(f"  requests at idle ({args.idle_seconds:.0f} s): {result.get('requests_idle')}")
    return write_result(args.output, result)


if __name__ == "__main__":
    sys.exit(main())
