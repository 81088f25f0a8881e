"""The chart as the API server sees it: every rendering is admitted, bad values never get that far.

`helm template` output for the default values and for every values example (the files
in charts/llmfleet/ci/, which the README shows) goes through `kubectl apply
--dry-run=server` into a namespace that enforces the `restricted` Pod Security
Standard: schema validation, admission and PodSecurity all run, nothing is stored.
"""

from __future__ import annotations

import pytest
import yaml

from tests.chart import CHART, render_text

EXAMPLES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE, NAMESPACE = "admission", "admission-system"


@pytest.fixture(scope="module")
def admission_namespaces(dev_cluster, crds):
    """The release namespace (restricted), the example's watched namespaces, and the
    prometheus-operator CRDs the ServiceMonitor example needs."""
    dev_cluster.kubectl("apply", "--server-side", "-f", str(dev_cluster.tools.monitoring_crds))
    watched = {ns for path in EXAMPLES for ns in (yaml.safe_load(path.read_text()) or {}).get("watchNamespaces", [])}
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}]
    docs += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in sorted(watched)]
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    dev_cluster.wait_established("servicemonitors.monitoring.coreos.com")


@pytest.mark.parametrize("values", [None, *EXAMPLES], ids=["defaults", *(p.stem for p in EXAMPLES)])
def test_every_rendering_is_admitted_by_the_api_server(dev_cluster, admission_namespaces, values):
    rendered = render_text(values=[values] if values else [], release=RELEASE, namespace=NAMESPACE)
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Deployment", "Service", "ClusterRole", "ConfigMap", "Pod"} <= kinds
    result = dev_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert "would violate PodSecurity" not in result.stderr, result.stderr
    assert result.stdout.count("(server dry run)") == sum(1 for d in yaml.safe_load_all(rendered) if d)
