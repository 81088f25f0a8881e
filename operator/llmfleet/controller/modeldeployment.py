"""ModelDeployment reconciler: read, call the pure core, write."""

from __future__ import annotations

import asyncio
import logging
import time

from . import metrics
from .kube import GROUP, VERSION, Conflict, Invalid, Kube, NotFound, Ref
from ..api.models import ModelDeploymentSpec, SpecError, parse_model_deployment_spec
from ..render.deployment import render_deployment, render_service, selector_string
from ..status.modeldeployment import GpuNeed, model_deployment_status, status_patch

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
# Look again this often while replicas are not all ready (node capacity may change,
# and a stuck rollout deserves a fresh look even without watch events).
NOT_READY_RESYNC_SECONDS = 30.0


def gpu_need(spec: ModelDeploymentSpec) -> GpuNeed | None:
    accelerator = spec.effective_accelerator
    if accelerator is None:
        return None
    return GpuNeed(accelerator.resource, spec.gpus_per_replica, accelerator.product)


NODES_TTL_SECONDS = 10.0  # node capacity changes rarely; reconciles happen on every pod event


class ModelDeploymentReconciler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._nodes_cache: tuple[float, list[dict]] = (-NODES_TTL_SECONDS, [])

    async def reconcile(self, ref: Ref) -> float | None:
        start = time.perf_counter()
        result = "error"
        try:
            after, result = await asyncio.to_thread(self._reconcile, ref)
            return after
        finally:
            metrics.RECONCILES.labels(KIND, result).inc()
            metrics.RECONCILE_SECONDS.labels(KIND).observe(time.perf_counter() - start)

    def _reconcile(self, ref: Ref) -> tuple[float | None, str]:
        try:
            md = self.kube.get(API_VERSION, KIND, ref)
        except NotFound:
            for state in ("desired", "ready"):
                try:
                    metrics.REPLICAS.remove(ref.namespace, ref.name, state)
                except KeyError:
                    pass
            return None, "gone"
        if md["metadata"].get("deletionTimestamp"):
            return None, "deleting"  # garbage collection removes the children

        try:
            spec = parse_model_deployment_spec(md.get("spec") or {})
        except SpecError as exc:
            message = str(exc)
            log.warning("%s: invalid spec: %s", ref, message)
            self._write_status(md, model_deployment_status(
                md, desired=None, deployment=None, pods=[], nodes=[], gpu_need=None, invalid=message,
            ))
            return None, "invalid"

        try:
            parsed = {**md, "spec": spec}
            deployment = self.kube.apply(render_deployment(parsed))
            self.kube.apply(render_service(parsed))
        except Invalid as exc:
            # The API server refused what we rendered from an accepted spec (for example
            # an extraArgs/env combination it validates): report, don't hot-loop.
            message = f"the rendered Deployment was refused: {exc}"
            self._write_status(md, model_deployment_status(
                md, desired=None, deployment=None, pods=[], nodes=[], gpu_need=None, invalid=message,
            ))
            return NOT_READY_RESYNC_SECONDS * 4, "invalid"

        pods = self.kube.list("v1", "Pod", ref.namespace, label_selector=selector_string(ref.name))
        need = gpu_need(spec)
        nodes = self._nodes() if need else []
        result = model_deployment_status(
            md, desired=spec.replicas, deployment=deployment, pods=pods, nodes=nodes, gpu_need=need
        )
        try:
            self._write_status(md, result)
        except Conflict:
            return 0.2, "conflict"  # changed while we looked; look again with fresh data
        metrics.REPLICAS.labels(ref.namespace, ref.name, "desired").set(spec.replicas)
        metrics.REPLICAS.labels(ref.namespace, ref.name, "ready").set(result.status["readyReplicas"])
        ready = result.status["readyReplicas"] >= spec.replicas
        return (None if ready else NOT_READY_RESYNC_SECONDS), "success"

    def _nodes(self) -> list[dict]:
        taken, nodes = self._nodes_cache
        if time.monotonic() - taken < NODES_TTL_SECONDS:
            return nodes
        try:
            nodes = self.kube.list("v1", "Node")
        except Exception as exc:  # noqa: BLE001 - without node access we just skip the capacity check
            log.debug("cannot list nodes: %s", exc)
            nodes = []
        self._nodes_cache = (time.monotonic(), nodes)
        return nodes

    def _write_status(self, md: dict, result) -> None:
        ref = Ref(md["metadata"]["namespace"], md["metadata"]["name"])
        patch = status_patch(md.get("status"), result.status)
        if patch is not None:
            self.kube.patch_status(API_VERSION, KIND, ref, patch, md["metadata"]["resourceVersion"])
        for event in result.events:
            self.kube.event(md, event.type, event.reason, event.message)
