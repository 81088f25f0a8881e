"""Routing through a real Envoy fed by our xDS server: split, rules, rewrite, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from aiohttp import web

from llmfleet.envoy.resources import CLUSTER_TYPE
from llmfleet.routing.table import Cluster, Endpoint, Route, RouteTable, Rule, RuleMatch, WeightedBackend
from tests.dataplane.conftest import (
    CHAT,
    FAST_RETRY,
    LOCALHOST,
    DataPlane,
    Sim,
    SimFactory,
    free_port,
    post_many,
    split,
    table_for,
)


@pytest.fixture(scope="module")
def ab(module_sims: SimFactory) -> tuple[Sim, Sim]:
    """Two backends serving different model names."""
    a, b = module_sims.start("model-a", "model-b")
    return a, b


def _chat_split(ab: tuple[Sim, Sim], weights: tuple[int, int], **route_kw) -> RouteTable:
    a, b = ab
    return table_for([Route("chat", split(("ai/a", weights[0]), ("ai/b", weights[1])), **route_kw)],
                     {"ai/a": [a], "ai/b": [b]})


async def test_80_20_split_each_backend_gets_its_own_model_name(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    a, b = ab
    await asyncio.to_thread(dataplane.apply, _chat_split(ab, (80, 20)))
    before = a.requests_served(), b.requests_served()

    result = await post_many(dataplane.url, 2000, concurrency=16)

    # Every request succeeded: each sim only answers to its own name, so this also
    # shows Envoy rewrote "chat" to "model-a"/"model-b" per chosen backend.
    assert result.statuses == {200: 2000}, result.errors[:3]
    assert set(result.models) == {"model-a", "model-b"}
    share_a = result.models["model-a"] / 2000
    assert 0.77 <= share_a <= 0.83, f"model-a got {share_a:.1%} of traffic, want 80% ± 3"
    # The sims' own counters agree with what clients saw.
    assert a.requests_served() - before[0] == result.models["model-a"]
    assert b.requests_served() - before[1] == result.models["model-b"]


async def test_access_log_names_model_backend_and_status(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    await asyncio.to_thread(dataplane.apply, table_for([Route("chat", split(("ai/b", 1)))], {"ai/b": [ab[1]]}))
    request_id = "access-log-probe-1"
    async with httpx.AsyncClient(base_url=dataplane.url) as client:
        r = await client.post("/v1/chat/completions", json={"model": "chat", **CHAT},
                              headers={"x-request-id": request_id})
    assert r.status_code == 200
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        lines = [json.loads(line) for line in dataplane.envoy.log_path.read_text().splitlines()
                 if line.startswith("{") and request_id in line]
        if lines or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(lines) == 1, "no access log line for the request"
    entry = lines[0]
    assert (entry["model"], entry["cluster"], entry["status"], entry["path"]) == (
        "chat", "ai/b", 200, "/v1/chat/completions")
    assert entry["upstream"] == f"{LOCALHOST}:{ab[1].port}"


async def test_weight_change_touches_only_routes(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    await asyncio.to_thread(dataplane.apply, _chat_split(ab, (80, 20)))
    cds_version = dataplane.xds.server.acked_version(CLUSTER_TYPE)
    stats_before = dataplane.envoy.stats("cluster_manager")

    await asyncio.to_thread(dataplane.apply, _chat_split(ab, (20, 80)))

    # Clusters were not re-sent, so Envoy kept its connection pools.
    assert dataplane.xds.server.acked_version(CLUSTER_TYPE) == cds_version
    stats_after = dataplane.envoy.stats("cluster_manager")
    for stat in ("cluster_manager.cds.update_success", "cluster_manager.cluster_modified",
                 "cluster_manager.cluster_added", "cluster_manager.cluster_removed"):
        assert stats_after[stat] == stats_before[stat], stat
    result = await post_many(dataplane.url, 400, concurrency=8)
    assert result.statuses == {200: 400}
    assert result.models["model-b"] > result.models["model-a"], result.models


async def test_header_rules_come_first_and_first_match_wins(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    rules = (
        Rule(RuleMatch(headers=(("x-tenant", "premium"),)), (WeightedBackend("ai/b", 1),)),
        # Never reached for premium tenants: the rule above matches first.
        Rule(RuleMatch(headers=(("x-tenant", "premium"), ("x-debug", "1"))), (WeightedBackend("ai/a", 1),)),
    )
    table = table_for([Route("chat", split(("ai/a", 1)), rules=rules)], {"ai/a": [ab[0]], "ai/b": [ab[1]]})
    await asyncio.to_thread(dataplane.apply, table)

    premium = await post_many(dataplane.url, 30, concurrency=4, headers={"x-tenant": "premium"})
    both = await post_many(dataplane.url, 30, concurrency=4, headers={"x-tenant": "premium", "x-debug": "1"})
    other = await post_many(dataplane.url, 30, concurrency=4, headers={"x-tenant": "free"})
    plain = await post_many(dataplane.url, 30, concurrency=4)

    assert premium.models == {"model-b": 30}
    assert both.models == {"model-b": 30}
    assert other.models == {"model-a": 30}
    assert plain.models == {"model-a": 30}


async def _served_by(dataplane: DataPlane, path: str = "/v1/chat/completions", body: dict | None = None,
                     headers: dict[str, str] | None = None) -> str:
    """Which backend's model answered one request (or "HTTP <status>")."""
    payload = body if body is not None else {"model": "chat", **CHAT}
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=30) as client:
        r = await client.post(path, json=payload, headers=headers)
    return r.json().get("model", "?") if r.status_code == 200 else f"HTTP {r.status_code}"


