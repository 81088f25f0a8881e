"""ModelDeployment status: a pure function of the spec, its Deployment, pods and nodes.

These are the fields the ModelDeployment reconciler owns (server-side apply, field
manager ``llmfleet``); the autoscaler owns load, scaleReason, lastScaleTime and the
ScalingLimited condition under its own manager, so neither writes the other's.

Conditions:
- Ready: at least one replica serves (AllReplicasReady or PartiallyReady); False when
  none does, with the reason.
- Progressing: a rollout or a scale change is under way.
- Degraded: something keeps replicas from becoming ready (cannot be scheduled, no node
  can ever fit one, crash loop, image pull failure, invalid spec).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import GPU_PRODUCT_LABEL
from ..kube.views import DeploymentView, NodeView, PodView
from ..render.deployment import selector_string
from .conditions import WantedCondition, find, merge_conditions

# The conditions this status owns (the autoscaler owns ScalingLimited).
CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class StatusResult:
    status: dict
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class GpuNeed:
    """What one replica asks of a node."""

    resource: str
    count: int
    product: str | None


def capacity_problem(need: GpuNeed | None, nodes: Sequence[NodeView]) -> str | None:
    """Why no node can ever hold a replica, or None when some node can (or we can't tell)."""
    if need is None or need.count == 0 or not nodes:
        return None
    matching = [n for n in nodes if need.product is None or n.label(GPU_PRODUCT_LABEL) == need.product]
    where = f"nodes labelled {GPU_PRODUCT_LABEL}={need.product}" if need.product else "nodes"
    if not matching:
        return f"each replica needs {need.count} {need.resource} on {where}, and there are no such nodes"
    largest = max(n.allocatable_count(need.resource) for n in matching)
    if largest >= need.count:
        return None
    return (
        f"each replica needs {need.count} {need.resource} on one node, "
        f"and the largest of the {len(matching)} {where} has {largest}"
    )


def model_deployment_status(
    name: str,
    generation: int | None,
    old: dict[str, Any],
    *,
    desired: int | None,
    deployment: DeploymentView | None,
    pods: Sequence[PodView],
    nodes: Sequence[NodeView],
    gpu_need: GpuNeed | None,
    invalid: str | None = None,
    now: str | None = None,
    adapters: Sequence[str] = (),
) -> StatusResult:
    """The reconciler's part of ModelDeployment ``name``'s status (``old`` is the status
    as it stands), plus the Events its transitions deserve.

    `desired` is the replica count asked for (spec.replicas, which the autoscaler may
    write); `invalid` is the refusal message when the spec could not be parsed;
    `adapters` the LoRA adapters it lists, each reported with the serving replicas that
    have loaded it.
    """
    ready_pods = sum(1 for p in pods if p.serving)
    # Count only replicas the Deployment says are ready and that serve right now.
    ready = min(deployment.ready_replicas, ready_pods) if deployment else 0
    replicas = deployment.replicas if deployment else 0
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": selector_string(name),
    }
    if adapters:
        status["adapters"] = [
            {"name": a, "readyReplicas": sum(1 for p in pods if p.serving and any(n == a for n, _ in p.adapters))}
            for a in adapters]
    if invalid is not None:
        status["desiredReplicas"] = old.get("desiredReplicas", 0)
        status["readyText"] = f"{ready}/-"
        wanted = [
            WantedCondition("Ready", False, "InvalidSpec", invalid),
            WantedCondition("Progressing", False, "InvalidSpec", "the spec is refused; fix it to continue"),
            WantedCondition("Degraded", True, "InvalidSpec", invalid),
        ]
    else:
        assert desired is not None
        status["desiredReplicas"] = desired
        status["readyText"] = f"{ready}/{desired}"
        wanted = _conditions(desired, ready, deployment, pods, nodes, gpu_need)
    status["conditions"] = merge_conditions(old.get("conditions"), wanted, generation, now)
    return StatusResult(status, _transition_events(old.get("conditions"), status["conditions"]))


