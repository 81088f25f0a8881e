"""RoutePolicy reconciler: the whole route table, recomputed from the store.

The route table is global (one Envoy ingress serves every public model name, and two
policies may not claim the same one), so every relevant change enqueues one key,
ROUTES; the work queue collapses bursts of changes into one recompute, and recomputes
are at least MIN_INTERVAL apart. Each policy's status is its reconciler-owned part
(observedGeneration, backends and conditions), applied only when it changes.

Programmed says whether every connected Envoy serves the policy's current route: a
policy whose route did not change in a new table version stays Programmed while
Envoy takes the new version, so one replica becoming ready does not flip every
policy's status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import telemetry
from ..api.models import backend_key
from ..envoy.xds import XdsServer
from ..kube.client import KubeClient
from ..kube.store import Store
from ..kube.views import Ref, TenantView, XdsReportView
from ..routing.policy import PolicyResult, compute_routing, ready_endpoints
from ..routing.table import Endpoint, Route, RouteTable
from ..routing.tenants import TenantResult, compute_tenants
from ..status.conditions import WantedCondition, find, merge_conditions
from .activator import ReadyEndpoints
from .statuswriter import RECONCILER as FIELD_MANAGER
from .statuswriter import StatusWriter

log = logging.getLogger(__name__)
KIND = "RoutePolicy"
ROUTES = "routes"  # the work-queue key of the route table
# How long after the xDS server starts an absent Envoy means "not reconnected yet"
# rather than "none": Envoys retry their ADS stream with a back-off of a few seconds.
# Meanwhile Programmed keeps what it said, so a restart does not flip it.
RECONNECT_GRACE_SECONDS = 30.0
MIN_INTERVAL = 0.05  # seconds between recomputes: a burst of changes becomes one table


@dataclass(frozen=True)
class DataPlaneState:
    """Whether the data plane serves a given table version (None: cannot tell yet)."""

    programmed: bool | None
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
        return "0"

    def state(self, version: str) -> DataPlaneState:
        return DataPlaneState(False, "NoDataPlane", "the operator runs without its xDS server (--xds-port 0)")


class XdsPublisher:
    """Route tables go to Envoy through the operator's xDS server; what Envoys run is
    known from this server and from the other replicas' reports."""

    def __init__(self, server: XdsServer, reports: Callable[[], Iterable[XdsReportView]] = tuple,
                 replica: str = "") -> None:
        self.server = server
        self.reports = reports  # the replicas' reports (this one's own included, and skipped)
        self.replica = replica

    def publish(self, table: RouteTable) -> str:
        return str(self.server.update(table))

    def state(self, version: str) -> DataPlaneState:
        envoys = self.server.node_versions()  # this replica's are the freshest
        nack = str(self.server.last_nack) if self.server.last_nack is not None else ""
        for report in self.reports():
            if report.replica != self.replica:
                for node, running in report.envoys:
                    envoys.setdefault(node, running)
                nack = nack or report.nack
        if nack:
            return DataPlaneState(False, "Rejected", nack)
        if not envoys:
            started = self.server.started
            if started is not None and time.monotonic() - started < RECONNECT_GRACE_SECONDS:
                return DataPlaneState(None, "Pending", "waiting for Envoys to reconnect to the xDS server")
            return DataPlaneState(False, "Pending", "no Envoy is connected to the xDS server yet")
        # Versions are content hashes, the same in every replica; this server's history
        # says which is newer. A version it never served (another replica's, computed
        # from a moment this one skipped) counts as not yet: the next table settles it.
        needed = self.server.generation(version)
        synced = [v for v in envoys.values() if v]  # "": connected, first sync under way
        if needed is not None and all((g := self.server.generation(v)) is not None and g >= needed
                                      for v in synced):
            if len(synced) < len(envoys):
                # An Envoy that has just (re)connected keeps serving what it had until its
                # first sync, a second later: not known yet, rather than behind.
                return DataPlaneState(None, "Pending", "an Envoy that just connected is taking the route")
            # No count of Envoys here: an Envoy coming or going would rewrite every
            # policy's status (llmfleet_xds_connected_envoys counts them).
            return DataPlaneState(True, "Programmed", "every connected Envoy serves the route")
        return DataPlaneState(False, "Pending", "waiting for the connected Envoys to take the route")


