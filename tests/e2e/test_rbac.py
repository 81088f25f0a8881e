"""Least privilege, proven: the API server's audit log of the chart-installed operator.

The dev cluster audits every request made with a ServiceAccount token. Here the
operator does everything it ever does (reconciles children, reads node capacity,
writes status and Events, autoscales, scales to zero and wakes through the
activator; elects a leader and reports what its Envoys run), then its requests are
compared with what its ClusterRole and its Role in the release namespace grant: it
was never refused, and every grant was used or is explained in the README's RBAC
table.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import httpx

from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES, apply, load_md

README = Path(__file__).resolve().parents[2] / "README.md"


def audited(audit_log: Path, user: str) -> list[dict]:
    events = []
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        # A watch completes only when it ends (5 to 10 minutes after it starts): its
        # ResponseStarted stage already says whether it was allowed.
        stage = event.get("stage")
        if event["user"]["username"] == user and (
                stage == "ResponseComplete" or (stage == "ResponseStarted" and event["verb"] == "watch")):
            events.append(event)
    return events


def refused_by_rbac(event: dict) -> bool:
    """A 403 from authorization (RBAC), not from admission (e.g. a namespace being deleted)."""
    return (event["responseStatus"]["code"] == 403
            and (event.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid")


def used_permissions(events: list[dict]) -> set[tuple[str, str, str]]:
    """(API group, resource[/subresource], verb) of every request that got through.
    A server-side apply that created its object (201) needed `create` as well."""
    used = set()
    for event in events:
        ref = event.get("objectRef")
        if not ref or event["responseStatus"]["code"] in (401, 403):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and event["responseStatus"]["code"] == 201:
            used.add((ref.get("apiGroup", ""), resource, "create"))
    return used


def granted_permissions(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", []) for verb in rule["verbs"]}


def readme_rbac_rows() -> dict[tuple[str, str], tuple[set[str], str]]:
    """The README's RBAC table: (API group, resource) → (verbs, why)."""
    text = README.read_text()
    section = text[text.index("<!-- rbac-table:start -->"):text.index("<!-- rbac-table:end -->")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("API group", "") and cells[1] in ("resource", "") or set(cells[0]) <= {"-"}:
            continue
        group = "" if cells[0] in ("core", '""', "(core)") else cells[0].strip("`")
        verbs = set(re.findall(r"[a-z]+", cells[2]))
        rows[(group, cells[1].strip("`"))] = (verbs, cells[3])
    return rows


def exercise_everything(cluster, namespace: str, fleet, url: str) -> None:
    """Every code path of the operator that talks to the API server."""
    # A Tenant (its status; the Secrets of API keys are watched): then gone again, as it
    # would ask every request of the shared ingress for a key.
    key = base64.b64encode(b"sk-rbac-0123456789").decode()
    assert apply(cluster, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "rbac-keys", "labels": {"llmfleet.io/api-keys": "true"}}, "data": {"k": key}}).returncode == 0
    assert apply(cluster, namespace, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "Tenant", "metadata": {
        "name": "rbac"}, "spec": {"apiKeys": {"secretName": "rbac-keys"}, "models": ["napper-rbac"]}}).returncode == 0
    wait_for(lambda: (kubectl_json(cluster, "get", "tenant", "rbac", "-n", namespace).get("status") or {})
             .get("keys") == 1, timeout=30, what="the Tenant's status")
    cluster.kubectl("delete", "tenant", "rbac", "-n", namespace, "--wait=true")
    wait_for(lambda: httpx.get(f"{url}/v1/models", timeout=10).status_code == 200, timeout=30,
             what="the ingress open again")
    md = copy.deepcopy(load_md(EXAMPLES / "sim-quickstart.yaml"))
    md["metadata"] = {"name": "napper"}
    md["spec"]["model"]["servedName"] = "napper"
    md["spec"]["accelerator"] = {"product": "NVIDIA-L4"}  # a GPU: the node capacity check reads nodes
    md["spec"]["engine"]["extraArgs"] += ["--time-scale", "0.01"]
    md["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2, "metric": "queueDepth", "target": 4,
                                 "scaleToZero": {"idleSeconds": 3}}
    md["spec"].pop("replicas", None)
    md["spec"]["adapters"] = [{"name": "napper-sql", "uri": "hf://llmfleet/sql-lora"}]  # recorded on the pod
    assert apply(cluster, namespace, md).returncode == 0
    apply(cluster, namespace, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy",
                               "metadata": {"name": "napper"},
                               "spec": {"model": "napper-rbac", "backends": [{"modelDeployment": "napper"}]}})
    fleet.wait_ready(1, namespace, timeout=60)
    wait_for(lambda: any("llmfleet.io/adapters" in (p["metadata"].get("annotations") or {}) for p in kubectl_json(
        cluster, "get", "pods", "-n", namespace, "-l", "llmfleet.io/model-deployment=napper")["items"]),
        timeout=30, what="the adapter loaded and recorded on the pod")
    wait_for(lambda: kubectl_json(cluster, "get", "md", "napper", "-n", namespace)["spec"]["replicas"] == 0,
             timeout=90, what="scale to zero (autoscaler: scale subresource, status, Events)")
    wait_for(lambda: "activator" in (kubectl_json(cluster, "get", "rp", "napper", "-n", namespace)
                                     .get("status", {}).get("backends") or [{}])[0].get("reason", ""),
             timeout=30, what="the route on the activator")
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "napper-rbac", "max_tokens": 2, "messages": [{"role": "user", "content": "wake"}]})
    assert r.status_code == 200, r.text  # the waker read the ModelDeployment and scaled it
    cluster.kubectl("delete", "md", "napper", "-n", namespace)


def test_the_operator_is_refused_nothing_and_uses_what_it_is_granted(dev_cluster, release, fleet, envoy, namespace):
    exercise_everything(dev_cluster, namespace, fleet, envoy.url)
    user = f"system:serviceaccount:{release.namespace}:{release.fullname}-operator"
    events = wait_for(lambda: audited(dev_cluster.audit_log, user), what="audit events of the operator")

    refused = [f"{e['verb']} {e['requestURI']}: {e['responseStatus'].get('message', '')}"
               for e in events if refused_by_rbac(e)]
    assert not refused, "the operator was refused:\n" + "\n".join(refused)
    others = [e for e in events if e["responseStatus"]["code"] == 403 and not refused_by_rbac(e)]
    print(f"\n{len(events)} requests by the operator, none refused by RBAC; {len(others)} other 403s "
          "(admission: writes into namespaces being deleted, as tests delete theirs)")
    assert all("being terminated" in e["responseStatus"].get("message", "") for e in others), others

    role = kubectl_json(dev_cluster, "get", "clusterrole", f"{release.fullname}-operator")
    replicas = kubectl_json(dev_cluster, "get", "role", f"{release.fullname}-operator-replicas", "-n",
                            release.namespace)  # the Lease, the replicas' reports, a replica's own pod
    granted, used = granted_permissions(role) | granted_permissions(replicas), used_permissions(events)
    assert used <= granted  # anything else would have been a 403
    rows = readme_rbac_rows()
    undocumented = sorted(g for g in granted if (g[0], g[1]) not in rows or g[2] not in rows[(g[0], g[1])][0])
    assert not undocumented, f"grants missing from the README's RBAC table: {undocumented}"
    unexplained = sorted(g for g in granted - used if "not in the audit log" not in rows[(g[0], g[1])][1].lower())
    assert not unexplained, (f"granted but never used, and the README does not say why: {unexplained}\n"
                             f"used: {sorted(used)}")
