"""Real model servers behind the dev cluster's fake pods (test tier 4).

KWOK schedules pods and gives them IPs in 127.x but runs nothing. For every Running
pod of a `sim` ModelDeployment, the fleet runs a real `llmfleet sim` process bound to
that pod's IP and port with the container's own arguments (so the spec's
engine.extraArgs shape the replica), and plays the kubelet's part for it. A pod of a
`triton` ModelDeployment gets a sim standing in for Triton's OpenAI frontend
(`--serve-as triton`), started from what the Triton container would serve: its
`--openai-port`, the model repository directory its command writes (the served name),
`max_model_len` from its model.json, and the sim flags in the container's
`LLMFLEET_SIM_ARGS` variable (its extraArgs are Triton's flags, not the sim's):

- readiness: the dev cluster's KWOK stages leave sim pods Running but not Ready; the
  fleet sets Ready once the process answers the container's readiness probe path
  (/health for sim, /health/ready for Triton) and clears it when the process dies, as
  a readiness probe would;
- restarts: a process that exits is started again after a short back-off (its
  restartCount goes up), as a container would be;
- termination: when the pod gets a deletionTimestamp (or is gone, or stops being
  Running), it runs the container's preStop sleep, then sends SIGTERM, then SIGKILL
  once the grace period, counted from the deletion, is over - in a thread of its
  own, so the sync loop goes on. Both durations come from the pod spec seen when the
  replica started and are scaled by the sim's `--time-scale`, as the sim scales its
  own durations (benchmarks fast-forward the whole scenario); the kubelet's minimum
  of 2 s between SIGTERM and SIGKILL is not, since it gives a process the wall time
  to act on SIGTERM. Once the process is gone the fleet removes the pod object
  (grace 0), the kubelet's last step: the dev cluster's KWOK leaves deleted sim pods
  alone (`cluster.with_sim_readiness`), so until then the pod shows as Terminating
  and keeps its IP, which KWOK would otherwise hand to the next new pod while the old
  process still listens on it.

It runs as one of the dev cluster's component processes (`python -m
llmfleet_devcluster.simfleet`), and writes what it runs to `<logdir>/simfleet.json`
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
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from kubernetes import client, config

from llmfleet.engines import triton

from .statefile import read_state, write_state
from .waiting import stop_process

log = logging.getLogger(__name__)
MD_LABEL = "llmfleet.io/model-deployment"
ENGINE_LABEL = "app.kubernetes.io/name"
# Engine kinds whose pods get a sim process (label values of ENGINE_LABEL).
SIM_ENGINES = ("sim", "triton")
# In a triton pod's env: the sim's own flags (dev cluster only; Triton never reads it).
SIM_ARGS_ENV = "LLMFLEET_SIM_ARGS"
STATE_FILE = "simfleet.json"
RESTART_BACKOFF_SECONDS = 1.0
DEFAULT_GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
KUBELET_MIN_GRACE_SECONDS = 2.0  # what the kubelet always leaves between SIGTERM and SIGKILL
FLEET_STOP_SECONDS = 2.0  # when the fleet itself stops: SIGTERM, then SIGKILL after this


@dataclass(frozen=True)
class Termination:
    """How the kubelet ends a pod's container: the preStop sleep, SIGTERM, and SIGKILL
    when the grace period (preStop included) is over. Pod seconds, and the sim's
    ``--time-scale`` that turns them into wall seconds."""

    pre_stop_seconds: float = 0.0
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    time_scale: float = 1.0

    @classmethod
    def of(cls, pod: dict, time_scale: float = 1.0) -> Termination:
        spec = pod["spec"]
        lifecycle = spec["containers"][0].get("lifecycle") or {}
        sleep = (lifecycle.get("preStop") or {}).get("sleep") or {}  # exec/httpGet handlers: nothing to run
        grace = spec.get("terminationGracePeriodSeconds")
        return cls(float(sleep.get("seconds", 0)), float(DEFAULT_GRACE_SECONDS if grace is None else grace),
                   time_scale)

    def wall_plan(self) -> tuple[float, float]:
        """Wall seconds from the deletion to SIGTERM, and from SIGTERM to SIGKILL."""
        grace = self.grace_seconds * self.time_scale
        pre_stop = min(self.pre_stop_seconds * self.time_scale, grace)
        return pre_stop, max(grace - pre_stop, KUBELET_MIN_GRACE_SECONDS)


@dataclass
class Replica:
    pod: str  # namespace/name
    uid: str
    address: str
    port: int
    command: list[str]
    proc: subprocess.Popen
    health_path: str = "/health"
    ready: bool | None = None  # what we last wrote to the pod's Ready condition
    restarts: int = 0
    exited_at: float | None = None
    log_path: Path = field(default_factory=Path)
    termination: Termination = field(default_factory=Termination)
    stopper: threading.Thread | None = None  # set once the pod is terminating

    def state(self) -> dict:
        """This replica's entry in simfleet.json."""
        terminating = self.stopper is not None
        return {"pid": self.proc.pid, "alive": self.proc.poll() is None,
                "ready": bool(self.ready) and not terminating, "terminating": terminating,
                "address": self.address, "port": self.port, "restarts": self.restarts}


