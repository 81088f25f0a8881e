"""kube-score on the operator's Helm chart: no CRITICAL finding, whatever the values.

charts/llmfleet is rendered with the pinned helm (default values, then each
charts/llmfleet/ci/*.yaml) and scored with the pinned kube-score; both are built by
build-tools.sh like the dev cluster's binaries. WARNINGs are printed, not failed on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llmfleet_devcluster.tools import ToolsMissing, read_versions, require_tools
from tests.chart import CHART, render_text

_KUBERNETES_MINOR = ".".join(read_versions()["KUBERNETES_VERSION"].split(".")[:2])
# Every option kube-score runs with here, and why.
KUBE_SCORE_OPTIONS = (
    # Judge apiVersions against the Kubernetes we test on, not kube-score's default v1.18.
    f"--kubernetes-version={_KUBERNETES_MINOR}",
    # A CPU limit only throttles a busy control loop; the CPU request already reserves its share.
    "--ignore-container-cpu-limit",
    # Images are pinned by tag or digest; Always makes every pod start depend on the registry.
    "--ignore-test=container-image-pull-policy",
)


def _values_files() -> list[Path | None]:
    return [None, *sorted((CHART / "ci").glob("*.yaml"))]


def _kube_score() -> Path:
    try:
        return require_tools().path("kube-score")
    except ToolsMissing as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)  # a missing tool is a failure, never a skip


@pytest.mark.parametrize(
    "values", _values_files(), ids=lambda v: "default-values" if v is None else f"ci/{v.name}"
)
def test_chart_has_no_critical_kube_score_finding(values):
    manifest = render_text(values=[values] if values else [])
    score = subprocess.run(
        [str(_kube_score()), "score", *KUBE_SCORE_OPTIONS, "--output-format", "ci", "-"],
        input=manifest, capture_output=True, text=True, timeout=60,
    )
    # ci format: one "[GRADE] object: (container) summary" line per check and finding.
    lines = score.stdout.splitlines()
    critical = [line for line in lines if line.startswith("[CRITICAL]")]
    for line in lines:
        if line.startswith("[WARNING]"):
            print(line)
    # Exit 1 means a CRITICAL finding, or an error on stderr with none.
    assert critical or score.returncode == 0, f"kube-score failed (exit {score.returncode}):\n{score.stderr}"
    assert lines, "kube-score scored nothing: the chart rendered no objects it knows"
    assert not critical, "kube-score CRITICAL findings:\n" + "\n".join(critical)