def _conditions(desired: int, ready: int, deployment: DeploymentView | None, pods: Sequence[PodView],
                nodes: Sequence[NodeView], gpu_need: GpuNeed | None) -> list[WantedCondition]:
    replicas = deployment.replicas if deployment else 0
    updated = deployment.updated_replicas if deployment else 0
    observed = deployment.observed if deployment else False
    capacity = capacity_problem(gpu_need, nodes) if desired > 0 else None
    unschedulable = [(p.name, p.unschedulable) for p in pods if p.unschedulable is not None and not p.deleting]
    stuck = [(p.name, reason, message) for p in pods for reason, message in p.stuck]
    deadline = deployment.deadline_exceeded if deployment else None

    problem: tuple[str, str] | None = None
    if capacity:
        problem = ("InsufficientGPU", capacity)
    elif unschedulable:
        pod, msg = unschedulable[0]
        problem = ("Unschedulable", f"{len(unschedulable)} replica(s) cannot be scheduled; {pod}: {msg}")
    elif stuck:
        pod, reason, msg = stuck[0]
        problem = (reason, f"{len(stuck)} replica(s) failing; {pod}: {reason}: {msg}".rstrip(": "))
    elif deadline is not None:
        problem = ("ProgressDeadlineExceeded", deadline)

    # Ready means "serving": like a Deployment's Available, it stays True while a
    # scale-up or rollout adds replicas, so autoscaling never flaps it; Degraded says
    # when some replicas cannot come up.
    if desired == 0:
        ready_cond = WantedCondition("Ready", False, "ScaledToZero", "0 replicas requested")
    elif ready >= desired:
        ready_cond = WantedCondition("Ready", True, "AllReplicasReady", f"{ready}/{desired} replicas ready")
    elif ready > 0:
        detail = problem[1] if problem else "the others are starting"
        ready_cond = WantedCondition("Ready", True, "PartiallyReady", f"{ready}/{desired} replicas ready; {detail}")
    elif problem:
        ready_cond = WantedCondition("Ready", False, problem[0], f"{ready}/{desired} replicas ready: {problem[1]}")
    else:
        ready_cond = WantedCondition("Ready", False, "ReplicasStarting", f"{ready}/{desired} replicas ready")

    settled = observed and updated == desired and replicas == desired and ready == desired
    if settled:
        progressing = WantedCondition("Progressing", False, "Complete", f"{desired} replicas up to date and ready")
    elif not observed or updated < min(desired, replicas or desired):
        progressing = WantedCondition("Progressing", True, "RollingOut", f"{updated}/{desired} replicas updated")
    else:
        progressing = WantedCondition(
            "Progressing", True, "Scaling", f"{replicas} replicas, {ready} ready, {desired} requested"
        )

    if problem:
        degraded = WantedCondition("Degraded", True, problem[0], problem[1])
    else:
        degraded = WantedCondition("Degraded", False, "AsExpected", "no problems detected")
    return [ready_cond, progressing, degraded]


def _transition_events(old: list[dict] | None, new: list[dict]) -> list[Event]:
    events = []
    old_ready, new_ready = find(old, "Ready"), find(new, "Ready")
    old_degraded, new_degraded = find(old, "Degraded"), find(new, "Degraded")
    assert new_ready is not None and new_degraded is not None  # the reconciler always writes both
    if new_ready["status"] == "True" and (old_ready is None or old_ready.get("status") != "True"):
        events.append(Event("Normal", "Ready", new_ready["message"]))
    elif old_ready and old_ready.get("status") == "True" and new_ready["status"] != "True":
        events.append(Event("Warning" if new_degraded["status"] == "True" else "Normal", "NotReady",
                            new_ready["message"]))
    if new_degraded["status"] == "True" and (
        old_degraded is None
        or old_degraded.get("status") != "True"
        or old_degraded.get("reason") != new_degraded["reason"]
    ):
        events.append(Event("Warning", new_degraded["reason"], new_degraded["message"]))
    elif new_degraded["status"] != "True" and old_degraded and old_degraded.get("status") == "True":
        events.append(Event("Normal", "Recovered", "no longer degraded"))
    return events
