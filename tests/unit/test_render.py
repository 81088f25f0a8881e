"""Rendering ModelDeployments into Deployments and Services.

Golden files in tests/data/golden/ hold the full output for every example and a
few extra specs; regenerate with `python -m tests.unit.regen_golden` (or
UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

import os

import pytest
import yaml

from llmfleet.api.models import ModelDeploymentSpec, parse_model_deployment_spec
from llmfleet.engines import get_engine
from llmfleet.render import (
    owner_reference,
    render_deployment,
    render_service,
    selector_labels,
    selector_string,
)
from tests.unit import regen_golden

GOLDEN_CASES = regen_golden.model_deployments()


def test_golden_files_are_exactly_the_cases():
    if os.environ.get("UPDATE_GOLDEN") == "1":
        regen_golden.write_golden()
    assert sorted(p.name for p in regen_golden.GOLDEN.glob("*.yaml")) == sorted(regen_golden.golden_files())


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_rendering_matches_golden(name):
    expected_path = regen_golden.GOLDEN / f"{name}.yaml"
    actual = regen_golden.render_golden(GOLDEN_CASES[name])
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual)
    assert expected_path.exists(), "missing golden file; run `python -m tests.unit.regen_golden`"
    assert actual == expected_path.read_text(), (
        f"{expected_path.name} differs; if the change is intended run `python -m tests.unit.regen_golden` "
        "and review the diff"
    )


def test_goldens_cover_every_engine_and_model_source():
    kinds = {md["spec"]["engine"]["kind"] for md in GOLDEN_CASES.values()}
    schemes = {md["spec"]["model"]["uri"].split("://")[0] for md in GOLDEN_CASES.values()}
    assert kinds == {"vllm", "sglang", "tensorrt-llm", "triton", "sim"}
    assert schemes == {"hf", "s3", "pvc", "oci"}


def md(spec: dict | None = None, **meta) -> dict:
    metadata = {"name": "llama", "namespace": "ai", "uid": "1234", "generation": 4, **meta}
    return {
        "metadata": metadata,
        "spec": spec or {"model": {"uri": "hf://org/model"}, "engine": {"kind": "vllm"}},
    }


LABELS = {
    "app.kubernetes.io/name": "vllm",
    "app.kubernetes.io/instance": "llama",
    "app.kubernetes.io/component": "model-server",
    "app.kubernetes.io/managed-by": "llmfleet",
    "llmfleet.io/model-deployment": "llama",
}


def test_deployment_metadata_labels_and_owner():
    dep = render_deployment(md())
    assert (dep["apiVersion"], dep["kind"]) == ("apps/v1", "Deployment")
    assert dep["metadata"]["name"] == "llama" and dep["metadata"]["namespace"] == "ai"
    assert dep["metadata"]["labels"] == LABELS
    assert dep["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "llmfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "llama",
            "uid": "1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert dep["spec"]["selector"] == {"matchLabels": {"llmfleet.io/model-deployment": "llama"}}
    assert dep["spec"]["template"]["metadata"]["labels"] == LABELS
    assert "status" not in dep


def test_selector():
    assert selector_labels("llama") == {"llmfleet.io/model-deployment": "llama"}
    assert selector_string("llama") == "llmfleet.io/model-deployment=llama"
    assert owner_reference(md())["uid"] == "1234"


def test_replicas_come_from_the_spec():
    spec = {"model": {"uri": "hf://org/model"}, "engine": {"kind": "vllm"}, "replicas": 0}
    assert render_deployment(md(spec))["spec"]["replicas"] == 0


def test_parsed_specs_are_accepted():
    spec = parse_model_deployment_spec({"model": {"uri": "hf://org/model"}, "engine": {"kind": "sglang"}})
    assert isinstance(spec, ModelDeploymentSpec)
    obj = md()
    obj["spec"] = spec
    dep = render_deployment(obj)
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "sglang.launch_server"
    assert render_service(obj)["metadata"]["labels"]["app.kubernetes.io/name"] == "sglang"


def test_gpu_replicas_roll_without_needing_spare_gpus():
    strategy = render_deployment(md())["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_replicas_without_gpus_roll_without_losing_capacity():
    spec = {"model": {"uri": "hf://org/model"}, "engine": {"kind": "sim"}}
    strategy = render_deployment(md(spec))["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_progress_deadline_allows_for_model_loading():
    dep = render_deployment(md())
    assert dep["spec"]["progressDeadlineSeconds"] > get_engine("vllm").startup_budget_seconds


def test_gpu_product_selects_nodes_and_gpus_tolerate_the_taint():
    spec = {
        "model": {"uri": "hf://org/model"},
        "engine": {"kind": "vllm"},
        "accelerator": {"product": "NVIDIA-H100-80GB-HBM3"},
    }
    pod = render_deployment(md(spec))["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pod = render_deployment(md())["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and pod["tolerations"]


def test_metrics_annotations_follow_the_engine():
    spec = {"model": {"uri": "hf://org/model"}, "engine": {"kind": "tensorrt-llm"}}
    annotations = render_deployment(md(spec))["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/prometheus/metrics"
    assert annotations["prometheus.io/port"] == "8000"


def test_service():
    svc = render_service(md())
    assert (svc["apiVersion"], svc["kind"]) == ("v1", "Service")
    assert svc["metadata"]["labels"] == LABELS
    assert svc["metadata"]["ownerReferences"][0]["controller"] is True
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": {"llmfleet.io/model-deployment": "llama"},
        "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
    }


def test_service_targets_the_containers_port():
    dep = render_deployment(md())
    svc = render_service(md())
    ports = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in ports}
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_rendering_is_pure_and_serialisable():
    obj = md()
    assert render_deployment(obj) == render_deployment(obj)
    assert obj == md()  # the input is not modified
    assert yaml.safe_load(yaml.safe_dump(render_deployment(obj))) == render_deployment(obj)


def test_a_namespace_less_object_renders_without_namespace():
    obj = md()
    del obj["metadata"]["namespace"]
    assert "namespace" not in render_service(obj)["metadata"]
