"""llmfleet installed on the dev cluster with its own Helm chart (tests, quickstart, benchmarks).

`helm upgrade --install` of ``charts/llmfleet`` with the dev cluster's values file
(``manifests/dev-cluster/values.yaml``: only where the pods may run), so the operator
and Envoy run on the system node from the chart's own pod specs, under the chart's
RBAC, as they would in production. The operator handle mirrors
:class:`~llmfleet_devcluster.operator_process.OperatorProcess` (start, stop,
restart, metrics), acting on the Deployment instead of a local process.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

import llmfleet

from .cluster import ClusterError, DevCluster

REPO = Path(llmfleet.__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmfleet"
DEV_VALUES = REPO / "manifests" / "dev-cluster" / "values.yaml"
RELEASE, NAMESPACE = "llmfleet", "llmfleet-system"


class Release:
    """One Helm release of the chart on a dev cluster."""

    def __init__(self, cluster: DevCluster, *, name: str = RELEASE, namespace: str = NAMESPACE,
                 values: dict[str, str] | None = None, values_files: tuple[Path, ...] = (DEV_VALUES,)) -> None:
        self.cluster = cluster
        self.name, self.namespace = name, namespace
        self.values = dict(values or {})  # --set KEY=VALUE
        self.values_files = values_files
        self.operator = InstalledOperator(self)

    # -- helm

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.cluster.tools.path("helm")), "--kubeconfig", str(self.cluster.kubeconfig),
                               *args], capture_output=True, text=True, timeout=timeout, env=self.cluster.env())
        if check and proc.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _value_args(self, extra: dict[str, str] | None = None) -> list[str]:
        args = [a for f in self.values_files for a in ("-f", str(f))]
        for key, value in {**self.values, **(extra or {})}.items():
            args += ["--set", f"{key}={value}"]
        return args

    def install(self, timeout: str = "180s") -> Release:
        """`helm upgrade --install --wait`: returns once the operator and Envoy are Ready."""
        self.helm("upgrade", "--install", self.name, str(CHART), "-n", self.namespace, "--create-namespace",
                  *self._value_args(), "--wait", f"--timeout={timeout}")
        return self

    def upgrade(self, values: dict[str, str], timeout: str = "180s") -> None:
        self.values.update(values)
        self.helm("upgrade", self.name, str(CHART), "-n", self.namespace, *self._value_args(), "--wait",
                  f"--timeout={timeout}")

    def uninstall(self) -> None:
        # Foreground: Helm waits until the Deployments' pods have gone through their termination.
        self.helm("uninstall", self.name, "-n", self.namespace, "--cascade=foreground", "--wait", "--timeout=120s")

    # -- names and addresses

    @property
    def fullname(self) -> str:
        return self.name if "llmfleet" in self.name else f"{self.name}-llmfleet"

    @property
    def ingress_url(self) -> str:
        """The OpenAI endpoint: the ingress Service (port 80), at its address here."""
        svc = json.loads(self.cluster.kubectl("get", "service", f"{self.fullname}-ingress", "-n", self.namespace,
                                              "-o", "json").stdout)
        port = svc["spec"]["ports"][0]["port"]
        return f"http://{self.cluster.service_address(self.namespace, f'{self.fullname}-ingress')}:{port}"

    def pods(self, component: str) -> list[dict]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        return json.loads(self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o",
                                               "json").stdout)["items"]


def _ready(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


class InstalledOperator:
    """The chart's operator Deployment (one or more replicas, one leading), driven like a
    local operator process."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self._wanted = int(release.values.get("operator.replicas", 2))  # what start() scales to

    @property
    def deployment(self) -> str:
        return f"{self.release.fullname}-operator"

    def _spec_replicas(self) -> int:
        deployment = json.loads(self.release.cluster.kubectl(
            "get", "deployment", self.deployment, "-n", self.release.namespace, "-o", "json").stdout)
        return int(deployment["spec"].get("replicas", 1))

    def leader_name(self) -> str | None:
        """The pod that holds the Lease, as the Lease says (None: nobody yet)."""
        done = self.release.cluster.kubectl("get", "lease", self.deployment, "-n", self.release.namespace,
                                            "-o", "json", check=False)
        if done.returncode != 0:
            return None
        return (json.loads(done.stdout).get("spec") or {}).get("holderIdentity") or None

    def ready_pods(self) -> list[dict]:
        return [p for p in self.release.pods("operator") if _ready(p)]

    def pod(self) -> dict:
        """The leader's pod: it reconciles, autoscales and writes status."""
        ready = self.ready_pods()
        leader = self.leader_name()
        for p in ready:
            if p["metadata"]["name"] == leader:
                return p
        raise ClusterError(f"no ready operator pod leads (Lease holder {leader!r}, "
                           f"ready: {[p['metadata']['name'] for p in ready]})")

    def _url(self, port_name: str, path: str, pod: dict | None = None) -> str:
        pod = pod or self.pod()
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []}
        return f"http://{pod['status']['podIP']}:{ports[port_name]}{path}"

    @property
    def health_url(self) -> str:
        return self._url("health", "/healthz")

    def metrics(self, pod: dict | None = None) -> str:
        """The leader's metrics (or ``pod``'s)."""
        return httpx.get(self._url("metrics", "/metrics", pod), timeout=5, trust_env=False).text

    def _scale(self, replicas: int) -> None:
        self.release.cluster.kubectl("scale", f"deployment/{self.deployment}", "-n", self.release.namespace,
                                     f"--replicas={replicas}")

    def stop(self, timeout: float = 60) -> None:
        """No operator pod left (scaled to 0, its processes ended)."""
        self._wanted = self._spec_replicas() or self._wanted
        self._scale(0)
        self._wait(lambda pods: not pods, "the operator pods to be gone", timeout)

    def start(self, timeout: float = 120) -> None:
        wanted = self._wanted
        self._scale(wanted)
        self._wait(lambda pods: len(pods) == wanted and all(_ready(p) for p in pods),
                   f"{wanted} ready operator pods", timeout)

    def restart(self, timeout: float = 120) -> None:
        """New operator pods (a rolling update: one new before one old goes)."""
        old = {p["metadata"]["uid"] for p in self.release.pods("operator")}
        wanted = self._spec_replicas()
        self.release.cluster.kubectl("rollout", "restart", f"deployment/{self.deployment}", "-n",
                                     self.release.namespace)
        self._wait(lambda pods: len(pods) == wanted and all(p["metadata"]["uid"] not in old and _ready(p)
                                                            for p in pods),
                   f"{wanted} new ready operator pods", timeout)

    def _wait(self, done, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.release.pods("operator")):
                if self.ready_pods():
                    self._wait_serving(deadline)
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}; log:\n{self.log_tail()}")

    def _wait_serving(self, deadline: float) -> None:
        """Until a ready replica leads and serves its metrics."""
        while time.monotonic() < deadline:
            try:
                if httpx.get(self._url("metrics", "/metrics"), timeout=2, trust_env=False).status_code == 200:
                    return
            except (httpx.HTTPError, ClusterError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no operator replica leads; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        """The newest operator pod's log (the dev cluster's kubelet writes it)."""
        pattern = f"{self.release.namespace}_{self.deployment}-*/*.log"
        logs = sorted((self.release.cluster.logdir / "pods").glob(pattern), key=lambda p: p.stat().st_mtime)
        if not logs:
            return ""
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])
