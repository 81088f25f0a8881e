"""The autoscaling loop: scrape every serving replica, decide, scale, write status.

Each interval it reads the ModelDeployments and their pods from the store, scrapes the
serving replicas' /metrics (metrics/scrape.py) and, for each ModelDeployment, writes
its part of the status with server-side apply under its own field manager
(``llmfleet-autoscaler``): ``load``, and with spec.autoscaling the pure scaler's
decision (autoscale/scaler.py) as ``scaleReason``, ``lastScaleTime`` and the
ScalingLimited condition; a changed count goes through the replica writer.

``status.load`` also carries ``capacityTokensPerSecond``, the tokens/s one replica
serves at the target, learned here (signals/values.learn_capacity) and kept while the
load is too light to measure it: cost routing fills backends up to it.

``status.load`` is for people and for load-aware routing, not a live feed: it is
written when a signal moves by more than LOAD_CHANGE (or appears or goes), and
otherwise refreshed at most every LOAD_REFRESH_SECONDS, so hundreds of models under
steady load do not turn into a stream of status writes and recomputes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import httpx

from .. import telemetry
from ..autoscale.scaler import Knobs, Observation, ScalerState, ScalingPolicy, decide
from ..kube.client import KubeClient, NotFound
from ..kube.store import Store
from ..kube.views import ModelDeploymentView, PodView, Ref, RoutePolicyView
from ..signals.scrape import Scraper, ScrapeTarget
from ..signals.values import ModelLoad, learn_capacity
from ..status.conditions import WantedCondition, merge_conditions, now_rfc3339
from .replicas import ReplicaWriter
from .statuswriter import AUTOSCALER as FIELD_MANAGER
from .statuswriter import StatusWriter
from .waker import Waker

log = logging.getLogger(__name__)
WAKE_GRACE_SECONDS = 30.0  # a wake counts as activity this long
LOAD_CHANGE = 0.10  # a relative change of a load signal worth writing at once
LOAD_FLOOR = 0.05  # changes smaller than this (near zero) never count
LOAD_REFRESH_SECONDS = 60.0  # smaller changes are written at most this often
OWNED_FIELDS = ("load", "scaleReason", "lastScaleTime")
OWNED_CONDITIONS = ("ScalingLimited",)


def load_moved(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether status.load ``new`` says something ``old`` does not (sampleTime aside)."""
    if not old:
        return True
    keys = (set(old) | set(new)) - {"sampleTime"}
    for key in keys:
        a, b = old.get(key), new.get(key)
        if (a is None) != (b is None):
            return True
        if a is None or b is None:
            continue
        if abs(float(b) - float(a)) > max(LOAD_CHANGE * abs(float(a)), LOAD_FLOOR):
            return True
    return False


def routed_demand(policies: Iterable[RoutePolicyView]) -> dict[Ref, float]:
    """Tokens/s cost routing wants each ModelDeployment to carry, summed over the
    policies' status (``backends[].demandTokensPerSecond``, written by the leader)."""
    out: dict[Ref, float] = {}
    for rp in policies:
        for row in rp.status.get("backends") or []:
            if (demand := row.get("demandTokensPerSecond")) and row.get("modelDeployment"):
                key = (rp.namespace, row["modelDeployment"])
                out[key] = out.get(key, 0.0) + float(demand)
    return out


class StartupTimes:
    """How long a ModelDeployment's replicas take to get ready, from its own pods.

    Each pod is measured once, the first time it is seen ready (a later Ready flip
    after a restart would measure its run time instead); the typical time is the
    median of the last ``keep``.
    """

    def __init__(self, keep: int = 10) -> None:
        self.keep = keep
        self._seen: dict[Ref, dict[str, float]] = {}

    def observe(self, key: Ref, pods: Sequence[PodView]) -> float | None:
        seen = self._seen.setdefault(key, {})
        for pod in pods:
            if pod.uid and pod.uid not in seen and (seconds := pod.startup_seconds) is not None:
                seen[pod.uid] = seconds
                while len(seen) > self.keep:
                    del seen[next(iter(seen))]
        return statistics.median(seen.values()) if seen else None

    def forget(self, key: Ref) -> None:
        self._seen.pop(key, None)


