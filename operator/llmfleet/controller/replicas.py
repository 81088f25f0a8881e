"""The one writer of a ModelDeployment's replica count (the scale subresource).

The autoscaler's decisions and the activator's wake-ups both go through here, under
the field manager ``llmfleet-autoscaler``, each with an Event that says why.

A wake-up is the one write an operator replica makes without leading: a request is
waiting in its activator. It is conditional (only from 0, at the resourceVersion
read), so replicas waking the same model at once make one change and one Event.
"""

from __future__ import annotations

import logging

from ..kube.client import Conflict, KubeClient
from ..kube.resources import MODEL_DEPLOYMENTS
from ..kube.views import ModelDeploymentView
from .statuswriter import AUTOSCALER as FIELD_MANAGER

log = logging.getLogger(__name__)


class ReplicaWriter:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def scale(self, md: ModelDeploymentView, replicas: int, reason: str, message: str) -> None:
        """Set spec.replicas of ``md`` (NotFound propagates) and record the Event."""
        await self._scale(md, replicas, reason, message)

    async def scale_from_zero(self, md: ModelDeploymentView, replicas: int, reason: str, message: str) -> bool:
        """Set spec.replicas of ``md`` only while it is 0; False when it no longer is."""
        for _ in range(5):
            if md.spec is None or md.spec.replicas > 0:
                return False
            try:
                await self._scale(md, replicas, reason, message, conditional=True)
                return True
            except Conflict:  # written since it was read (status, another replica's wake): read again
                body = await self.client.get(MODEL_DEPLOYMENTS, md.name, md.namespace)
                md = ModelDeploymentView.from_body(body, md)
        return False

    async def _scale(self, md: ModelDeploymentView, replicas: int, reason: str, message: str, *,
                     conditional: bool = False) -> None:
        await self.client.scale(MODEL_DEPLOYMENTS, md.namespace, md.name, replicas, FIELD_MANAGER,
                                resource_version=md.resource_version if conditional else None)
        await self.client.event(md.involved(), "Normal", reason, message, FIELD_MANAGER)
        log.info("%s/%s: %s %s", md.namespace, md.name, reason, message)
