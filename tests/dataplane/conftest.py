"""Data-plane fixtures: the operator's xDS server, a real Envoy, real sim backends.

Everything listens on 127.0.0.1 ports picked by the OS. One Envoy per test module
(module-scoped ``dataplane``); sims are subprocesses (``python -m llmfleet.sim.server``)
so one can be SIGKILLed like a crashed engine. Every process is stopped by PID.
On a failure, the tails of Envoy's log and the sims' logs are attached to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from llmfleet_devcluster.envoy import EnvoyProcess, find_envoy
from llmfleet_devcluster.waiting import wait_until_serving
from llmfleet_devcluster.xds import BackgroundXdsServer
from prometheus_client import CollectorRegistry

from llmfleet.envoy.bootstrap import bootstrap
from llmfleet.envoy.xds import Nack
from llmfleet.routing.table import Cluster, Endpoint, Retry, Route, RouteTable, WeightedBackend

try:
    find_envoy()
except FileNotFoundError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"data-plane tests need Envoy: {exc}", allow_module_level=True)

LOCALHOST = "127.0.0.1"
KEEPALIVE = 0.5  # seconds between Envoy's HTTP/2 pings on the xDS connection
CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- sims


@dataclass
class Sim:
    """One ``llmfleet sim`` process on 127.0.0.1."""

    served_model: str
    logdir: Path
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(LOCALHOST, self.port)

    @property
    def log_path(self) -> Path:
        return self.logdir / f"sim-{self.served_model}-{self.port}.log"

    def start(self) -> Sim:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmfleet.sim.server", "--host", LOCALHOST, "--port", str(self.port),
                 "--served-model-name", self.served_model, "--time-scale", "0", "--output-tokens", "4",
                 "--log-level", "warning", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        wait_until_serving(self.proc, f"http://{LOCALHOST}:{self.port}/health", what=f"sim {self.served_model}",
                           timeout=timeout, log_tail=self.log_tail)

    def requests_served(self) -> int:
        """Successful generations, from the sim's own vLLM-style metrics."""
        text = httpx.get(f"http://{LOCALHOST}:{self.port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("vllm:request_success_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def kill(self) -> None:
        """SIGKILL, like a crashed engine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class SimFactory:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.sims: list[Sim] = []

    def start(self, *served_models: str, args: tuple[str, ...] = ()) -> list[Sim]:
        """Start sims in parallel and wait for all of them."""
        sims = [Sim(name, self.logdir, args).start() for name in served_models]
        self.sims += sims
        for s in sims:
            s.wait_ready()
        return sims

    def stop_all(self) -> None:
        for s in self.sims:
            s.stop()


@pytest.fixture(scope="module")
def module_sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimFactory]:
    factory = SimFactory(tmp_path_factory.mktemp("sims"))
    yield factory
    factory.stop_all()


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[SimFactory]:
    """Sims for one test (stopped at its end)."""
    factory = SimFactory(tmp_path)
    yield factory
    factory.stop_all()


# --------------------------------------------------------------------------- Envoy + xDS


@dataclass
class DataPlane:
    xds: BackgroundXdsServer
    envoy: EnvoyProcess
    xds_port: int
    listener_port: int
    registry: CollectorRegistry
    nacks: list[Nack]

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.listener_port}"

    def apply(self, table: RouteTable, timeout: float = 10.0) -> str:
        """Push ``table`` and wait until Envoy acknowledged all of it."""
        version = self.xds.update(table)
        self.xds.wait_acked(version, timeout=timeout)
        return version

    def restart_xds(self) -> None:
        """A new xDS server process-equivalent on the same port (fresh state, no table)."""
        self.xds.close()
        self.xds = _xds_server(self.listener_port, self.registry, self.nacks)
        port = self.xds.start(LOCALHOST, self.xds_port)
        assert port == self.xds_port

    def nack_count(self, type_: str) -> float:
        value = self.registry.get_sample_value("llmfleet_xds_nacks_total", {"type": type_})
        return value or 0.0


def _xds_server(listener_port: int, registry: CollectorRegistry, nacks: list[Nack]) -> BackgroundXdsServer:
    return BackgroundXdsServer(listener_port=listener_port, listener_address=LOCALHOST,
                               registry=registry, on_nack=nacks.append)


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    """xDS server (own thread) + Envoy, initialised with an empty table."""
    workdir = tmp_path_factory.mktemp("envoy")
    registry = CollectorRegistry()
    nacks: list[Nack] = []
    listener_port = free_port()
    xds = _xds_server(listener_port, registry, nacks)
    xds_port = xds.start(LOCALHOST, 0)
    envoy = EnvoyProcess(
        bootstrap(LOCALHOST, xds_port, "dataplane-test", free_port(),
                  xds_retry_base_seconds=0.1, xds_retry_max_seconds=0.5, xds_keepalive_seconds=KEEPALIVE),
        workdir)
    dp = DataPlane(xds, envoy, xds_port, listener_port, registry, nacks)
    try:
        dp.xds.update(RouteTable())
        envoy.start()
        envoy.wait_ready()
        dp.xds.wait_acked()
        yield dp
    finally:
        envoy.stop()
        dp.xds.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """On a failed data-plane test, attach Envoy's and the sims' logs."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    dp = funcargs.get("dataplane")
    if isinstance(dp, DataPlane):
        report.sections.append(("envoy log", dp.envoy.log_tail(80)))
    for key in ("sims", "module_sims"):
        factory = funcargs.get(key)
        if isinstance(factory, SimFactory):
            for s in factory.sims:
                report.sections.append((f"sim {s.served_model}:{s.port} log", s.log_tail(15)))


# --------------------------------------------------------------------------- helpers


def table_for(routes: list[Route], sims_by_cluster: dict[str, list[Sim]]) -> RouteTable:
    """A route table whose cluster "ns/<name>" holds the given sims."""
    clusters = tuple(
        Cluster(name, group[0].served_model, tuple(s.endpoint for s in group))
        for name, group in sims_by_cluster.items()
    )
    return RouteTable(routes=tuple(routes), clusters=clusters)


def split(*backends: tuple[str, int]) -> tuple[WeightedBackend, ...]:
    return tuple(WeightedBackend(c, w) for c, w in backends)


FAST_RETRY = Retry(attempts=2, per_try_timeout_seconds=10, on=("connect-failure", "reset", "503"))


@dataclass
class LoadResult:
    statuses: Counter[int]
    models: Counter[str]
    errors: list[str]
    timeline: list[tuple[float, float, str]]  # (sent, done, model or error)

    @property
    def ok(self) -> int:
        return self.statuses[200]


async def post_many(url: str, n: int, *, concurrency: int = 16, body: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None, time_limit: float = 60.0,
                    on_progress: Any = None, stop: Any = None) -> LoadResult:
    """POST /v1/chat/completions up to ``n`` times with bounded concurrency and time.

    ``on_progress(result)`` runs after each answer; ``stop(result)`` returning True
    ends the run early.
    """
    payload = {"model": "chat", **CHAT, **(body or {})}
    result = LoadResult(Counter(), Counter(), [], [])
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < n and not (stop is not None and stop(result)):
                sent += 1
                t0 = time.monotonic()
                try:
                    r = await client.post("/v1/chat/completions", json=payload, headers=headers)
                except httpx.HTTPError as exc:
                    result.errors.append(repr(exc))
                    result.timeline.append((t0, time.monotonic(), "error"))
                    continue
                result.statuses[r.status_code] += 1
                model = r.json().get("model", "?") if r.status_code == 200 else f"HTTP {r.status_code}"
                if r.status_code != 200:
                    result.errors.append(r.text[:300])
                result.models[model] += 1
                result.timeline.append((t0, time.monotonic(), model))
                if on_progress is not None:
                    on_progress(result)

        async with asyncio.timeout(time_limit):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


# --------------------------------------------------------------------------- OpenAI-ish backends


@contextlib.asynccontextmanager
async def backend(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[int]:
    """An OpenAI-ish backend on 127.0.0.1 answering chat completions with ``handle``; yields its port."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOCALHOST, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def counted() -> AsyncIterator[int]:
    """A backend whose every answer used 40 tokens: a JSON body, or a stream (with usage
    when the request asks for it)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40}
        if not body.get("stream"):
            return web.json_response({"object": "chat.completion", "model": body["model"], "choices": [],
                                      "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(10):
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async with backend(handle) as port:
        yield port


