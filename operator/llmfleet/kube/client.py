"""The one module that sends requests to the Kubernetes API server.

Async (httpx), so the operator has one concurrency model. Credentials come from the
kubernetes client's own loaders (in-cluster ServiceAccount token, re-read as it
rotates; or a kubeconfig with any of its auth methods). Errors are mapped to the few
outcomes a reconciler acts on.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from .resources import EVENTS, Resource, resource_of

log = logging.getLogger(__name__)
APPLY = "application/apply-patch+yaml"  # server-side apply (JSON is valid YAML)
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    """A request the API server answered with an error (or could not be sent)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status, self.message, self.reason = status, message, reason


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """The object changed under us (or a field manager conflict); re-read and retry."""


class Invalid(ApiError):
    """The API server refused what we sent; sending the same again will not help."""


class Gone(ApiError):
    """A watch's resourceVersion is too old: list again."""


def _error(status: int, body: bytes) -> ApiError:
    try:
        data = json.loads(body)
        message, reason = data.get("message", ""), data.get("reason", "")
    except ValueError:
        message, reason = body.decode(errors="replace")[:500], ""
    kind = {404: NotFound, 409: Conflict, 400: Invalid, 422: Invalid, 410: Gone}.get(status, ApiError)
    return kind(status, message, reason)


def load_configuration(kubeconfig: str | None = None) -> k8s.Configuration:
    """In a pod, its ServiceAccount; elsewhere the kubeconfig (``--kubeconfig`` or $KUBECONFIG)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


class KubeClient:
    """JSON requests to one API server."""

    def __init__(self, configuration: k8s.Configuration, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.configuration = configuration
        self.timeout = timeout
        verify: ssl.SSLContext | bool = False
        if configuration.verify_ssl:
            verify = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                verify.load_cert_chain(configuration.cert_file, configuration.key_file)
        self.http = httpx.AsyncClient(base_url=configuration.host, verify=verify, trust_env=False,
                                      timeout=httpx.Timeout(timeout, connect=10.0), transport=transport,
                                      limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        return cls(load_configuration(kubeconfig))

    async def close(self) -> None:
        await self.http.aclose()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        # The kubernetes client's loaders keep "Bearer <token>" there, and re-read a rotated token.
        token = self.configuration.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> dict:
        try:
            response = await self.http.request(method, path, params=params, headers=self._headers(content_type),
                                               content=None if body is None else json.dumps(body))
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{method} {path}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise _error(response.status_code, response.content)
        return response.json() if response.content else {}

    # ---- reads

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict:
        return await self.request("GET", resource.path(namespace, name))

    async def list(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
                   page_size: int = 500) -> tuple[list[dict], str]:
        """Every object (in pages) and the list's resourceVersion, to watch from."""
        items: list[dict] = []
        params: dict[str, Any] = {"limit": page_size}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self.request("GET", resource.path(namespace), params=params)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, page["metadata"]["resourceVersion"]
            params["continue"] = token

    async def watch(self, resource: Resource, resource_version: str, *, namespace: str | None = None,
                    label_selector: str | None = None, timeout_seconds: int | None = None
                    ) -> AsyncIterator[tuple[str, dict]]:
        """(type, object) events from ``resource_version`` on, until the server ends the
        watch. Bookmarks come as ("BOOKMARK", {metadata: {resourceVersion}})."""
        seconds = timeout_seconds or random.randint(300, 600)  # spread re-watches of many resources
        params: dict[str, Any] = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                                  "timeoutSeconds": seconds}
        if label_selector:
            params["labelSelector"] = label_selector
        timeout = httpx.Timeout(self.timeout, connect=10.0, read=seconds + 30)
        try:
            async with self.http.stream("GET", resource.path(namespace), params=params, headers=self._headers(),
                                        timeout=timeout) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        status = event["object"]
                        raise _error(status.get("code", 500), json.dumps(status).encode())
                    yield event["type"], event["object"]
        except httpx.HTTPError as exc:
            raise ApiError(0, f"watch {resource.plural}: {exc or type(exc).__name__}") from exc

    # ---- writes

    async def create(self, body: dict) -> dict:
        meta = body["metadata"]
        return await self.request("POST", resource_of(body).path(meta.get("namespace")), body=body)

    async def replace(self, body: dict) -> dict:
        """PUT ``body`` whole; with metadata.resourceVersion, only over that version (else Conflict)."""
        meta = body["metadata"]
        return await self.request("PUT", resource_of(body).path(meta.get("namespace"), meta["name"]), body=body)

    async def apply(self, body: dict, field_manager: str, *, subresource: str | None = None) -> dict:
        """Server-side apply of ``body`` (or of its status, with subresource="status"),
        taking ownership of every field it sets; fields this manager set before and
        leaves out now are removed."""
        resource = resource_of(body)
        meta = body["metadata"]
        return await self.request("PATCH", resource.path(meta.get("namespace"), meta["name"], subresource),
                                  params={"fieldManager": field_manager, "force": "true"}, body=body,
                                  content_type=APPLY)

    async def scale(self, resource: Resource, namespace: str, name: str, replicas: int, field_manager: str, *,
                    resource_version: str | None = None) -> None:
        """Set spec.replicas through the scale subresource, as `kubectl scale` or an HPA would;
        with ``resource_version``, only if the object is still at that version (else Conflict)."""
        body: dict[str, Any] = {"spec": {"replicas": replicas}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        await self.request("PATCH", resource.path(namespace, name, "scale"), params={"fieldManager": field_manager},
                           body=body, content_type=MERGE)

    async def event(self, involved: dict, type_: str, reason: str, message: str, component: str) -> None:
        """A core/v1 Event on ``involved`` ({apiVersion, kind, metadata}); best effort: never raises."""
        import datetime as dt

        meta = involved["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": INSTANCE,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.request("POST", EVENTS.path(meta["namespace"]), body=body)
        except ApiError as exc:  # events are best effort; never fail a reconcile for one
            log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)


INSTANCE = f"llmfleet-{uuid.uuid4().hex[:8]}"
