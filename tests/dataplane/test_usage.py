"""Usage accounting through a real Envoy: every request counted per tenant, model and
backend, with its tokens and what they cost."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llmfleet.routing.table import Cluster, Endpoint, Route, RouteTable, TenantAccess, TokenPrices, WeightedBackend
from tests.dataplane.conftest import CHAT, LOCALHOST, DataPlane
from tests.dataplane.test_tenants import A_KEY, B_KEY
from tests.helpers import wait_for

PRICES = TokenPrices(input=0.5 / 1e6, output=2.0 / 1e6)  # $0.50 and $2 per million tokens


def _table(port: int, tenants: tuple[TenantAccess, ...] | None) -> RouteTable:
    return RouteTable(
        routes=(Route("chat", (WeightedBackend("ai/priced", 100),)),
                Route("embed", (WeightedBackend("ai/free", 100),))),
        clusters=(Cluster("ai/priced", "priced", (Endpoint(LOCALHOST, port),), PRICES),
                  Cluster("ai/free", "free", (Endpoint(LOCALHOST, port),))),
        tenants=tenants)


def _value(dp: DataPlane, name: str, **labels: str) -> float:
    return dp.registry.get_sample_value(name, labels) or 0.0


async def _send(dp: DataPlane, n: int, model: str, key: str | None, **body: object) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=dp.url, timeout=10) as client:
        answers = await asyncio.gather(*(client.post("/v1/chat/completions", headers=headers,
                                                     json={"model": model, **CHAT, **body}) for _ in range(n)))
    assert [r.status_code for r in answers] == [200] * n, answers[0].text


def _counts(dp: DataPlane, tenant: str, model: str, backend: str) -> tuple[float, float, float, float]:
    """(requests answered 200, prompt tokens, completion tokens, cost) so far."""
    labels = {"tenant": tenant, "model": model, "backend": backend}
    return (_value(dp, "llmfleet_usage_requests_total", **labels, code="200"),
            _value(dp, "llmfleet_usage_tokens_total", **labels, kind="prompt"),
            _value(dp, "llmfleet_usage_tokens_total", **labels, kind="completion"),
            _value(dp, "llmfleet_usage_cost_total", **labels))


async def test_counters_equal_the_requests_their_tokens_and_their_cost(dataplane: DataPlane, counted: int) -> None:
    tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",)), TenantAccess("ai/team-b", (B_KEY,), ("*",)))
    dataplane.apply(_table(counted, tenants))
    a, b = ("ai/team-a", "chat", "ai/priced"), ("ai/team-b", "embed", "ai/free")
    a0, b0 = _counts(dataplane, *a), _counts(dataplane, *b)

    await _send(dataplane, 12, "chat", A_KEY)  # JSON answers: 30 prompt + 10 completion tokens each
    await _send(dataplane, 5, "chat", A_KEY, stream=True, stream_options={"include_usage": True})  # the same
    await _send(dataplane, 7, "embed", B_KEY)
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=10) as client:  # refused: counted, as nobody's
        assert (await client.post("/v1/chat/completions", json={"model": "chat", **CHAT})).status_code == 401

    def delta(labels: tuple[str, str, str], start: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(round(now - then, 9) for now, then in zip(_counts(dataplane, *labels), start, strict=True))

    # Envoy sends its log entries every second.
    wait_for(lambda: delta(a, a0)[0] == 17 and delta(b, b0)[0] == 7, timeout=10, what="every request counted")
    _, prompt, completion, cost = delta(a, a0)
    assert (prompt, completion) == (17 * 30, 17 * 10)
    assert cost == pytest.approx(17 * (30 * PRICES.input + 10 * PRICES.output), rel=1e-9)
    assert delta(b, b0) == (7, 7 * 30, 7 * 10, 0), "a backend without a cost costs nothing"
    wait_for(lambda: _value(dataplane, "llmfleet_usage_requests_total", tenant="", model="chat", backend="",
                            code="401") >= 1, timeout=10, what="the refused request counted")
    streams = dataplane.registry.get_sample_value("llmfleet_usage_time_to_first_token_seconds_count",
                                                  dict(zip(("tenant", "model", "backend"), a, strict=True)))
    assert streams is not None and streams >= 5
