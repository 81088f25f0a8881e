"""Tenants at a real Envoy: who gets in, with which key, to which model; errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from llmfleet.routing.table import (
    BudgetLimit,
    Cluster,
    Endpoint,
    RateLimit,
    Route,
    RouteTable,
    Rule,
    RuleMatch,
    TenantAccess,
    TokenPrices,
    WeightedBackend,
)
from tests.dataplane.conftest import CHAT, LOCALHOST, DataPlane, backend
from tests.helpers import wait_for

A_KEY, B_KEY, ALL_KEY = "sk-team-a-0123456789", "sk-team-b-0123456789", "sk-all-0123456789"


Echo = tuple[int, list[dict[str, str]]]  # the backend's port, the headers of each request it saw


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """A backend that answers every model and remembers each request's headers: (port, headers seen)."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        body = await request.json()
        return web.json_response({"object": "chat.completion", "model": body["model"], "choices": []})

    async with backend(handle) as port:
        yield port, seen


def _table(port: int, tenants: tuple[TenantAccess, ...] | None) -> RouteTable:
    cluster = Cluster("ai/echo", "echo", (Endpoint(LOCALHOST, port),))
    return RouteTable(routes=(Route("chat", (WeightedBackend("ai/echo", 100),)),
                              Route("embed", (WeightedBackend("ai/echo", 100),))),
                      clusters=(cluster,), tenants=tenants)


TENANTS = (TenantAccess("ai/team-a", (A_KEY,), ("chat",)), TenantAccess("ai/team-b", (B_KEY,), ("embed",)),
           TenantAccess("ops/all", (ALL_KEY,), ("*",)))


