"""Route propagation: a RoutePolicy change written to the API server → Envoy serving it.

Runs the whole path on this machine: the dev cluster (real kube-apiserver, etcd,
controller-manager, scheduler, KWOK), the operator as its own process with its xDS
server, a real Envoy, and two real `llmfleet sim` replicas behind the fake pods.
Each change flips a two-backend policy between 100/0 and 0/100; the time is from just
before the PATCH to the first response served by the newly weighted backend (the old
table sends it nothing, so that response proves the new split is live).

    .venv/bin/python bench/bench_propagation.py [--changes 50]

Prints a table and writes bench/results/propagation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmfleet_devcluster.cluster import DevCluster, free_port, node_pools_from_env  # noqa: E402
from llmfleet_devcluster.envoy import EnvoyProcess  # noqa: E402
from llmfleet_devcluster.operator_process import OperatorProcess  # noqa: E402
from llmfleet_devcluster.simfleet import FleetView  # noqa: E402

from llmfleet.envoy.bootstrap import bootstrap  # noqa: E402

NS = "bench"
MODEL = "chat-bench"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def sim_md(name: str, served: str) -> dict:
    md = next(d for d in yaml.safe_load_all((REPO / "manifests/examples/sim-quickstart.yaml").read_text())
              if d["kind"] == "ModelDeployment")
    md["metadata"] = {"name": name, "namespace": NS}
    md["spec"]["model"]["servedName"] = served
    md["spec"]["engine"]["extraArgs"] += ["--time-scale", "0"]
    return md


def weights_patch(first: int) -> dict:
    return {"spec": {"backends": [{"modelDeployment": "a", "weight": first},
                                  {"modelDeployment": "b", "weight": 100 - first}]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=10.0, help="give up on one change after this long")
    parser.add_argument("--output", type=Path, default=REPO / "bench/results/propagation.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="llmfleet-bench-propagation-"))
    cluster = DevCluster(node_pools_from_env(), workdir=work / "cluster").start()
    stack = []
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.wait_established("routepolicies.llmfleet.io", "modeldeployments.llmfleet.io")
        operator = OperatorProcess(cluster.kubeconfig, cluster.logdir)
        operator.start()
        stack.append(operator.stop)
        fleet = FleetView(cluster.logdir)
        envoy = EnvoyProcess(bootstrap("127.0.0.1", operator.xds_port, "bench", free_port()), work / "envoy")
        envoy.start()
        stack.append(envoy.stop)
        envoy.wait_ready(timeout=60)
        url = f"http://127.0.0.1:{operator.envoy_listener_port}/v1/chat/completions"

        cluster.kubectl("create", "namespace", NS)
        docs = [sim_md("a", "model-a"), sim_md("b", "model-b"), {
            "apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "chat", "namespace": NS},
            "spec": {"model": MODEL, "backends": weights_patch(100)["spec"]["backends"]}}]
        deadline = time.monotonic() + 60
        while cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("could not apply the bench objects")
            time.sleep(0.5)  # the namespace's default ServiceAccount may not exist yet
        fleet.wait_ready(2, NS, timeout=60)

        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        http = httpx.Client(timeout=5)

        def served() -> str | None:
            try:
                r = http.post(url, json=body)
                return r.json().get("model") if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        deadline = time.monotonic() + 60
        while served() != "model-a":
            if time.monotonic() > deadline:
                raise RuntimeError("Envoy never served the initial route")
            time.sleep(0.1)

        samples: list[float] = []
        probes: list[int] = []
        for i in range(args.changes):
            first = 0 if i % 2 == 0 else 100
            expected = "model-b" if first == 0 else "model-a"
            t0 = time.perf_counter()
            custom.patch_namespaced_custom_object("llmfleet.io", "v1alpha1", NS, "routepolicies", "chat",
                                                  weights_patch(first))
            n = 0
            while True:
                n += 1
                if served() == expected:
                    break
                if time.perf_counter() - t0 > args.timeout:
                    raise RuntimeError(f"change {i}: Envoy did not serve {expected} within {args.timeout}s")
            samples.append(time.perf_counter() - t0)
            probes.append(n)
            time.sleep(0.2)  # let the status writes of this change settle before the next one
        http.close()
        api.close()
    finally:
        for stop in reversed(stack):
            stop()
        cluster.stop()

    ms = [s * 1000 for s in samples]
    result = {
        "bench": "route-propagation",
        "changes": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(percentile(ms, 90), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "mean_probes": round(statistics.mean(probes), 1),
        "goal": "p99 < 1000 ms",
        "goal_met": percentile(ms, 99) < 1000,
        "loadavg": os.getloadavg(),
        "samples_ms": [round(x, 1) for x in ms],
    }
    print("\nRoutePolicy change (PATCH to the API server) -> Envoy serving the new split")
    print(f"{'changes':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  goal p99 < 1000 ms")
    print(f"{result['changes']:>8} {result['p50_ms']:>8} {result['p90_ms']:>8} {result['p99_ms']:>8} "
          f"{result['max_ms']:>8}  {'met' if result['goal_met'] else 'NOT met'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
