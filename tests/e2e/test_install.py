"""llmfleet installed the way platform teams install it: `helm install` of its chart.

The session's `release` fixture installed charts/llmfleet with the real helm binary;
the operator and the Envoy ingress run on the dev cluster's system node from the
chart's own pod specs (non-root, read-only root, their own ServiceAccount token and
RBAC), and every e2e test goes through them.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest
import yaml

from llmfleet_devcluster.kubelet import NodeView
from llmfleet_devcluster.release import CHART, DEV_VALUES, Release
from tests.e2e.test_rbac import refused_by_rbac
from tests.helpers import Load, kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES

QUICKSTART = EXAMPLES / "sim-quickstart.yaml"


def programmed(cluster, namespace: str, name: str) -> bool:
    status = kubectl_json(cluster, "get", "rp", name, "-n", namespace).get("status", {})
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in status.get("conditions", []))


INGRESS_COUNTERS = ("listener_manager_listener_modified", "listener_manager_total_listeners_draining",
                    "listener_manager_listener_removed", "downstream_cx_active", "downstream_rq_active",
                    "downstream_cx_drain_close", "with_active_rq", "upstream_rq_active", "upstream_cx_active",
                    "upstream_rq_pending_active", "server_uptime", "control_plane_connected_state")


def ingress_state(release, load: Load | None = None) -> str:
    """What the load and each Envoy of the release are doing: for a failed wait's message."""
    lines = [load.describe()] if load is not None else []
    for pod in release.pods("ingress"):
        ip = (pod.get("status") or {}).get("podIP")
        try:
            text = httpx.get(f"http://{ip}:19001/stats/prometheus", timeout=5, trust_env=False).text
        except httpx.HTTPError as exc:
            lines.append(f"{pod['metadata']['name']}: no stats ({exc!r})")
            continue
        picked = [line for line in text.splitlines() if not line.startswith("#")
                  and any(k in line.split("{")[0].split(" ")[0] for k in INGRESS_COUNTERS)
                  and not line.endswith(" 0")]
        lines.append(f"{pod['metadata']['name']} ({ip}): " + "; ".join(picked))
    return "\n".join(lines)


