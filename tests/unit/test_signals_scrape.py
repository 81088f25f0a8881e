"""Scraping: error capture and concurrency with a mock transport, then real sims on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from llmfleet.signals.parse import RawSample
from llmfleet.signals.scrape import ScrapeError, Scraper, ScrapeTarget, scrape
from llmfleet.sim.config import OutputLength, SimConfig
from llmfleet.sim.server import SimServer, start_sim

pytestmark = pytest.mark.timeout(30)

VLLM_TEXT = (Path(__file__).parent.parent / "data" / "metrics" / "vllm.txt").read_text()


def mock_client(handler: Callable[[httpx.Request], object]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), trust_env=False)


def target(key: str, path: str = "/metrics", kind: str = "vllm") -> ScrapeTarget:
    return ScrapeTarget(key, f"http://10.0.0.1:8000{path}", kind)


def test_target_for_pod_uses_the_engines_metrics_path():
    assert ScrapeTarget.for_pod("p", "10.1.2.3", "vllm").url == "http://10.1.2.3:8000/metrics"
    assert ScrapeTarget.for_pod("p", "10.1.2.3", "tensorrt-llm").url == (
        "http://10.1.2.3:8000/prometheus/metrics"
    )
    assert ScrapeTarget.for_pod("p", "fd00::5", "sim", port=9000).url == "http://[fd00::5]:9000/metrics"


async def test_every_failure_is_captured_not_raised():
    async def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/ok":
            assert "text/plain" in request.headers["accept"]
            return httpx.Response(200, text=VLLM_TEXT)
        if path == "/refused":
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/slow":
            await asyncio.sleep(5)
        if path == "/reset":
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        if path == "/status":
            return httpx.Response(503, text="loading")
        if path == "/garbage":
            return httpx.Response(200, text='vllm:num_requests_running{engine="0" oops\n')
        if path == "/json":  # e.g. trtllm-serve's /metrics, which is JSON
            return httpx.Response(200, json=[{"iter": 1}])
        raise RuntimeError("boom")

    paths = ["/ok", "/refused", "/slow", "/reset", "/status", "/garbage", "/json", "/boom"]
    async with mock_client(handler) as client:
        results = await scrape([target(p, p) for p in paths], client, timeout=0.2)
    assert isinstance(results["/ok"], RawSample) and results["/ok"].queue_depth == 4
    reasons = {p: r.reason for p, r in results.items() if isinstance(r, ScrapeError)}
    assert reasons == {
        "/refused": "connect",
        "/slow": "timeout",
        "/reset": "http",
        "/status": "status",
        "/garbage": "parse",
        "/json": "missing_metrics",
        "/boom": "error",
    }
    assert "vllm:num_requests_waiting" in results["/json"].detail
    assert str(results["/status"]) == "status: HTTP 503"


async def test_concurrency_is_bounded():
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, text=VLLM_TEXT)

    async with mock_client(handler) as client:
        results = await scrape([target(f"r{i}") for i in range(12)], client, concurrency=3)
    assert len(results) == 12 and all(isinstance(r, RawSample) for r in results.values())
    assert peak == 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_scraper_rounds_track_rates_failures_and_forget():
    counters = {"a": 0, "b": 0}
    down = set()

    async def handler(request: httpx.Request) -> httpx.Response:
        key = request.url.host.split(".")[0]
        if key in down:
            raise httpx.ConnectError("refused", request=request)
        counters[key] += 100
        return httpx.Response(
            200,
            text=(
                'vllm:num_requests_waiting{engine="0"} 1\n'
                'vllm:num_requests_running{engine="0"} 3\n'
                'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
                f'vllm:generation_tokens_total{{engine="0"}} {counters[key]}\n'
            ),
        )

    def t(key: str) -> ScrapeTarget:
        return ScrapeTarget(key, f"http://{key}.pods:8000/metrics", "sim")

    clock = FakeClock()
    async with mock_client(handler) as client:
        scraper = Scraper(client, clock=clock)
        first = await scraper.round({"md": [t("a"), t("b")], "empty": []})
        assert first["empty"] is None
        load = first["md"]
        assert load is not None and (load.sampled_replicas, load.failed_replicas) == (0, 2)

        clock.now += 2
        load = (await scraper.round({"md": [t("a"), t("b")]}))["md"]
        assert load is not None and load.fresh
        assert load.tokens_per_second == pytest.approx(50.0)  # 100 tokens / 2 s each
        assert load.queue_depth == 1 and load.running_requests == 3 and load.last_activity == 102.0

        down.add("b")
        clock.now += 2
        load = (await scraper.round({"md": [t("a"), t("b")]}))["md"]
        assert load is not None and (load.sampled_replicas, load.failed_replicas) == (1, 1)
        assert not load.fresh
        assert scraper.errors["b"].reason == "connect"

        # b is gone from the ModelDeployment: forgotten; a keeps its baseline.
        clock.now += 2
        load = (await scraper.round({"md": [t("a")]}))["md"]
        assert load is not None and load.fresh and load.tokens_per_second == pytest.approx(50.0)
        assert scraper.tracker.replica_keys == {"a"}

        # A round without the ModelDeployment drops it (complete=True).
        await scraper.round({})
        assert scraper.tracker.replica_keys == frozenset()


# -- real simulators over 127.0.0.1 ------------------------------------------------------

@pytest.fixture
async def sims() -> AsyncIterator[list[SimServer]]:
    # Real time, a batch of 2: requests queue up and take ~0.4 s each (40 tokens x 10 ms).
    config = SimConfig(host="127.0.0.1", port=0, seed=0, time_scale=1.0, max_num_seqs=2,
                       output_tokens=OutputLength("fixed", 40.0))
    servers = [await start_sim(config), await start_sim(config)]
    yield servers
    for server in servers:
        await server.stop()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_scrape_two_real_sims_under_load_and_a_dead_replica(sims: list[SimServer]):
    targets = [
        ScrapeTarget(f"sim-{i}", f"http://127.0.0.1:{s.port}/metrics", "sim") for i, s in enumerate(sims)
    ]
    targets.append(ScrapeTarget("dead", f"http://127.0.0.1:{dead_port()}/metrics", "sim"))
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        scraper = Scraper(client, timeout=1.0)
        first = (await scraper.round({"ns/md": targets}))["ns/md"]
        assert first is not None and first.sampled_replicas == 0 and first.failed_replicas == 3

        # 5 requests per sim: 2 run, 3 wait.
        requests = [
            asyncio.create_task(
                client.post(f"http://127.0.0.1:{s.port}/v1/completions",
                            json={"model": "sim-model", "prompt": "hello world"})
            )
            for s in sims
            for _ in range(5)
        ]
        await asyncio.sleep(0.6)
        load = (await scraper.round({"ns/md": targets}))["ns/md"]
        assert load is not None
        assert (load.sampled_replicas, load.failed_replicas, load.fresh) == (2, 1, False)
        assert scraper.errors["dead"].reason == "connect"
        assert load.running_requests == 2  # per replica: the batch is full
        assert 1 <= load.queue_depth <= 3
        assert 0 < load.kv_cache_utilization < 1
        # 2 sequences x ~98 decode steps/s at most; the box may be slower.
        assert 20 < load.tokens_per_second < 400
        assert load.last_activity is not None and load.time - 1 < load.last_activity <= load.time

        responses = await asyncio.gather(*requests)
        assert all(r.status_code == 200 for r in responses)
        load = (await scraper.round({"ns/md": targets[:2]}))["ns/md"]
        assert load is not None and load.fresh
        assert load.queue_depth == 0 and load.running_requests == 0
        assert load.requests_per_second > 0 and load.ttft_p50_seconds is not None
