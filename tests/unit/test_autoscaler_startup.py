"""How long replicas take to start, measured from the ModelDeployment's own pods (controller/autoscaler.py)."""

from __future__ import annotations

from llmfleet.controller.autoscaler import StartupTimes
from llmfleet.kube.views import PodView

KEY = ("ai", "llm")


def pod(uid, created, ready_at=None, ready=True):
    conditions = []
    if ready_at is not None:
        conditions.append({"type": "Ready", "status": "True" if ready else "False",
                           "lastTransitionTime": f"2026-11-22T10:{ready_at // 60:02d}:{ready_at % 60:02d}Z"})
    return PodView.from_body({
        "metadata": {"name": uid, "namespace": "ai", "uid": uid,
                     "creationTimestamp": f"2026-11-22T10:{created // 60:02d}:{created % 60:02d}Z"},
        "status": {"conditions": conditions}})


def _startup_seconds(pod):
    return pod.startup_seconds


def test_a_ready_pod_is_measured_from_creation_to_ready():
    assert _startup_seconds(pod("a", 10, 52)) == 42
    assert _startup_seconds(pod("a", 10, 52, ready=False)) is None
    assert _startup_seconds(pod("a", 10)) is None
    assert _startup_seconds(PodView.from_body({"metadata": {"name": "x", "namespace": "ai"},
                                               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})) is None


def test_the_typical_startup_is_the_median_of_pods_each_measured_once():
    times = StartupTimes(keep=3)
    assert times.observe(KEY, [pod("a", 0)]) is None  # nothing ready yet
    assert times.observe(KEY, [pod("a", 0, 30)]) == 30
    assert times.observe(KEY, [pod("a", 0, 30), pod("b", 0, 40), pod("c", 0, 100)]) == 40
    # A later Ready flip of a known pod (a restart) does not re-measure it.
    assert times.observe(KEY, [pod("a", 0, 300), pod("b", 0, 40), pod("c", 0, 100)]) == 40
    # Only the last `keep` pods count: "a" (30) drops out.
    assert times.observe(KEY, [pod("d", 0, 35)]) == 40
    assert times.observe(KEY, [pod("e", 0, 36), pod("f", 0, 37)]) == 36
    times.forget(KEY)
    assert times.observe(KEY, []) is None
