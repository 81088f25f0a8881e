"""Real model servers behind the dev cluster's fake pods (test tier 4).

KWOK schedules pods and gives them IPs in 127.x but runs nothing. For every Running
pod of a `sim` ModelDeployment, the fleet runs a real `llmfleet sim` process bound to
that pod's IP and port with the container's own arguments (so the spec's
engine.extraArgs shape the replica), and plays the kubelet's part for it:

- readiness: the dev cluster's KWOK stages leave sim pods Running but not Ready; the
  fleet sets Ready once the process answers /health and clears it when the process
  dies, as a readiness probe would;
- restarts: a process that exits is started again after a short back-off (its
  restartCount goes up), as a container would be;
- it stops the process when the pod goes away.

It runs as one of the dev cluster's component processes (`python -m
llmfleet.devcluster.simfleet`), and writes what it runs to `<logdir>/simfleet.json`
so tests can find (and kill) a replica's process. Envoy, the operator and these
processes then form a whole fleet on one machine.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from kubernetes import client, config

from .waiting import stop_process

log = logging.getLogger(__name__)
MD_LABEL = "llmfleet.io/model-deployment"
ENGINE_LABEL = "app.kubernetes.io/name"
STATE_FILE = "simfleet.json"
RESTART_BACKOFF_SECONDS = 1.0


@dataclass
class Replica:
    pod: str  # namespace/name
    uid: str
    address: str
    port: int
    command: list[str]
    proc: subprocess.Popen
    ready: bool | None = None  # what we last wrote to the pod's Ready condition
    restarts: int = 0
    exited_at: float | None = None
    log_path: Path = field(default_factory=Path)


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


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimFleet:
    """Keeps one sim process per Running sim pod and mirrors its health into the pod."""

    def __init__(self, kubeconfig: str | Path, logdir: Path, *, interval: float = 0.2) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.logdir = Path(logdir)
        self.interval = interval
        self.replicas: dict[str, Replica] = {}
        self.http = httpx.Client(timeout=0.5)
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep the fleet alive through API hiccups
                log.warning("sim fleet sync failed: %s", exc)
            self._stop.wait(self.interval)
        for key in list(self.replicas):
            self._stop_replica(key)
        self._write_state()
        self.http.close()
        self.api.close()

    def stop(self) -> None:
        self._stop.set()

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=f"{MD_LABEL},{ENGINE_LABEL}=sim").items
        wanted = {}
        for pod in pods:
            d = self.api.sanitize_for_serialization(pod)
            if d["status"].get("phase") != "Running" or d["metadata"].get("deletionTimestamp"):
                continue
            wanted[f"{d['metadata']['namespace']}/{d['metadata']['name']}"] = d
        for key in list(self.replicas):
            if key not in wanted or self.replicas[key].uid != wanted[key]["metadata"]["uid"]:
                self._stop_replica(key)
        for key, pod in wanted.items():
            if key not in self.replicas:
                self._start_replica(key, pod)
        for replica in self.replicas.values():
            self._tend(replica)
        self._write_state()

    def _tend(self, r: Replica) -> None:
        """Restart a dead process after a back-off; mirror health into Ready."""
        if r.proc.poll() is not None:
            if r.exited_at is None:
                r.exited_at = time.monotonic()
                log.info("%s: sim exited with %s", r.pod, r.proc.returncode)
            if time.monotonic() - r.exited_at >= RESTART_BACKOFF_SECONDS:
                r.restarts += 1
                r.exited_at = None
                r.proc = self._spawn(r.command, r.log_path)
            healthy = False
        elif r.ready:
            healthy = True  # a live process stays ready; a dead one is caught above
        else:
            try:
                healthy = self.http.get(f"http://{r.address}:{r.port}/health").status_code == 200
            except httpx.HTTPError:
                healthy = False
        if healthy != r.ready:
            self._set_ready(r, healthy)

    def _set_ready(self, r: Replica, ready: bool) -> None:
        namespace, name = r.pod.split("/", 1)
        value = "True" if ready else "False"
        patch = {"status": {
            "conditions": [{"type": t, "status": value, "lastTransitionTime": _now()}
                           for t in ("Ready", "ContainersReady")],
        }}
        try:
            pod = self.core.read_namespaced_pod_status(name, namespace)
            statuses = self.api.sanitize_for_serialization(pod).get("status", {}).get("containerStatuses") or []
            for cs in statuses:
                cs["ready"] = ready
                cs["restartCount"] = r.restarts
            if statuses:
                patch["status"]["containerStatuses"] = statuses
            self.core.patch_namespaced_pod_status(name, namespace, patch)
            r.ready = ready
        except client.ApiException as exc:
            log.warning("%s: could not set Ready=%s: %s", r.pod, value, exc.reason)

    def _spawn(self, command: list[str], log_path: Path) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent)

    def _start_replica(self, key: str, pod: dict) -> None:
        planned = sim_command(pod)
        if planned is None:
            return
        command, address, port = planned
        log_path = self.logdir / f"sim-{key.replace('/', '_')}.log"
        self.replicas[key] = Replica(key, pod["metadata"]["uid"], address, port, command,
                                     self._spawn(command, log_path), log_path=log_path)

    def _stop_replica(self, key: str) -> None:
        stop_process(self.replicas.pop(key).proc, timeout=5)

    def _write_state(self) -> None:
        state = {
            key: {"pid": r.proc.pid, "alive": r.proc.poll() is None, "ready": bool(r.ready),
                  "address": r.address, "port": r.port, "restarts": r.restarts}
            for key, r in self.replicas.items()
        }
        tmp = self.logdir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.logdir / STATE_FILE)


class FleetView:
    """Read the running fleet's state (for tests and benchmarks)."""

    def __init__(self, logdir: Path) -> None:
        self.path = Path(logdir) / STATE_FILE

    def replicas(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def ready(self, namespace: str | None = None) -> list[str]:
        return sorted(k for k, r in self.replicas().items()
                      if r["ready"] and (namespace is None or k.startswith(f"{namespace}/")))

    def kill(self, pod: str) -> None:
        """SIGKILL the process of `namespace/name` (a replica dying under load)."""
        os.kill(self.replicas()[pod]["pid"], signal.SIGKILL)

    def wait_ready(self, count: int, namespace: str | None = None, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(ready := self.ready(namespace)) >= count:
                return ready
            time.sleep(0.1)
        raise TimeoutError(f"{count} sim replicas not ready after {timeout}s: {self.replicas()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfleet.devcluster.simfleet", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--logdir", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fleet = SimFleet(args.kubeconfig, args.logdir, interval=args.interval)
    signal.signal(signal.SIGTERM, lambda *_: fleet.stop())
    signal.signal(signal.SIGINT, lambda *_: fleet.stop())
    fleet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
