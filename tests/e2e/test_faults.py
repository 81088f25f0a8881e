"""Faults under a steady load through the chart's Envoy: what each one costs in failed
requests, and that the operator's routes follow the cluster again afterwards."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time

import httpx
from llmfleet_devcluster.kubelet import NodeView

from tests.e2e.test_routing import policy, routed, served_by  # noqa: F401 - routed is a fixture
from tests.helpers import Load, kubectl_json, wait_for
from tests.integration.test_modeldeployment import wait_ready


def steady_load(envoy) -> Load:
    """The load every fault runs under: 4 clients, closed loop, bounded in count and time."""
    return Load(envoy.url, "chat-e2e", concurrency=4, max_requests=200_000, max_seconds=240)


def running(load: Load) -> None:
    """Wait until the load runs, or until it has sent 100 more requests than now."""
    before = load.sent
    wait_for(lambda: load.ok >= 100 and load.sent >= before + 100, timeout=30, what="100 more requests")


def api_server_ready(dev_cluster, timeout: float = 60) -> None:
    wait_for(lambda: dev_cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
             timeout=timeout, what="the API server to answer")


def a_change_reaches_envoy(dev_cluster, envoy, ns: str) -> float:
    """Move all of the policy's traffic to big; seconds until Envoy serves it so."""
    start = time.monotonic()
    dev_cluster.kubectl("patch", "rp", "chat", "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": policy({"small": 0, "big": 100})["spec"]}))
    wait_for(lambda: served_by(envoy.url, 20) == {"llama-70b": 20}, timeout=60, interval=0.05,
             what="a RoutePolicy change to reach Envoy")
    return time.monotonic() - start


def served_requests(replica: dict) -> float:
    """Requests a sim replica has answered (its vLLM-style counter); 0 when it cannot tell."""
    try:
        text = httpx.get(f"http://{replica['address']}:{replica['port']}/metrics", timeout=1, trust_env=False).text
    except httpx.HTTPError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def a_new_replica_serves(dev_cluster, fleet, ns: str) -> tuple[float, float]:
    """Scale small 1 → 2: seconds until the new replica was ready, and until it answered
    requests sent through Envoy (the steady load)."""
    before = set(fleet.replicas())
    start = time.monotonic()
    dev_cluster.kubectl("scale", "md/small", "--replicas=2", "-n", ns)
    ready: list[float] = []

    def serving() -> bool:
        for key, replica in fleet.replicas().items():
            if key.startswith(f"{ns}/small-") and key not in before and replica["ready"]:
                ready[:] = ready or [time.monotonic() - start]
                return served_requests(replica) > 0
        return False

    wait_for(serving, timeout=60, interval=0.05, what="the new replica to serve through Envoy")
    return ready[0], time.monotonic() - start


def test_the_api_server_paused_for_20_s_costs_no_request_and_a_later_scale_change_reaches_envoy(
        dev_cluster, operator, fleet, envoy, routed):  # noqa: F811
    ns = routed
    apiserver = next(c for c in dev_cluster.components if c.name == "kube-apiserver")
    with steady_load(envoy) as load:
        running(load)
        os.kill(apiserver.pid, signal.SIGSTOP)
        try:
            time.sleep(20)
        finally:
            os.kill(apiserver.pid, signal.SIGCONT)
        resumed = time.monotonic()
        during = load.sent
        api_server_ready(dev_cluster, timeout=30)
        ready, served = a_new_replica_serves(dev_cluster, fleet, ns)
        total = time.monotonic() - resumed
        running(load)
    print(f"\nAPI server paused 20 s under load: {load.sent} requests ({during} until it resumed), "
          f"{load.failed} failed; a scale change made after it resumed: the new replica ready after {ready:.2f} s, "
          f"serving through Envoy after {served:.2f} s ({total:.2f} s after the API server's return)")
    assert load.failed == 0, dict(load.outcomes)
    assert total <= 5.0, f"the scale change reached Envoy {total:.1f} s after the API server returned"


def container_of(dev_cluster, key: str) -> dict:
    """The one container of system-node pod ``namespace/name``: pid, restarts, ready."""
    return next(iter(NodeView(dev_cluster.logdir).pods()[key]["containers"].values()))


def lease(dev_cluster, release) -> dict:
    return kubectl_json(dev_cluster, "get", "lease", release.operator.deployment, "-n", release.namespace)["spec"]