def route_facts(route: Route, table: RouteTable) -> tuple[Any, ...]:
    """What Envoy must serve for one policy: its route and the models its clusters serve
    (endpoints come and go through EDS without reprogramming the route)."""
    names = {b.cluster for b in route.backends} | {b.cluster for r in route.rules for b in r.backends}
    served = {n: c.served_model for n in names if (c := table.cluster(n)) is not None}
    return (route, tuple(sorted(served.items())))


class RoutePolicyReconciler:
    def __init__(self, client: KubeClient, store: Store, publisher: Publisher, *,
                 activator: Endpoint | None = None, ready: ReadyEndpoints | None = None,
                 writes: bool = True, rate_limit_service: Callable[[], Endpoint | None] = lambda: None) -> None:
        self.client = client
        self.writes = writes  # whether this replica writes status and Events (it leads)
        self.store = store
        self.publisher = publisher
        self.activator = activator  # where scaled-to-zero backends are reached
        self.ready = ready  # ReadyEndpoints the activator waits on
        self.rate_limit_service = rate_limit_service  # where Envoy asks for tenants' rate limits (the leader)
        self.status = StatusWriter(client, FIELD_MANAGER)
        self.tenant_status = StatusWriter(client, FIELD_MANAGER)  # its own: a Tenant may share a policy's name
        self._tenants: set[Ref] = set()
        self._weights: dict[tuple[str, str], float] = {}
        self._loads: dict | None = None  # the backends' loads at the previous recompute
        self._facts: dict[str, tuple[tuple[Any, ...], str]] = {}  # model → (route facts, version they came in)
        self._policies: set[Ref] = set()
        self._last = 0.0

    async def reconcile(self, key: str) -> float | None:
        await asyncio.sleep(max(0.0, self._last + MIN_INTERVAL - time.monotonic()))
        self._last = time.monotonic()
        start = time.perf_counter()
        result = "error"
        try:
            after, result = await self._reconcile()
            return after
        finally:
            telemetry.RECONCILES.labels(KIND, result).inc()
            telemetry.RECONCILE_SECONDS.labels(KIND).observe(time.perf_counter() - start)

    async def _reconcile(self) -> tuple[float | None, str]:
        if not self.store.synced:
            return None, "waiting"  # never publish a table from half the cluster
        # Snapshots taken on the event loop; the computation runs in a thread.
        policies = self.store.route_policies.values()
        mds = self.store.model_deployments.values()
        endpoints = ready_endpoints(self.store.pods.values())
        tenants = self.store.tenants.values()
        now = time.time()
        routing = await asyncio.to_thread(compute_routing, policies, mds, endpoints, self.activator, self._loads,
                                          now=now)
        self._loads = routing.loads
        access, tenant_results = compute_tenants(tenants, self.store.api_keys.values(), routing.table.models, now)
        table = dataclasses.replace(routing.table, tenants=access, rate_limit_service=self.rate_limit_service())
        if self.ready is not None:
            self.ready.update(endpoints)
        version = await asyncio.to_thread(self.publisher.publish, table)
        self._remember(table, version)
        self._export_weights(table)
        if not self.writes:
            return None, "success"  # a follower: it serves the table; the leader says so
        await self._write_tenants(tenants, tenant_results)

        by_ref = {p.ref: p for p in policies}
        retry = None
        for result in routing.policies:
            policy = by_ref[(result.namespace, result.name)]
            plane = self._plane(result, version)
            owned = self._owned(policy.status, result, plane)
            current = self.status.current(policy.ref, policy.status)
            if await self.status.write(policy.involved(), policy.status, owned):
                for type_, reason, message in _events(current, owned):
                    await self.client.event(policy.involved(), type_, reason, message, FIELD_MANAGER)
            if result.accepted and not plane.programmed and plane.reason == "Pending":
                retry = 5.0  # look again even if the ACK notification is missed
        for ref in self._policies - set(by_ref):
            self.status.forget(ref)
        self._policies = set(by_ref)
        return retry, "success"

    async def _write_tenants(self, tenants: list[TenantView], results: list[TenantResult]) -> None:
        by_ref = {t.ref: t for t in tenants}
        for result in results:
            tenant = by_ref[(result.namespace, result.name)]
            current = self.tenant_status.current(tenant.ref, tenant.status)
            owned = {"observedGeneration": result.generation, "keys": result.keys,
                     "conditions": merge_conditions(current.get("conditions"), [result.ready], result.generation)}
            if await self.tenant_status.write(tenant.involved(), tenant.status, owned):
                for type_, reason, message in _condition_events(current, owned, ("Ready",)):
                    await self.client.event(tenant.involved(), type_, reason, message, FIELD_MANAGER)
        for ref in self._tenants - set(by_ref):
            self.tenant_status.forget(ref)
        self._tenants = set(by_ref)

    def _remember(self, table: RouteTable, version: str) -> None:
        facts = {route.model: route_facts(route, table) for route in table.routes}
        self._facts = {model: (f, self._facts[model][1] if model in self._facts and self._facts[model][0] == f
                               else version) for model, f in facts.items()}

    def _plane(self, result: PolicyResult, version: str) -> DataPlaneState:
        """Whether Envoy serves the version in which this policy's route last changed."""
        facts = self._facts.get(result.model or "")
        return self.publisher.state(facts[1] if facts is not None else version)

    def _owned(self, old: dict[str, Any], result: PolicyResult, plane: DataPlaneState) -> dict[str, Any]:
        kept = find(old.get("conditions"), "Programmed")
        if result.accepted and plane.programmed is None and kept is not None:
            # Unknown for now (Envoys reconnecting): keep what was said, transition time included.
            programmed = WantedCondition("Programmed", kept.get("status") == "True", kept.get("reason") or "Pending",
                                         kept.get("message") or "")
        elif result.accepted:
            programmed = WantedCondition("Programmed", bool(plane.programmed), plane.reason, plane.message)
        else:
            programmed = WantedCondition("Programmed", False, "NotAccepted", "the policy is not accepted")
        return {
            "observedGeneration": result.generation,
            "backends": result.backends,
            "conditions": merge_conditions(old.get("conditions"), [*result.conditions, programmed], result.generation),
        }

    def _export_weights(self, table: RouteTable) -> None:
        current = {(r.model, b.cluster): float(b.weight) for r in table.routes for b in r.backends}
        for key in set(self._weights) - set(current):
            telemetry.ROUTE_WEIGHT.remove(*key)
        for (model, cluster), weight in current.items():
            telemetry.ROUTE_WEIGHT.labels(model, cluster).set(weight)
        self._weights = current


