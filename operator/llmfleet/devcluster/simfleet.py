"""Real model servers behind the dev cluster's fake pods (test tier 4).

KWOK marks pods Running with IPs in 127.x but runs nothing. For every Running pod of a
`sim` ModelDeployment, the fleet starts a real `llmfleet sim` process bound to that
pod's IP and port, with the container's own arguments (so the spec's engine.extraArgs
shape the replica), and stops it when the pod goes away. Envoy, the operator and these
processes then form a whole fleet on one machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

log = logging.getLogger(__name__)
MD_LABEL = "llmfleet.io/model-deployment"
ENGINE_LABEL = "app.kubernetes.io/name"


@dataclass
class Replica:
    pod: str  # namespace/name
    uid: str
    address: str
    port: int
    proc: subprocess.Popen


def sim_command(pod: dict) -> tuple[list[str], str, int] | None:
    """The command that plays this pod's model server, its address and port."""
    spec, status = pod["spec"], pod["status"]
    container = spec["containers"][0]
    command = list(container.get("command") or [])
    if command[:2] != ["llmfleet", "sim"] or not status.get("podIP"):
        return None
    args = list(container.get("args") or [])
    address = status["podIP"]
    port = 8000
    if "--port" in args:
        port = int(args[args.index("--port") + 1])
    if "--host" in args:
        args[args.index("--host") + 1] = address
    else:
        args += ["--host", address]
    return [sys.executable, "-m", "llmfleet.sim.server", *args], address, port


class SimFleet:
    """Keeps one sim process per Running sim pod, by polling the pods."""

    def __init__(self, kubeconfig: str | Path, logdir: Path, *, interval: float = 0.2,
                 extra_args: list[str] | None = None) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.logdir = logdir
        self.interval = interval
        self.extra_args = extra_args or []
        self.replicas: dict[str, Replica] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "SimFleet":
        self._thread = threading.Thread(target=self._loop, name="sim-fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            for key in list(self.replicas):
                self._stop_replica(key)
        self.api.close()

    def kill(self, pod: str) -> None:
        """SIGKILL the process of `namespace/name` (a replica dying under load)."""
        with self._lock:
            replica = self.replicas.get(pod)
            if replica:
                replica.proc.send_signal(signal.SIGKILL)

    def endpoints(self, namespace: str | None = None, md: str | None = None) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(
                (r.address, r.port) for key, r in self.replicas.items()
                if r.proc.poll() is None and (namespace is None or key.startswith(f"{namespace}/"))
                and (md is None or key.split("/", 1)[1].startswith(f"{md}-"))
            )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep the fleet alive through API hiccups
                log.warning("sim fleet sync failed: %s", exc)
            self._stop.wait(self.interval)

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=f"{MD_LABEL},{ENGINE_LABEL}=sim").items
        wanted = {}
        for pod in pods:
            d = self.api.sanitize_for_serialization(pod)
            if d["status"].get("phase") != "Running" or d["metadata"].get("deletionTimestamp"):
                continue
            key = f"{d['metadata']['namespace']}/{d['metadata']['name']}"
            wanted[key] = d
        with self._lock:
            for key in list(self.replicas):
                if key not in wanted or self.replicas[key].uid != wanted[key]["metadata"]["uid"]:
                    self._stop_replica(key)
            for key, pod in wanted.items():
                if key not in self.replicas:
                    self._start_replica(key, pod)

    def _start_replica(self, key: str, pod: dict) -> None:
        planned = sim_command(pod)
        if planned is None:
            return
        command, address, port = planned
        log_path = self.logdir / f"sim-{key.replace('/', '_')}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([*command, *self.extra_args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.replicas[key] = Replica(key, pod["metadata"]["uid"], address, port, proc)

    def _stop_replica(self, key: str) -> None:
        replica = self.replicas.pop(key)
        if replica.proc.poll() is None:
            replica.proc.terminate()
            try:
                replica.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait()

    def wait_serving(self, count: int, timeout: float = 20.0) -> None:
        """Until `count` replicas answer /health."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = 0
            for address, port in self.endpoints():
                try:
                    ok += httpx.get(f"http://{address}:{port}/health", timeout=0.5).status_code == 200
                except httpx.HTTPError:
                    pass
            if ok >= count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{count} sim replicas not serving after {timeout}s: {self.endpoints()}")
