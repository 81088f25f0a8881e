"""ModelDeployment status: what `kubectl get/describe md` shows, from cluster state."""

from __future__ import annotations

from llmfleet.controller.statuswriter import changed_fields
from llmfleet.kube.views import DeploymentView, NodeView, PodView
from llmfleet.status import modeldeployment
from llmfleet.status.conditions import find
from llmfleet.status.modeldeployment import GpuNeed

H100 = "NVIDIA-H100-80GB-HBM3"


def md(status=None, generation=2):
    return {"metadata": {"name": "llama", "namespace": "ai", "generation": generation}, "status": status or {}}


def model_deployment_status(md, *, deployment, pods, nodes, **kwargs):
    """The pure function, fed the views the store would hold for these objects."""
    meta = md["metadata"]
    return modeldeployment.model_deployment_status(
        meta["name"], meta.get("generation"), md.get("status") or {},
        deployment=DeploymentView.from_body(deployment) if deployment else None,
        pods=[PodView.from_body(p) for p in pods], nodes=[NodeView.from_body(n) for n in nodes], **kwargs)


def capacity_problem(need, nodes):
    return modeldeployment.capacity_problem(need, [NodeView.from_body(n) for n in nodes])


def deployment(replicas=1, ready=1, updated=None, generation=1, observed=1, conditions=()):
    return {
        "metadata": {"name": "llama", "namespace": "ai", "generation": generation},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "observedGeneration": observed,
            "conditions": list(conditions),
        },
    }


def pod(name, ready=True, scheduled=True, message="", waiting=None):
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if not scheduled:
        conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message})
    status = {"phase": "Running" if scheduled else "Pending", "podIP": "127.0.0.9" if scheduled else None,
              "conditions": conds}
    if waiting:
        status["containerStatuses"] = [{"name": "server", "state": {"waiting": {"reason": waiting, "message": "boom"}}}]
    return {"metadata": {"name": name, "namespace": "ai"}, "status": status}


def node(name, gpus, product):
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


NODES = [node("h", 8, H100), node("l", 1, "NVIDIA-L4")]


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_all_replicas_ready_reports_ready_and_emits_one_ready_event():
    r = model_deployment_status(
        md(), desired=2, deployment=deployment(2, 2), pods=[pod("a"), pod("b")], nodes=NODES,
        gpu_need=GpuNeed("nvidia.com/gpu", 2, H100), now="T1",
    )
    assert r.status["readyText"] == "2/2"
    assert r.status["readyReplicas"] == 2 and r.status["replicas"] == 2 and r.status["desiredReplicas"] == 2
    assert r.status["selector"] == "llmfleet.io/model-deployment=llama"
    assert r.status["observedGeneration"] == 2
    assert conditions(r.status) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert [(e.type, e.reason) for e in r.events] == [("Normal", "Ready")]


def test_same_state_again_changes_nothing_and_emits_nothing():
    args = dict(desired=1, deployment=deployment(), pods=[pod("a")], nodes=[], gpu_need=None)
    first = model_deployment_status(md(), now="T1", **args)
    second = model_deployment_status(md(first.status), now="T2", **args)
    assert second.events == []
    assert changed_fields(first.status, second.status) == []
    assert find(second.status["conditions"], "Ready")["lastTransitionTime"] == "T1"


def test_changed_fields_compare_only_the_writers_own_fields_and_conditions():
    current = {"replicas": 1, "load": {"queueDepth": 2},
               "conditions": [{"type": "Ready", "status": "True"}, {"type": "ScalingLimited", "status": "False"}]}
    assert changed_fields(current, {"replicas": 1, "conditions": [{"type": "Ready", "status": "True"}]}) == []
    assert changed_fields(current, {"replicas": 2}) == ["replicas"]
    assert changed_fields(current, {"conditions": [{"type": "Ready", "status": "False"}]}) == ["conditions"]


