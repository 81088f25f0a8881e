"""A real Kubernetes control plane on loopback, for tests and for trying llmfleet.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local
processes built from their upstream modules; KWOK plays the kubelets of fake GPU
nodes. Pods that KWOK marks Running get IPs from a 127.x range, so later tiers can
bind real processes (the `sim` engine) to them.

Kubernetes refuses loopback addresses in Endpoints and EndpointSlices and as the API
server's advertised endpoint, so the API server's endpoint reconciler is off and
anything that needs pod addresses reads them from the pods themselves.

One more node, `system`, is not KWOK's to run: its kubelet (kubelet.py) runs the
pods scheduled there (what the Helm chart installs: the operator, the Envoy ingress)
as real processes from their pod specs, each in its own network namespace, and
forwards every Service from a loopback address that stands for its ClusterIP
(serviceproxy.py). It is tainted `CriticalAddonsOnly`, as system node pools are, so
only pods that tolerate it land there. It needs root.

The API server writes an audit log of every request made with a ServiceAccount's
token (`<logdir>/audit.log`): what the operator, running under its own RBAC, asked.

The same object also attaches to an existing cluster (`LLMFLEET_TEST_KUBECONFIG`):
then only KWOK runs locally, managing the fake GPU nodes it adds to that cluster.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml

from .tools import Tools, require_tools

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
DEV_NODE_LABEL = "llmfleet.io/dev-cluster-node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR_SECOND_OCTETS = range(1, 255)  # pod IPs come from 127.X.0.0/16
SYSTEM_NODE_LABEL_VALUE = "system"
SYSTEM_TAINT = {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Every request made with a ServiceAccount's token, and nothing else: the
    # control plane's own traffic and the tests' admin requests would drown it.
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}


class ClusterError(RuntimeError):
    """The dev cluster could not start; the message points at the component log."""


@dataclass(frozen=True)
class NodePool:
    """A group of identical fake nodes."""

    name: str
    count: int
    gpus: int = 0
    gpu_product: str | None = None
    cpu: str = "64"
    memory: str = "512Gi"
    ephemeral_storage: str = "500Gi"
    pods: int = 110
    taints: tuple[dict, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NodePool:
        """`NAME=COUNTxGPUS[:PRODUCT]`, e.g. `gpu-h100=4x8:NVIDIA-H100-80GB-HBM3`."""
        try:
            name, _, rest = text.partition("=")
            shape, _, product = rest.partition(":")
            count, _, gpus = shape.partition("x")
            return cls(name.strip(), int(count), int(gpus or 0), product.strip() or None)
        except ValueError as exc:
            raise ValueError(
                f"node pool {text!r}: expected NAME=COUNTxGPUS[:PRODUCT], "
                "e.g. gpu-h100=4x8:NVIDIA-H100-80GB-HBM3"
            ) from exc

    def manifests(self) -> list[dict]:
        return [self._node(f"{self.name}-{i}") for i in range(self.count)]

    def _node(self, name: str) -> dict:
        resources = {"cpu": self.cpu, "memory": self.memory, "ephemeral-storage": self.ephemeral_storage,
                     "pods": str(self.pods)}
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            DEV_NODE_LABEL: self.name,
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
            labels["nvidia.com/gpu.count"] = str(self.gpus)
            labels["nvidia.com/gpu.present"] = "true"
        if self.gpu_product:
            labels[GPU_PRODUCT_LABEL] = self.gpu_product
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": [dict(t) for t in self.taints]} if self.taints else {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                },
                "phase": "Running",
            },
        }


DEFAULT_NODE_POOLS = (
    NodePool("gpu-h100", 4, 8, "NVIDIA-H100-80GB-HBM3", cpu="96", memory="1024Gi"),
    NodePool("gpu-l4", 2, 1, "NVIDIA-L4", cpu="16", memory="64Gi"),
)
# Where the chart's pods run for real (kubelet.py), whatever the GPU pools are.
SYSTEM_NODE_POOL = NodePool(SYSTEM_NODE_LABEL_VALUE, 1, 0, cpu="8", memory="32Gi", taints=(SYSTEM_TAINT,))


def node_pools_from_env() -> tuple[NodePool, ...]:
    """`LLMFLEET_DEV_NODES=pool,pool` overrides the default fleet."""
    spec = os.environ.get("LLMFLEET_DEV_NODES", "").strip()
    if not spec:
        return DEFAULT_NODE_POOLS
    return tuple(NodePool.parse(p) for p in spec.split(",") if p.strip())


# Pods the sim fleet runs a process for: the sim engine's, and Triton's (a sim stands in).
SIM_SELECTOR = {"key": '.metadata.labels["app.kubernetes.io/name"]', "values": ["sim", "triton"]}


def with_sim_readiness(stages: list[dict]) -> list[dict]:
    """KWOK's stages, except for pods of the `sim` and `triton` engines, whose real
    process the sim fleet runs: they become Running but not Ready (the fleet sets Ready when the
    process answers its health check, as a readiness probe would), and a deleted one
    is not removed at once (the fleet removes it once its process has gone through
    preStop, SIGTERM and its drain, as the kubelet would)."""
    out = []
    for stage in stages:
        if stage["metadata"]["name"] == "pod-delete":
            others = copy.deepcopy(stage)
            others["spec"]["selector"]["matchExpressions"].append({**SIM_SELECTOR, "operator": "NotIn"})
            out.append(others)
            continue
        if stage["metadata"]["name"] != "pod-ready":
            out.append(stage)
            continue
        others = copy.deepcopy(stage)
        others["spec"]["selector"]["matchExpressions"].append({**SIM_SELECTOR, "operator": "NotIn"})
        sim = copy.deepcopy(stage)
        sim["metadata"]["name"] = "pod-running-sim"
        sim["spec"]["selector"]["matchExpressions"].append({**SIM_SELECTOR, "operator": "In"})
        template = sim["spec"]["next"]["statusTemplate"]
        for cond in ("Ready", "ContainersReady"):
            before = f'status: "True"\n  type: {cond}\n'
            assert before in template, f"KWOK's pod-ready stage changed shape ({cond})"
            template = template.replace(before, f'status: "False"\n  type: {cond}\n')
        sim["spec"]["next"]["statusTemplate"] = template.replace("ready: true", "ready: false", 1)
        out += [others, sim]
    return out


def without_system_nodes(stages: list[dict], nodes: list[str]) -> list[dict]:
    """KWOK's stages, except that KWOK leaves the pods of ``nodes`` to their own kubelet."""
    if not nodes:
        return stages
    out = copy.deepcopy(stages)
    for stage in out:
        if stage["spec"]["resourceRef"]["kind"] == "Pod":
            stage["spec"]["selector"].setdefault("matchExpressions", []).append(
                {"key": ".spec.nodeName", "operator": "NotIn", "values": list(nodes)})
    return out