def _flag(args: list[str], name: str) -> str | None:
    """The value of the last ``name VALUE`` or ``name=VALUE`` in args (argparse's rule)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def triton_sim_args(container: dict) -> list[str] | None:
    """`llmfleet sim` arguments standing in for a Triton container (None if it is not one)."""
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    name = env.get(triton.SERVED_NAME_ENV)
    if triton.FRONTEND not in " ".join(container.get("command") or []) or not name:
        return None
    triton_args = list(container.get("args") or [])
    args = ["--serve-as", "triton", "--port", _flag(triton_args, "--openai-port") or "9000",
            "--served-model-name", name]
    try:
        max_model_len = json.loads(env.get(triton.ENGINE_ARGS_ENV) or "{}").get("max_model_len")
    except (ValueError, AttributeError):
        max_model_len = None  # Triton would refuse it too; the sim serves with its default
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    return args + shlex.split(env.get(SIM_ARGS_ENV) or "")


def sim_command(pod: dict) -> tuple[list[str], str, int] | None:
    """The command that plays this pod's model server, its address and port."""
    spec, status = pod["spec"], pod["status"]
    container = spec["containers"][0]
    command = list(container.get("command") or [])
    if not status.get("podIP"):
        return None
    if command[:2] == ["llmfleet", "sim"]:
        args = list(container.get("args") or [])
    else:
        translated = triton_sim_args(container)
        if translated is None:
            return None
        args = translated
    address = status["podIP"]
    port = int(_flag(args, "--port") or 8000)
    if "--host" in args:
        args[args.index("--host") + 1] = address
    else:
        args += ["--host", address]
    return [sys.executable, "-m", "llmfleet.sim.server", *args], address, port


def sim_time_scale(command: list[str]) -> float:
    """The sim's ``--time-scale`` (1 when it has none)."""
    value = _flag(command, "--time-scale")
    try:
        return float(value) if value is not None else 1.0
    except ValueError:
        return 1.0  # the sim refuses it and exits; nothing to scale


