"""RoutePolicies over ModelDeployments: effective weights and reasons in status."""

from __future__ import annotations

import copy

import pytest

from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES, apply, load_md, wait_ready


def sim_md(name: str, served: str) -> dict:
    manifest = copy.deepcopy(load_md(EXAMPLES / "sim-quickstart.yaml"))
    manifest["metadata"] = {"name": name}
    manifest["spec"]["model"]["servedName"] = served
    return manifest


def route_policy(name: str, model: str, backends: list[dict], strategy: str = "weighted") -> dict:
    return {
        "apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": name},
        "spec": {"model": model, "strategy": strategy, "backends": backends},
    }


def rp_status(cluster, namespace, name) -> dict:
    return kubectl_json(cluster, "get", "rp", name, "-n", namespace).get("status", {})


def weights(status: dict) -> dict[str, int]:
    return {b["modelDeployment"]: b["weight"] for b in status.get("backends", [])}


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


@pytest.fixture
def two_backends(dev_cluster, operator, namespace):
    for name, served in (("small", "llama-8b"), ("big", "llama-70b")):
        assert apply(dev_cluster, namespace, sim_md(name, served)).returncode == 0
    for name in ("small", "big"):
        wait_ready(dev_cluster, namespace, name)
    return namespace


def test_weighted_policy_shows_effective_weights(dev_cluster, two_backends):
    ns = two_backends
    apply(dev_cluster, ns, route_policy("chat", "chat-weighted", [
        {"modelDeployment": "small", "weight": 80}, {"modelDeployment": "big", "weight": 20}]))
    status = wait_for(lambda: (s := rp_status(dev_cluster, ns, "chat")) and weights(s) == {"small": 80, "big": 20} and s,
                      what="effective weights 80/20")
    assert condition(status, "Accepted")["status"] == "True"
    assert condition(status, "ResolvedRefs")["status"] == "True"
    assert all(b["readyReplicas"] == 1 and b["reason"] for b in status["backends"])
    assert status["observedGeneration"] == 1
    describe = dev_cluster.kubectl("describe", "rp", "chat", "-n", ns).stdout
    assert "Model Deployment:  small" in describe and "Weight:            80" in describe
    table = dev_cluster.kubectl("get", "rp", "chat", "-n", ns).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "MODEL", "STRATEGY"] and table[1].split()[:3] == ["chat", "chat-weighted", "weighted"]


def test_missing_backend_gives_resolved_refs_false_naming_it(dev_cluster, two_backends):
    ns = two_backends
    apply(dev_cluster, ns, route_policy("chat", "chat-missing", [
        {"modelDeployment": "small"}, {"modelDeployment": "does-not-exist"}]))
    status = wait_for(lambda: (s := rp_status(dev_cluster, ns, "chat")) and condition(s, "ResolvedRefs").get("status") == "False" and s,
                      what="ResolvedRefs=False")
    cond = condition(status, "ResolvedRefs")
    assert cond["reason"] == "BackendNotFound" and "does-not-exist" in cond["message"]
    assert weights(status) == {"small": 100, "does-not-exist": 0}


def test_scaling_a_backend_to_zero_moves_its_share_to_the_others(dev_cluster, two_backends):
    ns = two_backends
    apply(dev_cluster, ns, route_policy("chat", "chat-scale", [
        {"modelDeployment": "small", "weight": 50}, {"modelDeployment": "big", "weight": 50}]))
    wait_for(lambda: weights(rp_status(dev_cluster, ns, "chat")) == {"small": 50, "big": 50}, what="50/50")
    dev_cluster.kubectl("scale", "md/big", "--replicas=0", "-n", ns)
    status = wait_for(lambda: (s := rp_status(dev_cluster, ns, "chat")) and weights(s) == {"small": 100, "big": 0} and s,
                      what="big's share moving to small")
    big = next(b for b in status["backends"] if b["modelDeployment"] == "big")
    assert big["readyReplicas"] == 0 and "no ready replicas" in big["reason"]
    dev_cluster.kubectl("scale", "md/big", "--replicas=1", "-n", ns)
    wait_for(lambda: weights(rp_status(dev_cluster, ns, "chat")) == {"small": 50, "big": 50}, what="50/50 again")


def test_failover_moves_all_traffic_when_the_primary_has_no_replicas(dev_cluster, two_backends):
    ns = two_backends
    apply(dev_cluster, ns, route_policy("chat", "chat-failover", [
        {"modelDeployment": "small", "priority": 0}, {"modelDeployment": "big", "priority": 1}], strategy="failover"))
    wait_for(lambda: weights(rp_status(dev_cluster, ns, "chat")) == {"small": 100, "big": 0}, what="primary serving")
    dev_cluster.kubectl("scale", "md/small", "--replicas=0", "-n", ns)
    wait_for(lambda: weights(rp_status(dev_cluster, ns, "chat")) == {"small": 0, "big": 100}, what="failover to big")


def test_second_policy_for_the_same_model_name_is_not_accepted(dev_cluster, two_backends):
    ns = two_backends
    apply(dev_cluster, ns, route_policy("first", "chat-conflict", [{"modelDeployment": "small"}]))
    wait_for(lambda: condition(rp_status(dev_cluster, ns, "first"), "Accepted").get("status") == "True", what="first accepted")
    apply(dev_cluster, ns, route_policy("second", "chat-conflict", [{"modelDeployment": "big"}]))
    status = wait_for(lambda: (s := rp_status(dev_cluster, ns, "second")) and condition(s, "Accepted").get("status") == "False" and s,
                      what="second refused")
    assert condition(status, "Accepted")["reason"] == "ModelNameConflict"
    assert f"{ns}/first" in condition(status, "Accepted")["message"]
    assert condition(rp_status(dev_cluster, ns, "first"), "Accepted")["status"] == "True"