def _condition_events(old: dict[str, Any], new: dict[str, Any],
                      types: Iterable[str]) -> list[tuple[str, str, str]]:
    """Events for conditions turning bad (a new reason too) or good again."""
    events = []
    for type_ in types:
        before, after = find(old.get("conditions"), type_), find(new["conditions"], type_)
        if after is None or (before and before.get("status") == after["status"]
                             and before.get("reason") == after["reason"]):
            continue
        if after["status"] == "False" and after["reason"] not in ("Pending", "NotAccepted"):
            events.append(("Warning", after["reason"], after["message"]))
        elif after["status"] == "True" and before is not None and before.get("status") == "False":
            events.append(("Normal", after["reason"], after["message"]))
    return events


def _events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Events for what a user would want to know: conditions turning bad or good,
    backends losing or regaining all their traffic."""
    events = _condition_events(old, new, ("Accepted", "ResolvedRefs", "Programmed"))
    old_weights = {backend_key(b["modelDeployment"], b.get("adapter")): b.get("weight", 0)
                   for b in old.get("backends") or []}
    for b in new["backends"]:
        key = backend_key(b["modelDeployment"], b.get("adapter"))
        was = old_weights.get(key)
        if was and not b["weight"]:
            events.append(("Warning", "BackendDropped", f"{key}: {b['reason']}"))
        elif was == 0 and b["weight"]:
            events.append(("Normal", "BackendRestored", f"{key} receives {b['weight']}%"))
    return events