class Autoscaler:
    def __init__(self, client: KubeClient, store: Store, replicas: ReplicaWriter, *, interval: float = 2.0,
                 waker: Waker | None = None, scrape_timeout: float = 1.0,
                 knobs: Knobs | None = None) -> None:
        self.store = store
        self.replicas = replicas
        self.status = StatusWriter(client, FIELD_MANAGER)
        self.interval = interval
        self.knobs: Knobs = knobs or {}  # ScalingPolicy fields that are not in the CRD (operator flags)
        self.startups = StartupTimes()
        self.waker = waker
        # trust_env=False: pod IPs are scraped directly, never through an environment proxy.
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), trust_env=False)
        self.scraper = Scraper(self.http, timeout=scrape_timeout)
        self.states: dict[Ref, ScalerState] = {}
        self.load_written_at: dict[Ref, float] = {}
        self.capacities: dict[Ref, float] = {}  # tokens/s per replica at the target (status.load)
        self.routed: dict[Ref, float] = {}  # tokens/s cost routing wants each to carry (this round)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.http.aclose()

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaling round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - start)))

    async def round(self) -> None:
        mds = [md for md in self.store.model_deployments.values() if md.spec is not None and not md.deleting]
        pods = {md.ref: self.store.pods_of(md.ref) for md in mds}
        targets: dict[Hashable, list[ScrapeTarget]] = {
            md.ref: [ScrapeTarget.for_pod((md.ref, p.name), p.ip, md.spec.engine.kind.value, p.port)
                     for p in pods[md.ref] if p.serving and p.ip]
            for md in mds if md.spec is not None
        }
        loads = await self.scraper.round(targets)
        for error in self.scraper.errors.values():
            telemetry.SCRAPE_ERRORS.labels(error.reason).inc()
        now = time.monotonic()
        for key in (set(self.states) | set(self.capacities) | set(self.load_written_at)) - set(targets):
            self.states.pop(key, None)
            self.startups.forget(key)
            self.load_written_at.pop(key, None)
            self.capacities.pop(key, None)
            self.status.forget(key)
            for gauge in (telemetry.QUEUED, telemetry.RUNNING):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
        self.routed = routed_demand(self.store.route_policies.values())
        await asyncio.gather(*(self._one(md, pods[md.ref], loads.get(md.ref), now) for md in mds))

    async def _one(self, md: ModelDeploymentView, pods: list[PodView], load: Any, now: float) -> None:
        assert md.spec is not None
        current = self.status.current(md.ref, md.status)
        owned: dict[str, Any] = {}
        news = False  # whether this round's load is worth writing
        if load is not None and load.sampled_replicas:
            telemetry.QUEUED.labels(*md.ref).set(load.queue_depth * load.sampled_replicas)
            telemetry.RUNNING.labels(*md.ref).set(load.running_requests * load.sampled_replicas)
        elif not any(p.serving for p in pods):
            telemetry.QUEUED.labels(*md.ref).set(0)  # nothing serves (scaled to zero, starting)
            telemetry.RUNNING.labels(*md.ref).set(0)
        if load is not None and load.sampled_replicas:
            new = load.status(self._capacity(md, load, current.get("load")))
            written = self.load_written_at.get(md.ref)
            news = load_moved(current.get("load"), new) or written is None or now - written >= LOAD_REFRESH_SECONDS
            if news:
                owned["load"] = new
                self.load_written_at[md.ref] = now
            else:
                owned["load"] = current.get("load")
        elif any(p.serving for p in pods) and current.get("load"):
            owned["load"] = current["load"]  # nothing scraped this round: keep what was seen
        # else: nothing serves, so there is no load to show (the field goes)

        if md.spec.autoscaling is not None:
            self._decide(md, pods, load, now, current, owned, news)
            if "pending_scale" in owned:
                desired, event = owned.pop("pending_scale")
                try:
                    await self.replicas.scale(md, desired, event.reason, event.message)
                except NotFound:
                    return
                owned["lastScaleTime"] = now_rfc3339()
        owned = {k: v for k, v in owned.items() if v is not None}
        await self.status.write(md.involved(), md.status, owned, fields=OWNED_FIELDS,
                                condition_types=OWNED_CONDITIONS)

    def _capacity(self, md: ModelDeploymentView, load: ModelLoad, written: dict[str, Any] | None) -> float | None:
        """The replicas' learned capacity at their target, seeded from status after a restart."""
        previous = self.capacities.get(md.ref)
        if previous is None and written:
            previous = written.get("capacityTokensPerSecond")
        target = md.target
        capacity = learn_capacity(previous, load, md.metric, target) if target else previous
        if capacity is not None:
            self.capacities[md.ref] = capacity
        return capacity

    def _routed_load(self, md: ModelDeploymentView) -> float | None:
        """Cost routing's demand for it in replicas' worth at the target, once its capacity is known."""
        demand, capacity = self.routed.get(md.ref), self.capacities.get(md.ref)
        return demand / capacity if demand and capacity else None

    def _decide(self, md: ModelDeploymentView, pods: list[PodView], load: Any, now: float,
                current: dict[str, Any], owned: dict[str, Any], news: bool) -> None:
        assert md.spec is not None and md.spec.autoscaling is not None
        woken = self.waker.woken_at.get(md.ref) if self.waker else None
        obs = Observation(
            now=now,
            replicas=md.spec.replicas,
            ready_replicas=sum(1 for p in pods if p.serving),
            starting_replicas=sum(1 for p in pods if p.starting),
            load=load,
            wake=woken is not None and now - woken < WAKE_GRACE_SECONDS,
            startup_seconds=self.startups.observe(md.ref, pods),
            routed_load=self._routed_load(md),
        )
        policy = ScalingPolicy.from_autoscaling(md.spec.autoscaling, **self.knobs)
        decision = decide(policy, obs, self.states.get(md.ref))
        self.states[md.ref] = decision.state
        telemetry.DESIRED_REPLICAS.labels(*md.ref).set(decision.desired)
        owned["lastScaleTime"] = current.get("lastScaleTime")
        kept = {c.get("type"): c for c in current.get("conditions") or []}.get("ScalingLimited")
        limited = (
            WantedCondition("ScalingLimited", True, decision.limited_reason or "Limited", decision.limited)
            if decision.limited else
            WantedCondition("ScalingLimited", False, "DesiredWithinRange", "the desired count is within the bounds")
        )
        same_limit = kept is not None and kept.get("status") == limited.status_text \
            and kept.get("reason") == limited.reason
        stale = load is None or not load.fresh
        if not decision.changed and current.get("scaleReason") and (stale or (not news and same_limit)):
            # Nothing new to say: without a fresh signal (e.g. the first round after an
            # operator restart), or with a load too close to the last one written (the
            # reason quotes it). Keep what status says.
            owned["scaleReason"] = current.get("scaleReason")
            if kept:
                owned["conditions"] = [kept]
            return
        owned["scaleReason"] = decision.reason
        owned["conditions"] = merge_conditions(current.get("conditions"), [limited], md.generation)
        if decision.changed and (event := decision.event) is not None:
            owned["pending_scale"] = (decision.desired, event)