async def _post(dp: DataPlane, model: str, key: str | None = None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient(base_url=dp.url, timeout=10) as client:
        return await client.post("/v1/chat/completions", json={"model": model, **CHAT}, headers=headers)


async def test_without_tenants_the_ingress_stays_open(dataplane: DataPlane, echo: Echo) -> None:
    dataplane.apply(_table(echo[0], None))
    r = await _post(dataplane, "chat")
    assert r.status_code == 200, r.text


async def test_keys_and_models_decide_who_gets_in(dataplane: DataPlane, echo: Echo) -> None:
    dataplane.apply(_table(echo[0], TENANTS))

    r = await _post(dataplane, "chat")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key" and "didn't provide an API key" in r.text

    r = await _post(dataplane, "chat", "sk-nobody")
    assert r.status_code == 401 and r.json()["error"]["message"] == "Incorrect API key provided."

    r = await _post(dataplane, "embed", A_KEY)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == {"message": "Your API key may not call the model `embed`.",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_allowed"}

    for model, key in (("chat", A_KEY), ("embed", B_KEY), ("chat", ALL_KEY), ("embed", ALL_KEY)):
        r = await _post(dataplane, model, key)
        assert r.status_code == 200, (model, r.text)
        assert r.json()["model"] == "echo"

    async with httpx.AsyncClient(base_url=dataplane.url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200, "the readiness probe needs no key"
        assert (await client.get("/v1/models")).status_code == 401
        for key, models in ((B_KEY, ["embed"]), (ALL_KEY, ["chat", "embed"])):
            listed = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert listed.status_code == 200 and [m["id"] for m in listed.json()["data"]] == models, listed.text
        claimed = await client.get("/v1/models", headers={"Authorization": f"Bearer {B_KEY}",
                                                          "x-llmfleet-tenant": "ops/all"})
        assert [m["id"] for m in claimed.json()["data"]] == ["embed"], "the list of the key's tenant, not a claimed one"
        one = await client.get("/v1/models/chat", headers={"Authorization": f"Bearer {B_KEY}"})
        assert one.status_code == 403 and one.json()["error"]["code"] == "model_not_allowed", one.text
        one = await client.get("/v1/models/chat", headers={"Authorization": f"Bearer {A_KEY}"})
        assert one.status_code == 200 and one.json()["id"] == "chat"


async def test_the_engine_sees_the_tenant_never_the_key(dataplane: DataPlane, echo: Echo) -> None:
    dataplane.apply(_table(echo[0], TENANTS))
    r = await _post(dataplane, "chat", A_KEY, **{"x-llmfleet-tenant": "ops/all"})  # a claim it cannot make
    assert r.status_code == 200
    headers = echo[1][-1]
    assert headers["x-llmfleet-tenant"] == "ai/team-a"
    assert "authorization" not in headers
    # Nor does Envoy's admin interface show a key.
    status, dump = dataplane.envoy.admin("/config_dump")
    assert status == 200 and "ai/team-a" in dump
    assert not any(key in dump for key in (A_KEY, B_KEY, ALL_KEY))


async def test_a_rotated_key_replaces_the_old_one(dataplane: DataPlane, echo: Echo) -> None:
    port = echo[0]
    dataplane.apply(_table(port, TENANTS))
    assert (await _post(dataplane, "chat", A_KEY)).status_code == 200
    rotated = (TenantAccess("ai/team-a", ("sk-team-a-rotated",), ("chat",)), *TENANTS[1:])
    dataplane.apply(_table(port, rotated))
    assert (await _post(dataplane, "chat", A_KEY)).status_code == 401
    assert (await _post(dataplane, "chat", "sk-team-a-rotated")).status_code == 200
    assert dataplane.nacks == []


async def test_tenants_without_keys_let_nobody_in(dataplane: DataPlane, echo: Echo) -> None:
    dataplane.apply(_table(echo[0], (TenantAccess("ai/team-a", (), ("chat",)),)))
    assert (await _post(dataplane, "chat")).status_code == 401
    assert (await _post(dataplane, "chat", A_KEY)).status_code == 401
    assert dataplane.nacks == []


# --------------------------------------------------------------------------- rate limits


def _limited(dp: DataPlane, port: int, tenants: tuple[TenantAccess, ...], service: bool = True) -> RouteTable:
    return dataclasses.replace(_table(port, tenants),
                               rate_limit_service=Endpoint(LOCALHOST, dp.xds_port) if service else None)


async def _burst(dp: DataPlane, n: int, key: str, **body: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=dp.url, timeout=10, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                                  json={"model": "chat", **CHAT, **body}) for _ in range(n)))


@pytest.mark.parametrize("local", [False, True], ids=["global", "local"])
async def test_a_request_limit_admits_its_burst_and_refuses_the_rest(dataplane: DataPlane, counted: int,
                                                                     local: bool) -> None:
    limit = RateLimit(5, 1, 5, local=local)
    tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",), requests=limit),
               TenantAccess("ai/team-b", (B_KEY,), ("*",), requests=limit),
               TenantAccess("ops/all", (ALL_KEY,), ("*",)))
    # A local limit is Envoy's own bucket: there is no service to ask.
    dataplane.apply(_limited(dataplane, counted, tenants, service=not local))
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=10) as client:
        for _ in range(10):  # probes naming a tenant spend nothing of its limits
            assert (await client.get("/healthz", headers={"x-llmfleet-tenant": "ai/team-a"})).status_code == 200
    answers = await _burst(dataplane, 20, A_KEY)
    assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 15
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.headers["content-type"] == "application/json"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests", refused.text
    where = " on this Envoy replica" if local else ""
    assert error["message"] == (f"Rate limit reached for requests of tenant ai/team-a: limit 5 per second{where}. "
                                "Please try again in 1s.")
    # The other tenant's bucket is its own; a tenant without a limit is never refused.
    assert [r.status_code for r in await _burst(dataplane, 5, B_KEY)] == [200] * 5
    assert [r.status_code for r in await _burst(dataplane, 30, ALL_KEY)] == [200] * 30
    # A second later the bucket has refilled.
    await asyncio.sleep(1.1)
    assert sorted(r.status_code for r in await _burst(dataplane, 6, A_KEY)) == [200] * 5 + [429]


