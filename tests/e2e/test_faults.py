"""Faults under a steady load through the chart's Envoy: what each one costs in failed
requests, and that the operator's routes follow the cluster again afterwards."""

from __future__ import annotations

import json
import os
import signal
import time

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


def test_the_api_server_paused_for_20_s_costs_no_request_and_a_later_change_reaches_envoy(
        dev_cluster, operator, envoy, routed):  # noqa: F811
    ns = routed
    apiserver = next(c for c in dev_cluster.components if c.name == "kube-apiserver")
    with steady_load(envoy) as load:
        running(load)
        os.kill(apiserver.pid, signal.SIGSTOP)
        try:
            time.sleep(20)
        finally:
            os.kill(apiserver.pid, signal.SIGCONT)
        during = load.sent
        api_server_ready(dev_cluster, timeout=30)
        took = a_change_reaches_envoy(dev_cluster, envoy, ns)
        running(load)
    print(f"\nAPI server paused 20 s under load: {load.sent} requests ({during} until it resumed), "
          f"{load.failed} failed; a RoutePolicy change afterwards reached Envoy in {took:.2f} s")
    assert load.failed == 0, dict(load.outcomes)


def test_the_operator_sigkilled_under_load_costs_no_request_and_routes_follow_its_return(
        dev_cluster, release, operator, envoy, routed):  # noqa: F811
    ns = routed
    pod = operator.pod()
    key = f"{release.namespace}/{pod['metadata']['name']}"

    def container() -> dict:
        return next(iter(NodeView(dev_cluster.logdir).pods()[key]["containers"].values()))

    restarts = container()["restarts"]
    with steady_load(envoy) as load:
        running(load)
        killed = time.monotonic()
        os.kill(container()["pid"], signal.SIGKILL)
        wait_for(lambda: container()["restarts"] > restarts and container()["ready"], timeout=90,
                 what="the kubelet to restart the operator and the new one to be ready")
        back = time.monotonic() - killed
        took = a_change_reaches_envoy(dev_cluster, envoy, ns)
        running(load)
    print(f"\noperator SIGKILLed under load: {load.sent} requests, {load.failed} failed; ready again after "
          f"{back:.1f} s; a RoutePolicy change then reached Envoy in {took:.2f} s")
    assert load.failed == 0, dict(load.outcomes)


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