def renewed_after(spec: dict, when: float) -> bool:
    renewed = dt.datetime.strptime(spec["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return renewed.timestamp() > when


def llmfleet_events(dev_cluster, ns: str) -> list[tuple]:
    """The Events llmfleet wrote in ``ns``: (object, reason, message, count)."""
    return sorted((e["involvedObject"]["name"], e["reason"], e["message"], e.get("count", 1))
                  for e in kubectl_json(dev_cluster, "get", "events", "-n", ns)["items"]
                  if (e.get("source") or {}).get("component", "").startswith("llmfleet"))


def test_the_leader_sigkilled_under_load_costs_no_request_and_a_leader_is_back_within_the_lease_duration(
        dev_cluster, release, operator, envoy, routed):  # noqa: F811
    ns = routed
    leader = operator.pod()["metadata"]["name"]
    follower = next(p["metadata"]["name"] for p in operator.ready_pods() if p["metadata"]["name"] != leader)
    key = f"{release.namespace}/{leader}"
    events_before = llmfleet_events(dev_cluster, ns)
    with steady_load(envoy) as load:
        running(load)
        killed, killed_wall = time.monotonic(), time.time()
        os.kill(container_of(dev_cluster, key)["pid"], signal.SIGKILL)
        # A leader again: the Lease renewed after the kill, by whichever replica won it.
        after = wait_for(lambda: (spec := lease(dev_cluster, release)) and renewed_after(spec, killed_wall) and spec,
                         timeout=60, interval=0.1, what="a replica to hold the Lease again")
        back = time.monotonic() - killed
        time.sleep(5)  # the leader reconciles every ModelDeployment and RoutePolicy once
        events_after = llmfleet_events(dev_cluster, ns)
        took = a_change_reaches_envoy(dev_cluster, envoy, ns)
        running(load)
    who = "the restarted leader" if after["holderIdentity"] == leader else "the follower"
    print(f"\nleader {leader} SIGKILLed under load: {load.sent} requests, {load.failed} failed; "
          f"{after['holderIdentity']} ({who}) led after {back:.1f} s; a RoutePolicy change then reached Envoy "
          f"in {took:.2f} s")
    assert load.failed == 0, dict(load.outcomes)
    assert after["holderIdentity"] in (leader, follower)
    assert back <= 15.0, f"no leader for {back:.1f} s, more than the lease duration (15 s)"
    # Nothing changed, so the new leader has nothing to say and says nothing twice.
    assert events_after == events_before


def test_an_envoy_restarted_while_the_leader_is_down_serves_again_within_5_s(
        dev_cluster, release, operator, envoy, routed):  # noqa: F811
    leader = operator.pod()
    leader_key = f"{release.namespace}/{leader['metadata']['name']}"
    pod = release.pods("ingress")[0]
    envoy_key = f"{release.namespace}/{pod['metadata']['name']}"
    own_url = f"http://{pod['status']['podIP']}:{pod['spec']['containers'][0]['ports'][0]['containerPort']}"
    restarts = container_of(dev_cluster, envoy_key)["restarts"]

    def answers() -> bool:
        try:
            return httpx.post(f"{own_url}/v1/chat/completions", timeout=2, trust_env=False, json={
                "model": "chat-e2e", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
            ).status_code == 200
        except httpx.HTTPError:
            return False

    with steady_load(envoy) as load:
        running(load)
        os.kill(container_of(dev_cluster, leader_key)["pid"], signal.SIGKILL)
        killed = time.monotonic()
        os.kill(container_of(dev_cluster, envoy_key)["pid"], signal.SIGKILL)
        started = wait_for(lambda: container_of(dev_cluster, envoy_key)["restarts"] > restarts and time.monotonic(),
                           timeout=30, interval=0.02, what="the kubelet to restart Envoy")
        serving = wait_for(lambda: answers() and time.monotonic(), timeout=30, interval=0.05,
                           what="the restarted Envoy to answer")
        leader_back = container_of(dev_cluster, leader_key)["ready"]
        running(load)
    took = serving - started
    print(f"\nEnvoy restarted {started - killed:.1f} s after the leader was SIGKILLed: it answered {took:.2f} s "
          f"after its restart (the leader {'was' if leader_back else 'was not'} back); through the Service "
          f"{load.sent} requests, {load.failed} failed ({dict(load.outcomes)})")
    assert not leader_back, "the leader came back before Envoy was served: this proves nothing about a follower"
    assert took <= 5.0, f"the restarted Envoy served after {took:.1f} s"
    # Only requests in flight on the Envoy that was killed may fail.
    assert load.failed <= load.concurrency, dict(load.outcomes)


def test_a_model_server_killed_mid_stream_fails_only_the_requests_it_was_streaming(
        dev_cluster, fleet, envoy, routed):  # noqa: F811
    ns = routed
    dev_cluster.kubectl("scale", "md/small", "--replicas=2", "-n", ns)
    wait_ready(dev_cluster, ns, "small", 2)
    fleet.wait_ready(3, ns)
    victim = kubectl_json(dev_cluster, "get", "pods", "-n", ns, "-l",
                          "llmfleet.io/model-deployment=small")["items"][0]["metadata"]["name"]
    with Load(envoy.url, "chat-e2e", concurrency=8, max_tokens=64, stream=True, max_seconds=120) as load:
        wait_for(lambda: load.ok >= 50, timeout=30, what="the streams to run")
        fleet.kill(f"{ns}/{victim}")
        before = load.sent
        wait_for(lambda: load.sent >= before + 100, timeout=60, what="streams after the kill")
    early = load.failed - load.failed_while_streaming
    print(f"\nsim process SIGKILLed under streaming load: {load.sent} streams, {load.failed_while_streaming} broke "
          f"while streaming from it, {early} failed before their response began ({dict(load.outcomes)})")
    assert early == 0, dict(load.outcomes)


def test_a_node_removed_under_load_its_replica_reschedules_and_routes_follow(
        dev_cluster, envoy, routed):  # noqa: F811
    ns = routed
    dev_cluster.kubectl("scale", "md/small", "--replicas=2", "-n", ns)
    wait_ready(dev_cluster, ns, "small", 2)

    def small_pods() -> list[dict]:
        return kubectl_json(dev_cluster, "get", "pods", "-n", ns, "-l", "llmfleet.io/model-deployment=small")["items"]

    # A node with a replica of small, while some replica (of either backend) runs elsewhere:
    # the model keeps a place to go, as with any node of a fleet spread over several.
    everyone = kubectl_json(dev_cluster, "get", "pods", "-n", ns, "-l", "llmfleet.io/model-deployment")["items"]
    node_name = next(n for n in (p["spec"]["nodeName"] for p in small_pods())
                     if any(p["spec"]["nodeName"] != n for p in everyone))
    node = kubectl_json(dev_cluster, "get", "node", node_name)
    with steady_load(envoy) as load:
        running(load)
        removed = time.monotonic()
        dev_cluster.kubectl("delete", "node", node_name)
        try:
            moved = wait_for(lambda: (pods := small_pods()) and all(
                p["spec"].get("nodeName") not in (None, node_name) and any(
                    c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
                for p in pods) and pods, timeout=150, what="the replica to run Ready on another node")
            rescheduled = time.monotonic() - removed
            wait_for(lambda: set(served_by(envoy.url, 100)) == {"llama-8b", "llama-70b"}, timeout=30,
                     what="both backends served again")
        finally:
            # The node comes back as it was, GPUs included (capacity is status: KWOK leaves it alone).
            meta = {k: v for k, v in node["metadata"].items() if k in ("name", "labels", "annotations")}
            dev_cluster.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": node.get("spec", {})}))
            dev_cluster.kubectl("patch", "node", node_name, "--subresource=status", "--type=merge", "-p", json.dumps(
                {"status": {k: node["status"][k] for k in ("capacity", "allocatable")}}))
        running(load)
    wait_for(lambda: (back := kubectl_json(dev_cluster, "get", "node", node_name).get("status", {}))
             and back.get("allocatable") == node["status"]["allocatable"]
             and any(c["type"] == "Ready" and c["status"] == "True" for c in back.get("conditions", [])),
             timeout=60, what="the node back, Ready, with its GPUs")
    print(f"\nnode {node_name} removed under load: {load.sent} requests, {load.failed} failed; the replica ran "
          f"Ready on {moved[0]['spec']['nodeName']} after {rescheduled:.1f} s")
    assert load.failed == 0, dict(load.outcomes)


def test_etcd_restarted_under_load_costs_no_request_and_a_later_change_reaches_envoy(
        dev_cluster, envoy, routed):  # noqa: F811
    ns = routed
    with steady_load(envoy) as load:
        running(load)
        restarted = time.monotonic()
        etcd = dev_cluster.restart_component("etcd")
        api_server_ready(dev_cluster)
        ready = time.monotonic() - restarted
        took = a_change_reaches_envoy(dev_cluster, envoy, ns)
        running(load)
    print(f"\netcd restarted (pid {etcd.pid}) under load: {load.sent} requests, {load.failed} failed; the API "
          f"server was ready again after {ready:.1f} s; a RoutePolicy change then reached Envoy in {took:.2f} s")
    assert load.failed == 0, dict(load.outcomes)