async def test_a_local_bucket_outlives_route_and_endpoint_changes(dataplane: DataPlane, counted: int) -> None:
    # Envoy builds a route configuration's per-route filter state anew with each update;
    # the buckets are in the listener's filter, so weights that move, keys that rotate and
    # tenants that come never hand out a fresh burst.
    tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",), requests=RateLimit(5, 60, 5, local=True)),)
    table = _limited(dataplane, counted, tenants, service=False)
    dataplane.apply(table)
    assert sorted(r.status_code for r in await _burst(dataplane, 10, A_KEY)) == [200] * 5 + [429] * 5
    (cluster,) = table.clusters
    for changed in (
        dataclasses.replace(table, clusters=(dataclasses.replace(  # a replica more: endpoints only
            cluster, endpoints=(*cluster.endpoints, Endpoint(LOCALHOST, counted))),)),
        _limited(dataplane, counted, (*tenants, TenantAccess("ai/team-b", (B_KEY,), ("*",))),  # the routes
                 service=False),
    ):
        dataplane.apply(changed)
        assert [r.status_code for r in await _burst(dataplane, 3, A_KEY)] == [429] * 3
    # A changed limit is a new bucket (the listener changes): it starts full.
    dataplane.apply(_limited(dataplane, counted, (dataclasses.replace(
        tenants[0], requests=RateLimit(6, 60, 6, local=True)),), service=False))
    assert sorted(r.status_code for r in await _burst(dataplane, 10, A_KEY)) == [200] * 6 + [429] * 4


async def test_a_local_limit_says_its_own_wait(dataplane: DataPlane, counted: int) -> None:
    slow = (TenantAccess("ai/team-a", (A_KEY,), ("*",), requests=RateLimit(10, 60, 1, local=True)),)
    dataplane.apply(_limited(dataplane, counted, slow, service=False))
    answers = await _burst(dataplane, 2, A_KEY)
    assert sorted(r.status_code for r in answers) == [200, 429]
    assert next(r for r in answers if r.status_code == 429).headers["retry-after"] == "6"  # a token every 6 s


