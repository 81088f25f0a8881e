"""The dev cluster's system node: a kubelet that runs its pods as real processes.

KWOK plays the kubelets of the fake GPU nodes and runs nothing. The system node is
where the Helm chart's pods go (the operator, the Envoy ingress, the helm test pod:
the dev cluster's values give them its nodeSelector and toleration), and this
kubelet runs them from their pod spec, as a kubelet with a container runtime would:

- the image is resolved to this machine's files (images.py; an unknown image or tag
  is an image pull error), the command from command/args over the image's
  entrypoint/cmd, with ``$(VAR)`` expansion;
- the environment: the image's, then env and envFrom (values, fieldRef such as
  status.podIP, resourceFieldRef, ConfigMap and Secret keys), the Service variables
  (``KUBERNETES_SERVICE_HOST/PORT`` always, the rest with enableServiceLinks);
- volumes at their mountPaths: configMap, secret, downwardAPI, emptyDir and
  projected, including the ServiceAccount token the API server issues for this pod
  (TokenRequest bound to it), so a pod authenticates with its own identity and RBAC;
- a network namespace per pod on a bridge (podnet.py), /etc/hosts that maps
  Service names to their addresses (the dev cluster has no DNS; serviceproxy.py
  forwards those addresses), its securityContext (user, groups, read-only root,
  capabilities, no_new_privs) applied by the sandbox (sandbox.py);
- startup, readiness and liveness probes (httpGet, tcpSocket, exec), restarts with
  back-off by restartPolicy, pod and container status as a kubelet reports them;
- termination: preStop (sleep, httpGet, exec), SIGTERM, SIGKILL when the grace
  period is over, then the pod object is removed.

Not done: cgroup resource limits, seccomp, init containers, image pull secrets,
``kubectl logs`` and ``exec`` (logs are files under ``<logdir>/pods/``).
It runs as one of the dev cluster's processes and needs root.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import ctypes
import datetime as dt
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import images
from .kubeapi import ApiError, Informer, KubeApi
from .podnet import PodInterface, PodNetwork
from .serviceproxy import ServiceProxy, hosts_file, resolv_conf, service_names, service_table, service_vip
from .statefile import read_state, write_state

log = logging.getLogger("llmfleet_devcluster.kubelet")
STATE_FILE = "kubelet.json"
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0  # the real kubelet: 10 s doubling to 5 min
BACKOFF_RESET = 120.0  # a container that ran this long starts its back-off afresh
MIN_KILL_SECONDS = 2.0  # the kubelet always leaves SIGTERM this long before SIGKILL
DEFAULT_TOKEN_SECONDS = 3607


class PodSetupError(Exception):
    """The pod cannot start as specified; the message becomes its container status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- pure helpers: env, expansion, field paths ---------------------------------------


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` is a
    literal ``$``, anything else stays as written."""
    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR.sub(sub, text)


def field_value(pod: dict, path: str) -> str:
    """A downward API fieldRef (``metadata.name``, ``status.podIP``, ``metadata.labels['k']`` ...)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""), "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs") or []),
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)(?:\['(.+)'\])?", path)
    if match:
        values = meta.get(match.group(1)) or {}
        if match.group(2) is not None:
            return values.get(match.group(2), "")
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise PodSetupError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    if not match or match.group(2) not in ("", *units):
        raise PodSetupError("CreateContainerConfigError", f"cannot read quantity {text!r}")
    return float(match.group(1)) * units.get(match.group(2), 1)


def resource_value(container: dict, ref: dict, node_allocatable: dict) -> str:
    """A resourceFieldRef: limits.cpu, requests.memory ..., in units of ``divisor``."""
    kind, _, name = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        value = node_allocatable.get(name, "0")  # no limit: the node's allocatable, as the kubelet does
    divisor = _quantity(ref.get("divisor") or "1")
    return str(math.ceil(_quantity(value) / divisor))


def service_env(services: list[dict], namespace: str, octet: int, links: bool) -> dict[str, str]:
    """The variables a kubelet sets for Services: the API server's always, the pod's
    namespace's with enableServiceLinks (docker-links style)."""
    env: dict[str, str] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ip, ports = spec.get("clusterIP"), spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        master = meta["namespace"] == "default" and meta["name"] == "kubernetes"
        if not master and not (links and meta["namespace"] == namespace):
            continue
        address, name = service_vip(ip, octet), meta["name"].upper().replace("-", "_")
        env[f"{name}_SERVICE_HOST"] = address
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        if master and not links:
            continue
        proto = ports[0].get("protocol", "TCP").lower()
        env[f"{name}_PORT"] = f"{proto}://{address}:{ports[0]['port']}"
        for port in ports:
            p = port.get("protocol", "TCP")
            prefix = f"{name}_PORT_{port['port']}_{p}"
            env[prefix] = f"{p.lower()}://{address}:{port['port']}"
            env[f"{prefix}_PROTO"], env[f"{prefix}_PORT"], env[f"{prefix}_ADDR"] = p.lower(), str(port["port"]), address
    return env


# ---- volumes ---------------------------------------------------------------------------


def write_atomic(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Files as a kubelet's AtomicWriter lays them out: a timestamped payload directory,
    ``..data`` pointing at it, and a symlink per top-level entry, so a reader never sees
    half an update."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    payload = directory / f"..{dt.datetime.now().strftime('%Y_%m_%d_%H_%M_%S.%f')}"
    for rel, (data, mode) in files.items():
        path = payload / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
    os.chmod(payload, 0o755)
    tmp = directory / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(payload.name, tmp)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(tmp, directory / "..data")
    for top in {rel.split("/", 1)[0] for rel in files}:
        link = directory / top
        if not link.is_symlink():
            os.symlink(f"..data/{top}", link)
    if old and old != payload.name:
        shutil.rmtree(directory / old, ignore_errors=True)


# ---- the kubelet -----------------------------------------------------------------------


@dataclass
class Probe:
    spec: dict
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    result: bool | None = None

    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))


@dataclass
class Container:
    spec: dict
    image: images.Image | None = None
    plan: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: dict | None = None
    last_terminated: dict | None = None
    backoff: float = 0.0
    restart_at: float | None = None
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    probes: dict[str, Probe] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec["name"]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PodWorker(threading.Thread):
    """Everything about one pod, from sandbox to removal, in its own thread."""

    def __init__(self, kubelet: Kubelet, pod: dict) -> None:
        super().__init__(name=f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        self.uid = pod["metadata"]["uid"]
        self.dir = kubelet.workdir / "pods" / self.uid
        self.logdir = kubelet.logdir / "pods" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"
        self.net: PodInterface | None = None
        self.containers = [Container(c) for c in pod["spec"].get("containers") or []]
        self.started_at = now_rfc3339()
        self.wake = threading.Event()
        self.deletion: dict | None = None  # the deleted pod, once termination is asked for
        self.gone = False  # the pod object is gone: kill at once
        self.done = threading.Event()
        self.phase = "Pending"
        self._written: dict | None = None
        self._hosts_text = ""
        self._plans = itertools.count()

    # -- what the kubelet's sync loop calls

    def request_termination(self, pod: dict | None) -> None:
        if pod is None:
            self.gone = True
        elif self.deletion is None:
            self.deletion = pod
        self.wake.set()

    def update_hosts(self, names: dict) -> None:
        if self.net is None:
            return
        text = hosts_file(self.net.ip, self.pod["metadata"]["name"], self.pod["metadata"]["namespace"], names,
                          self.pod["spec"].get("hostAliases") or [])
        if text != self._hosts_text:
            with open(self.dir / "hosts", "w") as f:  # in place: bind mounts follow the inode
                f.write(text)
            self._hosts_text = text

    def state(self) -> dict:
        return {"uid": self.uid, "ip": self.net.ip if self.net else None, "netns": self.net.netns if self.net else None,
                "phase": self.phase, "terminating": self.deletion is not None,
                "containers": {c.name: {"pid": c.proc.pid if c.proc else None, "alive": c.running(),
                                        "ready": c.ready, "restarts": c.restarts,
                                        "log": str(self.logdir / f"{c.name}.log")} for c in self.containers}}

    # -- the pod's life

    def run(self) -> None:
        try:
            try:
                self._run()
            except PodSetupError as exc:
                self._fail(exc.reason, str(exc))
            except Exception as exc:
                log.exception("%s: pod worker failed", self.key)
                self._fail("RunContainerError", f"dev kubelet: {exc}")
        finally:
            self._teardown()
            self.done.set()

    def _fail(self, reason: str, message: str) -> None:
        """The pod cannot run: say why in its container statuses until it is deleted."""
        log.warning("%s: %s: %s", self.key, reason, message)
        self._stop_processes([c for c in self.containers if c.running()], time.monotonic())
        for c in self.containers:
            c.waiting, c.restart_at, c.ready = (reason, message), None, False
        self._write_status()
        while not (self.deletion or self.gone):
            self.wake.wait(1.0)
            self.wake.clear()

    def _run(self) -> None:
        self._prepare()
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for c in self.containers:
            self._start(c)
        while not (self.deletion or self.gone):
            now = time.monotonic()
            for c in self.containers:
                self._tend(c, policy, now)
            if self.phase in ("Succeeded", "Failed") and self.net is not None:
                self._write_status()
                self.kubelet.net.detach(self.net)  # a finished pod keeps no sandbox
                self.net = None
            self._write_status()
            self.wake.wait(0.1)
            self.wake.clear()
        self._terminate()

    def _prepare(self) -> None:
        spec = self.pod["spec"]
        if spec.get("initContainers"):
            raise PodSetupError("CreateContainerConfigError", "init containers are not supported by the dev kubelet")
        for c in self.containers:
            try:
                c.image = images.resolve(c.spec["image"])
            except images.ImageUnavailable as exc:
                raise PodSetupError("ErrImagePull", str(exc)) from exc
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.net = self.kubelet.net.attach()
        self.pod.setdefault("status", {}).update(podIP=self.net.ip, podIPs=[{"ip": self.net.ip}],
                                                  hostIP=self.kubelet.net.gateway,
                                                  hostIPs=[{"ip": self.kubelet.net.gateway}])
        self.phase = "Pending"
        self._write_status()
        (self.dir / "resolv.conf").write_text(resolv_conf(self.pod["metadata"]["namespace"]))
        self.update_hosts(self.kubelet.names)
        volumes = self._volumes()
        for c in self.containers:
            c.plan = self._plan(c, volumes)

    def _volumes(self) -> dict[str, tuple[Path | None, bool]]:
        """Each volume's host directory (None: a tmpfs), and whether it is read-only."""
        out: dict[str, tuple[Path | None, bool]] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            name, path = vol["name"], self.dir / "volumes" / vol["name"]
            if "emptyDir" in vol:
                if (vol["emptyDir"] or {}).get("medium") == "Memory":
                    out[name] = (None, False)
                    continue
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o777)
                out[name] = (path, False)
            elif "configMap" in vol or "secret" in vol or "downwardAPI" in vol:
                write_atomic(path, self._source_files(vol, (vol.get("configMap") and "configMap") or
                                                      (vol.get("secret") and "secret") or "downwardAPI"))
                out[name] = (path, True)
            elif "projected" in vol:
                files: dict[str, tuple[bytes, int]] = {}
                mode = vol["projected"].get("defaultMode", 0o644)
                for source in vol["projected"].get("sources") or []:
                    kind = next(iter(source))
                    files.update(self._source_files({kind: source[kind]}, kind, default_mode=mode))
                write_atomic(path, files)
                out[name] = (path, True)
            else:
                kind = next((k for k in vol if k != "name"), "?")
                raise PodSetupError("CreateContainerConfigError",
                                    f"volume {name}: {kind} volumes are not supported by the dev kubelet")
        return out

    def _source_files(self, vol: dict, kind: str, default_mode: int | None = None) -> dict[str, tuple[bytes, int]]:
        api, ns = self.kubelet.api, self.pod["metadata"]["namespace"]
        source = vol[kind] or {}
        mode = source.get("defaultMode", default_mode if default_mode is not None else 0o644)
        if kind == "serviceAccountToken":
            meta = self.pod["metadata"]
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": [source["audience"]] if source.get("audience") else [],
                "expirationSeconds": source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
            sa = self.pod["spec"].get("serviceAccountName") or "default"
            try:
                token = api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                                    body=body)["status"]["token"]
            except ApiError as exc:
                raise PodSetupError("CreateContainerConfigError", f"token for ServiceAccount {sa}: {exc}") from exc
            return {source["path"]: (token.encode(), mode if default_mode is not None else 0o600)}
        if kind == "downwardAPI":
            files = {}
            for item in source.get("items") or []:
                if "fieldRef" in item:
                    value = field_value(self.pod, item["fieldRef"]["fieldPath"])
                else:
                    container = next(c for c in self.pod["spec"]["containers"]
                                     if c["name"] == item["resourceFieldRef"].get("containerName"))
                    value = resource_value(container, item["resourceFieldRef"], self.kubelet.allocatable)
                files[item["path"]] = (value.encode(), item.get("mode", mode))
            return files
        plural = "configmaps" if kind == "configMap" else "secrets"
        name = source.get("name") or source.get("secretName")  # a secret volume says secretName
        try:
            obj = api.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404 and source.get("optional"):
                return {}
            raise PodSetupError("CreateContainerConfigError", f"{kind} {name}: {exc}") from exc
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()} if kind == "configMap" else \
            {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        if kind == "configMap":
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        items = source.get("items")
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise PodSetupError("CreateContainerConfigError", f"{kind} {name} has no key {item['key']}")
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))
        return files

    def _env(self, container: dict, image: images.Image) -> dict[str, str]:
        ns, spec = self.pod["metadata"]["namespace"], self.pod["spec"]
        env = dict(image.env)
        env["HOSTNAME"] = self.pod["metadata"]["name"]
        env.update(service_env(self.kubelet.services, ns, self.kubelet.octet, spec.get("enableServiceLinks", True)))
        api = self.kubelet.api
        for source in container.get("envFrom") or []:
            kind = "configMapRef" if "configMapRef" in source else "secretRef"
            ref = source[kind]
            try:
                obj = api.get(f"/api/v1/namespaces/{ns}/{'configmaps' if kind == 'configMapRef' else 'secrets'}"
                              f"/{ref['name']}")
            except ApiError as exc:
                if exc.status == 404 and ref.get("optional"):
                    continue
                raise PodSetupError("CreateContainerConfigError", f"envFrom {ref['name']}: {exc}") from exc
            for key, value in (obj.get("data") or {}).items():
                env[source.get("prefix", "") + key] = value if kind == "configMapRef" else \
                    base64.b64decode(value).decode()
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[var["name"]] = field_value(self.pod, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                env[var["name"]] = resource_value(container, source["resourceFieldRef"], self.kubelet.allocatable)
            else:
                kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
                ref = source[kind]
                plural = "configmaps" if kind == "configMapKeyRef" else "secrets"
                try:
                    data = api.get(f"/api/v1/namespaces/{ns}/{plural}/{ref['name']}").get("data") or {}
                except ApiError as exc:
                    if exc.status == 404 and ref.get("optional"):
                        continue
                    raise PodSetupError("CreateContainerConfigError",
                                        f"{var['name']}: {kind} {ref['name']}: {exc}") from exc
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise PodSetupError("CreateContainerConfigError",
                                        f"{var['name']}: {ref['name']} has no key {ref['key']}")
                value = data[ref["key"]]
                env[var["name"]] = value if kind == "configMapKeyRef" else base64.b64decode(value).decode()
        env.setdefault("HOME", "/")
        return env

    def _plan(self, c: Container, volumes: dict[str, tuple[Path | None, bool]]) -> dict:
        spec, pod_spec = c.spec, self.pod["spec"]
        image = c.image
        assert image is not None
        env = self._env(spec, image)
        argv = [expand(a, env) for a in image.argv(spec.get("command"), spec.get("args"))]
        if not argv:
            raise PodSetupError("CreateContainerConfigError", "no command: the image has no entrypoint or cmd")
        pod_sc, sc = pod_spec.get("securityContext") or {}, spec.get("securityContext") or {}
        default_uid, default_gid = image.user or (0, 0)
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", default_uid))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", default_gid))
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
            raise PodSetupError("CreateContainerConfigError",
                                "container has runAsNonRoot and image will run as root")
        if sc.get("privileged"):
            raise PodSetupError("CreateContainerConfigError", "privileged containers are not supported")
        groups = sorted({gid, *pod_sc.get("supplementalGroups", []),
                         *([pod_sc["fsGroup"]] if "fsGroup" in pod_sc else [])})
        mounts = []
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in volumes:
                raise PodSetupError("CreateContainerConfigError", f"volumeMount {m['name']}: no such volume")
            path, read_only = volumes[m["name"]]
            if path is None:
                mounts.append({"tmpfs": True, "target": m["mountPath"]})
                continue
            source = path / m["subPath"] if m.get("subPath") else path
            mounts.append({"source": str(source), "target": m["mountPath"],
                           "readOnly": read_only or bool(m.get("readOnly"))})
        mounts += [{"source": str(self.dir / "hosts"), "target": "/etc/hosts", "readOnly": True},
                   {"source": str(self.dir / "resolv.conf"), "target": "/etc/resolv.conf", "readOnly": True}]
        drops = set((sc.get("capabilities") or {}).get("drop") or [])
        assert self.net is not None
        return {
            "netns": self.net.netns, "hostname": self.pod["spec"].get("hostname") or self.pod["metadata"]["name"],
            "rootfs": str(self.dir / f"rootfs-{c.name}"),
            "image": [layer.plan() for layer in image.layers], "mounts": mounts,
            "readOnlyRootFilesystem": bool(sc.get("readOnlyRootFilesystem")),
            "user": {"uid": uid, "gid": gid, "groups": groups},
            "dropCapabilities": sorted(drops),
            "noNewPrivs": sc.get("allowPrivilegeEscalation") is False or uid != 0,
            "workingDir": spec.get("workingDir") or image.workdir or "/",
            "env": env, "argv": argv,
        }

    def _spawn(self, plan: dict, *, stdout, argv: list[str] | None = None) -> subprocess.Popen:
        """The container of ``plan``, or, with ``argv``, that command in a container like it
        (exec probes and hooks)."""
        path = self.dir / f"plan-{next(self._plans)}.json"
        if argv is not None:
            plan = {**plan, "argv": argv, "rootfs": plan["rootfs"] + "-exec"}
        Path(plan["rootfs"]).mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan))
        return subprocess.Popen([sys.executable, "-m", "llmfleet_devcluster.sandbox", str(path)],
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)

    def _start(self, c: Container) -> None:
        with open(self.logdir / f"{c.name}.log", "ab") as out:
            c.proc = self._spawn(c.plan, stdout=out)
        c.started_at, c.started_mono = now_rfc3339(), time.monotonic()
        c.waiting, c.terminated, c.restart_at = None, None, None
        c.started, c.ready = "startupProbe" not in c.spec, False
        c.probes = {kind: Probe(c.spec[kind], next_at=time.monotonic() + c.spec[kind].get("initialDelaySeconds", 0))
                    for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in c.spec}
        self.phase = "Running"
        log.info("%s: started container %s (pid %s)", self.key, c.name, c.proc.pid)

    def _tend(self, c: Container, policy: str, now: float) -> None:
        if c.proc is not None and c.proc.poll() is not None and c.terminated is None:
            code = c.proc.returncode
            c.terminated = {"exitCode": code if code >= 0 else 128 - code,
                            "reason": "Completed" if code == 0 else "Error",
                            "startedAt": c.started_at, "finishedAt": now_rfc3339()}
            c.ready = False
            log.info("%s: container %s exited with %s", self.key, c.name, code)
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if restart:
                if now - c.started_mono > BACKOFF_RESET:
                    c.backoff = 0.0
                c.backoff = min(BACKOFF_MAX, c.backoff * 2 if c.backoff else BACKOFF_START)
                c.restart_at = now + c.backoff
                c.waiting = ("CrashLoopBackOff",
                             f"back-off {c.backoff:g}s restarting failed container={c.name} pod={self.key}")
            elif all(x.terminated is not None or x.proc is None for x in self.containers):
                codes = [x.terminated["exitCode"] for x in self.containers if x.terminated]
                self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        if c.restart_at is not None and now >= c.restart_at:
            c.last_terminated, c.restarts = c.terminated, c.restarts + 1
            self._start(c)
            return
        if c.running():
            self._probe(c, now)

    def _probe(self, c: Container, now: float) -> None:
        for kind, probe in c.probes.items():
            due = now >= probe.next_at
            if not due or (kind == "startupProbe") == c.started:  # startup runs until started, the others after
                continue
            probe.next_at = now + probe.period()
            ok = self._run_probe(c, probe.spec)
            if ok:
                probe.successes, probe.failures = probe.successes + 1, 0
            else:
                probe.successes, probe.failures = 0, probe.failures + 1
            threshold_ok = probe.spec.get("successThreshold", 1)
            threshold_bad = probe.spec.get("failureThreshold", 3)
            if kind == "startupProbe":
                if ok:
                    c.started = True
                elif probe.failures >= threshold_bad:
                    self._kill_for_restart(c, "startup probe failed")
            elif kind == "readinessProbe":
                if ok and probe.successes >= threshold_ok:
                    c.ready = True
                elif not ok and probe.failures >= threshold_bad:
                    c.ready = False
            elif kind == "livenessProbe" and not ok and probe.failures >= threshold_bad:
                self._kill_for_restart(c, "liveness probe failed")
        if c.started and "readinessProbe" not in c.probes:
            c.ready = True

    def _kill_for_restart(self, c: Container, why: str) -> None:
        log.info("%s: container %s %s; restarting it", self.key, c.name, why)
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._stop_processes([c], time.monotonic() + grace)

    def _run_probe(self, c: Container, spec: dict) -> bool:
        timeout = float(spec.get("timeoutSeconds", 1))
        assert self.net is not None
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = _port(c.spec, get["port"])
            host = get.get("host") or self.net.ip
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            try:
                code = httpx.get(f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}",
                                 headers=headers, timeout=timeout, verify=False, trust_env=False).status_code
            except httpx.HTTPError:
                return False
            return 200 <= code < 400
        if "tcpSocket" in spec:
            port = _port(c.spec, spec["tcpSocket"]["port"])
            try:
                socket.create_connection((spec["tcpSocket"].get("host") or self.net.ip, port), timeout=timeout).close()
                return True
            except OSError:
                return False
        if "exec" in spec:
            return self._exec(c, spec["exec"]["command"], timeout) == 0
        return False  # grpc probes are not supported here

    def _exec(self, c: Container, command: list[str], timeout: float) -> int | None:
        proc = self._spawn(c.plan, stdout=subprocess.DEVNULL, argv=command)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def _terminate(self) -> None:
        """preStop, SIGTERM, SIGKILL at the end of the grace period, as the kubelet does."""
        if self.gone:
            grace = 0.0
        else:
            meta = (self.deletion or {}).get("metadata", {})
            grace = meta.get("deletionGracePeriodSeconds")
            grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace)
        deadline = time.monotonic() + grace
        running = [c for c in self.containers if c.running()]
        for c in running:
            c.ready = False
        self._write_status()
        hooks = [threading.Thread(target=self._pre_stop, args=(c, deadline), daemon=True)
                 for c in running if ((c.spec.get("lifecycle") or {}).get("preStop")) and grace > 0]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(max(0.0, deadline - time.monotonic()))
        self._stop_processes(running, deadline)

    def _pre_stop(self, c: Container, deadline: float) -> None:
        hook = c.spec["lifecycle"]["preStop"]
        remaining = max(0.0, deadline - time.monotonic())
        if "sleep" in hook:
            self.kubelet.stopping.wait(min(float(hook["sleep"]["seconds"]), remaining))
        elif "httpGet" in hook or "tcpSocket" in hook:
            self._run_probe(c, {**hook, "timeoutSeconds": remaining})
        elif "exec" in hook:
            self._exec(c, hook["exec"]["command"], remaining)

    def _stop_processes(self, containers: list[Container], deadline: float) -> None:
        alive = [c for c in containers if c.running()]
        for c in alive:
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
        kill_at = max(deadline, time.monotonic() + (MIN_KILL_SECONDS if deadline > time.monotonic() else 0))
        for c in alive:
            assert c.proc is not None
            try:
                c.proc.wait(max(0.0, kill_at - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)

    def _teardown(self) -> None:
        self._stop_processes([c for c in self.containers if c.running()], time.monotonic())
        if self.net is not None:
            self.kubelet.net.detach(self.net)
            self.net = None
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.deletion is not None and not self.kubelet.stopping.is_set():
            ns, name = self.pod["metadata"]["namespace"], self.pod["metadata"]["name"]
            try:  # the kubelet's last step: the pod object goes once its containers are gone
                self.kubelet.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                                         body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log.warning("%s: could not remove the pod: %s", self.key, exc)

    # -- status

    def _write_status(self) -> None:
        if self.kubelet.stopping.is_set():
            return  # the node goes away with the cluster: nobody reads it, and the API server may be gone
        status = self._status()
        if status == self._written:
            return
        try:
            self.kubelet.api.patch_status(self.pod, status)
            self._written = status
        except ApiError as exc:
            if exc.status != 404:
                log.warning("%s: status update failed: %s", self.key, exc)

    def _status(self) -> dict:
        now = now_rfc3339()
        previous = {c["type"]: c for c in (self._written or {}).get("conditions", [])}

        def condition(type_: str, ok: bool, reason: str | None = None) -> dict:
            value = "True" if ok else "False"
            before = previous.get(type_)
            since = before["lastTransitionTime"] if before and before["status"] == value else now
            out = {"type": type_, "status": value, "lastTransitionTime": since, "lastProbeTime": None}
            if reason and not ok:
                out["reason"] = reason
            return out

        statuses = [self._container_status(c) for c in self.containers]
        all_ready = bool(statuses) and all(s["ready"] for s in statuses)
        status: dict = {
            "phase": self.phase,
            "startTime": self.started_at,
            "conditions": [
                condition("PodReadyToStartContainers", self.net is not None or self.phase in ("Succeeded", "Failed")),
                condition("Initialized", True),
                condition("ContainersReady", all_ready, "ContainersNotReady"),
                condition("Ready", all_ready, "ContainersNotReady"),
            ],
            "containerStatuses": statuses,
            "qosClass": (self.pod.get("status") or {}).get("qosClass", "BestEffort"),
        }
        pod_status = self.pod.get("status") or {}
        for key in ("podIP", "hostIP"):
            if key in pod_status:
                status[key] = pod_status[key]
        for key in ("podIPs", "hostIPs"):  # lists merged by ip: say that ours replace them
            if key in pod_status:
                status[key] = [*pod_status[key], {"$patch": "replace"}]
        return status

    def _container_status(self, c: Container) -> dict:
        image = c.spec["image"]
        status = {"name": c.name, "image": image, "imageID": f"dev-cluster://{image}", "ready": c.ready,
                  "started": c.running() and c.started, "restartCount": c.restarts}
        if c.running() and c.proc is not None:
            status["state"] = {"running": {"startedAt": c.started_at}}
            status["containerID"] = f"dev-cluster://{c.proc.pid}"
        elif c.waiting is not None and (c.terminated is None or c.restart_at is not None):
            status["state"] = {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
        elif c.terminated is not None:
            status["state"] = {"terminated": c.terminated}
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        last = c.terminated if c.restart_at is not None else c.last_terminated
        if last:
            status["lastState"] = {"terminated": last}
        return status


def _port(container: dict, port) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodSetupError("CreateContainerConfigError", f"no container port named {port!r}")


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Kubelet:
    """Runs the pods bound to ``nodes`` and forwards every Service of the cluster."""

    def __init__(self, kubeconfig: str, workdir: Path, logdir: Path, nodes: list[str], octet: int,
                 api_server: tuple[str, int] | None) -> None:
        self.api = KubeApi(kubeconfig)
        self.workdir, self.logdir = Path(workdir), Path(logdir)
        self.nodes = set(nodes)
        self.octet = octet
        self.api_server = api_server
        self.stopping = threading.Event()
        self.changed = threading.Event()
        self.workers: dict[str, PodWorker] = {}  # pod uid → worker
        self.services: list[dict] = []
        self.names: dict = {}
        self.allocatable: dict = {}
        self.net: PodNetwork
        self.proxy = ServiceProxy()
        self._table: list | None = None

    def run(self) -> None:
        self.net = PodNetwork.create()
        (self.logdir / "kubelet-network.json").write_text(json.dumps({"bridge": self.net.bridge,
                                                                       "index": self.net.index}))
        log.info("system node %s: pods on %s (bridge %s)", ",".join(sorted(self.nodes)), self.net.subnet,
                 self.net.bridge)
        self.proxy.start()
        informers = [Informer(self.api, "/api/v1/pods", self.changed.set).start(),
                     Informer(self.api, "/api/v1/services", self.changed.set).start()]
        self.pods_informer, self.services_informer = informers
        try:
            for node in self.nodes:
                with contextlib.suppress(ApiError):
                    self.allocatable = self.api.get(f"/api/v1/nodes/{node}").get("status", {}).get("allocatable", {})
            while not self.stopping.is_set():
                self.changed.wait(1.0)
                self.changed.clear()
                try:
                    self.sync()
                except Exception:
                    log.exception("sync failed")
        finally:
            for informer in informers:
                informer.stop()
            for worker in self.workers.values():
                worker.request_termination(None)
            for worker in self.workers.values():
                worker.join(timeout=10)
            self.proxy.stop()
            self.net.teardown()
            (self.logdir / "kubelet-network.json").unlink(missing_ok=True)
            self._write_state()
            self.api.close()

    def stop(self) -> None:
        self.stopping.set()
        self.changed.set()

    def sync(self) -> None:
        if not (self.pods_informer.synced.is_set() and self.services_informer.synced.is_set()):
            return
        pods, self.services = self.pods_informer.items(), self.services_informer.items()
        table = service_table(self.services, pods, self.octet, self.api_server)
        if table != self._table:
            self.proxy.update(table)
            self._table = table
        names = service_names(self.services, self.octet)
        if names != self.names:
            self.names = names
            for worker in self.workers.values():
                worker.update_hosts(names)
        mine = {p["metadata"]["uid"]: p for p in pods if (p.get("spec") or {}).get("nodeName") in self.nodes}
        for uid, pod in mine.items():
            running = self.workers.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if running is not None:
                    running.request_termination(pod)
                else:
                    self._remove(pod)  # nothing runs for it
            elif running is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                started = PodWorker(self, copy.deepcopy(pod))
                self.workers[uid] = started
                started.start()
        for uid, worker in list(self.workers.items()):
            if uid not in mine:
                worker.request_termination(None)  # force-deleted: nothing to wait for
            if worker.done.is_set():
                del self.workers[uid]
        self._write_state()

    def _remove(self, pod: dict) -> None:
        meta = pod["metadata"]
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                             body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("%s/%s: could not remove the pod: %s", meta["namespace"], meta["name"], exc)

    def _write_state(self) -> None:
        state = {w.key: w.state() for w in self.workers.values()}
        write_state(self.logdir / STATE_FILE, state)


class NodeView:
    """Read the system node's state (for tests)."""

    def __init__(self, logdir: Path) -> None:
        self.path = Path(logdir) / STATE_FILE

    def pods(self) -> dict[str, dict]:
        return read_state(self.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfleet_devcluster.kubelet",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--logdir", required=True, type=Path)
    parser.add_argument("--node", action="append", required=True, help="a node whose pods this kubelet runs")
    parser.add_argument("--service-octet", type=int, required=True,
                        help="S in 127.S.A.B, the loopback range that stands for the service CIDR")
    parser.add_argument("--api-server", help="HOST:PORT behind the kubernetes Service")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the pods' stories
    if os.geteuid() != 0:
        print("the dev cluster's system node runs pods in network and mount namespaces: it needs root",
              file=sys.stderr)
        return 1
    api_server = None
    if args.api_server:
        host, _, port = args.api_server.rpartition(":")
        api_server = (host, int(port))
    kubelet = Kubelet(args.kubeconfig, args.workdir, args.logdir, args.node, args.service_octet, api_server)
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stop())
    signal.signal(signal.SIGINT, lambda *_: kubelet.stop())
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
