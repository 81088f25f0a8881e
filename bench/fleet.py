"""Shared pieces of the whole-fleet benches (autoscaling, routing).

`Stack` stands up what bench_propagation.py does — the dev cluster (real kube-apiserver,
etcd, controller-manager, scheduler, KWOK and the sim fleet that runs a real `llmfleet
sim` behind every Running sim pod), `llmfleet run` as its own process, and a real Envoy
bootstrapped to the operator's xDS — and stops all of it by PID.

`open_loop` replays a list of timed requests through Envoy as streaming chat
completions (open loop: a request is sent at its time whether or not earlier ones were
answered) and measures TTFT client-side. `Sampler` polls a namespace's pods (and
optionally one ModelDeployment) every ~0.25 s for replica counts. Everything talks to
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import httpx
import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmfleet_devcluster.cluster import DevCluster, free_port, node_pools_from_env  # noqa: E402
from llmfleet_devcluster.envoy import EnvoyProcess  # noqa: E402
from llmfleet_devcluster.operator_process import OperatorProcess  # noqa: E402
from llmfleet_devcluster.simfleet import FleetView  # noqa: E402

from llmfleet.envoy.bootstrap import bootstrap  # noqa: E402

GROUP, VERSION = "llmfleet.io", "v1alpha1"
MD_LABEL = "llmfleet.io/model-deployment"


def pair(text: str) -> tuple[int, int]:
    """`LO:HI` on the command line."""
    lo, hi = (int(x) for x in text.split(":"))
    return lo, hi


def write_result(path: Path, result: dict, note: str = "") -> int:
    """Write a bench's JSON next to its printed table; the exit code of a finished run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"JSON: {path}{note}")
    return 0


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# --------------------------------------------------------------------------- objects

def sim_md(namespace: str, name: str, served: str, sim_args: list[str], *, replicas: int = 1,
           autoscaling: dict | None = None, cost_per_replica_hour: float | None = None) -> dict:
    """A `sim` ModelDeployment whose replicas run with `sim_args` (engine.extraArgs)."""
    spec: dict = {
        "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "servedName": served},
        "engine": {"kind": "sim", "maxModelLen": 8192, "extraArgs": [str(a) for a in sim_args]},
        "replicas": replicas,
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    if cost_per_replica_hour is not None:
        spec["cost"] = {"perReplicaHour": cost_per_replica_hour}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def route_policy(namespace: str, name: str, model: str, backends: list[dict], **spec: object) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RoutePolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": model, "backends": backends, **spec}}


# --------------------------------------------------------------------------- the stack

def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class Stack:
    """Dev cluster + operator process + Envoy; `with Stack(...) as s:` stops everything."""

    def __init__(self, prefix: str, *, autoscale_interval: float, operator_args: list[str] | None = None) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"llmfleet-bench-{prefix}-"))
        self.autoscale_interval = autoscale_interval
        self.operator_args = list(operator_args or [])
        self.cluster: DevCluster | None = None
        self.operator: OperatorProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self._stops: list[Callable[[], None]] = []

    def __enter__(self) -> Stack:
        # A TERM (a timeout, a stopped job) unwinds through __exit__ as an exception does,
        # so no operator or Envoy of the bench outlives it.
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _exit_on_term)
            self._stops.append(lambda: signal.signal(signal.SIGTERM, previous))
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.cluster = DevCluster(node_pools_from_env(), workdir=self.work / "cluster").start()
        self._stops.append(self.cluster.stop)
        self.cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.cluster.wait_established("routepolicies.llmfleet.io", "modeldeployments.llmfleet.io", timeout=30)
        self.operator = OperatorProcess(self.cluster.kubeconfig, self.cluster.logdir)
        self.operator.autoscale_interval = self.autoscale_interval
        self.operator.extra_args = self.operator_args
        self.operator.start()
        self._stops.append(self.operator.stop)
        self.envoy = EnvoyProcess(bootstrap("127.0.0.1", self.operator.xds_port, "bench", free_port()),
                                  self.work / "envoy")
        self.envoy.start()
        self._stops.append(self.envoy.stop)
        self.envoy.wait_ready(timeout=60)
        self.fleet = FleetView(self.cluster.logdir)
        self.api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        self._stops.append(self.api.close)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def stop(self) -> None:
        while self._stops:
            try:
                self._stops.pop()()
            except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                print(f"warning: stopping a component failed: {exc}", file=sys.stderr)

    @property
    def logdir(self) -> Path:
        return self.cluster.logdir

    @property
    def url(self) -> str:
        """Envoy's OpenAI chat endpoint."""
        return f"http://127.0.0.1:{self.operator.envoy_listener_port}/v1/chat/completions"

    def new_api(self) -> client.ApiClient:
        """A separate API client (one per thread)."""
        return config.new_client_from_config(config_file=str(self.cluster.kubeconfig))

    def apply(self, docs: list[dict], timeout: float = 60) -> None:
        namespaces = sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")})
        for ns in namespaces:
            self.cluster.kubectl("create", "namespace", ns, check=False)
        deadline = time.monotonic() + timeout
        manifest = yaml.safe_dump_all(docs)
        while (proc := self.cluster.kubectl("apply", "-f", "-", input=manifest, check=False)).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not apply the bench objects: {proc.stderr}")
            time.sleep(0.5)  # the namespace's default ServiceAccount may not exist yet

    def md(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", name)

    def rp(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "routepolicies", name)

    def wait(self, check: Callable[[], object], timeout: float, what: str, period: float = 0.2) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if value := check():
                    return value
            except client.ApiException:
                pass
            time.sleep(period)
        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")

    def wait_programmed(self, namespace: str, name: str, timeout: float = 30) -> dict:
        def programmed():
            rp = self.rp(namespace, name)
            status = rp.get("status") or {}
            if status.get("observedGeneration") != rp["metadata"].get("generation"):
                return None
            ok = any(c["type"] == "Programmed" and c["status"] == "True" for c in status.get("conditions") or [])
            return rp if ok else None
        return self.wait(programmed, timeout, f"RoutePolicy {namespace}/{name} Programmed")

    def wait_served(self, model: str, timeout: float = 60, expect: str | None = None) -> None:
        """Until Envoy answers a short request for `model` (from the backend serving `expect`)."""
        body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=10, trust_env=False) as http:
            def served():
                try:
                    r = http.post(self.url, json=body)
                except httpx.HTTPError:
                    return False
                return r.status_code == 200 and (expect is None or r.json().get("model") == expect)
            self.wait(served, timeout, f"Envoy to serve {model}", period=0.1)

    def delete_namespace(self, namespace: str, timeout: float = 90) -> None:
        """Delete a namespace and wait until its sim processes are gone (frees the CPU)."""
        self.cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        self.wait(lambda: not any(k.startswith(f"{namespace}/") for k in self.fleet.replicas()), timeout,
                  f"the sim replicas of {namespace} to stop", period=0.5)


