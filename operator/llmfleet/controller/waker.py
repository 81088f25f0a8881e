"""Waking a ModelDeployment that scaled to zero (for the activator)."""

from __future__ import annotations

import asyncio
import logging
import time

from .kube import GROUP, VERSION, Kube, NotFound, Ref

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"


class Waker:
    """Scales a ModelDeployment at 0 to max(1, minReplicas) through the scale subresource,
    once per burst of requests, and remembers when, so the autoscaler counts the wake
    as activity and does not put the model straight back to sleep."""

    def __init__(self, kube: Kube, *, debounce_seconds: float = 5.0) -> None:
        self.kube = kube
        self.debounce = debounce_seconds
        self.woken_at: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if time.monotonic() - self.woken_at.get(key, -1e9) < self.debounce:
                return
            await asyncio.to_thread(self._wake, Ref(namespace, name))
            self.woken_at[key] = time.monotonic()

    def _wake(self, ref: Ref) -> None:
        try:
            md = self.kube.get(API_VERSION, "ModelDeployment", ref)
        except NotFound:
            return
        spec = md.get("spec") or {}
        if spec.get("replicas", 1) > 0:
            return
        replicas = max(1, (spec.get("autoscaling") or {}).get("minReplicas", 1))
        self.kube.scale(API_VERSION, "ModelDeployment", ref, replicas)
        self.kube.event(md, "Normal", "ScaledUp", f"0→{replicas}: a request arrived through the activator")
        log.info("%s: woken to %d replica(s) by a request", ref, replicas)
