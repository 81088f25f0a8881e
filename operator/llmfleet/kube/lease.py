"""Leader election with a coordination.k8s.io/v1 Lease, as Kubernetes controllers do it.

Every replica is a candidate. The one whose identity the Lease holds leads and renews
it every ``retry_period``; the others read it as often and take it over once it has
gone unrenewed for ``duration``, measured on their own clock from when they last saw
it change (never from the timestamps in it, so clock skew between nodes does not
matter). A leader that cannot renew for ``renew_deadline`` (shorter than
``duration``) steps down before anyone else may take over, so two replicas never
believe they lead at once while their clocks run at the same rate. Writes go with
the Lease's resourceVersion: of two candidates, one wins.

A leader that stops cleanly releases the Lease (no holder, duration 1 s), so a
rollout hands over within one ``retry_period`` instead of a whole ``duration``.
These are client-go's semantics and defaults (15 s / 10 s / 2 s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .client import ApiError, Conflict, KubeClient, NotFound
from .resources import LEASES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTimings:
    duration: float = 15.0  # how long a Lease holds without renewal
    renew_deadline: float = 10.0  # a leader that cannot renew for this long steps down
    retry_period: float = 2.0  # between renewals (leader) and attempts (candidates)

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError("lease timings must satisfy 0 < retry period < renew deadline < duration, "
                             f"not {self.retry_period} / {self.renew_deadline} / {self.duration}")


def micro_time(when: dt.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# On the Lease: where its holder serves what only the leader may (Envoy's rate-limit service).
ADDRESS_ANNOTATION = "llmfleet.io/leader-address"


class LeaderElector:
    """Campaigns for one Lease; calls ``on_started`` on winning it and ``on_stopped`` on
    losing it (then campaigns again)."""

    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, *,
                 on_started: Callable[[], Awaitable[None]], on_stopped: Callable[[], Awaitable[None]],
                 timings: LeaseTimings | None = None, address: str | None = None,
                 on_holder: Callable[[], None] | None = None) -> None:
        """``address``: where this replica serves what only the leader may (published on
        the Lease while it leads); ``on_holder``: called when the leader or its address changes."""
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.address, self.on_holder = address, on_holder
        self.holder_address: str | None = None  # the leader's address, as last seen
        self.owner: dict[str, Any] | None = None  # an ownerReference for the Lease it creates
        self.on_started, self.on_stopped = on_started, on_stopped
        self.timings = timings or LeaseTimings()
        self.leading = False
        self.holder: str | None = None  # who holds the Lease, as last seen
        self._observed: tuple[Any, ...] | None = None  # the Lease's spec as last seen ...
        self._observed_at = 0.0  # ... and when (monotonic) it was first seen so
        self._lease: dict[str, Any] | None = None

    async def run(self) -> None:
        t = self.timings
        while True:
            await self._campaign()
            self.leading = True
            log.info("leading: this replica (%s) holds Lease %s/%s", self.identity, self.namespace, self.name)
            await self.on_started()
            renewed = time.monotonic()
            while True:
                await asyncio.sleep(t.retry_period)
                left = renewed + t.renew_deadline - time.monotonic()
                if left > 0 and await self._attempt(left):
                    renewed = time.monotonic()
                    continue
                if time.monotonic() - renewed >= t.renew_deadline or self.holder != self.identity:
                    break
            self.leading = False
            log.error("lost Lease %s/%s (held by %s); this replica stops writing and campaigns again",
                      self.namespace, self.name, self.holder or "nobody known")
            await self.on_stopped()

    async def _campaign(self) -> None:
        """Return once this replica holds the Lease."""
        t = self.timings
        while True:
            if await self._attempt(t.renew_deadline):
                return
            await asyncio.sleep(t.retry_period * random.uniform(1.0, 1.2))  # client-go's jitter

    async def release(self) -> None:
        """Give the Lease up (on a clean stop), so another replica leads at once."""
        if not self.leading or self._lease is None:
            return
        self.leading = False
        lease = dict(self._lease)
        lease["spec"] = {"leaseDurationSeconds": 1, "renewTime": micro_time(), "acquireTime": micro_time(),
                         "leaseTransitions": (lease.get("spec") or {}).get("leaseTransitions", 0)}
        try:
            await asyncio.wait_for(self.client.replace(lease), self.timings.retry_period)
            log.info("released Lease %s/%s", self.namespace, self.name)
        except (ApiError, TimeoutError) as exc:
            log.warning("could not release Lease %s/%s (%s); it expires in %.0f s", self.namespace, self.name,
                        exc, self.timings.duration)

    async def _attempt(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self._try_acquire_or_renew(), timeout)
        except (ApiError, TimeoutError) as exc:
            log.debug("Lease %s/%s: %s", self.namespace, self.name, exc or type(exc).__name__)
            return False

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = await self.client.get(LEASES, self.name, self.namespace)
        except NotFound:
            meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
            if self.owner is not None:
                meta["ownerReferences"] = [self.owner]
            if self.address:
                meta["annotations"] = {ADDRESS_ANNOTATION: self.address}
            body = {"apiVersion": LEASES.api_version, "kind": LEASES.kind, "metadata": meta,
                    "spec": {"holderIdentity": self.identity,
                             "leaseDurationSeconds": round(self.timings.duration),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self._lease = await self.client.create(body)
            except Conflict:  # another candidate created it first
                return False
            self._saw(self._lease)
            return True
        self._saw(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds") or self.timings.duration
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False
        mine = holder == self.identity
        if self.address:
            lease.setdefault("metadata", {}).setdefault("annotations", {})[ADDRESS_ANNOTATION] = self.address
        lease["spec"] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": round(self.timings.duration),
            "acquireTime": spec.get("acquireTime") if mine else now,
            "renewTime": now,
            "leaseTransitions": (spec.get("leaseTransitions") or 0) + (0 if mine else 1),
        }
        try:
            self._lease = await self.client.replace(lease)  # with the resourceVersion just read
        except Conflict:
            return False
        self._saw(self._lease)
        return True

    def _saw(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        self.holder = spec.get("holderIdentity") or None
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        address = annotations.get(ADDRESS_ANNOTATION) if self.holder else None
        if address != self.holder_address:
            self.holder_address = address
            if self.on_holder is not None:
                self.on_holder()
