"""The one writer of a ModelDeployment's replica count (the scale subresource).

The autoscaler's decisions and the activator's wake-ups both go through here, under
the field manager ``llmfleet-autoscaler``, each with an Event that says why.
"""

from __future__ import annotations

import logging

from ..kube.client import KubeClient
from ..kube.resources import MODEL_DEPLOYMENTS
from ..kube.views import ModelDeploymentView
from .statuswriter import AUTOSCALER as FIELD_MANAGER

log = logging.getLogger(__name__)


class ReplicaWriter:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def scale(self, md: ModelDeploymentView, replicas: int, reason: str, message: str) -> None:
        """Set spec.replicas of ``md`` (NotFound propagates) and record the Event."""
        await self.client.scale(MODEL_DEPLOYMENTS, md.namespace, md.name, replicas, FIELD_MANAGER)
        await self.client.event(md.involved(), "Normal", reason, message, FIELD_MANAGER)
        log.info("%s/%s: %s %s", md.namespace, md.name, reason, message)
