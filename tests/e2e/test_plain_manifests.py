"""llmfleet without Helm: `kubectl apply -k manifests/install`, the way GitOps tools apply it.

On a dev cluster of its own (the chart-installed llmfleet of the session would share
names and cluster-wide objects), the plain manifests are applied server-side under a
GitOps tool's field manager, with the one overlay a user of this cluster needs (the
dev cluster's values file as a kustomize patch: where the pods may run), and the
quickstart example next to them. Then:
- the same OpenAI request succeeds through their Envoy;
- once the operator has reconciled, re-applying changes nothing (`kubectl diff
  --server-side` is empty), and no field the GitOps tool owns is also written by the
  operator.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import openai
import pytest
import yaml

from llmfleet_devcluster.cluster import DevCluster, node_pools_from_env
from llmfleet_devcluster.release import DEV_VALUES, REPO
from tests.helpers import kubectl_json, wait_for

INSTALL = REPO / "manifests" / "install"
QUICKSTART = REPO / "manifests" / "examples" / "sim-quickstart.yaml"
MANAGER = "gitops"  # as Argo CD's or Flux's server-side apply would be


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    cluster = DevCluster(node_pools_from_env()).start()
    overlay = tmp_path_factory.mktemp("overlay")
    dev = yaml.safe_load(DEV_VALUES.read_text())
    patches = []
    for component, name in (("operator", "llmfleet-operator"), ("ingress", "llmfleet-ingress")):
        patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace":
                 "llmfleet-system"}, "spec": {"template": {"spec": {
                     "nodeSelector": dev[component]["nodeSelector"], "tolerations": dev[component]["tolerations"]}}}}
        (overlay / f"{component}.yaml").write_text(yaml.safe_dump(patch))
        patches.append({"path": f"{component}.yaml"})
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(INSTALL, overlay)], "patches": patches}))  # kustomize wants it relative
    try:
        yield cluster, overlay
    finally:
        cluster.stop()


def gitops(cluster, verb: str, *args: str) -> subprocess.CompletedProcess:
    return cluster.kubectl(verb, "--server-side", f"--field-manager={MANAGER}", *args, check=False, timeout=120)


def test_kustomize_install_serves_the_quickstart_and_reapplying_changes_nothing(plain):
    cluster, overlay = plain
    applied = gitops(cluster, "apply", "-k", str(overlay))
    assert applied.returncode == 0, applied.stderr
    cluster.kubectl("rollout", "status", "-n", "llmfleet-system", "deployment/llmfleet-operator",
                    "deployment/llmfleet-ingress", "--timeout=120s", timeout=130)
    assert gitops(cluster, "apply", "-n", "default", "-f", str(QUICKSTART)).returncode == 0
    cluster.kubectl("wait", "--for=condition=Ready", "md/quickstart-sim", "--timeout=90s", timeout=100)
    wait_for(lambda: any(c["type"] == "Programmed" and c["status"] == "True" for c in
                         kubectl_json(cluster, "get", "rp", "quickstart").get("status", {}).get("conditions", [])),
             what="rp/quickstart Programmed")

    address = cluster.service_address("llmfleet-system", "llmfleet-ingress")
    client = openai.OpenAI(base_url=f"http://{address}:80/v1", api_key="unused", max_retries=0, timeout=30)
    completion = client.chat.completions.create(model="quickstart", max_tokens=5,
                                                messages=[{"role": "user", "content": "Hello!"}])
    assert completion.usage.completion_tokens == 5

    # Let the autoscaler write status.load at least once: everything the operator writes is written.
    wait_for(lambda: kubectl_json(cluster, "get", "md", "quickstart-sim").get("status", {}).get("load"),
             timeout=30, what="status.load")
    for args in (("-k", str(overlay)), ("-n", "default", "-f", str(QUICKSTART))):
        diff = gitops(cluster, "diff", *args)
        assert diff.returncode == 0 and not diff.stdout.strip(), f"re-applying {args} would change:\n{diff.stdout}"

    fights = {}
    for obj in applied_objects(cluster, overlay) + applied_objects(cluster, QUICKSTART, "default"):
        ours = owned_fields(obj, lambda m: m == MANAGER)
        operator = owned_fields(obj, lambda m: m.startswith("llmfleet"))
        if ours & operator:
            fights[f"{obj['kind']}/{obj['metadata']['name']}"] = sorted(ours & operator)
    assert not fights, f"fields owned by both the GitOps tool and the operator: {fights}"


def applied_objects(cluster, source: Path, namespace: str | None = None) -> list[dict]:
    text = cluster.kubectl("kustomize", str(source)).stdout if source.is_dir() else source.read_text()
    out = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        ns = doc["metadata"].get("namespace") or namespace
        group = doc["apiVersion"].rpartition("/")[0]
        resource = f"{doc['kind'].lower()}.{group}" if group else doc["kind"].lower()
        args = ["get", resource, doc["metadata"]["name"], "--show-managed-fields"]
        out.append(kubectl_json(cluster, *args, *(["-n", ns] if ns else [])))
    return out


def owned_fields(obj: dict, manager) -> set[str]:
    """Leaf field paths (`f:spec.f:replicas`...) owned by the managers ``manager`` accepts
    (fields written through a subresource, such as scale, are recorded as the object's own)."""
    def walk(node: dict, prefix: str) -> set[str]:
        paths = set()
        for key, child in node.items():
            if key == ".":
                continue
            path = f"{prefix}.{key}" if prefix else key
            paths |= walk(child, path) if child else {path}
        return paths

    fields = set()
    for entry in obj["metadata"].get("managedFields") or []:
        if manager(entry["manager"]) and entry.get("fieldsV1"):
            fields |= walk(entry["fieldsV1"], "")
    return fields