# --------------------------------------------------------------------------- sampling

@dataclass
class Sample:
    t: float  # monotonic
    ready: int  # Ready pods (what serves)
    existing: int  # pods that exist and are not terminating (what holds a GPU, loading ones included)
    spec_replicas: int | None = None
    load: dict | None = None
    reason: str | None = None


class Watcher(threading.Thread):
    """A daemon thread that polls until `stop()`; `run()` loops on `self._stop_event`."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


class Sampler(Watcher):
    """Polls a namespace's sim pods (those of one ModelDeployment, and it) every `period` seconds."""

    def __init__(self, stack: Stack, namespace: str, md_name: str | None = None, *, period: float = 0.25,
                 on_sample: Callable[[Sample, dict | None], None] | None = None) -> None:
        super().__init__(f"sampler-{namespace}")
        self.stack, self.namespace, self.md_name, self.period = stack, namespace, md_name, period
        self.on_sample = on_sample
        self.samples: list[Sample] = []
        self.errors: list[str] = []

    def run(self) -> None:
        api = self.stack.new_api()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        try:
            while not self._stop_event.is_set():
                start = time.monotonic()
                try:
                    self._sample(core, custom)
                except Exception as exc:  # noqa: BLE001 - an API hiccup loses one sample, not the bench
                    self.errors.append(f"{time.monotonic():.1f}: {exc}")
                self._stop_event.wait(max(0.0, self.period - (time.monotonic() - start)))
        finally:
            api.close()

    def _sample(self, core, custom) -> None:
        selector = f"{MD_LABEL}={self.md_name}" if self.md_name else MD_LABEL
        raw = core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False)
        pods = json.loads(raw.data)["items"]
        ready = existing = 0
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            existing += 1
            if status.get("phase") == "Running" and any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
                ready += 1
        md = None
        sample = Sample(time.monotonic(), ready, existing)
        if self.md_name:
            md = custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "modeldeployments", self.md_name)
            st = md.get("status") or {}
            sample.spec_replicas = md["spec"].get("replicas")
            sample.load = st.get("load")
            sample.reason = st.get("scaleReason")
        self.samples.append(sample)
        if self.on_sample:
            self.on_sample(sample, md)