def pick_loopback_octet(exclude: set[int], port: int = 443) -> int:
    """An X for 127.X.0.0/16 that no other dev cluster on the machine uses (its
    first address and ``port`` are free)."""
    import random

    candidates = [x for x in POD_CIDR_SECOND_OCTETS if x not in exclude]
    random.shuffle(candidates)
    for x in candidates:
        with socket.socket() as s:
            try:
                s.bind((f"127.{x}.0.1", port))
            except OSError:
                continue
        return x
    raise ClusterError("no free 127.X.0.0/16 range for Service addresses")


def pick_pod_cidr(port: int = 8000) -> str:
    """A 127.X.0.0/16 for this cluster's pod IPs that no other dev cluster on the
    machine uses (two clusters in one range would put two servers on one pod IP)."""
    import random

    candidates = list(POD_CIDR_SECOND_OCTETS)
    random.shuffle(candidates)
    for x in candidates:
        with socket.socket() as s:
            try:
                s.bind((f"127.{x}.0.1", port))  # the range's first pod IP and server port
            except OSError:
                continue
        return f"127.{x}.0.0/16"
    raise ClusterError("no free 127.X.0.0/16 range for pod IPs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Children of a test session die with it, even if pytest is killed hard.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    name: str
    pid: int
    log: str
    binary: str


@dataclass
class ClusterState:
    """What `dev-cluster down` needs to stop a cluster started by another process."""

    workdir: str
    logdir: str
    kubeconfig: str
    external: bool
    components: list[Component] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    service_octet: int | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        data = json.loads(path.read_text())
        data["components"] = [Component(**c) for c in data["components"]]
        return cls(**data)


def pid_runs(component: Component) -> bool:
    """True when the PID is still the process we started (PIDs get reused)."""
    try:
        exe = os.readlink(f"/proc/{component.pid}/exe")
    except OSError:
        return False
    return exe == component.binary or exe.removesuffix(" (deleted)") == component.binary


def stop_pid(component: Component, timeout: float = 10.0) -> None:
    if not pid_runs(component):
        return
    try:
        os.kill(component.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_runs(component):
            return
        _reap(component.pid)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(component.pid, signal.SIGKILL)
    _reap(component.pid)


def remove_pod_network(logdir: Path) -> None:
    """The system node's bridge and pod namespaces, if its kubelet was killed before
    it could remove them."""
    record = logdir / "kubelet-network.json"
    if record.exists() and os.geteuid() == 0:
        from .podnet import remove_leftovers

        remove_leftovers(json.loads(record.read_text())["index"])
        record.unlink()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class DevCluster:
    """Start, use and stop a dev cluster.

    `attached=True` keeps children alive after this Python process exits (the CLI);
    otherwise they die with it (pytest).
    """

    def __init__(
        self,
        node_pools: tuple[NodePool, ...] = DEFAULT_NODE_POOLS,
        *,
        workdir: Path | None = None,
        external_kubeconfig: str | None = None,
        pod_cidr: str | None = None,
        detach: bool = False,
        tools: Tools | None = None,
        system_node: bool = True,
    ) -> None:
        self.node_pools = node_pools
        self.pod_cidr = pod_cidr or pick_pod_cidr()
        pod_octet = int(self.pod_cidr.split(".")[1])
        self.service_octet = pick_loopback_octet({pod_octet})
        # The chart's pods need a kubelet that runs them; against another cluster, its own does.
        self.system_pools = (SYSTEM_NODE_POOL,) if system_node and external_kubeconfig is None else ()
        self.detach = detach
        self.tools = tools or require_tools()
        self.external = external_kubeconfig is not None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="llmfleet-dev-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir(exist_ok=True)
        self.kubeconfig = Path(external_kubeconfig) if external_kubeconfig else self.workdir / "kubeconfig"
        self.components: list[Component] = []
        self._popen: dict[int, subprocess.Popen] = {}
        self._args: dict[str, list[str]] = {}  # component name -> the command it was started with
        self.nodes: list[str] = []
        self.api_server_url: str | None = None
        self.timings: dict[str, float] = {}

    # ---- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> DevCluster:
        t0 = time.monotonic()
        try:
            if not self.external:
                self._start_control_plane(timeout)
                self.timings["apiserver_ready"] = time.monotonic() - t0
            self._start_kwok()
            self._start_sim_fleet()
            self._create_nodes()
            self._start_kubelet()
            self._wait_nodes_ready(t0 + timeout)
            if not self.external:
                self._wait_default_service_account(t0 + timeout)
        except BaseException:
            self.stop(remove_workdir=False)
            raise
        self.timings["ready"] = time.monotonic() - t0
        return self

    def stop(self, remove_workdir: bool = True) -> None:
        """Stop every process we started, by PID; keep the logs, drop the rest."""
        if self.external and self.nodes:
            self.kubectl("delete", "node", "--ignore-not-found", "--wait=false", *self.nodes, check=False)
        for comp in reversed(self.components):
            stop_pid(comp, timeout=20 if comp.name == "kubelet" else 10)
            if proc := self._popen.pop(comp.pid, None):
                proc.wait(timeout=5)
        self.components.clear()
        remove_pod_network(self.logdir)
        if remove_workdir:
            for child in self.workdir.iterdir():
                if child != self.logdir:
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()

    def state(self) -> ClusterState:
        return ClusterState(
            workdir=str(self.workdir),
            logdir=str(self.logdir),
            kubeconfig=str(self.kubeconfig),
            external=self.external,
            components=list(self.components),
            nodes=list(self.nodes),
            service_octet=self.service_octet,
        )

    # ---- helpers for tests and the CLI ---------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.tools.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60):
        """Run the pinned kubectl against this cluster; returns CompletedProcess."""
        proc = subprocess.run(
            [str(self.tools.path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Wait until each CustomResourceDefinition (by name) is Established. Polled, not
        ``kubectl wait``: that fails at once on a CRD whose status has no conditions yet
        (one created a moment ago)."""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            proc = self.kubectl("get", "crd", *pending, "-o", "json", check=False)
            if proc.returncode == 0:
                body = json.loads(proc.stdout)
                items = body.get("items", [body])
                done = {i["metadata"]["name"] for i in items
                        if any(c.get("type") == "Established" and c.get("status") == "True"
                               for c in (i.get("status") or {}).get("conditions") or [])}
                pending = [c for c in pending if c not in done]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"CRDs not Established after {timeout:g} s: {', '.join(pending)}")
            time.sleep(0.2)

    @property
    def system_nodes(self) -> list[str]:
        return [m["metadata"]["name"] for pool in self.system_pools for m in pool.manifests()]

    def service_address(self, namespace: str, name: str) -> str:
        """The loopback address that stands for a Service's ClusterIP here (the
        Service's ports are served there; see serviceproxy.py)."""
        from .serviceproxy import service_vip

        cluster_ip = self.kubectl("get", "service", name, "-n", namespace, "-o",
                                  "jsonpath={.spec.clusterIP}").stdout.strip()
        return service_vip(cluster_ip, self.service_octet)

    @property
    def audit_log(self) -> Path:
        return self.logdir / "audit.log"

    def log_tails(self, lines: int = 30) -> dict[str, str]:
        """The last lines of every component log and of the system node's containers,
        for test failure reports (without the expected complaints about loopback pod
        IPs in EndpointSlices)."""
        tails = {}
        for log in sorted(self.logdir.glob("*.log")) + sorted(self.logdir.glob("pods/*/*.log")):
            if log.name == "audit.log":
                continue
            text = [
                line for line in log.read_text(errors="replace").splitlines()
                if "may not be in the loopback range" not in line
            ]
            name = log.stem if log.parent == self.logdir else f"{log.parent.name}/{log.stem}"
            tails[name] = "\n".join(text[-lines:])
        return tails

    # ---- internals -------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Component:
        log_path = self.logdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=None if self.detach else _die_with_parent,
            )
        comp = Component(name=name, pid=proc.pid, log=str(log_path), binary=str(Path(args[0]).resolve()))
        self.components.append(comp)
        self._popen[proc.pid] = proc
        self._args[name] = list(args)
        return comp

    def restart_component(self, name: str, timeout: float = 10.0) -> Component:
        """Stop one component by its PID (SIGTERM, then SIGKILL after `timeout`) and start
        it again with the same arguments and data: what a restart of that process does to
        the rest of the cluster (fault tests)."""
        old = next(c for c in self.components if c.name == name)
        stop_pid(old, timeout=timeout)
        if proc := self._popen.pop(old.pid, None):
            proc.wait(timeout=5)
        index = self.components.index(old)
        self.components.remove(old)
        new = self._spawn(name, self._args[name])
        self.components.remove(new)
        self.components.insert(index, new)
        return new

    def _check_alive(self, comp: Component) -> None:
        proc = self._popen.get(comp.pid)
        if proc is not None and proc.poll() is not None:
            tail = "\n".join(Path(comp.log).read_text(errors="replace").splitlines()[-25:])
            raise ClusterError(f"{comp.name} exited with {proc.returncode}; log {comp.log}:\n{tail}")

    def _wait(self, what: str, check, deadline: float, comps: list[Component]) -> None:
        last_error = ""
        while time.monotonic() < deadline:
            for comp in comps:
                self._check_alive(comp)
            try:
                if check():
                    return
            except Exception as exc:  # noqa: BLE001 - waiting on a starting process
                last_error = str(exc)
            time.sleep(0.1)
        raise ClusterError(f"timed out waiting for {what} ({last_error}); logs in {self.logdir}")

    def _start_control_plane(self, timeout: float) -> None:
        from .pki import generate_pki
        from .serviceproxy import service_vip

        deadline = time.monotonic() + timeout
        # Pods reach the API server at the `kubernetes` Service's address (serviceproxy.py).
        pki = generate_pki(self.workdir / "pki", SERVICE_IP, (service_vip(SERVICE_IP, self.service_octet),))
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd = self._spawn(
            "etcd",
            [
                str(self.tools.path("etcd")),
                "--name=dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=dev=http://127.0.0.1:{etcd_peer}",
                # Throwaway data: durability buys nothing and costs seconds.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        self._wait(
            "etcd /health",
            lambda: httpx.get(f"http://127.0.0.1:{etcd_port}/health", timeout=1).status_code == 200,
            deadline,
            [etcd],
        )
        self.api_server_url = f"https://127.0.0.1:{api_port}"
        self._write_kubeconfig(pki)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.tools.path("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Endpoints would carry 127.0.0.1, which validation
                # refuses; nothing in the dev cluster needs them.
                "--endpoint-reconciler-type=none",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--kubelet-certificate-authority={pki.ca_cert}",
                f"--kubelet-client-certificate={pki.admin_cert}",
                f"--kubelet-client-key={pki.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=Node,RBAC",
                # Setting blockOwnerDeletion needs update on the owner's finalizers
                # (as on OpenShift): the operator's RBAC is checked for it here.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxbackup=0",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

        def api_ready() -> bool:
            return httpx.get(f"{self.api_server_url}/readyz", verify=ctx, timeout=2).status_code == 200

        self._wait("kube-apiserver /readyz", api_ready, deadline, [etcd, apiserver])
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.tools.path("kube-controller-manager")),
                *common,
                f"--secure-port={free_port()}",
                "--controllers=*",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--use-service-account-credentials=false",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.tools.path("kube-scheduler")),
                *common,
                f"--secure-port={free_port()}",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--v=1",
            ],
        )

    def _write_kubeconfig(self, pki) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "llmfleet-dev",
                    "cluster": {"server": self.api_server_url, "certificate-authority": str(pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "llmfleet-dev-admin",
                    "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
                }
            ],
            "contexts": [
                {"name": "llmfleet-dev", "context": {"cluster": "llmfleet-dev", "user": "llmfleet-dev-admin"}}
            ],
            "current-context": "llmfleet-dev",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _start_kwok(self) -> None:
        config = self.workdir / "kwok.yaml"
        docs = [
            {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokConfiguration",
                # kwok leaves these at 0 (and refuses to start) when read from a file.
                "options": {
                    "cidr": self.pod_cidr,
                    "nodeIP": "127.0.0.1",
                    "nodeLeaseDurationSeconds": 40,
                    "nodeLeaseParallelism": 4,
                    "nodePlayStageParallelism": 4,
                    "podPlayStageParallelism": 4,
                    "podsOnNodeSyncParallelism": 1,
                },
            }
        ]
        stages = [yaml.safe_load(p.read_text()) for p in sorted(self.tools.kwok_stages.glob("*.yaml"))]
        stages = without_system_nodes(with_sim_readiness(stages), self.system_nodes)
        config.write_text(yaml.safe_dump_all(docs + stages, sort_keys=False))
        port = free_port()
        self._spawn(
            "kwok",
            [
                str(self.tools.path("kwok")),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--cidr={self.pod_cidr}",
                "--node-ip=127.0.0.1",
                f"--node-port={port}",
                f"--server-address=127.0.0.1:{port}",
                "--node-lease-duration-seconds=40",
                "--v=WARN",  # INFO logs every lease renewal of every node
            ],
        )

    def _start_sim_fleet(self) -> None:
        self._spawn(
            "simfleet",
            [sys.executable, "-m", "llmfleet_devcluster.simfleet",
             f"--kubeconfig={self.kubeconfig}", f"--logdir={self.logdir}"],
        )

    def _start_kubelet(self) -> None:
        if not self.system_pools:
            return
        if os.geteuid() != 0:
            raise ClusterError(
                "the dev cluster's system node runs the chart's pods in network and mount namespaces, "
                "which needs root; run as root, or start the cluster without it (--no-system-node)")
        api = ["--api-server", self.api_server_url.removeprefix("https://")] if self.api_server_url else []
        kubelet = self._spawn(
            "kubelet",
            [sys.executable, "-m", "llmfleet_devcluster.kubelet", f"--kubeconfig={self.kubeconfig}",
             f"--workdir={self.workdir / 'kubelet'}", f"--logdir={self.logdir}",
             *(f"--node={n}" for n in self.system_nodes), f"--service-octet={self.service_octet}", *api],
        )
        # It records its pod network once the bridge is up: then it can run pods.
        self._wait("the system node's kubelet", (self.logdir / "kubelet-network.json").exists,
                   time.monotonic() + 30, [kubelet])

    def _create_nodes(self) -> None:
        manifests = [m for pool in (*self.node_pools, *self.system_pools) for m in pool.manifests()]
        self.nodes = [m["metadata"]["name"] for m in manifests]
        body = yaml.safe_dump_all(manifests, sort_keys=False)
        self.kubectl("apply", "--server-side", "--field-manager=llmfleet-dev-cluster", "-f", "-", input=body)

    def _wait_nodes_ready(self, deadline: float) -> None:
        wanted = set(self.nodes)

        def all_ready() -> bool:
            out = self.kubectl("get", "nodes", "-o", "json", check=False)
            if out.returncode != 0:
                return False
            ready = {
                n["metadata"]["name"]
                for n in json.loads(out.stdout)["items"]
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            }
            return wanted <= ready

        self._wait(f"{len(wanted)} nodes Ready", all_ready, deadline, list(self.components))

    def _wait_default_service_account(self, deadline: float) -> None:
        self._wait(
            "the default ServiceAccount",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            deadline,
            list(self.components),
        )
