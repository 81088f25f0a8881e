"""The API resources llmfleet reads and writes, and the URL paths they live at."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.models import GROUP, MODEL_DEPLOYMENT_KIND, ROUTE_POLICY_KIND, TENANT_KIND, TENANT_PLURAL, VERSION


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """``/api/v1/namespaces/NS/pods/NAME/status`` and the like; without a namespace,
        the collection across all namespaces (or of a cluster-scoped resource)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


MODEL_DEPLOYMENTS = Resource(GROUP, VERSION, "modeldeployments", MODEL_DEPLOYMENT_KIND)
ROUTE_POLICIES = Resource(GROUP, VERSION, "routepolicies", ROUTE_POLICY_KIND)
TENANTS = Resource(GROUP, VERSION, TENANT_PLURAL, TENANT_KIND)
SECRETS = Resource("", "v1", "secrets", "Secret")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
REPLICA_SETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")

BY_KIND = {(r.api_version, r.kind): r for r in (MODEL_DEPLOYMENTS, ROUTE_POLICIES, TENANTS, DEPLOYMENTS, SERVICES,
                                                 PODS, NODES, EVENTS, CONFIG_MAPS, LEASES, SECRETS)}


def resource_of(body: dict) -> Resource:
    """The resource of an object by its apiVersion and kind."""
    try:
        return BY_KIND[(body["apiVersion"], body["kind"])]
    except KeyError:
        raise ValueError(f"llmfleet does not manage {body.get('apiVersion')} {body.get('kind')}") from None
