"""The leader loads each ModelDeployment's LoRA adapters into its running replicas.

Every ``interval`` it compares, for each serving replica of a ModelDeployment with LoRA
on, the adapters the spec lists with the ones recorded on the pod
(kube.views.ADAPTERS_ANNOTATION). Where they differ it asks the engine what it serves
(``/v1/models``), unloads and loads the difference (engines.lora), and records what the
engine now serves on the pod, with the container's restart count: every operator replica
routes an adapter to the pods whose record names it, so a replica gets an adapter's
traffic only once it has the adapter, and a restarted container, which lost its adapters,
gets none until it is loaded again. Nothing restarts: the pod template carries only
``--enable-lora``.

A replica whose engine refuses an adapter gets a Warning Event on the ModelDeployment
(once per adapter, replica and message) and is tried again with a growing back-off; the
adapters it did load are recorded and routed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from ..engines import lora
from ..engines.base import adapter_path
from ..kube.client import MERGE, ApiError, KubeClient
from ..kube.resources import PODS
from ..kube.store import Store
from ..kube.views import ADAPTERS_ANNOTATION, ModelDeploymentView, PodView, adapters_record

log = logging.getLogger(__name__)
FIELD_MANAGER = "llmfleet-adapters"
MAX_BACKOFF_SECONDS = 60.0


class AdapterLoader:
    def __init__(self, client: KubeClient, store: Store, *, interval: float, timeout: float = 30.0) -> None:
        self.client, self.store, self.interval, self.timeout = client, store, interval, timeout
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._retry: dict[str, tuple[float, float]] = {}  # pod uid → (not before, back-off)
        self._warned: set[tuple[str, str, str]] = set()  # (pod uid, adapter, message) already in an Event

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="adapters")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # one bad round must not end the loading
                log.exception("loading LoRA adapters failed")
            await asyncio.sleep(self.interval)

    def pending(self) -> list[tuple[PodView, ModelDeploymentView, dict[str, str]]]:
        """Serving replicas whose recorded adapters are not the wanted ones, with those."""
        out = []
        wanted_of: dict[tuple[str, str], dict[str, str]] = {}  # per ModelDeployment, computed once a round
        for pod in self.store.pods.values():
            md = self.store.model_deployments.get((pod.namespace, pod.model_deployment or ""))
            if not pod.serving or md is None or md.spec is None or not md.spec.lora_enabled:
                continue
            if md.ref not in wanted_of:
                wanted_of[md.ref] = {a.name: adapter_path(a.uri) for a in md.spec.adapters}
            if dict(pod.adapters) != wanted_of[md.ref]:
                out.append((pod, md, wanted_of[md.ref]))
        return out

    async def round(self) -> None:
        now = time.monotonic()
        pending = self.pending()
        busy = {pod.uid for pod, _, _ in pending}
        self._retry = {uid: r for uid, r in self._retry.items() if uid in busy}
        present = {pod.uid for pod in self.store.pods.values()}
        self._warned = {w for w in self._warned if w[0] in present}  # forget pods that are gone
        await asyncio.gather(*(self.sync(pod, md, wanted) for pod, md, wanted in pending
                               if self._retry.get(pod.uid, (0.0, 0.0))[0] <= now))

    async def sync(self, pod: PodView, md: ModelDeploymentView, wanted: dict[str, str]) -> None:
        """Bring one replica's adapters to ``wanted`` and record what it serves."""
        assert pod.endpoint is not None
        base = f"http://{pod.endpoint[0]}:{pod.endpoint[1]}"
        failures: list[tuple[str, str]] = []
        try:
            answer = await self._engine().get(base + lora.MODELS_PATH)
            answer.raise_for_status()
            served = lora.served_adapters(answer.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.info("cannot list the adapters of %s/%s: %s", pod.namespace, pod.name, exc)
            self._back_off(pod)
            return
        changes = lora.adapter_changes(wanted, served)
        unloaded, loaded = [], []
        for name in changes.unload:
            if await self._post(base + lora.UNLOAD_PATH, lora.unload_body(name), name, failures):
                unloaded.append(name)
        for name, path in changes.load:
            if name in served and name not in unloaded:
                continue  # its old version could not be unloaded
            if await self._post(base + lora.LOAD_PATH, lora.load_body(name, path), name, failures):
                loaded.append((name, path))
        now_served = lora.after(served, unloaded, loaded)
        record = {n: p for n, p in now_served.items() if wanted.get(n) == p}
        try:
            # A merge patch, not an apply: a pod deleted meanwhile is a 404, never a create.
            await self.client.request(
                "PATCH", PODS.path(pod.namespace, pod.name), params={"fieldManager": FIELD_MANAGER},
                body={"metadata": {"annotations": {ADAPTERS_ANNOTATION: adapters_record(pod.restarts, record)}}},
                content_type=MERGE)
        except ApiError as exc:
            log.warning("could not record the adapters of pod %s/%s: %s", pod.namespace, pod.name, exc)
            self._back_off(pod)
            return
        if loaded or unloaded:
            log.info("%s/%s: loaded %s, unloaded %s", pod.namespace, pod.name,
                     [n for n, _ in loaded] or "none", unloaded or "none")
        if failures:
            self._back_off(pod)
            for name, message in failures:
                if (pod.uid, name, message) not in self._warned:
                    self._warned.add((pod.uid, name, message))
                    await self.client.event(md.involved(), "Warning", "AdapterLoadFailed",
                                            f"replica {pod.name}: adapter {name}: {message}", FIELD_MANAGER)
        else:
            self._retry.pop(pod.uid, None)

    def _engine(self) -> httpx.AsyncClient:
        """The HTTP client for the engines (made on first use, closed by stop)."""
        if self._http is None:
            self._http = httpx.AsyncClient(trust_env=False, timeout=self.timeout)
        return self._http

    async def _post(self, url: str, body: dict[str, str], name: str, failures: list[tuple[str, str]]) -> bool:
        try:
            answer = await self._engine().post(url, json=body)
        except httpx.HTTPError as exc:
            failures.append((name, f"{type(exc).__name__}: {exc}"))
            return False
        if answer.status_code >= 400:
            failures.append((name, f"HTTP {answer.status_code}: {_message(answer)}"))
            return False
        return True

    def _back_off(self, pod: PodView) -> None:
        previous = self._retry.get(pod.uid, (0.0, 0.0))[1]
        delay = min(MAX_BACKOFF_SECONDS, max(self.interval, 2 * previous))
        self._retry[pod.uid] = (time.monotonic() + delay, delay)


def _message(answer: httpx.Response) -> str:
    """The engine's error message (OpenAI-shaped JSON, or text), one line, bounded."""
    try:
        body = answer.json()
        text = str((body.get("error") or {}).get("message") or body.get("message") or body)
    except ValueError:
        text = answer.text
    return " ".join(text.split())[:300]
