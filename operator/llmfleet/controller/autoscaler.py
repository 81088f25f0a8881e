"""The autoscaling loop: scrape every ready replica, write status.load, decide, scale.

Each interval: list ModelDeployments and their pods, scrape the ready replicas'
/metrics (metrics/scrape.py), and for every ModelDeployment write its load to
status.load; for those with spec.autoscaling, ask the pure scaler (autoscale/scaler.py)
for the replica count and write it through the scale subresource, with the reason in
status.scaleReason, lastScaleTime, the ScalingLimited condition and an Event per change.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

import httpx

from . import metrics
from .kube import GROUP, VERSION, Conflict, Kube, NotFound, Ref
from ..api.models import SpecError, parse_model_deployment_spec
from ..autoscale.scaler import Observation, ScalerState, ScalingPolicy, decide
from ..metrics.scrape import Scraper, ScrapeTarget
from ..render.deployment import SELECTOR_LABEL
from ..routing.policy import server_port
from ..status.conditions import Condition, merge_conditions, now_rfc3339, parse_rfc3339
from ..status.modeldeployment import load_patch

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
WAKE_GRACE_SECONDS = 30.0  # a wake counts as activity this long


def _pod_state(pod: dict) -> str:
    """ready | starting | gone"""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return "gone"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return "ready" if ready and status.get("podIP") else "starting"


def _startup_seconds(pod: dict) -> float | None:
    """Creation to the first Ready of a ready pod (None if it is not ready or has no times)."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if not ready or ready.get("status") != "True" or not ready.get("lastTransitionTime"):
        return None
    try:
        created = parse_rfc3339(meta["creationTimestamp"])
        became = parse_rfc3339(ready["lastTransitionTime"])
    except (KeyError, ValueError):
        return None
    return max(0.0, became - created)


class StartupTimes:
    """How long a ModelDeployment's replicas take to get ready, from its own pods.

    Each pod is measured once, the first time it is seen ready (a later Ready flip
    after a restart would measure its run time instead); the typical time is the
    median of the last ``keep``.
    """

    def __init__(self, keep: int = 10) -> None:
        self.keep = keep
        self._seen: dict[tuple[str, str], dict[str, float]] = {}

    def observe(self, key: tuple[str, str], pods: list[dict]) -> float | None:
        seen = self._seen.setdefault(key, {})
        for pod in pods:
            uid = pod["metadata"].get("uid")
            if uid and uid not in seen and (seconds := _startup_seconds(pod)) is not None:
                seen[uid] = seconds
                while len(seen) > self.keep:
                    del seen[next(iter(seen))]
        return statistics.median(seen.values()) if seen else None

    def forget(self, key: tuple[str, str]) -> None:
        self._seen.pop(key, None)


