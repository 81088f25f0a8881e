"""The dev cluster's system node, its pure parts: how a pod spec becomes a process."""

from __future__ import annotations

import pytest

from llmfleet_devcluster import images
from llmfleet_devcluster.cluster import SYSTEM_NODE_POOL, without_system_nodes
from llmfleet_devcluster.kubelet import PodSetupError, expand, field_value, resource_value, service_env
from llmfleet_devcluster.serviceproxy import hosts_file, resolv_conf, service_names, service_table, service_vip

POD = {
    "metadata": {"name": "op-1", "namespace": "llmfleet-system", "uid": "u-1",
                 "labels": {"app": "op", "tier": "control"}, "annotations": {"a": "1"}},
    "spec": {"nodeName": "system-0", "serviceAccountName": "op"},
    "status": {"podIP": "198.18.0.7", "podIPs": [{"ip": "198.18.0.7"}], "hostIP": "198.18.0.1"},
}


def test_expand_replaces_defined_variables_and_keeps_the_rest():
    env = {"POD_IP": "198.18.0.7", "PORT": "8080"}
    assert expand("--bind=$(POD_IP):$(PORT)", env) == "--bind=198.18.0.7:8080"
    assert expand("$(UNDEFINED) stays", env) == "$(UNDEFINED) stays"
    assert expand("$$(POD_IP) is escaped", env) == "$(POD_IP) is escaped"


@pytest.mark.parametrize("path,value", [
    ("metadata.name", "op-1"), ("metadata.namespace", "llmfleet-system"), ("metadata.uid", "u-1"),
    ("spec.nodeName", "system-0"), ("spec.serviceAccountName", "op"), ("status.podIP", "198.18.0.7"),
    ("status.hostIP", "198.18.0.1"), ("metadata.labels['tier']", "control"),
    ("metadata.labels", 'app="op"\ntier="control"'),
])
def test_field_refs(path, value):
    assert field_value(POD, path) == value


def test_unknown_field_ref_is_a_config_error():
    with pytest.raises(PodSetupError, match="spec.nope"):
        field_value(POD, "spec.nope")


def test_resource_field_ref_rounds_up_in_divisor_units_and_falls_back_to_the_node():
    container = {"resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}}}
    assert resource_value(container, {"resource": "limits.memory", "divisor": "1Mi"}, {}) == "1024"
    assert resource_value(container, {"resource": "requests.cpu"}, {}) == "1"
    assert resource_value(container, {"resource": "limits.cpu"}, {"cpu": "8"}) == "8"


def svc(name, ns, ip, ports, selector=None):
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports, **({"selector": selector} if selector else {})}}


KUBERNETES = svc("kubernetes", "default", "10.96.0.1", [{"name": "https", "port": 443, "targetPort": 6443}])
OPERATOR = svc("llmfleet-operator", "llmfleet-system", "10.96.3.4",
               [{"name": "xds", "port": 18000, "targetPort": "xds"}], {"app": "op"})


def test_service_addresses_stand_for_cluster_ips_in_the_clusters_loopback_range():
    assert service_vip("10.96.3.4", 190) == "127.190.3.4"


def test_service_env_always_has_the_api_server_and_links_only_with_enable_service_links():
    env = service_env([KUBERNETES, OPERATOR], "llmfleet-system", 190, links=False)
    assert env == {"KUBERNETES_SERVICE_HOST": "127.190.0.1", "KUBERNETES_SERVICE_PORT": "443",
                   "KUBERNETES_SERVICE_PORT_HTTPS": "443"}
    linked = service_env([KUBERNETES, OPERATOR], "llmfleet-system", 190, links=True)
    assert linked["LLMFLEET_OPERATOR_SERVICE_HOST"] == "127.190.3.4"
    assert linked["LLMFLEET_OPERATOR_PORT_18000_TCP"] == "tcp://127.190.3.4:18000"
    assert "LLMFLEET_OPERATOR_SERVICE_HOST" not in service_env([OPERATOR], "other", 190, links=True)


def ready_pod(name, ip, labels, ready=True, ports=(("xds", 18000),), ns="llmfleet-system"):
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"ports": [{"name": n, "containerPort": p} for n, p in ports]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_service_table_resolves_named_target_ports_on_ready_pods_only():
    pods = [ready_pod("a", "198.18.0.5", {"app": "op"}), ready_pod("b", "198.18.0.6", {"app": "op"}, ready=False),
            ready_pod("c", "198.18.0.8", {"app": "other"}), ready_pod("d", "198.18.0.9", {"app": "op"}, ns="x")]
    table = {(p.name, p.port): p for p in service_table([KUBERNETES, OPERATOR], pods, 190, ("127.0.0.1", 6443))}
    assert table[("llmfleet-operator", 18000)].endpoints == (("198.18.0.5", 18000),)
    assert table[("llmfleet-operator", 18000)].vip == "127.190.3.4"
    assert table[("kubernetes", 443)].endpoints == (("127.0.0.1", 6443),)


