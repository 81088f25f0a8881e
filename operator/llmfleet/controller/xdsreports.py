"""Each operator replica's report of what its Envoys run, so the leader can say
``Programmed`` for every Envoy, whichever replica it is connected to.

Every replica serves xDS from its own store; an Envoy is connected to one of them.
Each replica keeps one ConfigMap, ``<lease>-xds-<replica>`` in the operator's
namespace, labelled ``llmfleet.io/xds-report``: its connected Envoys and the version
each runs in full (versions are content hashes, the same in every replica), where
each serves its counters (the leader reads them: controller/traffic.py), and the
last rejection. It is owned by the replica's pod, so it goes with the pod. The
leader reads them all through its store (Istio's istiod replicas report to their
leader the same way).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..envoy.xds import XdsServer
from ..kube.client import ApiError, KubeClient
from ..kube.resources import CONFIG_MAPS
from ..kube.views import XDS_REPORT_LABEL
from .statuswriter import RECONCILER as FIELD_MANAGER

log = logging.getLogger(__name__)
REPORT_INTERVAL = 1.0  # seconds between looks at the xDS server's state (written only when it changed)


def report_data(server: XdsServer, replica: str) -> dict[str, str]:
    nack = server.last_nack
    return {"replica": replica, "envoys": json.dumps(server.node_versions(), sort_keys=True),
            "stats": json.dumps(server.stats_urls(), sort_keys=True),
            "nack": str(nack) if nack is not None else ""}


class ReportWriter:
    """Keeps this replica's report ConfigMap equal to its xDS server's state."""

    def __init__(self, client: KubeClient, server: XdsServer, namespace: str, name: str, replica: str,
                 owner: dict[str, Any] | None = None, *, interval: float = REPORT_INTERVAL) -> None:
        self.client, self.server = client, server
        self.namespace, self.name, self.replica = namespace, name, replica
        self.owner = owner  # the replica's pod, as an ownerReference (None outside a pod)
        self.interval = interval
        self._written: dict[str, str] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="xds report")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self.write()
            await asyncio.sleep(self.interval)

    async def write(self) -> None:
        data = report_data(self.server, self.replica)
        if data == self._written:
            return
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": {XDS_REPORT_LABEL: "true"}}
        if self.owner is not None:
            meta["ownerReferences"] = [self.owner]
        body = {"apiVersion": CONFIG_MAPS.api_version, "kind": CONFIG_MAPS.kind, "metadata": meta, "data": data}
        try:
            await self.client.apply(body, FIELD_MANAGER)
        except ApiError as exc:  # the next look tries again
            log.warning("could not write the xDS report %s/%s: %s", self.namespace, self.name, exc)
            return
        self._written = data
