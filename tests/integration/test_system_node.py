"""The dev cluster's system node runs pods from their specs, as a kubelet would.

What the Helm chart's pods rely on: env with fieldRefs, mounted ConfigMaps and
Secrets, their own ServiceAccount token, a private network namespace, Service names
that resolve, non-root and read-only root filesystems, probes, restarts, preStop and
SIGTERM.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time
from pathlib import Path

import httpx
import pytest

import llmfleet
from llmfleet_devcluster.images import llmfleet_image
from tests.helpers import kubectl_json, wait_for

IMAGE = f"ghcr.io/llmfleet/llmfleet:{llmfleet_image().version}"
# The image's files are this checkout's: a volume over a directory above them (the
# chart's emptyDir at /tmp, with the checkout under /tmp) must not hide them.
ABOVE_THE_IMAGE = str(Path(llmfleet.__file__).resolve().parents[2].parent)
SYSTEM = {"nodeSelector": {"llmfleet.io/dev-cluster-node": "system"},
          "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
              "seccompProfile": {"type": "RuntimeDefault"}}
LOCKED = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

REPORT = textwrap.dedent("""
    import json, os, socket, ssl, httpx
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    api = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    review = httpx.post(api + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                        json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                        headers={"Authorization": "Bearer " + open(sa + "/token").read()},
                        verify=ssl.create_default_context(cafile=sa + "/ca.crt"), timeout=10)
    try:
        open("/written", "w")
        root = "writable"
    except OSError as exc:
        root = exc.strerror
    open("/scratch/ok", "w").write("1")
    print(json.dumps({
        "uid": os.getuid(), "gid": os.getgid(), "hostname": socket.gethostname(),
        "pod_ip": os.environ["POD_IP"], "arg": os.environ["ARG"], "greeting": open("/config/greeting").read(),
        "secret": open("/secret/password").read(), "namespace": open(sa + "/namespace").read(),
        "user": review.json()["status"]["userInfo"]["username"], "root": root,
        "service": socket.gethostbyname("echo"), "service_fqdn": socket.gethostbyname("echo.%s.svc" % open(sa + "/namespace").read()),
    }), flush=True)
