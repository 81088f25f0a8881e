"""Where the dev cluster's binaries live, keyed by the versions pinned in versions.env."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build-tools.sh"
BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "helm",
    "kube-score",
    "prometheus",
    "promtool",
)
# prometheus-operator's CRDs for the monitoring.coreos.com kinds the chart can render.
MONITORING_CRDS = (
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
)


class ToolsMissing(RuntimeError):
    """The pinned control-plane binaries have not been built on this machine."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """KEY=VALUE lines of versions.env (the same file build-tools.sh sources)."""
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


@dataclass(frozen=True)
class Tools:
    """Resolved locations of the built tools."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def kwok_stages(self) -> Path:
        return self.root / "kwok-stages"

    @property
    def monitoring_crds(self) -> Path:
        """The directory of the MONITORING_CRDS files."""
        return self.root / "crds"

    def path(self, name: str) -> Path:
        return self.bin / name

    def missing(self) -> list[str]:
        absent = [b for b in BINARIES if not os.access(self.path(b), os.X_OK)]
        if not self.kwok_stages.is_dir() or not any(self.kwok_stages.glob("*.yaml")):
            absent.append("kwok-stages")
        absent += [c for c in MONITORING_CRDS if not (self.monitoring_crds / c).is_file()]
        return absent


def cache_root() -> Path:
    if root := os.environ.get("LLMFLEET_TOOLS_CACHE"):
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmfleet" / "tools"


def locate_tools() -> Tools:
    """The cache directory for the pinned versions (it may not be built yet).

    The key names every version, spelled as in build-tools.sh (which explains why).
    """
    v = read_versions()
    key = (
        f"k8s-{v['KUBERNETES_VERSION']}_etcd-{v['ETCD_VERSION']}"
        f"_kwok-{v['KWOK_VERSION']}_helm-{v['HELM_VERSION']}"
        f"_kube-score-{v['KUBE_SCORE_VERSION']}"
        f"_prometheus-operator-{v['PROMETHEUS_OPERATOR_VERSION']}"
        f"_prometheus-{v['PROMETHEUS_DEB_VERSION']}"
    )
    return Tools(cache_root() / key)


def require_tools() -> Tools:
    """The built tools, or ToolsMissing naming the command that builds them."""
    tools = locate_tools()
    if missing := tools.missing():
        raise ToolsMissing(
            f"missing in {tools.root}: {', '.join(missing)}. "
            "Build them once with `llmfleet dev-cluster build-tools` "
            f"(or `bash {BUILD_SCRIPT}`); a cold build takes about 6 minutes on 2 cores."
        )
    return tools


def build_tools() -> Tools:
    """Run build-tools.sh (skips what is already built) and return the result."""
    if not shutil.which("go"):
        raise ToolsMissing("building the dev-cluster tools needs the Go toolchain on PATH")
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    return require_tools()
