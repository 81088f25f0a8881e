"""Writing one writer's part of a status with server-side apply, exactly once per change.

Each writer (the ModelDeployment reconciler, the autoscaler, the route reconciler)
applies only its own fields under its own field manager, and only when one of them
differs from the object's status. A write reaches the store a moment later, through
the watch; until it has, the writer reads its own last write over the store's copy,
so an event in between neither writes the same status again nor repeats an Event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..kube.client import KubeClient, NotFound
from ..kube.views import Ref

# The operator's field managers: what `kubectl get -o yaml --show-managed-fields` names
# as the owner of each field it writes.
RECONCILER = "llmfleet"  # children, ModelDeployment and RoutePolicy status, their Events
AUTOSCALER = "llmfleet-autoscaler"  # spec.replicas (scale), status.load and the scaling fields
TRAFFIC = "llmfleet-traffic"  # RoutePolicy status.traffic (controller/traffic.py)
BUDGETS = "llmfleet-budgets"  # Tenant status.budgets and BudgetExceeded (controller/budgets.py)


def overlay(status: dict[str, Any], written: dict[str, Any], dropped: Iterable[str] = ()) -> dict[str, Any]:
    """``status`` with the fields of ``written`` (conditions merged by type), without the
    fields and condition types in ``dropped``."""
    gone = set(dropped)
    out = {k: v for k, v in status.items() if k not in gone}
    out.update({k: v for k, v in written.items() if k != "conditions"})
    by_type = {c.get("type"): c for c in status.get("conditions") or [] if c.get("type") not in gone}
    by_type.update({c["type"]: c for c in written.get("conditions") or []})
    if by_type or "conditions" in status:
        out["conditions"] = list(by_type.values())
    return out


def changed_fields(current: dict[str, Any], owned: dict[str, Any]) -> list[str]:
    """The fields of ``owned`` (one writer's part of a status) that differ from the
    object's ``current`` status; conditions are compared by type, since other writers
    own the other types. Empty: nothing to write."""
    changed = []
    for key, value in owned.items():
        if key == "conditions":
            have = {c.get("type"): c for c in current.get("conditions") or []}
            if any(have.get(c["type"]) != c for c in value):
                changed.append(key)
        elif current.get(key) != value:
            changed.append(key)
    return changed


class StatusWriter:
    def __init__(self, client: KubeClient, field_manager: str) -> None:
        self.client = client
        self.field_manager = field_manager
        # ref → (the status the store held when we wrote, what we wrote, what we removed)
        self._pending: dict[Ref, tuple[dict[str, Any], dict[str, Any], list[str]]] = {}

    def current(self, ref: Ref, stored: dict[str, Any]) -> dict[str, Any]:
        """The status as it stands once our last write is counted in."""
        pending = self._pending.get(ref)
        if pending is None:
            return stored
        before, written, dropped = pending
        if stored is before or stored == before:
            return overlay(stored, written, dropped)
        del self._pending[ref]  # the store has caught up (or someone else wrote)
        return stored

    async def write(self, involved: dict[str, Any], stored: dict[str, Any], owned: dict[str, Any], *,
                    fields: Iterable[str] = (), condition_types: Iterable[str] = ()) -> bool:
        """Apply ``owned`` if it differs from the current status; True if it was written.

        ``fields`` and ``condition_types`` are everything this writer may own: one that
        is in the status but no longer in ``owned`` is a change too (the apply removes it).
        """
        meta = involved["metadata"]
        ref = (meta["namespace"], meta["name"])
        current = self.current(ref, stored)
        dropped = [f for f in fields if f in current and f not in owned]
        have = {c.get("type") for c in current.get("conditions") or []}
        keep = {c["type"] for c in owned.get("conditions") or []}
        dropped += [t for t in condition_types if t in have and t not in keep]
        if not changed_fields(current, owned) and not dropped:
            return False
        body = {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": owned}
        try:
            await self.client.apply(body, self.field_manager, subresource="status")
        except NotFound:
            self._pending.pop(ref, None)
            return False
        self._pending[ref] = (stored, owned, dropped)
        return True

    def forget(self, ref: Ref) -> None:
        self._pending.pop(ref, None)
