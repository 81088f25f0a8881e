"""Waking a ModelDeployment that scaled to zero (for the activator)."""

from __future__ import annotations

import asyncio
import time

from ..kube.client import NotFound
from ..kube.store import Store
from ..kube.views import Ref
from .replicas import ReplicaWriter


class Waker:
    """Scales a ModelDeployment at 0 to max(1, minReplicas), once per burst of requests,
    and remembers when (as it does any rise from 0 the store shows), so the autoscaler
    counts the wake as activity and does not put the model straight back to sleep."""

    def __init__(self, store: Store, replicas: ReplicaWriter, *, debounce_seconds: float = 5.0) -> None:
        self.store = store
        self.replicas = replicas
        self.debounce = debounce_seconds
        self.woken_at: dict[Ref, float] = {}
        self._locks: dict[Ref, asyncio.Lock] = {}

    async def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if time.monotonic() - self.woken_at.get(key, -1e9) < self.debounce:
                return
            md = self.store.model_deployments.get(key)
            if md is None or md.spec is None or md.spec.replicas > 0:
                return
            auto = md.spec.autoscaling
            replicas = max(1, auto.min_replicas if auto else 1)
            try:
                await self.replicas.scale_from_zero(md, replicas, "ScaledUp",
                                                    f"0→{replicas}: a request arrived through the activator")
            except NotFound:
                return
            self.woken_at[key] = time.monotonic()

    def saw_wake(self, key: Ref) -> None:
        """A ModelDeployment went up from 0, by this replica or another one's activator
        (or by hand): the autoscaler counts it as activity."""
        self.woken_at[key] = max(self.woken_at.get(key, -1e9), time.monotonic())
