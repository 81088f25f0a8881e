"""Replicas follow load on the simulated fleet, and routes follow replicas."""

from __future__ import annotations

import copy
import time

import httpx

from tests.helpers import Load, kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES, apply, load_md


def autoscaled_md(name: str, **autoscaling) -> dict:
    md = copy.deepcopy(load_md(EXAMPLES / "sim-quickstart.yaml"))
    md["metadata"] = {"name": name}
    md["spec"]["model"]["servedName"] = f"{name}-model"
    # A small batch and a slow-ish decode: concurrent requests queue up.
    md["spec"]["engine"]["extraArgs"] = ["--max-num-seqs", "2", "--time-scale", "0.5"]
    md["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4, "metric": "queueDepth", "target": 2,
                                 "scaleDownStabilizationSeconds": 6, **autoscaling}
    return md


def md_of(cluster, ns, name) -> dict:
    return kubectl_json(cluster, "get", "md", name, "-n", ns)


def test_load_step_scales_up_routes_follow_and_scales_down_after_the_window(dev_cluster, operator, fleet, envoy,
                                                                             namespace):
    ns = namespace
    assert apply(dev_cluster, ns, autoscaled_md("busy")).returncode == 0
    apply(dev_cluster, ns, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "busy"},
                            "spec": {"model": "busy-e2e", "backends": [{"modelDeployment": "busy"}]}})
    fleet.wait_ready(1, ns)
    wait_for(lambda: (kubectl_json(dev_cluster, "get", "rp", "busy", "-n", ns).get("status", {}).get("backends")
                      or [{}])[0].get("weight") == 100, what="route programmed")

    with Load(envoy.url, "busy-e2e", concurrency=16, max_tokens=40, max_seconds=60) as load:
        wait_for(lambda: md_of(dev_cluster, ns, "busy")["spec"]["replicas"] >= 3,
                 timeout=45, what="replicas to rise under load")
        # status.load and scaleReason follow within a round or two (a status write that
        # races the scale's own reconcile is retried on the next round).
        up = wait_for(lambda: (m := md_of(dev_cluster, ns, "busy"))["status"].get("load", {}).get("queueDepth", 0) > 0
                      and "queueDepth" in m["status"].get("scaleReason", "") and m,
                      timeout=15, what="status.load and scaleReason under load")
        assert up["status"]["load"]["runningRequests"] > 0
        fleet.wait_ready(3, ns, timeout=30)
        # Routes follow: the backend's ready replicas in the policy status are the new ones.
        wait_for(lambda: kubectl_json(dev_cluster, "get", "rp", "busy", "-n", ns)["status"]["backends"][0]
                 ["readyReplicas"] >= 3, what="the route to include the new replicas")
    assert load.failed == 0 and load.ok > 0

    # The scaler sizes on the level of the last minute (mean + 1 s.d. of its samples):
    # the loaded samples leave it within 60 s, then the 6 s window runs.
    stopped = time.monotonic()
    down = wait_for(lambda: (m := md_of(dev_cluster, ns, "busy"))["spec"]["replicas"] == 1 and m,
                    timeout=120, what="replicas back to 1 after the load stops")
    assert time.monotonic() - stopped >= 6 - 1.5, "scaled down before its window"
    events = kubectl_json(dev_cluster, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=busy")
    reasons = [e["reason"] for e in events["items"]]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons
    assert any(c["type"] == "ScalingLimited" for c in down["status"]["conditions"])
    table = dev_cluster.kubectl("get", "md", "busy", "-n", ns).stdout.splitlines()[1].split()
    assert table[5].replace(".", "").isdigit()  # QUEUE shows the scraped queue depth


def test_idle_model_scales_to_zero_and_the_next_request_wakes_it(dev_cluster, operator, fleet, envoy, namespace):
    ns = namespace
    assert apply(dev_cluster, ns, autoscaled_md("nap", scaleToZero={"idleSeconds": 4})).returncode == 0
    apply(dev_cluster, ns, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "nap"},
                            "spec": {"model": "nap-e2e", "backends": [{"modelDeployment": "nap"}]}})
    fleet.wait_ready(1, ns)
    wait_for(lambda: md_of(dev_cluster, ns, "nap")["spec"]["replicas"] == 0, timeout=60, what="scale to zero")
    wait_for(lambda: "activator" in (kubectl_json(dev_cluster, "get", "rp", "nap", "-n", ns)["status"]["backends"]
                                     [0]["reason"]), what="the route on the activator")
    start = time.monotonic()
    r = httpx.post(f"{envoy.url}/v1/chat/completions", timeout=120, json={
        "model": "nap-e2e", "max_tokens": 2, "messages": [{"role": "user", "content": "wake"}]})
    print(f"\nfirst request after scale-to-zero answered in {time.monotonic() - start:.2f} s")
    assert r.status_code == 200, r.text
    assert md_of(dev_cluster, ns, "nap")["spec"]["replicas"] == 1