def test_more_gpus_than_any_matching_node_is_reported_with_numbers():
    r = model_deployment_status(
        md(), desired=1, deployment=deployment(1, 0), pods=[pod("a", ready=False, scheduled=False, message="0/6")],
        nodes=NODES, gpu_need=GpuNeed("nvidia.com/gpu", 4, "NVIDIA-L4"),
    )
    ready = find(r.status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InsufficientGPU")
    assert "needs 4 nvidia.com/gpu" in ready["message"] and "has 1" in ready["message"]
    assert "nvidia.com/gpu.product=NVIDIA-L4" in ready["message"]
    assert ("Warning", "InsufficientGPU") in [(e.type, e.reason) for e in r.events]


def test_capacity_problem_when_no_node_has_the_product():
    msg = capacity_problem(GpuNeed("nvidia.com/gpu", 1, "NVIDIA-B200"), NODES)
    assert "no such nodes" in msg and "NVIDIA-B200" in msg
    assert capacity_problem(GpuNeed("nvidia.com/gpu", 8, H100), NODES) is None
    assert capacity_problem(GpuNeed("nvidia.com/gpu", 4, None), NODES) is None


def test_unschedulable_pod_makes_degraded_with_scheduler_message():
    r = model_deployment_status(
        md(), desired=2, deployment=deployment(2, 1),
        pods=[pod("a"), pod("b", ready=False, scheduled=False, message="0/6 nodes are available: Insufficient nvidia.com/gpu")],
        nodes=NODES, gpu_need=GpuNeed("nvidia.com/gpu", 8, H100),
    )
    c = conditions(r.status)
    assert c["Ready"] == ("True", "PartiallyReady") and c["Degraded"] == ("True", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in find(r.status["conditions"], "Degraded")["message"]
    assert r.status["readyText"] == "1/2"


def test_crash_looping_replica_is_degraded():
    r = model_deployment_status(
        md(), desired=1, deployment=deployment(1, 0), pods=[pod("a", ready=False, waiting="CrashLoopBackOff")],
        nodes=[], gpu_need=None,
    )
    assert conditions(r.status)["Degraded"] == ("True", "CrashLoopBackOff")


def test_rollout_in_progress_is_progressing():
    r = model_deployment_status(
        md(), desired=2, deployment=deployment(3, 2, updated=1, generation=2, observed=2),
        pods=[pod("a"), pod("b"), pod("c", ready=False)], nodes=[], gpu_need=None,
    )
    assert conditions(r.status)["Progressing"] == ("True", "RollingOut")


def test_invalid_spec_is_reported_not_raised():
    r = model_deployment_status(
        md(), desired=None, deployment=None, pods=[], nodes=[], gpu_need=None,
        invalid='spec.engine.quantization: "gptq" is not supported',
    )
    c = conditions(r.status)
    assert c["Ready"] == ("False", "InvalidSpec") and c["Degraded"] == ("True", "InvalidSpec")
    assert ("Warning", "InvalidSpec") in [(e.type, e.reason) for e in r.events]


def test_losing_readiness_emits_not_ready():
    ready = model_deployment_status(md(), desired=1, deployment=deployment(), pods=[pod("a")], nodes=[], gpu_need=None)
    lost = model_deployment_status(
        md(ready.status), desired=1, deployment=deployment(1, 0), pods=[pod("a", ready=False)], nodes=[], gpu_need=None
    )
    assert [e.reason for e in lost.events] == ["NotReady"]


def test_scaling_up_keeps_ready_and_emits_nothing():
    one = model_deployment_status(md(), desired=1, deployment=deployment(), pods=[pod("a")], nodes=[], gpu_need=None)
    up = model_deployment_status(
        md(one.status), desired=3, deployment=deployment(3, 1), pods=[pod("a"), pod("b", ready=False)],
        nodes=[], gpu_need=None,
    )
    assert conditions(up.status)["Ready"] == ("True", "PartiallyReady")
    assert up.status["readyText"] == "1/3"
    assert up.events == []


def test_nothing_ready_is_not_ready():
    r = model_deployment_status(md(), desired=2, deployment=deployment(2, 0), pods=[pod("a", ready=False)],
                                nodes=[], gpu_need=None)
    assert conditions(r.status)["Ready"] == ("False", "ReplicasStarting")


def test_scaled_to_zero():
    r = model_deployment_status(md(), desired=0, deployment=deployment(0, 0), pods=[], nodes=NODES,
                                gpu_need=GpuNeed("nvidia.com/gpu", 16, H100))
    assert conditions(r.status)["Ready"] == ("False", "ScaledToZero")
    assert conditions(r.status)["Degraded"] == ("False", "AsExpected")
    assert r.status["readyText"] == "0/0"


def test_the_reconciler_writes_only_its_own_fields():
    """The autoscaler's fields and condition are its own (another field manager): the
    reconciler's status neither carries nor drops them."""
    old = {"load": {"queueDepth": 3.0}, "lastScaleTime": "T0", "scaleReason": "queue",
           "conditions": [{"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange"}]}
    r = model_deployment_status(md(old), desired=1, deployment=deployment(), pods=[pod("a")], nodes=[], gpu_need=None)
    assert set(r.status) == {"observedGeneration", "replicas", "readyReplicas", "selector", "desiredReplicas",
                             "readyText", "conditions"}
    assert {c["type"] for c in r.status["conditions"]} == {"Ready", "Progressing", "Degraded"}


def test_a_terminating_or_addressless_pod_is_not_ready():
    leaving = pod("a")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    no_ip = pod("b")
    no_ip["status"]["podIP"] = None
    r = model_deployment_status(md(), desired=2, deployment=deployment(2, 2), pods=[leaving, no_ip], nodes=[],
                                gpu_need=None)
    assert r.status["readyReplicas"] == 0
