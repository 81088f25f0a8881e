"""The leader writes each Tenant's and RoutePolicy's budget spend into its status, where it
outlives the leader.

Spend is counted by the leader's rate-limit service (each response's tokens at the price
of the backend that answered, as Envoy reports them when the response ends). Every
``interval`` the leader writes each owner's status.budgets and its BudgetExceeded
condition under its own field manager, only when they changed, with an Event when a
period crosses its warning share or is spent. A new leader starts its counts from those
statuses (``seed``), so a budget spent stays spent across restarts (what the last few
seconds before a crash added may be lost). Every replica routes from the statuses: a
spent budget that downgrades moves traffic once its status says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .. import telemetry
from ..envoy.ratelimit import RateLimitService
from ..kube.client import ApiError, KubeClient
from ..kube.store import Store
from ..kube.views import RoutePolicyView, TenantView
from ..routing.budgets import budget_report, policy_subject
from ..routing.ratelimit import Spend
from ..routing.tenants import client_name
from ..status.conditions import merge_conditions, parse_rfc3339
from .statuswriter import BUDGETS as FIELD_MANAGER
from .statuswriter import StatusWriter

log = logging.getLogger(__name__)


Owner = TenantView | RoutePolicyView


def subject(owner: Owner) -> str:
    """The name the rate-limit service counts the owner's spend under."""
    if isinstance(owner, TenantView):
        return client_name(owner.namespace, owner.name)
    return policy_subject(owner.namespace, owner.name)


class BudgetReporter:
    def __init__(self, client: KubeClient, store: Store, service: RateLimitService, *, interval: float) -> None:
        self.client, self.store, self.service, self.interval = client, store, service, interval
        # One writer per kind: a Tenant and a RoutePolicy may share a namespace and name.
        self.status = {kind: StatusWriter(client, FIELD_MANAGER) for kind in (TenantView.KIND, RoutePolicyView.KIND)}
        self._used: dict[str, dict[str, float]] = {}  # subject → period → share used when last reported
        self._task: asyncio.Task[None] | None = None
        self._exported: set[tuple[str, str, str]] = set()  # (kind, namespace/name, period) of the gauges

    def _owners(self) -> list[Owner]:
        return [*self.store.tenants.values(), *self.store.route_policies.values()]

    def seed(self) -> None:
        """Start counting from what the owners' statuses say was spent this period."""
        now = time.time()
        with self.service.lock:
            for owner in self._owners():
                for row in owner.status.get("budgets") or []:
                    try:
                        spend = Spend(parse_rfc3339(row["windowStart"]), float(row.get("spentDollars") or 0),
                                      int(row.get("spentTokens") or 0))
                    except (KeyError, TypeError, ValueError):
                        continue
                    self.service.limiter.seed(subject(owner), row["period"], spend, now)

    def start(self) -> None:
        self.seed()
        self._task = asyncio.create_task(self._run(), name="budgets")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # one bad round must not end the reporting
                log.exception("writing the budgets failed")
            await asyncio.sleep(self.interval)

    async def round(self) -> None:
        now = time.time()
        exported: set[tuple[str, str, str]] = set()
        for owner in self._owners():
            name = subject(owner)
            with self.service.lock:
                rows = [(b, Spend(s.window, s.dollars, s.tokens)) for b, s in self.service.limiter.spending(name, now)]
            for budget, spend in rows:
                labels = (owner.KIND, f"{owner.namespace}/{owner.name}", budget.period)
                telemetry.BUDGET_USED.labels(*labels).set(spend.used(budget))
                telemetry.BUDGET_WARN.labels(*labels).set(budget.warn_percent / 100)
                exported.add(labels)
            if not rows and not owner.status.get("budgets"):
                continue
            report = budget_report(rows, self._used.get(name, {}))
            writer = self.status[owner.KIND]
            current = writer.current(owner.ref, owner.status)
            owned = {"budgets": report.budgets,
                     "conditions": merge_conditions(current.get("conditions"), [report.exceeded], owner.generation)}
            try:
                await writer.write(owner.involved(), owner.status, owned)
                for type_, reason, message in report.events:
                    await self.client.event(owner.involved(), type_, reason, message, FIELD_MANAGER)
            except ApiError as exc:
                log.warning("could not write the budgets of %s %s/%s: %s", owner.KIND, owner.namespace, owner.name,
                            exc)
                continue
            self._used[name] = {b.period: s.used(b) for b, s in rows}
        for gauge in (telemetry.BUDGET_USED, telemetry.BUDGET_WARN):
            for labels in self._exported - exported:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._exported = exported