def test_hosts_file_maps_every_service_name_form_and_short_names_in_the_own_namespace():
    names = service_names([KUBERNETES, OPERATOR], 190)
    text = hosts_file("198.18.0.7", "op-1", "llmfleet-system", names)
    assert "198.18.0.7\top-1" in text
    line = next(line for line in text.splitlines() if "llmfleet-operator" in line)
    assert line.split("\t")[0] == "127.190.3.4"
    assert set(line.split("\t")[1].split()) == {
        "llmfleet-operator.llmfleet-system.svc.cluster.local", "llmfleet-operator.llmfleet-system.svc",
        "llmfleet-operator.llmfleet-system", "llmfleet-operator"}
    kube = next(line for line in text.splitlines() if "kubernetes" in line)
    assert " kubernetes " not in f"{kube} " and "kubernetes.default.svc" in kube


def test_resolv_conf_never_points_outside_the_pod():
    text = resolv_conf("llmfleet-system")
    assert "nameserver 127.0.0.1" in text and "search llmfleet-system.svc.cluster.local" in text


@pytest.mark.parametrize("ref,expected", [
    ("ghcr.io/llmfleet/llmfleet:0.1.0", ("ghcr.io/llmfleet/llmfleet", "0.1.0", None)),
    ("envoyproxy/envoy:distroless-v1.40.0", ("envoyproxy/envoy", "distroless-v1.40.0", None)),
    ("docker.io/envoyproxy/envoy@sha256:" + "a" * 64, ("envoyproxy/envoy", None, "sha256:" + "a" * 64)),
    ("registry:5000/x/y:1@sha256:" + "b" * 64, ("registry:5000/x/y", "1", "sha256:" + "b" * 64)),
    ("registry:5000/x/y", ("registry:5000/x/y", None, None)),
])
def test_image_references(ref, expected):
    parsed = images.ImageRef.parse(ref)
    assert (parsed.repository, parsed.tag, parsed.digest) == expected


def test_images_are_runnable_only_at_the_version_this_machine_has():
    image = images.resolve(f"ghcr.io/llmfleet/llmfleet:{images.llmfleet_image().version}")
    assert image.repository == images.LLMFLEET_REPOSITORY
    with pytest.raises(images.ImageUnavailable, match="this machine has"):
        images.resolve("ghcr.io/llmfleet/llmfleet:9.9.9")
    with pytest.raises(images.ImageUnavailable, match="runs only"):
        images.resolve("nginx:1.27")


def test_the_llmfleet_image_takes_its_config_from_the_dockerfile():
    image = images.llmfleet_image()
    assert image.user == (65532, 65532)
    assert image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert image.cmd == ("llmfleet", "run")
    assert image.argv(None, None) == ["llmfleet", "run"]
    assert image.argv(None, ["run", "--x"]) == ["run", "--x"]  # args replace CMD, keep the entrypoint
    assert image.argv(["llmfleet"], ["sim"]) == ["llmfleet", "sim"]


def test_the_envoy_image_is_the_wheels_binary_at_the_distroless_path():
    image = images.envoy_image()
    assert any(layer.target == "/usr/local/bin/envoy" for layer in image.layers)
    assert f"distroless-v{image.version}" in image.tags


def test_kwok_leaves_the_system_nodes_pods_alone():
    stages = [{"metadata": {"name": "pod-ready"}, "spec": {"resourceRef": {"kind": "Pod"},
                                                          "selector": {"matchExpressions": []}}},
              {"metadata": {"name": "node-init"}, "spec": {"resourceRef": {"kind": "Node"}, "selector": {}}}]
    out = without_system_nodes(stages, ["system-0"])
    assert out[0]["spec"]["selector"]["matchExpressions"] == [
        {"key": ".spec.nodeName", "operator": "NotIn", "values": ["system-0"]}]
    assert out[1] == stages[1] and stages[0]["spec"]["selector"]["matchExpressions"] == []


def test_the_system_node_is_tainted_like_a_system_pool():
    node = SYSTEM_NODE_POOL.manifests()[0]
    assert node["spec"]["taints"] == [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}]
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
