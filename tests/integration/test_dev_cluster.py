"""The dev cluster behaves like a real Kubernetes cluster with GPU nodes.

These are the properties later tiers stand on: GPU scheduling onto fake nodes, pod IPs
on loopback, garbage collection, CEL validation and server-side apply field ownership.
"""

from __future__ import annotations

import ipaddress

import pytest
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from tests.helpers import wait_for

H100 = "NVIDIA-H100-80GB-HBM3"


def gpu_deployment(name: str, gpus: int, product: str | None = None) -> dict:
    spec = {
        "containers": [
            {
                "name": "server",
                "image": "registry.invalid/model-server:1",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}},
            }
        ]
    }
    if product:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def test_gpu_nodes_are_registered_and_ready(dev_cluster, k8s):
    nodes = client.CoreV1Api(k8s).list_node(label_selector="type=kwok,llmfleet.io/dev-cluster-node!=system").items
    by_product: dict[str, list] = {}
    for node in nodes:
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions), node.metadata.name
        by_product.setdefault(node.metadata.labels.get("nvidia.com/gpu.product"), []).append(
            node.status.allocatable["nvidia.com/gpu"]
        )
    assert by_product[H100] == ["8"] * 4
    assert by_product["NVIDIA-L4"] == ["1"] * 2


def test_gpu_deployment_runs_on_h100_node_with_loopback_ip(dev_cluster, k8s, namespace):
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    apps.create_namespaced_deployment(namespace, gpu_deployment("llm", gpus=2, product=H100))

    def ready_pods():
        pods = core.list_namespaced_pod(namespace, label_selector="app=llm").items
        return [
            p
            for p in pods
            if p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    pods = wait_for(ready_pods, what="a Running and Ready pod")
    assert len(pods) == 1
    pod = pods[0]
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == H100
    ip = ipaddress.ip_address(pod.status.pod_ip)
    assert ip.is_loopback and str(ip).startswith("127."), pod.status.pod_ip
    deployment = wait_for(
        lambda: (d := apps.read_namespaced_deployment("llm", namespace)).status.ready_replicas == 1 and d,
        what="Deployment readyReplicas 1",
    )
    assert deployment.status.available_replicas == 1


def test_pod_asking_for_more_gpus_than_any_node_stays_unschedulable(dev_cluster, k8s, namespace):
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "too-big"},
            "spec": {
                "containers": [
                    {"name": "server", "image": "registry.invalid/x:1", "resources": {"limits": {"nvidia.com/gpu": "16"}}}
                ]
            },
        },
    )

    def scheduled_condition():
        pod = core.read_namespaced_pod("too-big", namespace)
        return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)

    cond = wait_for(scheduled_condition, what="a PodScheduled condition")
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.status.phase == "Pending"
    assert cond.status == "False"
    assert cond.reason == "Unschedulable"
    assert "nvidia.com/gpu" in cond.message


def test_deleting_owner_garbage_collects_dependent_configmap(dev_cluster, k8s, namespace):
    core = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"a": "1"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "data": {"b": "2"},
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone():
        try:
            core.read_namespaced_config_map("dependent", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, what="the dependent ConfigMap to be garbage-collected")


@pytest.fixture(scope="module")
def widget_crd(dev_cluster, k8s):
    ext = client.ApiextensionsV1Api(k8s)
    name = "widgets.test.llmfleet.io"
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "test.llmfleet.io",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "minReplicas": {"type": "integer"},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.maxReplicas >= self.minReplicas",
                                            "message": "maxReplicas must be greater than or equal to minReplicas",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(body)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(name).status.conditions or []
        ),
        what="CRD Established",
    )
    yield dynamic.DynamicClient(k8s).resources.get(api_version="test.llmfleet.io/v1", kind="Widget")
    ext.delete_custom_resource_definition(name)


def test_cel_validation_rejects_violating_object_with_rule_message(widget_crd, namespace):
    widget_crd.create(
        {"apiVersion": "test.llmfleet.io/v1", "kind": "Widget", "metadata": {"name": "ok"},
         "spec": {"minReplicas": 1, "maxReplicas": 3}},
        namespace=namespace,
    )
    with pytest.raises(ApiException) as err:
        widget_crd.create(
            {"apiVersion": "test.llmfleet.io/v1", "kind": "Widget", "metadata": {"name": "bad"},
             "spec": {"minReplicas": 5, "maxReplicas": 2}},
            namespace=namespace,
        )
    assert err.value.status == 422
    assert "maxReplicas must be greater than or equal to minReplicas" in err.value.body


def test_server_side_apply_conflicts_between_managers_unless_forced(dev_cluster, k8s, namespace):
    cms = dynamic.DynamicClient(k8s).resources.get(api_version="v1", kind="ConfigMap")

    def apply(value: str, manager: str, force: bool = False):
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"key": value}}
        return cms.server_side_apply(body, namespace=namespace, field_manager=manager, force_conflicts=force)

    apply("from-a", "manager-a")
    with pytest.raises(ApiException) as err:
        apply("from-b", "manager-b")
    assert err.value.status == 409
    assert "manager-a" in err.value.body and ".data.key" in err.value.body

    forced = apply("from-b", "manager-b", force=True)
    assert forced.data["key"] == "from-b"
    owners = {m.manager for m in forced.metadata.managedFields if "f:data" in str(m.fieldsV1)}
    assert owners == {"manager-b"}