def replica_seconds(samples: list[Sample], start: float, end: float, attr: str = "ready") -> float:
    """∫ count dt over [start, end] (wall seconds), holding each sample until the next."""
    total = 0.0
    pts = [s for s in samples if s.t <= end]
    for i, s in enumerate(pts):
        nxt = pts[i + 1].t if i + 1 < len(pts) else end
        a, b = max(s.t, start), min(nxt, end)
        if b > a:
            total += getattr(s, attr) * (b - a)
    return total


# --------------------------------------------------------------------------- load

@dataclass
class Request:
    at: float  # wall seconds after the start of the replay
    prompt_tokens: int
    max_tokens: int


@dataclass
class Result:
    at: float  # scheduled time (wall, from the replay's start)
    ok: bool
    status: int = 0  # HTTP status; 0 when no response
    lag: float = 0.0  # how late it was sent (the generator's own delay), wall seconds
    ttft: float | None = None  # scheduled time -> first token chunk, wall seconds
    e2e: float | None = None  # scheduled time -> end of stream
    tokens: int = 0  # completion tokens (from the usage chunk)
    model: str | None = None  # the served name that answered (Envoy rewrites "model" per backend)
    error: str | None = None


_PROMPTS: dict[int, str] = {}
_MODEL_RE = re.compile(rb'"model":"([^"]*)"')
_USAGE_RE = re.compile(rb'"completion_tokens":(\d+)')


def _prompt(tokens: int) -> str:
    # Chat overhead is 3 per message + 3 for the reply; every 4-char word is one token.
    n = max(1, tokens - 6)
    if n not in _PROMPTS:
        _PROMPTS[n] = " ".join(["data"] * n)
    return _PROMPTS[n]


async def _one(session: aiohttp.ClientSession, url: str, model: str, req: Request, t0: float,
               timeout: float) -> Result:
    sent = time.monotonic()
    res = Result(req.at, False, lag=sent - (t0 + req.at))
    body = {"model": model, "max_tokens": req.max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": _prompt(req.prompt_tokens)}]}
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body) as resp:
                res.status = resp.status
                if resp.status != 200:
                    res.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return res
                tail = b""
                async for chunk in resp.content.iter_any():
                    if res.ttft is None and b"data: {" in chunk:
                        res.ttft = time.monotonic() - (t0 + req.at)
                        if m := _MODEL_RE.search(chunk):
                            res.model = m.group(1).decode()
                    tail = (tail + chunk)[-4096:]
                res.e2e = time.monotonic() - (t0 + req.at)
                if b"data: [DONE]" not in tail:
                    res.error = "stream ended without [DONE]"
                    return res
                if m := _USAGE_RE.search(tail):
                    res.tokens = int(m.group(1))
                res.ok = res.ttft is not None
                if not res.ok:
                    res.error = "no token"
    except TimeoutError:
        res.error = f"client timeout after {timeout:g}s"
    except aiohttp.ClientError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    return res


def open_loop(url: str, model: str, requests: list[Request], *, timeout: float, max_in_flight: int = 2000,
              on_start: Callable[[float], None] | None = None,
              stop: threading.Event | None = None) -> tuple[list[Result], float]:
    """Send every request at its time (open loop); return the results and the start time.

    Bounded: len(requests) requests, each at most `timeout` seconds; a request due while
    `max_in_flight` are open is counted as failed (never queued in the client). Setting
    `stop` ends the replay early (requests not yet due are not sent).
    """
    async def main() -> tuple[list[Result], float]:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            t0 = time.monotonic()
            if on_start:
                on_start(t0)
            tasks: list[asyncio.Task] = []
            results: list[Result | None] = []
            in_flight = 0

            async def run(i: int, req: Request) -> None:
                nonlocal in_flight
                try:
                    results[i] = await _one(session, url, model, req, t0, timeout)
                finally:
                    in_flight -= 1

            for req in requests:
                delay = t0 + req.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop is not None and stop.is_set():
                    break
                results.append(None)
                if in_flight >= max_in_flight:
                    results[-1] = Result(req.at, False, error="client in-flight cap reached")
                    continue
                in_flight += 1
                tasks.append(asyncio.create_task(run(len(results) - 1, req)))
            if tasks:
                await asyncio.wait(tasks, timeout=timeout + 5)
            for t in tasks:
                t.cancel()
            return [r or Result(0, False, error="cancelled") for r in results], t0

    return asyncio.run(main())


def result_dicts(results: list[Result]) -> list[dict]:
    return [asdict(r) for r in results]


@dataclass
class Summary:
    sent: int
    ok: int
    failed: int
    errors: dict[str, int] = field(default_factory=dict)


def summarize(results: list[Result]) -> Summary:
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "?").split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    ok = sum(r.ok for r in results)
    return Summary(len(results), ok, len(results) - ok, errors)
