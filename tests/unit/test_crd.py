"""The generated CRDs: up to date in crds/, structural, and shaped as DESIGN §1 says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet.api import crd as crdgen
from llmfleet.api import models as m

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
# The Helm chart's copy: `helm install` creates the CRDs from it.
CHART_CRDS_DIR = REPO / "charts" / "llmfleet" / "crds"
REGENERATE = "python -m llmfleet.api.crd"


def _by_kind() -> dict[str, dict[str, Any]]:
    return {c["spec"]["names"]["kind"]: c for c in crdgen.build_crds()}


def _version(kind: str) -> dict[str, Any]:
    return _by_kind()[kind]["spec"]["versions"][0]


def _schema(kind: str) -> dict[str, Any]:
    return _version(kind)["schema"]["openAPIV3Schema"]


def _walk(node: Any, path: str = ""):
    """Every schema node with its path."""
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("directory", [CRDS_DIR, CHART_CRDS_DIR], ids=["crds", "chart"])
def test_crds_dir_is_up_to_date(directory):
    report = crdgen.stale_report(directory)
    assert report == "", f"{directory.relative_to(REPO)}/ is stale; run `{REGENERATE}`:\n{report}"


@pytest.mark.parametrize("directory", [CRDS_DIR, CHART_CRDS_DIR], ids=["crds", "chart"])
def test_crd_files_are_exactly_the_generated_ones(directory):
    assert sorted(p.name for p in directory.iterdir()) == [
        "modeldeployments.llmfleet.io.yaml",
        "routepolicies.llmfleet.io.yaml",
        "tenants.llmfleet.io.yaml",
    ]
    for path in directory.glob("*.yaml"):
        assert yaml.safe_load(path.read_text()) in crdgen.build_crds()


def test_default_output_dirs_are_both_copies():
    assert [REPO / d for d in crdgen.OUTPUT_DIRS] == [CRDS_DIR, CHART_CRDS_DIR]


def test_one_command_writes_and_checks_both_copies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the defaults are relative to the repository root
    assert crdgen.main([]) == 0
    for directory in crdgen.OUTPUT_DIRS:
        assert crdgen.stale_report(tmp_path / directory) == ""
    assert crdgen.main(["--check"]) == 0
    chart_copy = tmp_path / "charts/llmfleet/crds/routepolicies.llmfleet.io.yaml"
    chart_copy.write_text(chart_copy.read_text().replace("maxItems: 16", "maxItems: 17", 1))
    capsys.readouterr()
    assert crdgen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "charts/llmfleet/crds/ are stale" in err and "crds/, " not in err
    assert "`python -m llmfleet.api.crd`" in err


def test_check_flags_stale_and_missing_files(tmp_path, capsys):
    assert crdgen.main(["--output-dir", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert crdgen.main(["--output-dir", str(tmp_path)]) == 0
    assert crdgen.main(["--output-dir", str(tmp_path), "--check"]) == 0
    path = tmp_path / "routepolicies.llmfleet.io.yaml"
    path.write_text(path.read_text().replace("maxItems: 16", "maxItems: 17", 1))
    assert crdgen.main(["--output-dir", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "-                maxItems: 17" in err and "+                maxItems: 16" in err


def test_write_crds_returns_the_paths(tmp_path):
    paths = crdgen.write_crds(tmp_path / "out")
    assert [p.name for p in paths] == ["modeldeployments.llmfleet.io.yaml", "routepolicies.llmfleet.io.yaml",
                                       "tenants.llmfleet.io.yaml"]
    assert all(p.read_text().startswith("# Generated") for p in paths)


@pytest.mark.parametrize(
    "kind,plural,short",
    [("ModelDeployment", "modeldeployments", "md"), ("RoutePolicy", "routepolicies", "rp")],
)
def test_names_scope_and_version(kind, plural, short):
    crd = _by_kind()[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.llmfleet.io"
    spec = crd["spec"]
    assert spec["group"] == "llmfleet.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short],
        "categories": ["llmfleet"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"]["status"] == {}


def test_model_deployment_scale_subresource():
    assert _version("ModelDeployment")["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "scale" not in _version("RoutePolicy")["subresources"]


def _column_paths(kind: str) -> dict[str, str]:
    return {c["name"]: c["jsonPath"] for c in _version(kind)["additionalPrinterColumns"]}


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for part in json_path.split("[", 1)[0].strip(".").split("."):
        node = node["properties"][part] if part != "metadata" else {"type": "object"}
    return node


def test_model_deployment_printer_columns():
    cols = _column_paths("ModelDeployment")
    assert list(cols) == ["Engine", "Model", "Ready", "Desired", "Queue", "Served", "Age"]
    assert cols["Ready"] == ".status.readyText"
    assert cols["Queue"] == ".status.load.queueDepth"
    schema = _schema("ModelDeployment")
    for name, path in cols.items():
        if name != "Age":
            assert "type" in _resolve(schema, path), f"column {name} reads an undeclared field {path}"


def test_route_policy_printer_columns():
    cols = _column_paths("RoutePolicy")
    assert cols == {
        "Model": ".spec.model",
        "Strategy": ".spec.strategy",
        "Programmed": '.status.conditions[?(@.type=="Programmed")].status',
        "Age": ".metadata.creationTimestamp",
    }


@pytest.mark.parametrize("kind", ["ModelDeployment", "RoutePolicy"])
def test_schema_is_structural(kind):
    for path, node in _walk(_schema(kind)):
        assert "type" in node, f"{path} has no type"
        for key in ("$ref", "anyOf", "allOf", "oneOf", "title", "nullable", "uniqueItems", "$defs", "const"):
            assert key not in node, f"{path} has {key}"
        assert node.get("additionalProperties") is not False, f"{path} has additionalProperties: false"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties and additionalProperties"
        if node.get("exclusiveMinimum") is not None:
            assert node["exclusiveMinimum"] is True and "minimum" in node


@pytest.mark.parametrize("kind", ["ModelDeployment", "RoutePolicy"])
def test_spec_fields_are_described_for_kubectl_explain(kind):
    spec = _schema(kind)["properties"]["spec"]
    for path, node in _walk(spec, ".spec"):
        if path.endswith(("[]", ".*")) and node["type"] not in ("object", "array"):
            continue  # a list's or map's scalar values: the field itself is described
        assert node.get("description"), f"{path} has no description"


@pytest.mark.parametrize("kind", ["ModelDeployment", "RoutePolicy"])
def test_cel_rules_are_bounded(kind):
    """Strings and lists a rule walks have maximum sizes, so the API server can estimate the cost."""
    for path, node in _walk(_schema(kind)):
        if path == "":
            continue  # the root rule reads only metadata.name, bounded in test_rules_sit_where_the_design_says
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"], f"rule at {path} has no message"
            for sub_path, sub in _walk(node, path):
                if sub.get("type") == "string" and "enum" not in sub:
                    assert "maxLength" in sub, f"{sub_path} (under a rule at {path}) has no maxLength"
                if sub.get("type") == "array":
                    assert "maxItems" in sub, f"{sub_path} (under a rule at {path}) has no maxItems"


def test_rules_sit_where_the_design_says():
    schema = _schema("ModelDeployment")
    spec = schema["properties"]["spec"]
    props = spec["properties"]

    def rules(node):
        return [r["rule"] for r in node.get("x-kubernetes-validations", [])]

    assert rules(props["autoscaling"])[0] == "self.maxReplicas >= self.minReplicas"
    assert rules(props["parallelism"]) == ["self.tensor * self.pipeline <= 8"]
    assert any("self.quantization in" in r for r in rules(props["engine"]))
    assert rules(schema) == [m.NAME_RULE.rule]
    assert schema["properties"]["metadata"]["properties"]["name"]["maxLength"] == 63
    rp_props = _schema("RoutePolicy")["properties"]["spec"]["properties"]
    assert rules(rp_props["backends"]) == [m.BACKENDS_REQUIRED_RULE.rule, m.BACKENDS_UNIQUE_RULE.rule]
    assert rules(rp_props["rules"]["items"]["properties"]["backends"]) == rules(rp_props["backends"])


def test_field_paths_exist_in_the_schema():
    for kind in ("ModelDeployment", "RoutePolicy"):
        for _, node in _walk(_schema(kind)):
            for rule in node.get("x-kubernetes-validations", []):
                if "fieldPath" in rule:
                    target = node
                    for part in rule["fieldPath"].strip(".").split("."):
                        target = target["properties"][part]
                    assert "type" in target


def test_status_conditions_are_a_map_keyed_by_type_like_metav1_condition():
    for kind in ("ModelDeployment", "RoutePolicy"):
        conditions = _schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        item = conditions["items"]
        assert item["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
        assert set(item["properties"]) == {
            "type",
            "status",
            "observedGeneration",
            "lastTransitionTime",
            "reason",
            "message",
        }
        assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
        assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_status_declares_what_the_operator_writes():
    status = _schema("ModelDeployment")["properties"]["status"]["properties"]
    for field in (
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "desiredReplicas",
        "readyText",
        "selector",
        "load",
        "lastScaleTime",
        "scaleReason",
        "conditions",
    ):
        assert field in status
    assert set(status["load"]["properties"]) >= {
        "queueDepth",
        "runningRequests",
        "kvCacheUtilization",
        "tokensPerSecond",
        "ttftP95Seconds",
        "capacityTokensPerSecond",
    }
    rp_status = _schema("RoutePolicy")["properties"]["status"]["properties"]
    assert set(rp_status["backends"]["items"]["properties"]) == {"modelDeployment", "adapter", "weight", "readyReplicas",
                                                                 "reason", "demandTokensPerSecond"}


def test_status_schema_has_no_defaults():
    for kind in ("ModelDeployment", "RoutePolicy"):
        for path, node in _walk(_schema(kind)["properties"]["status"]):
            assert "default" not in node, path


def test_defaults_and_enums_in_the_schema():
    props = _schema("ModelDeployment")["properties"]["spec"]["properties"]
    assert props["replicas"]["default"] == 1
    assert props["parallelism"]["default"] == {"tensor": 1, "pipeline": 1}
    assert props["parallelism"]["properties"]["tensor"]["default"] == 1
    assert props["engine"]["properties"]["kind"]["enum"] == ["vllm", "tensorrt-llm", "sglang", "triton", "sim"]
    assert props["engine"]["properties"]["dtype"]["default"] == "auto"
    auto = props["autoscaling"]["properties"]
    assert auto["metric"]["enum"] == ["queueDepth", "runningRequests", "kvCacheUtilization", "tokensPerSecond"]
    assert (auto["metric"]["default"], auto["scaleDownStabilizationSeconds"]["default"]) == ("queueDepth", 300)
    assert auto["scaleToZero"]["properties"]["idleSeconds"]["default"] == 0
    assert "default" not in props["accelerator"]  # sim must be able to go without
    assert props["accelerator"]["properties"]["resource"]["default"] == "nvidia.com/gpu"
    assert props["engine"]["properties"]["env"]["x-kubernetes-list-map-keys"] == ["name"]
    rp = _schema("RoutePolicy")["properties"]["spec"]["properties"]
    assert rp["strategy"]["enum"] == ["weighted", "failover", "cost", "latency", "cascade"]
    assert rp["retry"]["properties"]["retryOn"]["x-kubernetes-list-type"] == "set"


def test_yaml_has_no_anchors():
    for content in crdgen.expected_files().values():
        assert "&id" not in content and "*id" not in content
