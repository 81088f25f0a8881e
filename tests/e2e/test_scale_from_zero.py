"""A model scaled to zero answers its first request: the activator wakes it and holds it."""

from __future__ import annotations

import copy
import time

import httpx

from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES, apply, load_md


def test_first_request_to_a_model_at_zero_succeeds(dev_cluster, operator, fleet, envoy, namespace):
    md = copy.deepcopy(load_md(EXAMPLES / "sim-quickstart.yaml"))
    md["metadata"] = {"name": "sleepy"}
    md["spec"]["model"]["servedName"] = "sleepy-model"
    md["spec"]["replicas"] = 0
    md["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2, "scaleToZero": {"idleSeconds": 300}}
    md["spec"]["engine"]["extraArgs"] += ["--time-scale", "0.01"]
    assert apply(dev_cluster, namespace, md).returncode == 0
    apply(dev_cluster, namespace, {
        "apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "sleepy"},
        "spec": {"model": "sleepy-e2e", "backends": [{"modelDeployment": "sleepy"}]}})

    def routed_to_activator():
        status = kubectl_json(dev_cluster, "get", "rp", "sleepy", "-n", namespace).get("status", {})
        programmed = any(c["type"] == "Programmed" and c["status"] == "True" for c in status.get("conditions", []))
        return programmed and "activator" in (status.get("backends") or [{}])[0].get("reason", "")

    wait_for(routed_to_activator, what="the route to point at the activator")
    assert kubectl_json(dev_cluster, "get", "md", "sleepy", "-n", namespace)["spec"]["replicas"] == 0

    start = time.monotonic()
    r = httpx.post(f"{envoy.url}/v1/chat/completions", timeout=120, json={
        "model": "sleepy-e2e", "max_tokens": 3, "messages": [{"role": "user", "content": "wake up"}]})
    waited = time.monotonic() - start
    print(f"\nfirst request to a model at zero answered after {waited:.2f} s")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "sleepy-model" and r.json()["usage"]["completion_tokens"] == 3
    assert kubectl_json(dev_cluster, "get", "md", "sleepy", "-n", namespace)["spec"]["replicas"] == 1

    # Once the replica is ready the route flips back to the real cluster.
    def routed_to_replica():
        status = kubectl_json(dev_cluster, "get", "rp", "sleepy", "-n", namespace).get("status", {})
        backend = (status.get("backends") or [{}])[0]
        return backend.get("readyReplicas") == 1 and backend.get("weight") == 100
    wait_for(routed_to_replica, what="the route back on the replica")
    assert httpx.post(f"{envoy.url}/v1/chat/completions", timeout=30, json={
        "model": "sleepy-e2e", "max_tokens": 1, "messages": [{"role": "user", "content": "again"}]}).status_code == 200
    events = kubectl_json(dev_cluster, "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=sleepy")
    assert any(e["reason"] == "ScaledUp" and "activator" in e["message"] for e in events["items"])
