"""`llmfleet dev-cluster up|down|status|address|build-tools`.

This distribution (llmfleet-devcluster) is not part of the installed operator: it
registers the `dev-cluster` command with `llmfleet` through the `llmfleet.commands`
entry points.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .cluster import (
    ClusterError,
    ClusterState,
    DevCluster,
    NodePool,
    node_pools_from_env,
    pid_runs,
    remove_pod_network,
    stop_pid,
)
from .tools import ToolsMissing, build_tools, locate_tools


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmfleet" / "dev-cluster"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmfleet dev-cluster",
                                description="a local Kubernetes control plane with fake GPU nodes")
    p.add_argument("--dir", type=Path, default=default_dir(), help="state directory (default: %(default)s)")
    actions = p.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start the cluster and print its kubeconfig path")
    up.add_argument(
        "--nodes",
        action="append",
        type=NodePool.parse,
        metavar="NAME=COUNTxGPUS[:PRODUCT]",
        help="a node pool (repeatable); default: 4 H100 nodes with 8 GPUs, 2 L4 nodes with 1",
    )
    up.add_argument("--build", action="store_true", help="build missing tools first (needs Go)")
    up.add_argument("--no-system-node", dest="system_node", action="store_false",
                    help="leave out the system node that runs the Helm chart's pods (it needs root)")
    actions.add_parser("down", help="stop every process of the cluster and remove its state (logs kept)")
    actions.add_parser("status", help="print whether the cluster runs and its kubeconfig")
    address = actions.add_parser(
        "address", help="print HOST:PORT where this machine reaches a Service of the cluster (one line per port)")
    address.add_argument("service", help="the Service's name")
    address.add_argument("--namespace", "-n", default="default")
    actions.add_parser("build-tools", help="build the pinned control-plane binaries into the cache")
    return p


def main(argv: list[str]) -> int:
    """`llmfleet dev-cluster ...` (registered under the `llmfleet.commands` entry points)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    state_file = args.dir / "state.json"
    try:
        if args.action == "build-tools":
            print(build_tools().bin)
            return 0
        if args.action == "status":
            return _status(state_file)
        if args.action == "down":
            return _down(state_file)
        if args.action == "address":
            return _address(state_file, args.namespace, args.service)
        return _up(args, state_file)
    except (ToolsMissing, ClusterError) as exc:
        print(f"llmfleet dev-cluster: {exc}", file=sys.stderr)
        return 1


def _running(state_file: Path) -> ClusterState | None:
    if not state_file.exists():
        return None
    state = ClusterState.load(state_file)
    return state if state.components and all(pid_runs(c) for c in state.components) else None


def _up(args: argparse.Namespace, state_file: Path) -> int:
    if state := _running(state_file):
        print(f"already running; KUBECONFIG={state.kubeconfig}", file=sys.stderr)
        print(state.kubeconfig)
        return 0
    if state_file.exists():
        _down(state_file)
    if args.build:
        build_tools()
    workdir = args.dir / "cluster"
    shutil.rmtree(workdir, ignore_errors=True)
    pools = tuple(args.nodes) if args.nodes else node_pools_from_env()
    cluster = DevCluster(pools, workdir=workdir, detach=True, system_node=args.system_node).start()
    args.dir.mkdir(parents=True, exist_ok=True)
    cluster.state().save(state_file)
    print(
        f"dev cluster ready in {cluster.timings['ready']:.1f} s "
        f"(API server ready after {cluster.timings['apiserver_ready']:.1f} s); "
        f"{len(cluster.nodes)} nodes; logs in {cluster.logdir}\n"
        f"  export KUBECONFIG={cluster.kubeconfig}\n"
        f"  export PATH={locate_tools().bin}:$PATH",
        file=sys.stderr,
    )
    print(cluster.kubeconfig)
    return 0


def _down(state_file: Path) -> int:
    if not state_file.exists():
        print("no dev cluster state; nothing to stop", file=sys.stderr)
        return 0
    state = ClusterState.load(state_file)
    for comp in reversed(state.components):
        stop_pid(comp)
    remove_pod_network(Path(state.logdir))
    workdir = Path(state.workdir)
    for child in workdir.iterdir() if workdir.exists() else ():
        if str(child) != state.logdir:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    state_file.unlink()
    print(f"stopped {len(state.components)} processes; logs kept in {state.logdir}", file=sys.stderr)
    return 0


def _address(state_file: Path, namespace: str, service: str) -> int:
    import json
    import subprocess

    from .serviceproxy import service_vip

    state = _running(state_file)
    if state is None or state.service_octet is None:
        print("llmfleet dev-cluster: no running dev cluster with a system node", file=sys.stderr)
        return 1
    proc = subprocess.run([str(locate_tools().path("kubectl")), "--kubeconfig", state.kubeconfig, "get", "service",
                           service, "-n", namespace, "-o", "json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"llmfleet dev-cluster: {proc.stderr.strip()}", file=sys.stderr)
        return 1
    spec = json.loads(proc.stdout)["spec"]
    for port in spec.get("ports") or []:
        print(f"{service_vip(spec['clusterIP'], state.service_octet)}:{port['port']}")
    return 0


def _status(state_file: Path) -> int:
    state = _running(state_file)
    if state is None:
        print("not running")
        return 1
    print(f"running: {', '.join(f'{c.name}[{c.pid}]' for c in state.components)}")
    print(state.kubeconfig)
    return 0