async def test_each_rule_condition_routes_as_documented(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    """Every rule sends to b; what matches none goes to a. Each condition is checked
    on a request that carries it and one that misses it by one detail."""
    to_b = (WeightedBackend("ai/b", 1),)
    rules = (
        Rule(RuleMatch(header_patterns=(("x-user", "^vip-[0-9]+$"),)), to_b),
        Rule(RuleMatch(headers_present=("x-debug",)), to_b),
        Rule(RuleMatch(endpoint="completions"), to_b),
        Rule(RuleMatch(body=(("user", "ana"),)), to_b),
        Rule(RuleMatch(body=(("metadata.tier", "gold"),)), to_b),
        Rule(RuleMatch(prompt_bytes=(2000, None)), to_b),
    )
    table = table_for([Route("chat", split(("ai/a", 1)), rules=rules)], {"ai/a": [ab[0]], "ai/b": [ab[1]]})
    await asyncio.to_thread(dataplane.apply, table)
    chat = {"model": "chat", **CHAT}
    cases = {
        "pattern": ({"headers": {"x-user": "vip-42"}}, {"headers": {"x-user": "vip-42x"}}),
        "present": ({"headers": {"x-debug": ""}}, {"headers": {"x-debugging": "1"}}),
        "endpoint": ({"path": "/v1/completions", "body": {"model": "chat", "prompt": "hi", "max_tokens": 2}},
                     {"path": "/v1/chat/completions"}),
        "user": ({"body": {**chat, "user": "ana"}}, {"body": {**chat, "user": "anna"}}),
        "metadata": ({"body": {**chat, "metadata": {"tier": "gold", "team": "x"}}},
                     {"body": {**chat, "metadata": {"tier": "silver"}}}),
        "size": ({"body": {**chat, "messages": [{"role": "user", "content": "x" * 2500}]}},
                 {"body": {**chat, "messages": [{"role": "user", "content": "x" * 100}]}}),
    }
    for name, (hit, miss) in cases.items():
        assert await _served_by(dataplane, **hit) == "model-b", name
        assert await _served_by(dataplane, **miss) == "model-a", name


async def test_a_rules_max_tokens_cap_is_enforced(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    """The sim generates exactly max_tokens, so usage shows what reached it."""
    rules = (Rule(RuleMatch(headers=(("x-tier", "free"),)), (WeightedBackend("ai/a", 1),), max_tokens=5),)
    table = table_for([Route("chat", split(("ai/a", 1)), rules=rules)], {"ai/a": [ab[0]]})
    await asyncio.to_thread(dataplane.apply, table)
    free = {"x-tier": "free"}

    async def completion_tokens(body: dict, headers: dict[str, str] | None = None) -> int:
        async with httpx.AsyncClient(base_url=dataplane.url, timeout=30) as client:
            r = await client.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT["messages"],
                                                                   **body}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"]

    assert await completion_tokens({"max_tokens": 50}, free) == 5  # lowered
    assert await completion_tokens({"max_tokens": 3}, free) == 3  # already below: kept
    assert await completion_tokens({"max_completion_tokens": 40}, free) == 5
    assert await completion_tokens({"max_tokens": None}, free) == 5  # null: capped
    assert await completion_tokens({}, free) == 5  # neither: added
    assert await completion_tokens({"max_tokens": 50}) == 50  # no rule, no cap
    # A client cannot smuggle the cap header in to cap... anyone but itself, and the
    # default route removes it.
    assert await completion_tokens({"max_tokens": 50}, {"x-llmfleet-max-tokens": "2"}) == 50


async def test_only_the_top_level_model_is_rewritten(dataplane: DataPlane) -> None:
    """The backend receives the client's body byte for byte, except the model's value."""
    received: list[bytes] = []

    async def echo(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"model": "echo-served", "choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOCALHOST, port).start()
    try:
        table = RouteTable(
            routes=(Route("chat", (WeightedBackend("ai/echo", 1),)),),
            clusters=(Cluster("ai/echo", 'echo "served" \\ name', (Endpoint(LOCALHOST, port),)),),
        )
        await asyncio.to_thread(dataplane.apply, table)
        body = (b'{"messages":[{"role":"user","content":"a \\"model\\": \\"x\\" {[","model":"nested"}],'
                b'"metadata":{"model":"keep"},"model" :  "chat","seed":1234567890123456789,"t":1.50}')
        async def chunked() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 16):
                yield body[i:i + 16]

        async with httpx.AsyncClient(base_url=dataplane.url) as client:
            r = await client.post("/v1/chat/completions", content=body,
                                  headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            # The same body sent with chunked transfer encoding, in 16-byte pieces.
            r = await client.post("/v1/chat/completions", content=chunked(),
                                  headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
        expected = body.replace(b'"model" :  "chat"', b'"model" :  "echo \\"served\\" \\\\ name"')
        assert received == [expected, expected]
        assert json.loads(received[0])["model"] == 'echo "served" \\ name'
    finally:
        await runner.cleanup()


async def test_long_prompt_is_routed_and_rewritten(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    table = table_for([Route("chat", split(("ai/b", 1)))], {"ai/b": [ab[1]]})
    await asyncio.to_thread(dataplane.apply, table)
    # 6 MiB, with "model" at the very end: json_to_metadata and the rewrite see it all.
    body = {**CHAT, "user": "x" * (6 * 1024 * 1024), "model": "chat"}
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=30) as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["model"] == "model-b"


async def test_oversized_body_is_a_413_in_openai_shape(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    await asyncio.to_thread(dataplane.apply, table_for([Route("chat", split(("ai/a", 1)))], {"ai/a": [ab[0]]}))
    async with httpx.AsyncClient(base_url=dataplane.url, timeout=30) as client:
        r = await client.post("/v1/chat/completions", json={"model": "chat", "user": "x" * (9 * 1024 * 1024)})
    assert r.status_code == 413
    assert _openai_error(r)["message"] == "The request body is larger than the 8 MiB this gateway accepts."


def _openai_error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_openai_errors_and_model_list(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    a, b = ab
    table = table_for([Route("chat", split(("ai/a", 1))), Route("code", split(("ai/b", 1)))],
                      {"ai/a": [a], "ai/b": [b]})
    await asyncio.to_thread(dataplane.apply, table)
    async with httpx.AsyncClient(base_url=dataplane.url) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 400
        assert _openai_error(r) == {"message": "You must provide a model parameter.",
                                    "type": "invalid_request_error", "param": "model", "code": None}

        r = await client.post("/v1/chat/completions", json={"model": 'gpt-"9"', **CHAT})
        assert r.status_code == 404
        assert _openai_error(r) == {"message": 'The model `gpt-"9"` does not exist.',
                                    "type": "invalid_request_error", "param": "model", "code": None}

        r = await client.post("/v1/chat/completions", content=b'{"model": "chat",',
                              headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert _openai_error(r)["type"] == "invalid_request_error"

        r = await client.get("/v1/nothing-here")
        assert r.status_code == 404
        assert _openai_error(r)["message"] == "Invalid URL (GET /v1/nothing-here)"

        r = await client.get("/v1/models")
        assert r.status_code == 200
        assert r.json() == {"object": "list", "data": [
            {"id": "chat", "object": "model", "created": 0, "owned_by": "llmfleet"},
            {"id": "code", "object": "model", "created": 0, "owned_by": "llmfleet"},
        ]}
        r = await client.get("/v1/models/code")
        assert r.status_code == 200 and r.json()["id"] == "code"

    # What an OpenAI SDK user sees.
    sdk = openai.AsyncOpenAI(base_url=f"{dataplane.url}/v1", api_key="unused", max_retries=0)
    try:
        assert [m.id async for m in sdk.models.list()] == ["chat", "code"]
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await sdk.chat.completions.create(model="nope", messages=CHAT["messages"])
        done = await sdk.chat.completions.create(model="code", messages=CHAT["messages"], max_tokens=2)
        assert done.model == "model-b"
    finally:
        await sdk.close()


async def test_no_ready_backend_is_a_503_in_openai_shape(dataplane: DataPlane, ab: tuple[Sim, Sim]) -> None:
    table = RouteTable(
        routes=(Route("chat", ()), Route("empty", (WeightedBackend("ai/gone", 1),)),
                Route("dead", (WeightedBackend("ai/dead", 1),), retry=FAST_RETRY)),
        clusters=(Cluster("ai/gone", "gone", ()),
                  # A replica that is listed but not listening: Envoy's own 503.
                  Cluster("ai/dead", "dead", (Endpoint(LOCALHOST, free_port()),))),
    )
    await asyncio.to_thread(dataplane.apply, table)
    async with httpx.AsyncClient(base_url=dataplane.url) as client:
        for model in ("chat", "empty"):
            r = await client.post("/v1/chat/completions", json={"model": model, **CHAT})
            assert r.status_code == 503
            err = _openai_error(r)
            assert err["type"] == "server_error" and f"`{model}` has no ready backend" in err["message"]
        r = await client.post("/v1/chat/completions", json={"model": "dead", **CHAT})
        assert r.status_code == 503
        assert _openai_error(r)["type"] == "server_error"
