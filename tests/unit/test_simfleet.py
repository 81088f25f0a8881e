"""The sim fleet's kubelet part: how a deleted pod's process is ended (no cluster needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfleet.api.models import parse_model_deployment_spec
from llmfleet_devcluster.cluster import SIM_SELECTOR, with_sim_readiness
from llmfleet_devcluster.simfleet import (
    KUBELET_MIN_GRACE_SECONDS, STATE_FILE, FleetView, Termination, sim_command, sim_time_scale, terminate,
)
from llmfleet.engines import get_engine
from llmfleet.engines.sim import SimEngine

pytestmark = pytest.mark.timeout(30)


def sim_pod(extra_args: list[str]) -> dict:
    spec = parse_model_deployment_spec({"model": {"uri": "hf://org/model"},
                                        "engine": {"kind": "sim", "extraArgs": extra_args}})
    return {"spec": get_engine("sim").pod_spec(spec, "quickstart"), "status": {"podIP": "127.0.0.9"}}


def test_termination_comes_from_the_pod_spec_scaled_by_the_sims_time_scale() -> None:
    pod = sim_pod(["--time-scale", "0.5"])
    planned = sim_command(pod)
    assert planned is not None
    command, address, port = planned
    assert (address, port) == ("127.0.0.9", 8000)
    termination = Termination.of(pod, sim_time_scale(command))
    assert termination == Termination(SimEngine.pre_stop_sleep_seconds, SimEngine.termination_grace_period_seconds,
                                      0.5)
    assert termination.wall_plan() == (0.5 * 2, 0.5 * (15 - 2))


def test_a_triton_pod_gets_a_sim_serving_as_triton_with_its_port_and_model_name() -> None:
    from llmfleet.sim.server import build_parser

    spec = parse_model_deployment_spec({
        "model": {"uri": "hf://org/model", "servedName": "chat-model"},
        "engine": {"kind": "triton", "maxModelLen": 4096, "extraArgs": ["--tool-call-parser", "llama3"],
                   "env": [{"name": "LLMFLEET_SIM_ARGS", "value": "--time-scale 0.5 --max-num-seqs 4"}]}})
    pod = {"spec": get_engine("triton").pod_spec(spec, "md"), "status": {"podIP": "127.0.0.9"}}
    planned = sim_command(pod)
    assert planned is not None
    command, address, port = planned
    assert (address, port) == ("127.0.0.9", 8000)
    assert command[1:3] == ["-m", "llmfleet.sim.server"]
    ns = build_parser().parse_args(command[3:])  # Triton's own flags are not passed on
    assert (ns.serve_as, ns.port, ns.host, ns.served_model_name) == ("triton", 8000, "127.0.0.9", ["chat-model"])
    assert (ns.max_model_len, ns.time_scale, ns.max_num_seqs) == (4096, 0.5, 4)
    assert Termination.of(pod, sim_time_scale(command)).time_scale == 0.5
    vllm = parse_model_deployment_spec({"model": {"uri": "hf://org/model"}, "engine": {"kind": "vllm"}})
    assert sim_command({"spec": get_engine("vllm").pod_spec(vllm, "md"), "status": {"podIP": "127.0.0.9"}}) is None


def test_time_scale_is_the_last_one_given_and_defaults_to_one() -> None:
    assert sim_time_scale(["sim", "--time-scale", "0.5", "--time-scale=0.25"]) == 0.25
    assert sim_time_scale(["sim", "--port", "9000"]) == 1.0


def test_a_pod_without_a_hook_or_grace_period_gets_kubernetes_defaults() -> None:
    pod = {"spec": {"containers": [{"name": "x", "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}}]}}
    assert Termination.of(pod) == Termination(0.0, 30.0, 1.0)


@pytest.mark.parametrize(("termination", "plan"), [
    (Termination(5, 120), (5, 115)),
    (Termination(20, 10), (10, KUBELET_MIN_GRACE_SECONDS)),  # preStop cut at the grace period, then 2 s
    (Termination(2, 15, 0.0), (0, KUBELET_MIN_GRACE_SECONDS)),  # time-scale 0: SIGTERM at once, still 2 s
])
def test_wall_plan_follows_the_kubelet(termination: Termination, plan: tuple[float, float]) -> None:
    assert termination.wall_plan() == plan


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _container(processes: list[subprocess.Popen], on_sigterm: str) -> subprocess.Popen:
    """A process that prints "up" once its SIGTERM handler (``exit`` or ``ignore``) is in place."""
    handler = "lambda *_: sys.exit(7)" if on_sigterm == "exit" else "signal.SIG_IGN"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import signal, sys, time; signal.signal(signal.SIGTERM, {handler}); "
                               "print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    processes.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def test_terminate_sends_sigterm_after_the_pre_stop_sleep(processes: list[subprocess.Popen]) -> None:
    proc = _container(processes, "exit")
    t0 = time.monotonic()
    terminate(proc, Termination(pre_stop_seconds=0.4, grace_seconds=15), threading.Event())
    assert proc.returncode == 7  # it got SIGTERM and exited by itself
    assert 0.4 <= time.monotonic() - t0 < 2.0


def test_terminate_kills_a_process_that_outlives_the_grace_period(processes: list[subprocess.Popen]) -> None:
    proc = _container(processes, "ignore")
    t0 = time.monotonic()
    # 0.2 s preStop, then the kubelet's minimum of 2 s after SIGTERM.
    terminate(proc, Termination(pre_stop_seconds=0.2, grace_seconds=1.0), threading.Event())
    assert proc.returncode == -9
    assert 0.2 + KUBELET_MIN_GRACE_SECONDS - 0.05 <= time.monotonic() - t0 < 5.0


def test_terminate_returns_at_once_when_the_fleet_stops(processes: list[subprocess.Popen]) -> None:
    proc = _container(processes, "exit")
    halt = threading.Event()
    stopper = threading.Thread(target=terminate, args=(proc, Termination(30, 60), halt))
    stopper.start()
    halt.set()
    stopper.join(timeout=2)
    assert not stopper.is_alive()
    assert proc.poll() is None  # left to the fleet, which stops everything itself


def test_fleet_view_never_counts_a_terminating_replica_as_ready(tmp_path: Path) -> None:
    entry = {"pid": 1, "alive": True, "address": "127.0.0.9", "port": 8000, "restarts": 0}
    (tmp_path / STATE_FILE).write_text(json.dumps({
        "ns/a": {**entry, "ready": True, "terminating": False},
        "ns/b": {**entry, "ready": False, "terminating": True},
        "other/c": {**entry, "ready": True, "terminating": False},
    }))
    view = FleetView(tmp_path)
    assert view.ready("ns") == ["ns/a"]
    assert view.terminating("ns") == ["ns/b"]
    assert view.terminating() == ["ns/b"]


def test_kwok_leaves_deleted_sim_pods_to_the_fleet() -> None:
    delete = {"metadata": {"name": "pod-delete"}, "spec": {"selector": {"matchExpressions": [
        {"key": ".metadata.deletionTimestamp", "operator": "Exists"}]}, "next": {"delete": True}}}
    (stage,) = with_sim_readiness([delete])
    assert stage["spec"]["selector"]["matchExpressions"][-1] == {**SIM_SELECTOR, "operator": "NotIn"}
    assert delete["spec"]["selector"]["matchExpressions"] == [  # KWOK's own is left as it was
        {"key": ".metadata.deletionTimestamp", "operator": "Exists"}]
