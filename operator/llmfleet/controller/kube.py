"""The one module that talks to the Kubernetes API for the controllers.

Everything here is synchronous (the kubernetes client is); controllers call it from a
thread. ApiExceptions are mapped to the few outcomes a reconciler cares about.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "llmfleet"
AUTOSCALER = "llmfleet-autoscaler"  # the field manager of spec.replicas changes
GROUP = "llmfleet.io"
VERSION = "v1alpha1"
log = logging.getLogger(__name__)


class NotFound(Exception):
    pass


class Conflict(Exception):
    """The object changed under us (resourceVersion mismatch); re-read and retry."""


class Invalid(Exception):
    """The API server refused what we sent; retrying the same thing will not help."""


def _map(exc: ApiException) -> Exception:
    if exc.status == 404:
        return NotFound(exc.reason)
    if exc.status == 409:
        return Conflict(_message(exc))
    if exc.status in (400, 422):
        return Invalid(_message(exc))
    return exc


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Kube:
    """A thin, typed facade over the dynamic client."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = 30.0,
                 namespaces: Sequence[str] = ()) -> None:
        self.api = api_client
        self.dynamic = dynamic.DynamicClient(api_client)
        self.timeout = request_timeout
        # The namespaces the operator serves (`llmfleet run --namespace`); empty: all.
        self.namespaces = tuple(namespaces)
        self._resources: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, namespaces: Sequence[str] = ()) -> "Kube":
        try:
            config.load_incluster_config()
            api_client = client.ApiClient()
        except config.ConfigException:
            api_client = config.new_client_from_config(config_file=kubeconfig)
        return cls(api_client, namespaces=namespaces)

    def resource(self, api_version: str, kind: str):
        key = (api_version, kind)
        with self._lock:
            if key not in self._resources:
                self._resources[key] = self.dynamic.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def get(self, api_version: str, kind: str, ref: Ref) -> dict:
        try:
            obj = self.resource(api_version, kind).get(
                name=ref.name, namespace=ref.namespace, _request_timeout=self.timeout
            )
        except ApiException as exc:
            raise _map(exc) from exc
        return obj.to_dict()

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str = "") -> list[dict]:
        """Objects in ``namespace``; without one, in every namespace the operator serves.

        Serving a list of namespaces, the operator may only read those (one Role each),
        so that is one LIST per namespace instead of one across the cluster.
        """
        res = self.resource(api_version, kind)
        if namespace or not self.namespaces or not res.namespaced:
            scopes: Sequence[str | None] = [namespace]
        else:
            scopes = self.namespaces
        items = []
        for scope in scopes:
            try:
                objs = res.get(namespace=scope, label_selector=label_selector, _request_timeout=self.timeout)
            except ApiException as exc:
                raise _map(exc) from exc
            items += [o.to_dict() for o in objs.items]
        return items

    def apply(self, body: dict) -> dict:
        """Server-side apply with our field manager, taking ownership of what we set."""
        res = self.resource(body["apiVersion"], body["kind"])
        try:
            obj = res.server_side_apply(
                body,
                namespace=body["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise _map(exc) from exc
        return obj.to_dict()

    def patch_status(self, api_version: str, kind: str, ref: Ref, status: dict, resource_version: str | None) -> dict:
        """Merge-patch the status subresource; with resource_version, only if unchanged."""
        res = self.resource(api_version, kind)
        body: dict = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            obj = res.status.patch(
                body=body,
                name=ref.name,
                namespace=ref.namespace,
                content_type="application/merge-patch+json",
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise _map(exc) from exc
        return obj.to_dict()

    def scale(self, api_version: str, kind: str, ref: Ref, replicas: int, field_manager: str = AUTOSCALER) -> None:
        """Set spec.replicas through the scale subresource, as `kubectl scale` or an HPA
        would; managedFields then show who owns the count."""
        res = self.resource(api_version, kind)
        try:
            res.subresources["scale"].patch(
                body={"spec": {"replicas": replicas}},
                name=ref.name,
                namespace=ref.namespace,
                content_type="application/merge-patch+json",
                field_manager=field_manager,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise _map(exc) from exc

    def event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on `obj` (what `kubectl describe` shows). Never raises."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.timezone.utc)
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": _INSTANCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            client.CoreV1Api(self.api).create_namespaced_event(meta["namespace"], body, _request_timeout=self.timeout)
        except ApiException as exc:  # events are best effort; never fail a reconcile for one
            log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)


_INSTANCE = f"llmfleet-{uuid.uuid4().hex[:8]}"