""")


def pod(name: str, containers: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {**SYSTEM, "securityContext": RESTRICTED, "containers": containers, **spec}}


def apply(cluster, namespace, *objs) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                          "items": list(objs)}))


def container_log(cluster, namespace, name, container) -> str:
    path = cluster.logdir / "pods" / f"{namespace}_{name}" / f"{container}.log"
    return path.read_text() if path.exists() else ""


def status_of(cluster, namespace, name) -> dict:
    return kubectl_json(cluster, "get", "pod", name, "-n", namespace).get("status", {})


def test_a_pod_runs_from_its_spec_with_its_own_identity(dev_cluster, namespace):
    apply(dev_cluster, namespace,
          {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reporter"}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}},
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "stringData": {"password": "s3cret"}},
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
           "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}},
          pod("reporter", [{
              "name": "main", "image": IMAGE, "command": ["python3", "-c", REPORT],
              "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                      {"name": "ARG", "value": "ip=$(POD_IP)"}],
              "volumeMounts": [{"name": "cfg", "mountPath": "/config"}, {"name": "sec", "mountPath": "/secret"},
                               {"name": "scratch", "mountPath": "/scratch"},
                               {"name": "above", "mountPath": ABOVE_THE_IMAGE}],
              "securityContext": LOCKED}],
              serviceAccountName="reporter", restartPolicy="Never",
              volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "sec", "secret": {"secretName": "sec"}},
                       {"name": "scratch", "emptyDir": {}}, {"name": "above", "emptyDir": {}}]))
    done = wait_for(lambda: status_of(dev_cluster, namespace, "reporter").get("phase") in ("Succeeded", "Failed")
                    and status_of(dev_cluster, namespace, "reporter"), timeout=60, what="the pod to finish")
    log = container_log(dev_cluster, namespace, "reporter", "main")
    assert done["phase"] == "Succeeded", log
    report = json.loads(log.strip().splitlines()[-1])
    echo = dev_cluster.service_address(namespace, "echo")
    assert report == {
        "uid": 65532, "gid": 65532, "hostname": "reporter", "pod_ip": done["podIP"], "arg": f"ip={done['podIP']}",
        "greeting": "hello", "secret": "s3cret", "namespace": namespace,
        "user": f"system:serviceaccount:{namespace}:reporter", "root": "Read-only file system",
        "service": echo, "service_fqdn": echo,
    }
    assert done["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_pods_get_their_own_network_and_services_reach_ready_endpoints(dev_cluster, namespace):
    # One server on the pod's loopback (like Envoy's admin), one on all its addresses.
    script = ("import http.server, threading\n"
              "def serve(host, port):\n"
              "    http.server.ThreadingHTTPServer((host, port), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
              "threading.Thread(target=serve, args=('127.0.0.1', 9901), daemon=True).start()\n"
              "serve('0.0.0.0', 8080)\n")
    web = {"name": "web", "image": IMAGE, "command": ["python3", "-c", script], "workingDir": "/tmp",
           "ports": [{"name": "http", "containerPort": 8080}],
           "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}
    apply(dev_cluster, namespace, pod("web-a", [web]), pod("web-b", [web]),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"role": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    for name in ("web-a", "web-b"):
        dev_cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", namespace, "--timeout=60s")
    ips = [status_of(dev_cluster, namespace, n)["podIP"] for n in ("web-a", "web-b")]
    assert ips[0] != ips[1]
    for ip in ips:  # both listen on 8080; each pod's 127.0.0.1:9901 is its own
        assert httpx.get(f"http://{ip}:8080/", timeout=5).status_code == 200
        with pytest.raises(OSError):
            socket.create_connection((ip, 9901), timeout=2).close()
    address = dev_cluster.service_address(namespace, "web")
    with pytest.raises(OSError):  # no endpoint yet: refused, as kube-proxy does
        socket.create_connection((address, 80), timeout=2).close()
    dev_cluster.kubectl("label", "pod", "web-a", "web-b", "role=web", "-n", namespace)
    wait_for(lambda: _get(f"http://{address}/") == 200, timeout=15, what="the Service to forward")


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_a_crashing_container_is_restarted_with_back_off(dev_cluster, namespace):
    apply(dev_cluster, namespace, pod("crasher", [{
        "name": "main", "image": IMAGE, "command": ["python3", "-c", "import sys; print('bye'); sys.exit(3)"]}]))
    status = wait_for(lambda: (s := status_of(dev_cluster, namespace, "crasher")).get("containerStatuses")
                      and s["containerStatuses"][0]["restartCount"] >= 2 and s, timeout=30, what="two restarts")
    cs = status["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    # Between crashes it waits out its back-off or runs again; readiness flips within
    # that instant, so it says nothing stable here.
    assert set(cs["state"]) <= {"running", "waiting"}, cs
    assert status["phase"] == "Running"


def test_an_unknown_image_tag_fails_like_a_pull(dev_cluster, namespace):
    apply(dev_cluster, namespace, pod("puller", [{"name": "main", "image": "ghcr.io/llmfleet/llmfleet:0.0.0-nope"}]))
    waiting = wait_for(lambda: ((status_of(dev_cluster, namespace, "puller").get("containerStatuses") or [{}])[0]
                                .get("state", {}).get("waiting")), timeout=30, what="a waiting container")
    assert waiting["reason"] == "ErrImagePull" and "0.0.0-nope" in waiting["message"]
    assert status_of(dev_cluster, namespace, "puller")["phase"] == "Pending"


def test_deletion_runs_pre_stop_then_sigterm_then_removes_the_pod(dev_cluster, namespace):
    script = ("import signal, sys, time\n"
              "def term(*_):\n"
              "    print('SIGTERM', time.time(), flush=True); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, term)\n"
              "print('up', flush=True)\n"
              "while True: time.sleep(0.05)\n")
    apply(dev_cluster, namespace, pod("stopper", [{
        "name": "main", "image": IMAGE, "command": ["python3", "-c", script],
        "lifecycle": {"preStop": {"sleep": {"seconds": 2}}}}], terminationGracePeriodSeconds=20))
    wait_for(lambda: "up" in container_log(dev_cluster, namespace, "stopper", "main"), what="the process")
    start = time.time()
    dev_cluster.kubectl("delete", "pod", "stopper", "-n", namespace, "--wait=false")
    wait_for(lambda: dev_cluster.kubectl("get", "pod", "stopper", "-n", namespace, check=False).returncode != 0,
             timeout=30, what="the pod object to go")
    term = [line for line in container_log(dev_cluster, namespace, "stopper", "main").splitlines()
            if line.startswith("SIGTERM")]
    assert term, "the process never saw SIGTERM"
    assert float(term[0].split()[1]) - start >= 1.8, "SIGTERM came before the preStop sleep ended"


def test_an_exec_probe_runs_in_the_containers_view(dev_cluster, namespace):
    script = "import time, pathlib\ntime.sleep(1)\npathlib.Path('/scratch/ready').touch()\ntime.sleep(3600)\n"
    apply(dev_cluster, namespace, pod("waiter", [{
        "name": "main", "image": IMAGE, "command": ["python3", "-c", script],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "readinessProbe": {"exec": {"command": ["python3", "-c", "import os; os.stat('/scratch/ready')"]},
                           "periodSeconds": 1, "timeoutSeconds": 5}}],
        volumes=[{"name": "scratch", "emptyDir": {}}]))
    assert not status_of(dev_cluster, namespace, "waiter").get("containerStatuses", [{}])[0].get("ready")
    dev_cluster.kubectl("wait", "--for=condition=Ready", "pod/waiter", "-n", namespace, "--timeout=30s")
