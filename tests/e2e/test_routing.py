"""kubectl apply of a RoutePolicy → the operator → xDS → Envoy → the right replicas."""

from __future__ import annotations

import collections
import copy
import json
import time

import httpx
import pytest

from tests.helpers import Load, kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES, apply, load_md, wait_ready

N = 1000


def sim_md(name: str, served: str) -> dict:
    manifest = copy.deepcopy(load_md(EXAMPLES / "sim-quickstart.yaml"))
    manifest["metadata"] = {"name": name}
    manifest["spec"]["model"]["servedName"] = served
    manifest["spec"]["engine"]["extraArgs"] += ["--time-scale", "0.01"]
    return manifest


def policy(weights: dict[str, int]) -> dict:
    return {
        "apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "chat"},
        "spec": {"model": "chat-e2e", "strategy": "weighted",
                 "backends": [{"modelDeployment": k, "weight": v} for k, v in weights.items()]},
    }


def served_by(url: str, n: int, concurrency: int = 16) -> collections.Counter:
    """Which served model answered each of `n` requests for the public name."""
    import asyncio

    async def run():
        counts: collections.Counter = collections.Counter()
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def one():
                async with sem:
                    r = await client.post("/v1/chat/completions", json={
                        "model": "chat-e2e", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
                    counts[r.json().get("model") if r.status_code == 200 else r.status_code] += 1
            await asyncio.gather(*(one() for _ in range(n)))
        return counts

    return asyncio.run(run())


def programmed(cluster, ns, weights: dict[str, int] | None = None) -> bool:
    """Programmed=True, and (with `weights`) in a status whose backends have those weights
    and a ready replica each: Programmed alone may be of a route one backend is not in yet
    (a backend joins the split once it has a ready endpoint)."""
    status = kubectl_json(cluster, "get", "rp", "chat", "-n", ns).get("status", {})
    if not any(c["type"] == "Programmed" and c["status"] == "True" for c in status.get("conditions", [])):
        return False
    rows = {row.get("modelDeployment"): row for row in status.get("backends", [])}
    return all(rows.get(name, {}).get("weight") == w and rows[name].get("readyReplicas", 0) >= 1
               for name, w in (weights or {}).items())


@pytest.fixture
def routed(dev_cluster, operator, fleet, envoy, namespace):
    for name, served in (("small", "llama-8b"), ("big", "llama-70b")):
        assert apply(dev_cluster, namespace, sim_md(name, served)).returncode == 0
    for name in ("small", "big"):
        wait_ready(dev_cluster, namespace, name)
    fleet.wait_ready(2, namespace)
    weights = {"small": 80, "big": 20}
    apply(dev_cluster, namespace, policy(weights))
    wait_for(lambda: programmed(dev_cluster, namespace, weights),
             what="RoutePolicy Programmed=True, both backends ready at 80/20")
    return namespace


def test_policy_split_reaches_the_replicas_through_envoy(dev_cluster, envoy, routed):
    counts = served_by(envoy.url, N)
    assert sum(counts.values()) == N and set(counts) == {"llama-8b", "llama-70b"}, counts
    assert abs(counts["llama-8b"] / N - 0.80) <= 0.04, counts


def test_weight_change_is_served_quickly_and_survives_operator_restart(dev_cluster, operator, envoy, routed):
    ns = routed
    dev_cluster.kubectl("patch", "rp", "chat", "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": policy({"small": 0, "big": 100})["spec"]}))
    start = time.monotonic()
    wait_for(lambda: served_by(envoy.url, 20) == {"llama-70b": 20}, timeout=10, interval=0.02,
             what="all traffic on big")
    print(f"\nRoutePolicy change served by Envoy after {time.monotonic() - start:.3f} s")

    operator.stop()
    assert served_by(envoy.url, 100) == {"llama-70b": 100}, "Envoy stopped routing without the operator"
    dev_cluster.kubectl("patch", "rp", "chat", "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"backends": [{"modelDeployment": "small", "weight": 100},
                                                          {"modelDeployment": "big", "weight": 0}]}}))
    assert served_by(envoy.url, 50) == {"llama-70b": 50}, "changed without an operator"
    operator.start()
    wait_for(lambda: served_by(envoy.url, 20) == {"llama-8b": 20}, timeout=30, what="the restarted operator's routes")
    wait_for(lambda: programmed(dev_cluster, ns), what="Programmed=True again")


