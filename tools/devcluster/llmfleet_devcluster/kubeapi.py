"""A small Kubernetes API client for the dev cluster's own agents, and a watch-fed cache.

The system node's kubelet and service proxy see every pod and Service of the cluster;
listing them every fraction of a second would load the API server with thousands of
models, so they keep informers (list, then watch from that resourceVersion, relist on
410 Gone) as client-go does, on plain JSON over httpx with the dev cluster's admin
certificate.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubeApi:
    """JSON requests to the API server with the kubeconfig's client certificate."""

    def __init__(self, kubeconfig: str | Path) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server = cluster["server"]
        self._cert = (user["client-certificate"], user["client-key"])
        self._ca = cluster["certificate-authority"]
        self.client = self.new_client()

    def new_client(self, timeout: float | None = 30.0) -> httpx.Client:
        import ssl

        ctx = ssl.create_default_context(cafile=self._ca)
        ctx.load_cert_chain(*self._cert)
        return httpx.Client(base_url=self.server, verify=ctx, timeout=httpx.Timeout(timeout, connect=5.0),
                            trust_env=False)

    def request(self, method: str, path: str, *, body=None, params=None,
                content_type: str = "application/json") -> dict:
        response = self.client.request(method, path, params=params,
                                       content=None if body is None else json.dumps(body),
                                       headers={"Content-Type": content_type})
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, message)
        return response.json() if response.content else {}

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params=params or None)

    def patch_status(self, pod: dict, status: dict) -> dict:
        """Strategic merge patch of a pod's status: conditions merge by type."""
        meta = pod["metadata"]
        return self.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                            body={"status": status}, content_type="application/strategic-merge-patch+json")

    def close(self) -> None:
        self.client.close()


class Informer:
    """Keeps every object of one resource (``/api/v1/pods``...) in memory, fed by a watch.

    ``on_change`` is called from the informer's thread after every change.
    """

    def __init__(self, api: KubeApi, path: str, on_change: Callable[[], None] = lambda: None,
                 field_selector: str | None = None) -> None:
        self.api = api
        self.path = path
        self.field_selector = field_selector
        self.on_change = on_change
        self.objects: dict[tuple[str, str], dict] = {}
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer {path}", daemon=True)
        self._client: httpx.Client | None = None

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the thread is a daemon: a watch blocked in a read just ends with the process)."""
        self._stop.set()
        if self._client is not None:
            self._client.close()

    def items(self) -> list[dict]:
        with self._lock:
            return list(self.objects.values())

    def _params(self, **extra) -> dict:
        params = {k: v for k, v in extra.items() if v is not None}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                self._watch(version)
            except Exception as exc:  # noqa: BLE001 - an API hiccup: list again after a pause
                if self._stop.is_set():
                    return
                log.debug("informer %s: %s; listing again", self.path, exc)
                self._stop.wait(0.5)

    def _list(self) -> str:
        listed = self.api.get(self.path, **self._params())
        with self._lock:
            self.objects = {_key(o): o for o in listed.get("items") or []}
        self.synced.set()
        self.on_change()
        return listed["metadata"]["resourceVersion"]

    def _watch(self, version: str) -> None:
        self._client = self.api.new_client(timeout=None)
        try:
            params = self._params(watch="1", resourceVersion=version, allowWatchBookmarks="true",
                                  timeoutSeconds="300")
            with self._client.stream("GET", self.path, params=params) as response:
                if response.status_code >= 400:
                    raise ApiError(response.status_code, response.read().decode(errors="replace"))
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        raise ApiError(obj.get("code", 500), obj.get("message", ""))  # e.g. 410 Gone
                    if kind == "BOOKMARK":
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self.objects.pop(_key(obj), None)
                        else:
                            self.objects[_key(obj)] = obj
                    self.on_change()
        finally:
            self._client.close()
            self._client = None


def _key(obj: dict) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

