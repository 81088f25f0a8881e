"""ModelDeployment reconciler: read the store, call the pure core, write what changed.

Children (a Deployment and a Service) are applied server-side only when what would be
applied differs from what the operator last applied (a hash kept in an annotation), or
when someone else changed the Deployment's spec (its generation moved); status is
applied only when one of the reconciler's own fields changes. So an idle fleet costs
no API requests, however many ModelDeployments it has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from typing import Any

from .. import telemetry
from ..api.models import ModelDeploymentSpec
from ..kube.client import Invalid, KubeClient, NotFound
from ..kube.resources import DEPLOYMENTS
from ..kube.store import Store
from ..kube.views import APPLIED_ANNOTATION, DeploymentView, ModelDeploymentView, Ref, ServiceView
from ..render.deployment import render_deployment, render_service
from ..status.modeldeployment import CONDITION_TYPES, GpuNeed, StatusResult, model_deployment_status
from .statuswriter import RECONCILER as FIELD_MANAGER
from .statuswriter import StatusWriter

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
# Look again this often while replicas are not all ready (node capacity may change,
# and a stuck rollout deserves a fresh look even without watch events).
NOT_READY_RESYNC_SECONDS = 30.0


def gpu_need(spec: ModelDeploymentSpec) -> GpuNeed | None:
    accelerator = spec.effective_accelerator
    if accelerator is None:
        return None
    return GpuNeed(accelerator.resource, spec.gpus_per_replica, accelerator.product)


def applied_hash(body: dict[str, Any]) -> str:
    """What identifies a rendered child: the hash of its manifest."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:20]


class ModelDeploymentReconciler:
    def __init__(self, client: KubeClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.status = StatusWriter(client, FIELD_MANAGER)
        # (kind, namespace, name) → the Deployment generation our last apply produced.
        self._applied_generation: dict[tuple[str, str, str], int | None] = {}

    async def reconcile(self, ref: Ref) -> float | None:
        start = time.perf_counter()
        result = "error"
        try:
            after, result = await self._reconcile(ref)
            return after
        finally:
            telemetry.RECONCILES.labels(KIND, result).inc()
            telemetry.RECONCILE_SECONDS.labels(KIND).observe(time.perf_counter() - start)

    async def _reconcile(self, ref: Ref) -> tuple[float | None, str]:
        md = self.store.model_deployments.get(ref)
        if md is None:
            for state in ("desired", "ready"):
                with contextlib.suppress(KeyError):
                    telemetry.REPLICAS.remove(ref[0], ref[1], state)
            for type_ in CONDITION_TYPES:
                with contextlib.suppress(KeyError):
                    telemetry.CONDITION.remove(ref[0], ref[1], type_)
            for kind in ("Deployment", "Service"):
                self._applied_generation.pop((kind, *ref), None)
            self.status.forget(ref)
            return None, "gone"
        if md.deleting:
            return None, "deleting"  # garbage collection removes the children
        if md.spec is None:
            log.warning("%s/%s: invalid spec: %s", *ref, md.invalid)
            await self._write_status(md, self._invalid(md, md.invalid or "the spec is refused"))
            return None, "invalid"
        try:
            manifest = md.manifest()
            await self._ensure(render_deployment(manifest), self.store.deployments.get(ref))
            await self._ensure(render_service(manifest), self.store.services.get(ref))
        except Invalid as exc:
            # The API server refused what we rendered from an accepted spec (for example
            # an extraArgs/env combination it validates): report, don't hot-loop.
            await self._write_status(md, self._invalid(md, f"the rendered Deployment was refused: {exc.message}"))
            return NOT_READY_RESYNC_SECONDS * 4, "invalid"
        except NotFound:
            return None, "gone"  # deleted meanwhile

        need = gpu_need(md.spec)
        result = model_deployment_status(
            md.name, md.generation, self.status.current(ref, md.status), desired=md.spec.replicas,
            deployment=self.store.deployments.get(ref), pods=self.store.pods_of(ref),
            nodes=self.store.nodes.values() if need else [], gpu_need=need, adapters=md.adapters,
        )
        await self._write_status(md, result)
        telemetry.REPLICAS.labels(*ref, "desired").set(md.spec.replicas)
        telemetry.REPLICAS.labels(*ref, "ready").set(result.status["readyReplicas"])
        ready = result.status["readyReplicas"] >= md.spec.replicas
        return (None if ready else NOT_READY_RESYNC_SECONDS), "success"

    def _invalid(self, md: ModelDeploymentView, message: str) -> StatusResult:
        return model_deployment_status(md.name, md.generation, self.status.current(md.ref, md.status),
                                       desired=None, deployment=None, pods=[], nodes=[], gpu_need=None,
                                       invalid=message)

    async def _ensure(self, body: dict[str, Any], live: DeploymentView | ServiceView | None) -> None:
        """Apply ``body`` unless the live object is already what we last applied."""
        digest = applied_hash(body)
        meta = body["metadata"]
        key = (body["kind"], meta["namespace"], meta["name"])
        if live is not None and live.applied == digest:
            if not isinstance(live, DeploymentView):
                return
            recorded = self._applied_generation.setdefault(key, live.generation)  # after a restart: adopt
            if recorded == live.generation:
                return
            log.info("%s/%s: the Deployment's spec was changed by someone else; applying ours again",
                     meta["namespace"], meta["name"])
        meta.setdefault("annotations", {})[APPLIED_ANNOTATION] = digest
        applied = await self.client.apply(body, FIELD_MANAGER)
        if body["kind"] == DEPLOYMENTS.kind:
            self._applied_generation[key] = applied["metadata"].get("generation")

    async def _write_status(self, md: ModelDeploymentView, result: StatusResult) -> None:
        await self.status.write(md.involved(), md.status, result.status)
        for condition in result.status.get("conditions") or []:
            telemetry.CONDITION.labels(*md.ref, condition["type"]).set(condition.get("status") == "True")
        for event in result.events:
            await self.client.event(md.involved(), event.type, event.reason, event.message, FIELD_MANAGER)