def terminate(proc: subprocess.Popen, termination: Termination, halt: threading.Event) -> None:
    """End ``proc`` as the kubelet ends a deleted pod's container (call when the pod is
    deleted): preStop sleep, SIGTERM, SIGKILL when the grace period is over. Returns
    early, leaving ``proc`` to the caller, if ``halt`` is set during the preStop."""
    pre_stop, kill_after = termination.wall_plan()
    if halt.wait(pre_stop):
        return
    stop_process(proc, timeout=kill_after)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimFleet:
    """Keeps one sim process per Running sim pod and mirrors its health into the pod."""

    def __init__(self, kubeconfig: str | Path, logdir: Path, *, interval: float = 0.2) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.logdir = Path(logdir)
        self.interval = interval
        self.replicas: dict[str, Replica] = {}
        self.terminating: list[Replica] = []  # each ended by its own stopper thread
        self.http = httpx.Client(timeout=0.5)
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep the fleet alive through API hiccups
                log.warning("sim fleet sync failed: %s", exc)
            self._stop.wait(self.interval)
        # The node goes away: every process ends now, terminating or not.
        everything = [*self.replicas.values(), *self.terminating]
        for r in everything:
            if r.proc.poll() is None:
                r.proc.terminate()
        deadline = time.monotonic() + FLEET_STOP_SECONDS
        for r in everything:
            stop_process(r.proc, timeout=max(0.0, deadline - time.monotonic()))
        for r in self.terminating:
            if r.stopper is not None:
                r.stopper.join(timeout=10)
        self.replicas.clear()
        self.terminating.clear()
        self._write_state()
        self.http.close()
        self.api.close()

    def stop(self) -> None:
        self._stop.set()

    def sync(self) -> None:
        # Every pod KWOK leaves to us on deletion, not only those we run a process for.
        pods = self.core.list_pod_for_all_namespaces(
            label_selector=f"{ENGINE_LABEL} in ({','.join(SIM_ENGINES)})").items
        wanted, deleting = {}, {}
        for pod in pods:
            d = self.api.sanitize_for_serialization(pod)
            key = f"{d['metadata']['namespace']}/{d['metadata']['name']}"
            if d["metadata"].get("deletionTimestamp"):
                deleting[key] = d
            elif d["status"].get("phase") == "Running" and MD_LABEL in (d["metadata"].get("labels") or {}):
                wanted[key] = d
        for key in list(self.replicas):
            if key not in wanted or self.replicas[key].uid != wanted[key]["metadata"]["uid"]:
                self._terminate_replica(key, deleting.get(key))
        for key, pod in wanted.items():
            if key not in self.replicas:
                self._start_replica(key, pod)
        for replica in self.replicas.values():
            self._tend(replica)
        self.terminating = [r for r in self.terminating if r.stopper is not None and r.stopper.is_alive()]
        self._remove_terminated(deleting)
        self._write_state()

    def _remove_terminated(self, deleting: dict[str, dict]) -> None:
        """Delete (grace 0) the deleted pods that have no process left, as the kubelet does."""
        busy = {r.uid for r in self.terminating}
        for key, pod in deleting.items():
            uid = pod["metadata"]["uid"]
            if uid in busy:
                continue
            namespace, name = key.split("/", 1)
            try:
                self.core.delete_namespaced_pod(name, namespace, body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)))
            except client.ApiException as exc:
                if exc.status not in (404, 409):  # gone already, or a new pod of that name
                    log.warning("%s: could not remove the pod: %s", key, exc.reason)

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
                healthy = self.http.get(f"http://{r.address}:{r.port}{r.health_path}").status_code == 200
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
        probe = pod["spec"]["containers"][0].get("readinessProbe") or {}
        health_path = (probe.get("httpGet") or {}).get("path") or "/health"
        self.replicas[key] = Replica(key, pod["metadata"]["uid"], address, port, command,
                                     self._spawn(command, log_path), health_path=health_path, log_path=log_path,
                                     termination=Termination.of(pod, sim_time_scale(command)))

    def _terminate_replica(self, key: str, deleted_pod: dict | None) -> None:
        """The pod is deleted (or gone, or no longer Running): end its process as the kubelet would."""
        r = self.replicas.pop(key)
        termination = r.termination
        meta = (deleted_pod or {}).get("metadata", {})
        if meta.get("uid") == r.uid and meta.get("deletionGracePeriodSeconds") is not None:
            # `kubectl delete --grace-period=N` overrides the spec's.
            termination = replace(termination, grace_seconds=float(meta["deletionGracePeriodSeconds"]))
        pre_stop, kill_after = termination.wall_plan()
        log.info("%s: pod terminating: preStop %.2f s, SIGTERM, SIGKILL %.2f s later", key, pre_stop, kill_after)

        def stop() -> None:
            terminate(r.proc, termination, self._stop)
            if self._stop.is_set():
                return
            log.info("%s: sim ended with %s", key, r.proc.returncode)

        r.stopper = threading.Thread(target=stop, name=f"terminate {key}", daemon=True)
        r.stopper.start()
        self.terminating.append(r)

    def _write_state(self) -> None:
        state = {key: r.state() for key, r in self.replicas.items()}
        for r in self.terminating:
            state.setdefault(r.pod, r.state())  # a new pod of the same name wins
        write_state(self.logdir / STATE_FILE, state)


class FleetView:
    """Read the running fleet's state (for tests and benchmarks)."""

    def __init__(self, logdir: Path) -> None:
        self.path = Path(logdir) / STATE_FILE

    def replicas(self) -> dict[str, dict]:
        return read_state(self.path)

    def ready(self, namespace: str | None = None) -> list[str]:
        return sorted(k for k, r in self.replicas().items()
                      if r["ready"] and (namespace is None or k.startswith(f"{namespace}/")))

    def terminating(self, namespace: str | None = None) -> list[str]:
        """Replicas whose pod is deleted and whose process is not yet gone."""
        return sorted(k for k, r in self.replicas().items()
                      if r.get("terminating") and (namespace is None or k.startswith(f"{namespace}/")))

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
    parser = argparse.ArgumentParser(prog="python -m llmfleet_devcluster.simfleet", description=__doc__.splitlines()[0])
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
