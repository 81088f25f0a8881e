"""Watch-fed caches of what the operator reads: one informer per resource, one store.

An informer lists its resource once, then watches from that resourceVersion (listing
again only when the watch is too old), and keeps a typed view of every object. The
store is synced once every informer has listed: reconcilers never run on half a
picture (a route table computed from half the pods would take the rest off Envoy).
An event whose view equals the one already held (a status field llmfleet does not
read, a heartbeat) is dropped, so it wakes nothing up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from ..api.models import API_KEYS_LABEL
from ..render.deployment import SELECTOR_LABEL
from .client import Gone, KubeClient
from .resources import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    MODEL_DEPLOYMENTS,
    NODES,
    PODS,
    ROUTE_POLICIES,
    SECRETS,
    SERVICES,
    TENANTS,
    Resource,
)
from .views import (
    XDS_REPORT_LABEL,
    DeploymentView,
    ModelDeploymentView,
    NodeView,
    PodView,
    Ref,
    RoutePolicyView,
    SecretView,
    ServiceView,
    TenantView,
    XdsReportView,
)

log = logging.getLogger(__name__)
V = TypeVar("V")
Parse = Callable[[dict[str, Any], Any], V]  # (body, the previous view or None) -> view
OnChange = Callable[[Any, Any], None]  # (old view or None, new view or None)


def _key(body: dict[str, Any]) -> Ref:
    meta = body["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Informer(Generic[V]):
    """The objects of one resource (in some namespaces, or all), as views."""

    def __init__(self, client: KubeClient, resource: Resource, parse: Parse, *,
                 namespaces: Sequence[str] | None = None, label_selector: str | None = None,
                 index: Callable[[V], Hashable | None] | None = None) -> None:
        self.client, self.resource, self.parse = client, resource, parse
        self.scopes: list[str | None] = list(namespaces) if namespaces and resource.namespaced else [None]
        self.label_selector = label_selector
        self.index_of = index
        self.items: dict[Ref, V] = {}
        self.by_index: dict[Hashable, dict[Ref, V]] = {}
        self.listeners: list[OnChange] = []
        self.synced = asyncio.Event()
        self._listed: set[str | None] = set()

    # ---- reads

    def get(self, key: Ref) -> V | None:
        return self.items.get(key)

    def values(self) -> list[V]:
        return list(self.items.values())

    def indexed(self, key: Hashable) -> list[V]:
        return list(self.by_index.get(key, {}).values())

    # ---- feeding (also used by tests to fill a store without a cluster)

    def put(self, body: dict[str, Any]) -> None:
        key = _key(body)
        old = self.items.get(key)
        new = self.parse(body, old)
        if new == old:
            return
        self.items[key] = new
        self._reindex(key, old, new)
        self._notify(old, new)

    def delete(self, body: dict[str, Any]) -> None:
        key = _key(body)
        old = self.items.pop(key, None)
        if old is not None:
            self._reindex(key, old, None)
            self._notify(old, None)

    def replace(self, bodies: Iterable[dict[str, Any]], scope: str | None = None) -> None:
        """Make the objects of ``scope`` (a namespace, or all) exactly ``bodies``."""
        fresh = {_key(b): b for b in bodies}
        for key in [k for k in self.items if (scope is None or k[0] == scope) and k not in fresh]:
            old = self.items.pop(key)
            self._reindex(key, old, None)
            self._notify(old, None)
        for body in fresh.values():
            self.put(body)

    def _reindex(self, key: Ref, old: V | None, new: V | None) -> None:
        if self.index_of is None:
            return
        if old is not None and (k := self.index_of(old)) is not None:
            self.by_index.get(k, {}).pop(key, None)
        if new is not None and (k := self.index_of(new)) is not None:
            self.by_index.setdefault(k, {})[key] = new

    def _notify(self, old: V | None, new: V | None) -> None:
        for listener in self.listeners:
            listener(old, new)

    # ---- watching

    async def run(self) -> None:
        await asyncio.gather(*(self._watch_scope(scope) for scope in self.scopes))

    async def _watch_scope(self, scope: str | None) -> None:
        backoff = 0.5
        while True:
            try:
                bodies, version = await self.client.list(self.resource, namespace=scope,
                                                         label_selector=self.label_selector)
                self.replace(bodies, scope)
                self._listed.add(scope)
                if len(self._listed) == len(self.scopes):
                    self.synced.set()
                backoff = 0.5
                while True:  # re-watch from where the last watch ended
                    async for kind, obj in self.client.watch(self.resource, version, namespace=scope,
                                                             label_selector=self.label_selector):
                        version = obj["metadata"].get("resourceVersion") or version
                        if kind == "DELETED":
                            self.delete(obj)
                        elif kind in ("ADDED", "MODIFIED"):
                            self.put(obj)
            except Gone:
                log.info("watch of %s: resourceVersion too old; listing again", self.resource.plural)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an API hiccup: list again after a pause
                log.warning("watch of %s failed (%s); listing again in %.1f s", self.resource.plural, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


class Store:
    """Everything the operator reads about the cluster, kept current by watches."""

    def __init__(self, client: KubeClient, namespaces: Sequence[str] | None = None, *,
                 replicas_namespace: str | None = None) -> None:
        """``replicas_namespace``: where the operator's replicas keep their xDS reports
        (with leader election; None: a single replica, no reports)."""
        namespaces = list(namespaces or [])
        self.model_deployments: Informer[ModelDeploymentView] = Informer(
            client, MODEL_DEPLOYMENTS, ModelDeploymentView.from_body, namespaces=namespaces)
        self.route_policies: Informer[RoutePolicyView] = Informer(
            client, ROUTE_POLICIES, RoutePolicyView.from_body, namespaces=namespaces)
        # Only the operator's own children and replicas, filtered by the API server.
        self.deployments: Informer[DeploymentView] = Informer(
            client, DEPLOYMENTS, lambda body, _: DeploymentView.from_body(body), namespaces=namespaces,
            label_selector=SELECTOR_LABEL)
        self.services: Informer[ServiceView] = Informer(
            client, SERVICES, lambda body, _: ServiceView.from_body(body), namespaces=namespaces,
            label_selector=SELECTOR_LABEL)
        self.pods: Informer[PodView] = Informer(
            client, PODS, lambda body, _: PodView.from_body(body), namespaces=namespaces,
            label_selector=SELECTOR_LABEL, index=lambda p: (p.namespace, p.model_deployment))
        self.nodes: Informer[NodeView] = Informer(client, NODES, lambda body, _: NodeView.from_body(body))
        self.tenants: Informer[TenantView] = Informer(client, TENANTS, TenantView.from_body, namespaces=namespaces)
        # Only Secrets labelled as API keys: not every Secret of the cluster in memory.
        self.api_keys: Informer[SecretView] = Informer(
            client, SECRETS, lambda body, _: SecretView.from_body(body), namespaces=namespaces,
            label_selector=API_KEYS_LABEL)
        self.informers: list[Informer[Any]] = [self.model_deployments, self.route_policies, self.deployments,
                                               self.services, self.pods, self.nodes, self.tenants, self.api_keys]
        self.xds_reports: Informer[XdsReportView] = Informer(
            client, CONFIG_MAPS, lambda body, _: XdsReportView.from_body(body),
            namespaces=[replicas_namespace] if replicas_namespace else None, label_selector=XDS_REPORT_LABEL)
        if replicas_namespace:
            self.informers.append(self.xds_reports)
        self._tasks: list[asyncio.Task[None]] = []

    def pods_of(self, ref: Ref) -> list[PodView]:
        """The replicas of ModelDeployment ``ref``, in name order."""
        return sorted(self.pods.indexed(ref), key=lambda p: p.name)

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    async def start(self, timeout: float | None = None) -> None:
        """Start every watch; return once each has listed its objects."""
        self._tasks = [asyncio.create_task(i.run(), name=f"watch {i.resource.plural}") for i in self.informers]
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers)), timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