def test_an_operator_restart_leaves_the_route_and_its_programmed_condition_alone(
        dev_cluster, operator, envoy, routed):
    """Versions name content and Programmed waits for Envoys to reconnect: a restart with
    nothing changed moves neither the condition's transition time nor the split."""
    ns = routed

    def condition() -> dict:
        status = kubectl_json(dev_cluster, "get", "rp", "chat", "-n", ns).get("status", {})
        return next(c for c in status["conditions"] if c["type"] == "Programmed")

    def connected_envoys() -> float:
        """Envoys connected to any operator replica (one that does not answer its metrics
        yet counts none: the wait polls again)."""
        def connected(pod: dict) -> float:
            try:
                text = operator.metrics(pod)
            except httpx.HTTPError:
                return 0
            return sum(float(line.split()[1]) for line in text.splitlines()
                       if line.startswith("llmfleet_xds_connected_envoys "))
        return sum(connected(pod) for pod in operator.ready_pods())

    def transition() -> tuple:
        c = condition()
        return c["status"], c["reason"], c["lastTransitionTime"], c["observedGeneration"]

    before = transition()
    assert before[0] == "True"
    envoys = len([p for p in operator.release.pods("ingress") if not p["metadata"].get("deletionTimestamp")])
    operator.restart()
    wait_for(lambda: connected_envoys() >= envoys, timeout=60, what="every Envoy to reconnect to a restarted replica")
    time.sleep(3)  # the restarted operator's route table, its push and the status it writes
    assert transition() == before
    counts = served_by(envoy.url, 200)
    assert set(counts) == {"llama-8b", "llama-70b"}, counts


def test_a_replica_killed_under_load_costs_no_request(dev_cluster, fleet, envoy, routed):
    ns = routed
    dev_cluster.kubectl("scale", "md/small", "--replicas=2", "-n", ns)
    wait_ready(dev_cluster, ns, "small", 2)
    fleet.wait_ready(3, ns)
    wait_for(lambda: len(kubectl_json(dev_cluster, "get", "rp", "chat", "-n", ns)["status"]["backends"]) == 2
             and kubectl_json(dev_cluster, "get", "rp", "chat", "-n", ns)["status"]["backends"][0]["readyReplicas"] == 2,
             what="both small replicas in the route")
    victim = next(p["metadata"]["name"] for p in kubectl_json(
        dev_cluster, "get", "pods", "-n", ns, "-l", "llmfleet.io/model-deployment=small")["items"])

    import threading

    killer = threading.Timer(0.3, fleet.kill, args=(f"{ns}/{victim}",))
    killer.start()
    counts = served_by(envoy.url, 600, concurrency=8)
    killer.join()
    assert sum(v for k, v in counts.items() if isinstance(k, str)) == 600, counts


def test_a_replica_pod_deleted_under_load_costs_no_request(dev_cluster, fleet, envoy, routed):
    """`kubectl delete pod` of a serving replica while 8 clients keep sending through the
    ingress: the pod leaves Envoy's endpoints, drains, and no request fails."""
    ns = routed
    dev_cluster.kubectl("scale", "md/small", "--replicas=2", "-n", ns)
    wait_ready(dev_cluster, ns, "small", 2)
    fleet.wait_ready(3, ns)
    victim = next(p["metadata"]["name"] for p in kubectl_json(
        dev_cluster, "get", "pods", "-n", ns, "-l", "llmfleet.io/model-deployment=small")["items"])
    with Load(envoy.url, "chat-e2e", concurrency=8, max_tokens=100, max_seconds=90) as load:
        wait_for(lambda: load.ok >= 100, timeout=30, what="the load to run")
        dev_cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")
        wait_for(lambda: victim not in {p["metadata"]["name"] for p in kubectl_json(
            dev_cluster, "get", "pods", "-n", ns, "-l", "llmfleet.io/model-deployment=small")["items"]},
            timeout=60, what="the deleted pod to be gone")
        before = load.sent
        wait_for(lambda: load.sent >= before + 100, timeout=30, what="requests after the pod went")
    print(f"\nkubectl delete pod under load: {load.sent} requests, {load.failed} failed ({dict(load.outcomes)})")
    assert load.failed == 0, dict(load.outcomes)
