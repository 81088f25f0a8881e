"""`llmfleet dev-cluster up/down` as a person uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from llmfleet_devcluster.cluster import ClusterState, pid_runs
from llmfleet_devcluster.tools import require_tools


def llmfleet(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmfleet.cli", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_up_gives_usable_cluster_and_down_stops_every_process(tmp_path):
    state_dir = tmp_path / "state"
    up = llmfleet("dev-cluster", "--dir", str(state_dir), "up", "--nodes", "big=2x8:NVIDIA-H100-80GB-HBM3",
                  "--nodes", "cpu=1x0")
    assert up.returncode == 0, up.stderr
    kubeconfig = up.stdout.strip().splitlines()[-1]
    state = ClusterState.load(state_dir / "state.json")
    try:
        assert {c.name for c in state.components} == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "simfleet", "kubelet"
        }
        nodes = subprocess.run(
            [str(require_tools().path("kubectl")), "get", "nodes", "-o", "json"],
            env={**os.environ, "KUBECONFIG": kubeconfig}, capture_output=True, text=True, check=True,
        )
        items = json.loads(nodes.stdout)["items"]
        gpus = sorted(n["status"]["allocatable"].get("nvidia.com/gpu", "0") for n in items)
        assert gpus == ["0", "0", "8", "8"]  # the system node has none
        system = [n for n in items if n["metadata"]["labels"].get("llmfleet.io/dev-cluster-node") == "system"]
        assert len(system) == 1 and system[0]["spec"]["taints"][0]["key"] == "CriticalAddonsOnly"
        network = json.loads((state_dir / "cluster" / "logs" / "kubelet-network.json").read_text())
        assert all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]) for n in items
        )
        again = llmfleet("dev-cluster", "--dir", str(state_dir), "up")
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        down = llmfleet("dev-cluster", "--dir", str(state_dir), "down")
    assert down.returncode == 0, down.stderr
    assert not any(pid_runs(c) for c in state.components)
    assert not (state_dir / "state.json").exists()
    assert (state_dir / "cluster" / "logs" / "kube-apiserver.log").exists()
    assert not (state_dir / "cluster" / "etcd").exists()
    links = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert network["bridge"] not in {link["ifname"] for link in json.loads(links)}, "the pod bridge outlived the cluster"