class Autoscaler:
    def __init__(self, kube: Kube, *, interval: float = 2.0, waker=None, scrape_timeout: float = 1.0,
                 knobs: dict[str, float] | None = None) -> None:
        self.kube = kube
        self.interval = interval
        self.knobs = knobs or {}  # ScalingPolicy fields that are not in the CRD (operator flags)
        self.startups = StartupTimes()
        self.waker = waker
        # trust_env=False: pod IPs are scraped directly, never through an environment proxy.
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), trust_env=False)
        self.scraper = Scraper(self.client, timeout=scrape_timeout)
        self.states: dict[tuple[str, str], ScalerState] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad round must not stop autoscaling
                log.exception("autoscaling round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - start)))

    async def round(self) -> None:
        mds, pods = await asyncio.gather(
            asyncio.to_thread(self.kube.list, API_VERSION, KIND),
            asyncio.to_thread(self.kube.list, "v1", "Pod", None, SELECTOR_LABEL),
        )
        by_md: dict[tuple[str, str], list[dict]] = {}
        for pod in pods:
            owner = (pod["metadata"].get("labels") or {}).get(SELECTOR_LABEL)
            by_md.setdefault((pod["metadata"]["namespace"], owner), []).append(pod)

        targets: dict[tuple[str, str], list[ScrapeTarget]] = {}
        for md in mds:
            key = (md["metadata"]["namespace"], md["metadata"]["name"])
            kind = ((md.get("spec") or {}).get("engine") or {}).get("kind", "vllm")
            targets[key] = [
                ScrapeTarget.for_pod((key, p["metadata"]["name"]), p["status"]["podIP"], kind, server_port(p))
                for p in by_md.get(key, []) if _pod_state(p) == "ready"
            ]
        loads = await self.scraper.round(targets)
        for error in self.scraper.errors.values():
            metrics.SCRAPE_ERRORS.labels(error.reason).inc()
        now = time.monotonic()
        for key in set(self.states) - set(targets):
            del self.states[key]
            self.startups.forget(key)
        await asyncio.gather(*(
            asyncio.to_thread(self._one, md, by_md.get((md["metadata"]["namespace"], md["metadata"]["name"]), []),
                              loads.get((md["metadata"]["namespace"], md["metadata"]["name"])), now)
            for md in mds
        ))

    def _one(self, md: dict, pods: list[dict], load, now: float) -> None:
        meta = md["metadata"]
        ref, key = Ref(meta["namespace"], meta["name"]), (meta["namespace"], meta["name"])
        if meta.get("deletionTimestamp"):
            return
        try:
            spec = parse_model_deployment_spec(md.get("spec") or {})
        except SpecError:
            return  # the ModelDeployment reconciler reports it
        old = md.get("status") or {}
        owned: dict = {}
        if load is not None and load.sampled_replicas:
            if (value := load_patch(old.get("load"), load.status())) is not None:
                owned["load"] = value
        elif old.get("load") and not any(_pod_state(p) == "ready" for p in pods):
            owned["load"] = None  # nothing serves: no load to show
        decision = None
        if spec.autoscaling is not None:
            states = [_pod_state(p) for p in pods]
            woken = self.waker.woken_at.get(key) if self.waker else None
            obs = Observation(
                now=now,
                replicas=spec.replicas,
                ready_replicas=states.count("ready"),
                starting_replicas=states.count("starting"),
                load=load,
                wake=woken is not None and now - woken < WAKE_GRACE_SECONDS,
                startup_seconds=self.startups.observe(key, pods),
            )
            policy = ScalingPolicy.from_autoscaling(spec.autoscaling, **self.knobs)
            decision = decide(policy, obs, self.states.get(key))
            self.states[key] = decision.state
            metrics.DESIRED_REPLICAS.labels(ref.namespace, ref.name).set(decision.desired)
            if not decision.changed and (load is None or not load.fresh) and old.get("scaleReason"):
                # Without a fresh signal nothing new is known (e.g. the first round after an
                # operator restart): keep what status says instead of rewriting it twice.
                decision = None
        if decision is not None:
            owned["scaleReason"] = decision.reason
            limited = (
                Condition("ScalingLimited", True, decision.limited_reason or "Limited", decision.limited)
                if decision.limited else
                Condition("ScalingLimited", False, "DesiredWithinRange", "the desired count is within the bounds")
            )
            if decision.changed:
                try:
                    self.kube.scale(API_VERSION, KIND, ref, decision.desired)
                    md = self.kube.get(API_VERSION, KIND, ref)  # the scale bumped resourceVersion
                except NotFound:
                    return
                meta, old = md["metadata"], md.get("status") or {}
                owned["lastScaleTime"] = now_rfc3339()
                event = decision.event
                self.kube.event(md, event.type, event.reason, event.message)
                log.info("%s: %s", ref, event.text)
            others = [c for c in old.get("conditions") or [] if c.get("type") != "ScalingLimited"]
            owned["conditions"] = others + merge_conditions(old.get("conditions"), [limited], meta.get("generation"))
        patch = {k: v for k, v in owned.items() if old.get(k) != v}
        if patch:
            try:
                self.kube.patch_status(API_VERSION, KIND, ref, patch, meta["resourceVersion"])
            except (Conflict, NotFound):
                pass  # changed meanwhile (the scale itself bumps it); the next round writes it