def apply_quickstart(cluster, namespace: str) -> None:
    """The quickstart example as a user applies it, and its route served."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(QUICKSTART))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "md/quickstart-sim", "--timeout=90s",
                    timeout=100)
    # Another test's namespace may still hold the older claim on "quickstart" while it is deleted.
    wait_for(lambda: programmed(cluster, namespace, "quickstart"), timeout=90, what="rp/quickstart Programmed")


def test_the_charts_pods_run_from_their_specs_under_their_own_identity(dev_cluster, release):
    node = NodeView(dev_cluster.logdir).pods()
    for component in ("operator", "ingress"):
        pods = release.pods(component)
        assert pods and all(p["spec"]["nodeName"] == "system-0" for p in pods)
        for pod in pods:
            key = f"{release.namespace}/{pod['metadata']['name']}"
            for name, container in node[key]["containers"].items():
                status = open(f"/proc/{container['pid']}/status").read()
                uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
                assert uid == "65532", f"{key}/{name} runs as uid {uid}"
    # Envoy: ready through its ready port; its admin interface only on its own loopback.
    for pod in release.pods("ingress"):
        ip = pod["status"]["podIP"]
        assert httpx.get(f"http://{ip}:19001/ready", timeout=5).status_code == 200
        assert httpx.get(f"http://{ip}:19001/config_dump", timeout=5).status_code == 404
        with pytest.raises(OSError):
            socket.create_connection((ip, 19000), timeout=2).close()
    # The operator authenticated with its ServiceAccount's token (audited as that user).
    user = f"system:serviceaccount:{release.namespace}:{release.fullname}-operator"
    users = {json.loads(line)["user"]["username"] for line in dev_cluster.audit_log.read_text().splitlines()}
    assert user in users


def test_the_official_openai_client_gets_an_answer_through_the_charts_envoy(dev_cluster, release, namespace):
    apply_quickstart(dev_cluster, namespace)
    client = openai.OpenAI(base_url=f"{release.ingress_url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert "quickstart" in {m.id for m in client.models.list()}
    response = client.chat.completions.with_raw_response.create(
        model="quickstart", max_tokens=8, messages=[{"role": "user", "content": "Hello!"}])
    assert response.status_code == 200
    completion = response.parse()
    assert completion.choices[0].message.content and completion.usage.completion_tokens == 8


def test_helm_test_asks_the_ingress_for_its_models(release):
    result = release.helm("test", release.name, "-n", release.namespace, "--timeout=90s", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Succeeded" in result.stdout


def test_helm_upgrade_rolls_the_operator_under_load_without_failing_requests(dev_cluster, release, namespace):
    apply_quickstart(dev_cluster, namespace)
    old = {p["metadata"]["uid"] for p in release.pods("operator")}
    with Load(release.ingress_url, "quickstart") as load:
        wait_for(lambda: load.outcomes[200] >= 50, timeout=30, what="the load to run")
        start = time.monotonic()
        release.upgrade({"operator.logLevel": "debug"})  # a changed flag: a new operator pod
        rolled = time.monotonic() - start
        new = [p for p in release.pods("operator") if not p["metadata"].get("deletionTimestamp")]
        assert len(new) == 2 and not {p["metadata"]["uid"] for p in new} & old
        assert all("--log-level=debug" in p["spec"]["containers"][0]["args"] for p in new)
        # The new replicas serve Envoy the same routes: the policy is Programmed again.
        wait_for(lambda: programmed(dev_cluster, namespace, "quickstart"), timeout=60, what="Programmed again")
        before = load.sent
        wait_for(lambda: load.sent >= before + 50, timeout=30, what="requests after the roll",
                 explain=lambda: ingress_state(release, load))
    release.upgrade({"operator.logLevel": "info"})
    print(f"\nhelm upgrade rolled the operator in {rolled:.1f} s under load: {load.sent} requests, "
          f"{load.failed} failed ({dict(load.outcomes)})")
    assert load.failed == 0, ingress_state(release, load)


def test_an_envoy_that_starts_while_the_operator_is_away_stays_out_of_the_service(dev_cluster, release, namespace):
    """A new Envoy pod (a rollout, a node drain, a scale-up) with no operator to program it
    is not Ready, even after its own initial xDS fetch has timed out (30 s), so the Service
    keeps sending clients to the Envoys that have routes; it turns Ready once the operator
    is back."""
    apply_quickstart(dev_cluster, namespace)
    wait_for(lambda: programmed(dev_cluster, namespace, "quickstart"), timeout=60, what="Programmed")
    deployment = f"{release.fullname}-ingress"
    old = {p["metadata"]["uid"] for p in release.pods("ingress")}

    def newcomer() -> dict | None:
        return next((p for p in release.pods("ingress") if p["metadata"]["uid"] not in old), None)

    def ready(pod: dict | None) -> bool:
        return pod is not None and any(c["type"] == "Ready" and c["status"] == "True"
                                       for c in (pod.get("status") or {}).get("conditions") or [])

    with Load(release.ingress_url, "quickstart") as load:
        wait_for(lambda: load.ok >= 20, timeout=30, what="the load to run")
        release.operator.stop()
        try:
            dev_cluster.kubectl("scale", f"deployment/{deployment}", "-n", release.namespace,
                                f"--replicas={len(old) + 1}")
            started = wait_for(lambda: (p := newcomer()) is not None and p.get("status", {}).get("phase") == "Running"
                               and p, timeout=60, what="the new Envoy pod to run")
            assert started is not None
            deadline = time.monotonic() + 40  # past Envoy's initial fetch timeouts (15 s CDS + 15 s LDS)
            while time.monotonic() < deadline:
                assert not ready(newcomer()), "an Envoy without routes turned Ready"
                time.sleep(2)
        finally:
            release.operator.start()
        wait_for(lambda: ready(newcomer()), timeout=90, what="the new Envoy to be Ready once programmed")
        before = load.sent
        wait_for(lambda: load.sent >= before + 20, timeout=30, what="requests after the operator returned",
                 explain=lambda: ingress_state(release, load))
    dev_cluster.kubectl("scale", f"deployment/{deployment}", "-n", release.namespace, f"--replicas={len(old)}")
    print(f"\nan Envoy started while the operator was away: {load.sent} requests, {load.failed} failed")
    assert load.failed == 0, ingress_state(release, load)


def test_a_namespaced_install_runs_under_roles_and_uninstall_leaves_only_crds_and_user_objects(dev_cluster, crds):
    """A second release that watches only its own namespace (Role per namespace), then
    `helm uninstall`: nothing of it stays but the CRDs and the user's own objects."""
    ns = "lf-scoped"
    scoped = Release(dev_cluster, name="scoped", namespace=ns,
                     values={"watchNamespaces[0]": ns, "ingress.replicas": "1", "operator.autoscaleInterval": "1"})
    scoped.install()
    try:
        doc = [d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d]
        md = next(d for d in doc if d["kind"] == "ModelDeployment")
        md["metadata"]["name"] = "scoped-sim"
        md["spec"]["model"]["servedName"] = "scoped-sim"
        dev_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(md))
        dev_cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", "md/scoped-sim", "--timeout=90s", timeout=100)

        def reconciled() -> bool:
            text = scoped.operator.metrics()
            return any(line.startswith('llmfleet_modeldeployment_replicas{') and 'name="scoped-sim"' in line
                       and 'state="ready"' in line and line.endswith(" 1.0") for line in text.splitlines())

        wait_for(reconciled, timeout=60, what="the scoped operator to reconcile its namespace")
        roles = kubectl_json(dev_cluster, "get", "roles", "-n", ns, "-l", "app.kubernetes.io/instance=scoped")
        assert sorted(r["metadata"]["name"] for r in roles["items"]) == ["scoped-llmfleet-operator",
                                                                        "scoped-llmfleet-operator-replicas"]
        user = f"system:serviceaccount:{ns}:scoped-llmfleet-operator"
        refused = [e["requestURI"] for line in dev_cluster.audit_log.read_text().splitlines()
                   if (e := json.loads(line))["user"]["username"] == user and refused_by_rbac(e)]
        assert not refused, f"the namespaced operator was refused: {refused}"
    finally:
        scoped.uninstall()

    def leftovers() -> list[str]:
        left = []
        for kind in ("deployments", "replicasets", "pods", "services", "configmaps", "serviceaccounts", "roles",
                     "rolebindings", "poddisruptionbudgets", "networkpolicies", "secrets"):
            items = kubectl_json(dev_cluster, "get", kind, "-n", ns, "-l", "app.kubernetes.io/instance=scoped")
            left += [f"{kind}/{i['metadata']['name']}" for i in items["items"]]
        for kind in ("clusterroles", "clusterrolebindings"):
            items = kubectl_json(dev_cluster, "get", kind, "-l", "app.kubernetes.io/instance=scoped")["items"]
            left += [f"{kind}/{i['metadata']['name']}" for i in items]
        secrets = kubectl_json(dev_cluster, "get", "secrets", "-n", ns)["items"]
        left += [s["metadata"]["name"] for s in secrets
                 if s["metadata"]["name"].startswith("sh.helm.release.v1.scoped.")]
        # What the operator made for itself: its Lease and its replicas' xDS reports.
        leases = kubectl_json(dev_cluster, "get", "leases", "-n", ns)["items"]
        left += [f"leases/{i['metadata']['name']}" for i in leases]
        reports = kubectl_json(dev_cluster, "get", "configmaps", "-n", ns, "-l", "llmfleet.io/xds-report")["items"]
        return left + [f"configmaps/{i['metadata']['name']}" for i in reports]

    # Pods go through their termination (preStop, grace period) after helm returns.
    deadline = time.monotonic() + 90
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"helm uninstall left {left}"
    # What stays: the CRDs, and the user's ModelDeployment (with the children it owns).
    dev_cluster.kubectl("get", "crd", "modeldeployments.llmfleet.io", "routepolicies.llmfleet.io")
    assert kubectl_json(dev_cluster, "get", "md", "scoped-sim", "-n", ns)["metadata"]["name"] == "scoped-sim"
    dev_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_the_chart_installs_from_its_own_directory_and_values():
    assert (CHART / "Chart.yaml").exists() and DEV_VALUES.exists()
