"""RoutePolicy reconciler: the whole route table, recomputed from the whole state.

The route table is global (one Envoy ingress serves every public model name, and two
policies may not claim the same one), so every relevant watch event enqueues one key,
ROUTES; the work queue collapses bursts of events into one recompute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from . import metrics
from .kube import GROUP, VERSION, Conflict, Kube, NotFound, Ref
from ..render.deployment import SELECTOR_LABEL
from ..routing.policy import PolicyResult, compute_routing, ready_endpoints
from ..routing.table import Endpoint, RouteTable
from ..status.conditions import Condition, find, merge_conditions
from ..status.modeldeployment import status_patch

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RoutePolicy"
ROUTES = "routes"  # the work-queue key of the route table


@dataclass(frozen=True)
class DataPlaneState:
    """Whether the data plane serves a given table version."""

    programmed: bool
    reason: str
    message: str


class Publisher(Protocol):
    """Where route tables go (the xDS server)."""

    def publish(self, table: RouteTable) -> str:
        """Make `table` the current one; return its version."""

    def state(self, version: str) -> DataPlaneState:
        """Whether the data plane serves `version`."""


class NoDataPlane:
    """Used when the operator runs without its xDS server (--xds-port 0)."""

    def publish(self, table: RouteTable) -> str:
        return "none"

    def state(self, version: str) -> DataPlaneState:
        return DataPlaneState(False, "NoDataPlane", "the operator runs without its xDS server (--xds-port 0)")


class XdsPublisher:
    """Route tables go to Envoy through the operator's xDS server."""

    def __init__(self, server) -> None:
        self.server = server

    def publish(self, table: RouteTable) -> str:
        return self.server.update(table)

    def state(self, version: str) -> DataPlaneState:
        nack = self.server.last_nack
        if nack is not None:
            return DataPlaneState(
                False, "Rejected", f"Envoy {nack.node_id} rejected {nack.type} version {nack.version}: {nack.error}"
            )
        envoys = self.server.nodes()
        if not envoys:
            return DataPlaneState(False, "Pending", "no Envoy is connected to the xDS server yet")
        if self.server.synced(version):
            return DataPlaneState(True, "Programmed", f"route version {version} served by {len(envoys)} Envoy(s)")
        return DataPlaneState(False, "Pending", f"waiting for {len(envoys)} Envoy(s) to apply route version {version}")


class RoutePolicyReconciler:
    def __init__(self, kube: Kube, publisher: Publisher, *, activator: Endpoint | None = None,
                 ready=None) -> None:
        self.kube = kube
        self.publisher = publisher
        self.activator = activator  # where scaled-to-zero backends are reached
        self.ready = ready  # ReadyEndpoints the activator waits on
        self._weights: dict[tuple[str, str], float] = {}
        self._loads: dict | None = None  # the backends' loads at the previous recompute

    async def reconcile(self, key: str) -> float | None:
        start = time.perf_counter()
        result = "error"
        try:
            after, result = await asyncio.to_thread(self._reconcile)
            return after
        finally:
            metrics.RECONCILES.labels(KIND, result).inc()
            metrics.RECONCILE_SECONDS.labels(KIND).observe(time.perf_counter() - start)

    def _reconcile(self) -> tuple[float | None, str]:
        policies = self.kube.list(API_VERSION, KIND)
        model_deployments = self.kube.list(API_VERSION, "ModelDeployment")
        pods = self.kube.list("v1", "Pod", label_selector=SELECTOR_LABEL)
        routing = compute_routing(policies, model_deployments, pods, self.activator, self._loads)
        self._loads = routing.loads
        if self.ready is not None:
            self.ready.update(ready_endpoints(pods))
        version = self.publisher.publish(routing.table)
        plane = self.publisher.state(version)
        self._export_weights(routing.table)

        by_ref = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in policies}
        retry = None
        for result in routing.policies:
            policy = by_ref[(result.namespace, result.name)]
            try:
                self._write_status(policy, result, plane)
            except (Conflict, NotFound):
                retry = 0.2  # changed or gone while we computed; recompute
        if not plane.programmed and plane.reason == "Pending":
            retry = retry or 5.0  # look again even if the ACK notification is missed
        return retry, "success"

    def _write_status(self, policy: dict, result: PolicyResult, plane: DataPlaneState) -> None:
        old = policy.get("status") or {}
        if result.accepted:
            programmed = Condition("Programmed", plane.programmed, plane.reason, plane.message)
        else:
            programmed = Condition("Programmed", False, "NotAccepted", "the policy is not accepted")
        status = {
            "observedGeneration": result.generation,
            "backends": result.backends,
            "conditions": merge_conditions(old.get("conditions"), [*result.conditions, programmed], result.generation),
        }
        patch = status_patch(old, status)
        if patch is None:
            return
        ref = Ref(result.namespace, result.name)
        self.kube.patch_status(API_VERSION, KIND, ref, patch, policy["metadata"]["resourceVersion"])
        for type_, reason, message in _events(old, status):
            self.kube.event(policy, type_, reason, message)

    def _export_weights(self, table: RouteTable) -> None:
        current = {(r.model, b.cluster): float(b.weight) for r in table.routes for b in r.backends}
        for key in set(self._weights) - set(current):
            metrics.ROUTE_WEIGHT.remove(*key)
        for (model, cluster), weight in current.items():
            metrics.ROUTE_WEIGHT.labels(model, cluster).set(weight)
        self._weights = current


def _events(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """Events for what a user would want to know: conditions turning bad or good,
    backends losing or regaining all their traffic."""
    events = []
    for type_ in ("Accepted", "ResolvedRefs", "Programmed"):
        before, after = find(old.get("conditions"), type_), find(new["conditions"], type_)
        if before and before.get("status") == after["status"] and before.get("reason") == after["reason"]:
            continue
        if after["status"] == "False" and after["reason"] not in ("Pending", "NotAccepted"):
            events.append(("Warning", after["reason"], after["message"]))
        elif after["status"] == "True" and before is not None and before.get("status") == "False":
            events.append(("Normal", after["reason"], after["message"]))
    old_weights = {b["modelDeployment"]: b.get("weight", 0) for b in old.get("backends") or []}
    for b in new["backends"]:
        was = old_weights.get(b["modelDeployment"])
        if was and not b["weight"]:
            events.append(("Warning", "BackendDropped", f"{b['modelDeployment']}: {b['reason']}"))
        elif was == 0 and b["weight"]:
            events.append(("Normal", "BackendRestored", f"{b['modelDeployment']} receives {b['weight']}%"))
    return events