async def test_a_token_limit_holds_within_one_response(dataplane: DataPlane, counted: int) -> None:
    tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",), tokens=RateLimit(100, 60, 100)),)
    dataplane.apply(_limited(dataplane, counted, tenants))
    statuses = []
    for body in ({}, {"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}, {}):
        async with httpx.AsyncClient(base_url=dataplane.url, timeout=10) as client:
            r = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {A_KEY}"},
                                  json={"model": "chat", **CHAT, **body})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["type"] == "tokens"
                assert int(r.headers["retry-after"]) >= 1
    # 40 (JSON usage) + 40 (stream usage) + 10 (a stream without usage: one per event)
    # = 90 of 100: the fourth still goes; it takes 40 more, to -30.
    assert statuses == [200, 200, 200, 200]
    # Envoy reports a response's tokens once its stream is done, a moment after the client has it.
    wait_for(lambda: dataplane.registry.get_sample_value(
        "llmfleet_ratelimit_tokens_total", {"tenant": "ai/team-a"}) == 130, timeout=5,
        what="the service counting each response's tokens")
    r = (await _burst(dataplane, 1, A_KEY))[0]
    assert r.status_code == 429, "the bucket is below zero: refused until it refills"


async def test_without_the_service_requests_go_through(dataplane: DataPlane, counted: int) -> None:
    tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",), requests=RateLimit(1, 60, 1)),)
    dataplane.apply(_limited(dataplane, counted, tenants, service=False))
    assert [r.status_code for r in await _burst(dataplane, 3, A_KEY)] == [200] * 3


async def test_a_concurrency_cap_admits_that_many_in_flight_and_frees_each_slot(dataplane: DataPlane) -> None:
    async def slow(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(0.5)
        return web.json_response({"object": "chat.completion", "model": body["model"], "choices": []})

    async with backend(slow) as port:
        tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",), max_concurrent=3),)
        dataplane.apply(_limited(dataplane, port, tenants))
        answers = await _burst(dataplane, 6, A_KEY)
        assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 3
        refused = next(r for r in answers if r.status_code == 429)
        assert "at most 3 at once" in refused.json()["error"]["message"], refused.text
        # Every slot came back when its stream ended (the refused ones never held one).
        await asyncio.sleep(0.3)
        assert sorted(r.status_code for r in await _burst(dataplane, 4, A_KEY)) == [200] * 3 + [429]


async def test_a_spent_budget_refuses_with_insufficient_quota(dataplane: DataPlane, counted: int) -> None:
    # Each answer: 30 prompt and 10 completion tokens, at $1 and $10 per million: $0.00013.
    budget = BudgetLimit("day", dollars=0.0005)  # spent by the fourth answer
    tenants = (TenantAccess("ai/team-a", (A_KEY,), ("*",), budgets=(budget,)),)
    table = _limited(dataplane, counted, tenants)
    (cluster,) = table.clusters
    dataplane.apply(dataclasses.replace(table, clusters=(dataclasses.replace(
        cluster, prices=TokenPrices(1e-6, 1e-5)),)))
    statuses = []
    for _ in range(8):  # one after another: each charged when it ends
        statuses.append((await _burst(dataplane, 1, A_KEY))[0].status_code)
        await asyncio.sleep(0.05)
        if statuses[-1] == 429:
            break
    assert statuses == [200, 200, 200, 200, 429]
    refused = (await _burst(dataplane, 1, A_KEY))[0]
    assert refused.json()["error"]["code"] == "insufficient_quota" and int(refused.headers["retry-after"]) > 0


async def test_rules_match_the_authenticated_tenant_never_a_claimed_one(dataplane: DataPlane,
                                                                        echo: Echo) -> None:
    port = echo[0]
    premium = Rule(RuleMatch(headers=(("x-llmfleet-tenant", "ops/all"),)), (WeightedBackend("ai/premium", 100),))
    table = RouteTable(
        routes=(Route("chat", (WeightedBackend("ai/echo", 100),), rules=(premium,)),),
        clusters=(Cluster("ai/echo", "echo", (Endpoint(LOCALHOST, port),)),
                  Cluster("ai/premium", "premium", (Endpoint(LOCALHOST, port),))),
        tenants=TENANTS)
    dataplane.apply(table)
    r = await _post(dataplane, "chat", ALL_KEY)
    assert r.status_code == 200 and r.json()["model"] == "premium", "ops/all's requests take its rule"
    r = await _post(dataplane, "chat", A_KEY, **{"x-llmfleet-tenant": "ops/all"})
    assert r.status_code == 200 and r.json()["model"] == "echo", "a claimed tenant takes nobody's rule"


async def test_a_route_policys_budget_refuses_everyone_once_spent(dataplane: DataPlane, counted: int) -> None:
    # No tenants: the ingress is open, and the policy's budget counts every request's tokens.
    budget = BudgetLimit("day", dollars=0.0005)  # 4 answers at $0.00013
    table = RouteTable(routes=(Route("chat", (WeightedBackend("ai/echo", 100),), budgets=(budget,),
                                     budget_subject="routepolicy:ai/chat"),),
                       clusters=(Cluster("ai/echo", "echo", (Endpoint(LOCALHOST, counted),), TokenPrices(1e-6, 1e-5)),),
                       rate_limit_service=Endpoint(LOCALHOST, dataplane.xds_port))
    dataplane.apply(table)
    statuses = []
    for _ in range(8):
        statuses.append((await _post(dataplane, "chat")).status_code)
        await asyncio.sleep(0.05)
        if statuses[-1] == 429:
            break
    assert statuses == [200, 200, 200, 200, 429]
    refused = await _post(dataplane, "chat", A_KEY)  # a key changes nothing: the ingress has no tenants
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and "RoutePolicy ai/chat" in error["message"]


async def test_a_spent_downgrading_budget_sends_its_traffic_to_the_cheapest_backend(dataplane: DataPlane,
                                                                                  echo: Echo) -> None:
    port = echo[0]
    clusters = (Cluster("ai/big", "big", (Endpoint(LOCALHOST, port),)),
                Cluster("ai/cheap", "cheap", (Endpoint(LOCALHOST, port),)))
    route = Route("chat", (WeightedBackend("ai/big", 100),), cheapest="ai/cheap")
    # A tenant's budget: its requests (authenticated, never claimed) go to the cheapest backend.
    tenants = (dataclasses.replace(TENANTS[0], downgraded=True), *TENANTS[1:])
    dataplane.apply(RouteTable(routes=(route,), clusters=clusters, tenants=tenants))
    assert (await _post(dataplane, "chat", A_KEY)).json()["model"] == "cheap"
    assert (await _post(dataplane, "chat", ALL_KEY)).json()["model"] == "big"
    claimed = await _post(dataplane, "chat", ALL_KEY, **{"x-llmfleet-tenant": "ai/team-a"})
    assert claimed.json()["model"] == "big", "claiming a downgraded tenant's name changes nothing"
    # The policy's budget: everyone's requests.
    dataplane.apply(RouteTable(routes=(dataclasses.replace(route, downgraded=True),), clusters=clusters))
    assert [(await _post(dataplane, "chat")).json()["model"] for _ in range(3)] == ["cheap"] * 3
