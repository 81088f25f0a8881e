"""ModelDeployment status: a pure function of the spec, its Deployment, pods and nodes.

Conditions:
- Ready: at least one replica serves (AllReplicasReady or PartiallyReady); False when
  none does, with the reason.
- Progressing: a rollout or a scale change is under way.
- Degraded: something keeps replicas from becoming ready (cannot be scheduled, no node
  can ever fit one, crash loop, image pull failure, invalid spec).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines.base import GPU_PRODUCT_LABEL
from ..render.deployment import selector_string
from .conditions import Condition, find, merge_conditions
# Container waiting reasons that will not clear by themselves.
STUCK_WAITING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


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


def capacity_problem(need: GpuNeed | None, nodes: list[dict]) -> str | None:
    """Why no node can ever hold a replica, or None when some node can (or we can't tell)."""
    if need is None or need.count == 0 or not nodes:
        return None
    matching = [
        n
        for n in nodes
        if need.product is None or n.get("metadata", {}).get("labels", {}).get(GPU_PRODUCT_LABEL) == need.product
    ]
    where = f"nodes labelled {GPU_PRODUCT_LABEL}={need.product}" if need.product else "nodes"
    if not matching:
        return f"each replica needs {need.count} {need.resource} on {where}, and there are no such nodes"
    largest = max(_quantity(n.get("status", {}).get("allocatable", {}).get(need.resource)) for n in matching)
    if largest >= need.count:
        return None
    return (
        f"each replica needs {need.count} {need.resource} on one node, "
        f"and the largest of the {len(matching)} {where} has {largest}"
    )


def _quantity(value) -> int:
    try:
        return int(str(value or "0"))
    except ValueError:
        return 0


def _pod_ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions") or []
    )


def _unschedulable(pods: list[dict]) -> list[tuple[str, str]]:
    out = []
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        cond = next(
            (c for c in pod.get("status", {}).get("conditions") or [] if c.get("type") == "PodScheduled"), None
        )
        if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            out.append((pod["metadata"]["name"], cond.get("message", "")))
    return out


def _stuck_containers(pods: list[dict]) -> list[tuple[str, str, str]]:
    out = []
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING_REASONS:
                out.append((pod["metadata"]["name"], waiting["reason"], waiting.get("message", "")))
    return out


def _deployment_numbers(deployment: dict | None) -> tuple[int, int, int, bool]:
    """(replicas, ready, updated, observed) of the Deployment's status."""
    if not deployment:
        return 0, 0, 0, False
    st = deployment.get("status") or {}
    observed = st.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
    return st.get("replicas", 0) or 0, st.get("readyReplicas", 0) or 0, st.get("updatedReplicas", 0) or 0, observed


def _deadline_exceeded(deployment: dict | None) -> str | None:
    for c in (deployment or {}).get("status", {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return c.get("message", "")
    return None


def model_deployment_status(
    md: dict,
    *,
    desired: int | None,
    deployment: dict | None,
    pods: list[dict],
    nodes: list[dict],
    gpu_need: GpuNeed | None,
    invalid: str | None = None,
    now: str | None = None,
) -> StatusResult:
    """The whole status for `md`, plus the Events its transitions deserve.

    `desired` is the replica count asked for (spec.replicas, later the autoscaler's);
    `invalid` is the refusal message when the spec could not be parsed.
    """
    meta = md["metadata"]
    old = md.get("status") or {}
    generation = meta.get("generation")
    replicas, ready, updated, observed = _deployment_numbers(deployment)
    # Count only pods of the current template as ready when the Deployment lags.
    ready_pods = sum(1 for p in pods if _pod_ready(p) and not p["metadata"].get("deletionTimestamp"))
    ready = min(ready, ready_pods) if deployment else 0

    status: dict = {
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": selector_string(meta["name"]),
    }
    for key in ("load", "lastScaleTime", "scaleReason"):  # owned by the autoscaler; keep
        if key in old:
            status[key] = old[key]

    if invalid is not None:
        status["desiredReplicas"] = old.get("desiredReplicas", 0)
        status["readyText"] = f"{ready}/-"
        wanted = [
            Condition("Ready", False, "InvalidSpec", invalid),
            Condition("Progressing", False, "InvalidSpec", "the spec is refused; fix it to continue"),
            Condition("Degraded", True, "InvalidSpec", invalid),
        ]
    else:
        assert desired is not None
        status["desiredReplicas"] = desired
        status["readyText"] = f"{ready}/{desired}"
        wanted = _conditions(desired, replicas, ready, updated, observed, deployment, pods, nodes, gpu_need)

    ours = {c.type for c in wanted}
    kept = [c for c in old.get("conditions") or [] if c.get("type") not in ours]  # e.g. the autoscaler's
    status["conditions"] = merge_conditions(old.get("conditions"), wanted, generation, now) + kept
    return StatusResult(status, _transition_events(old.get("conditions"), status["conditions"], ready, desired))


def _conditions(desired, replicas, ready, updated, observed, deployment, pods, nodes, gpu_need) -> list[Condition]:
    capacity = capacity_problem(gpu_need, nodes) if desired > 0 else None
    unschedulable = _unschedulable(pods)
    stuck = _stuck_containers(pods)
    deadline = _deadline_exceeded(deployment)

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
        ready_cond = Condition("Ready", False, "ScaledToZero", "0 replicas requested")
    elif ready >= desired:
        ready_cond = Condition("Ready", True, "AllReplicasReady", f"{ready}/{desired} replicas ready")
    elif ready > 0:
        detail = problem[1] if problem else "the others are starting"
        ready_cond = Condition("Ready", True, "PartiallyReady", f"{ready}/{desired} replicas ready; {detail}")
    elif problem:
        ready_cond = Condition("Ready", False, problem[0], f"{ready}/{desired} replicas ready: {problem[1]}")
    else:
        ready_cond = Condition("Ready", False, "ReplicasStarting", f"{ready}/{desired} replicas ready")

    settled = observed and updated == desired and replicas == desired and ready == desired
    if settled:
        progressing = Condition("Progressing", False, "Complete", f"{desired} replicas up to date and ready")
    elif not observed or updated < min(desired, replicas or desired):
        progressing = Condition("Progressing", True, "RollingOut", f"{updated}/{desired} replicas updated")
    else:
        progressing = Condition(
            "Progressing", True, "Scaling", f"{replicas} replicas, {ready} ready, {desired} requested"
        )

    if problem:
        degraded = Condition("Degraded", True, problem[0], problem[1])
    else:
        degraded = Condition("Degraded", False, "AsExpected", "no problems detected")
    return [ready_cond, progressing, degraded]


def _transition_events(old: list[dict] | None, new: list[dict], ready: int, desired: int | None) -> list[Event]:
    events = []
    old_ready, new_ready = find(old, "Ready"), find(new, "Ready")
    old_degraded, new_degraded = find(old, "Degraded"), find(new, "Degraded")
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


def load_patch(old: dict | None, new: dict) -> dict | None:
    """The merge patch value for status.load, or None when unchanged. A merge patch merges
    nested keys, so a signal that is gone (no TTFT sample this interval) is sent as null."""
    if (old or {}) == new:
        return None
    return {**{k: None for k in old or {} if k not in new}, **new}


def status_patch(old: dict | None, new: dict) -> dict | None:
    """The merge patch that turns status `old` into `new`, or None when they are equal
    (so an idle object is never written)."""
    old = old or {}
    if old == new:
        return None
    return {**{k: None for k in old if k not in new}, **new}
