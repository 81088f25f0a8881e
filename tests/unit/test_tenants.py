"""Tenants → what the ingress enforces and each Tenant's status (pure), and its Envoy config."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import CollectorRegistry, Counter

from llmfleet.api.models import SpecError, parse_tenant_spec
from llmfleet.controller.operator import parse_endpoint
from llmfleet.envoy.ratelimit import RateLimitService
from llmfleet.envoy.resources import (
    ACCESS_FILTER,
    AUTH_FILTER,
    CLUSTER_TYPE,
    LISTENER_TYPE,
    LOCAL_RATE_LIMIT_FILTER,
    RATE_LIMIT_FILTER,
    ROUTE_TYPE,
    build_config,
    build_resources,
)
from llmfleet.kube.views import ModelDeploymentView, RoutePolicyView, SecretView, TenantView
from llmfleet.routing.budgets import budget_report, policy_subject
from llmfleet.routing.policy import compute_routing
from llmfleet.routing.ratelimit import (
    REQUESTS,
    SLOT_SECONDS,
    TOKENS,
    Decision,
    Limiter,
    LocalBucket,
    Spend,
    local_bucket,
    window_end,
    window_start,
)
from llmfleet.routing.table import (
    BudgetLimit,
    Cluster,
    Endpoint,
    RateLimit,
    Route,
    RouteTable,
    TenantAccess,
    TokenPrices,
    WeightedBackend,
)
from llmfleet.routing.tenants import compute_tenants
from llmfleet.status.conditions import rfc3339

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def _tenant(name: str, secret: str = "", models: tuple[str, ...] = ("chat",), *, created: str = "2026-12-01T00:00:00Z",
            limits: dict | None = None, namespace: str = "ai") -> TenantView:
    spec = {"apiKeys": {"secretName": secret or f"{name}-keys"}, "models": list(models)}
    if limits:
        spec["limits"] = limits
    return TenantView.from_body({"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}",
                                              "generation": 1, "creationTimestamp": created}, "spec": spec})


def _secret(name: str, namespace: str = "ai", **values: str | bytes) -> SecretView:
    data = {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in values.items()}
    return SecretView.from_body({"metadata": {"namespace": namespace, "name": name}, "data": data})


def test_no_tenant_leaves_the_ingress_open() -> None:
    access, results = compute_tenants([], [_secret("x", k="sk-1")], ["chat"], 0.0)
    assert access is None and results == []


def test_keys_models_and_limits_reach_the_ingress() -> None:
    tenant = _tenant("team-a", models=("chat", "embed"),
                     limits={"requests": {"limit": 5, "per": "second"}, "tokens": {"limit": 6000}})
    access, results = compute_tenants([tenant], [_secret("team-a-keys", old="sk-old\n", new="sk-new")], ["chat"], 0.0)
    assert access == (TenantAccess("ai/team-a", ("sk-new", "sk-old"), ("chat", "embed"),
                                   RateLimit(5, 1, 5), RateLimit(6000, 60, 6000)),)
    assert not access[0].requests.local  # global unless the spec says local
    tenant = _tenant("team-a", limits={"requests": {"limit": 5, "per": "second", "scope": "local"}})
    access, _ = compute_tenants([tenant], [_secret("team-a-keys", k="sk-1")], ["chat"], 0.0)
    assert access[0].requests == RateLimit(5, 1, 5, local=True)
    (result,) = results
    assert result.keys == 2 and result.ready.status and result.ready.reason == "KeysAccepted"
    assert "no RoutePolicy serves embed" in result.ready.message


def test_a_missing_secret_fails_closed_and_says_how_to_fix_it() -> None:
    access, results = compute_tenants([_tenant("team-a")], [], ["chat"], 0.0)
    assert access == (), "a Tenant exists, so the ingress asks every request for a key"
    assert not results[0].ready.status and results[0].ready.reason == "SecretNotFound"
    assert "kubectl label secret team-a-keys llmfleet.io/api-keys=true" in results[0].ready.message


def test_a_key_two_tenants_claim_stays_with_the_older_and_is_never_quoted() -> None:
    older = _tenant("team-a", created="2026-12-01T00:00:00Z")
    newer = _tenant("team-b", created="2026-12-02T00:00:00Z")
    secrets = [_secret("team-a-keys", k="sk-shared"), _secret("team-b-keys", mine="sk-b", copied="sk-shared")]
    access, results = compute_tenants([newer, older], secrets, ["chat"], 0.0)
    assert access is not None
    assert {t.name: t.keys for t in access} == {"ai/team-a": ("sk-shared",), "ai/team-b": ("sk-b",)}
    b = next(r for r in results if r.name == "team-b")
    assert not b.ready.status and b.ready.reason == "KeyConflict" and b.keys == 1
    assert "entry 'copied' holds a key of Tenant ai/team-a" in b.ready.message
    assert all("sk-" not in r.ready.message for r in results)


def test_empty_and_binary_entries_are_named_not_accepted() -> None:
    access, results = compute_tenants([_tenant("team-a")], [_secret("team-a-keys", blank="  ", raw=b"\xff\xfe")],
                                      ["chat"], 0.0)
    assert access is not None and access[0].keys == ()
    assert results[0].ready.reason == "NoKeys"
    assert "entry 'blank' is empty" in results[0].ready.message
    assert "entry 'raw' is not UTF-8 text" in results[0].ready.message


def test_keys_never_show_in_a_repr() -> None:
    secret = _secret("team-a-keys", k="sk-very-secret")
    access, _ = compute_tenants([_tenant("team-a")], [secret], ["chat"], 0.0)
    assert "sk-very-secret" not in repr(secret) + repr(access) + repr(RouteTable(tenants=access))


def test_a_refused_spec_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"spec\.models: .*at least 1"):
        parse_tenant_spec({"apiKeys": {"secretName": "k"}, "models": []})
    with pytest.raises(SpecError, match=r"spec\.models: .*only once"):
        parse_tenant_spec({"apiKeys": {"secretName": "k"}, "models": ["chat", "chat"]})
    with pytest.raises(SpecError, match=r"spec\.limits\.requests\.scope: .*'global' or 'local'"):
        parse_tenant_spec({"apiKeys": {"secretName": "k"}, "models": ["chat"],
                           "limits": {"requests": {"limit": 5, "scope": "cluster"}}})
    tenant = TenantView.from_body({"metadata": {"namespace": "ai", "name": "t", "generation": 2},
                                   "spec": {"apiKeys": {"secretName": "k"}, "models": ["chat"],
                                            "limits": {"requests": {"limit": 0}}}})
    _, (result,) = compute_tenants([tenant], [], [], 0.0)
    assert result.ready.reason == "InvalidSpec" and "spec.limits.requests.limit" in result.ready.message


# --------------------------------------------------------------------------- Envoy


def _table(tenants: tuple[TenantAccess, ...] | None) -> RouteTable:
    return RouteTable(
        routes=(Route("chat", (WeightedBackend("ai/a", 100),)), Route("embed", (WeightedBackend("ai/a", 100),))),
        clusters=(Cluster("ai/a", "a", (Endpoint("10.0.0.1", 8000),)),),
        tenants=tenants,
    )


def test_without_tenants_no_route_asks_for_a_key() -> None:
    config = build_config(_table(None), listener_port=8080)
    host = config[ROUTE_TYPE][0]["virtual_hosts"][0]
    assert "typed_per_filter_config" not in host
    assert all(ACCESS_FILTER not in r.get("typed_per_filter_config", {}) for r in host["routes"])


def test_tenants_never_change_the_listener() -> None:
    """Keys come and go through RDS: a listener change would drain every connection. Only
    local request limits are in the listener (their buckets outlive route updates there)."""
    tenants = (TenantAccess("ai/a", ("sk-1",), ("chat",), requests=RateLimit(5, 1, 5), tokens=RateLimit(9, 60, 9)),)
    assert build_resources(_table(None), listener_port=8080)[LISTENER_TYPE] == \
        build_resources(_table(tenants), listener_port=8080)[LISTENER_TYPE]
    local = (TenantAccess("ai/a", ("sk-1",), ("chat",), requests=RateLimit(5, 1, 5, local=True)),)
    rotated = (dataclasses.replace(local[0], keys=("sk-2",), models=("*",)), TenantAccess("ai/b", ("sk-3",), ("*",)))
    with_local = build_resources(_table(local), listener_port=8080)[LISTENER_TYPE]
    assert with_local != build_resources(_table(tenants), listener_port=8080)[LISTENER_TYPE]
    assert with_local == build_resources(_table(rotated), listener_port=8080)[LISTENER_TYPE]


def test_each_model_admits_only_its_tenants() -> None:
    tenants = (TenantAccess("ai/a", ("sk-a2", "sk-a1"), ("chat",)), TenantAccess("ai/all", ("sk-x",), ("*",)))
    host = build_config(_table(tenants), listener_port=8080)[ROUTE_TYPE][0]["virtual_hosts"][0]
    auth = host["typed_per_filter_config"][AUTH_FILTER]
    assert auth["credentials"] == [{"key": "sk-a1", "client": "ai/a"}, {"key": "sk-a2", "client": "ai/a"},
                                   {"key": "sk-x", "client": "ai/all"}]
    assert auth["forwarding"] == {"header": "x-llmfleet-tenant", "hide_credentials": True}

    def admitted(route_name: str) -> list[str]:
        route = next(r for r in host["routes"] if r["name"] == route_name)
        policies = route["typed_per_filter_config"][ACCESS_FILTER]["rbac"]["rules"]["policies"]
        return [p["header"]["string_match"]["exact"] for p in policies.get("tenants", {}).get("principals", [])]

    assert admitted("chat") == ["ai/a", "ai/all"]
    assert admitted("embed") == ["ai/all"]
    build_resources(_table(tenants), listener_port=8080)  # every field is one Envoy knows


def test_a_model_nobody_may_call_refuses_everyone() -> None:
    host = build_config(_table((TenantAccess("ai/a", ("k",), ("chat",)),)), listener_port=8080)[ROUTE_TYPE][0]
    embed = next(r for r in host["virtual_hosts"][0]["routes"] if r["name"] == "embed")
    assert embed["typed_per_filter_config"][ACCESS_FILTER]["rbac"]["rules"] == {"action": "ALLOW", "policies": {}}


# --------------------------------------------------------------------------- rate limits


def test_a_request_bucket_admits_its_burst_then_its_rate() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(5, 1, 5)),))
    answers = [limiter.decide("ai/a", REQUESTS, 1, now=100.0) for _ in range(7)]
    assert [d.allowed for d in answers] == [True] * 5 + [False] * 2
    assert answers[4].remaining == 0 and answers[5].retry_after == 1
    assert limiter.decide("ai/a", REQUESTS, 1, now=100.2).allowed, "one more after a fifth of a second"
    assert not limiter.decide("ai/a", REQUESTS, 1, now=100.2).allowed
    assert [limiter.decide("ai/a", REQUESTS, 1, now=200.0).allowed for _ in range(6)] == [True] * 5 + [False], \
        "a long pause refills to the burst, no more"


def test_a_per_minute_limit_says_when_to_come_back() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(6, 60, 2)),))
    assert [limiter.decide("ai/a", REQUESTS, 1, now=0.0).allowed for _ in range(3)] == [True, True, False]
    assert limiter.decide("ai/a", REQUESTS, 1, now=0.0).retry_after == 10  # one request per 10 s


def test_tokens_are_checked_before_and_taken_after() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",), tokens=RateLimit(100, 60, 100)),))
    for _ in range(3):
        assert limiter.decide("ai/a", TOKENS, 0, now=0.0).allowed
        assert limiter.decide("ai/a", TOKENS, 40, now=0.0).allowed  # a response's tokens are never refused
    refused = limiter.decide("ai/a", TOKENS, 0, now=0.0)
    assert not refused.allowed and refused.retry_after == 13  # 20 below zero at 100/min: 12 s, and a bit
    assert limiter.decide("ai/a", TOKENS, 0, now=13.0).allowed


def test_tenants_without_limits_and_unknown_tenants_pass() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",)),))
    assert limiter.decide("ai/a", REQUESTS, 1, now=0.0) == Decision(True)
    assert limiter.decide("ai/nobody", TOKENS, 0, now=0.0) == Decision(True)


def test_reconfiguring_keeps_the_level_of_an_unchanged_limit() -> None:
    """A key rotation, or another tenant's change, must not hand out a fresh burst."""
    limiter = Limiter()
    a = TenantAccess("ai/a", ("k1",), ("*",), requests=RateLimit(5, 60, 5))
    limiter.configure((a,))
    for _ in range(5):
        limiter.decide("ai/a", REQUESTS, 1, now=0.0)
    limiter.configure((dataclasses.replace(a, keys=("k2",)), TenantAccess("ai/b", ("k3",), ("*",))))
    assert not limiter.decide("ai/a", REQUESTS, 1, now=0.0).allowed
    limiter.configure((dataclasses.replace(a, requests=RateLimit(10, 60, 10)),))
    assert limiter.decide("ai/a", REQUESTS, 1, now=0.0).allowed, "a new limit starts a new bucket"


def test_the_service_answers_envoy_in_openai_terms() -> None:
    registry = CollectorRegistry()
    service = RateLimitService(Counter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                               Counter("t", "t", ["tenant"], registry=registry), clock=lambda: 0.0)
    service.configure(RouteTable(tenants=(TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(1, 60, 1)),)))

    def ask() -> rls_pb2.RateLimitResponse:
        request = rls_pb2.RateLimitRequest(domain="llmfleet")
        descriptor = request.descriptors.add()
        descriptor.entries.add(key="tenant", value="ai/a")
        descriptor.entries.add(key="limit", value="requests")
        return service.decide(request)

    assert ask().overall_code == rls_pb2.RateLimitResponse.OK
    refused = ask()
    assert refused.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert {h.key: h.value for h in refused.response_headers_to_add} == {
        "retry-after": "60", "content-type": "application/json"}
    error = json.loads(refused.raw_body)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert error["message"] == ("Rate limit reached for requests of tenant ai/a: limit 1 per minute. "
                                "Please try again in 60s.")
    assert registry.get_sample_value("d_total", {"tenant": "ai/a", "limit": "requests", "decision": "refused"}) == 1


def test_the_example_tenant_is_valid() -> None:
    secret, tenant = yaml.safe_load_all((EXAMPLES / "tenant-team-a.yaml").read_text())
    spec = parse_tenant_spec(tenant["spec"])
    assert spec.api_keys.secret_name == secret["metadata"]["name"]
    assert "llmfleet.io/api-keys" in secret["metadata"]["labels"]


def test_the_leaders_address_is_read_from_the_lease_annotation() -> None:
    assert parse_endpoint("10.1.2.3:18000") == Endpoint("10.1.2.3", 18000)
    assert parse_endpoint("[fd00::1]:18000") == Endpoint("fd00::1", 18000)
    assert parse_endpoint(None) is None and parse_endpoint("operator:18000") is None


def test_envoy_asks_the_leaders_service_only_about_limited_tenants() -> None:
    def config(*tenants: TenantAccess) -> tuple[list[dict], dict]:
        table = dataclasses.replace(_table(tenants), rate_limit_service=Endpoint("10.0.0.9", 18000))
        built = build_config(table, listener_port=8080)
        return built[CLUSTER_TYPE], built[ROUTE_TYPE][0]["virtual_hosts"][0]["typed_per_filter_config"]

    clusters, host = config(TenantAccess("ai/a", ("k",), ("*",)))
    assert "llmfleet_ratelimit" not in [c["name"] for c in clusters] and RATE_LIMIT_FILTER not in host

    clusters, host = config(TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(5, 1, 5)))
    (service,) = [c for c in clusters if c["name"] == "llmfleet_ratelimit"]
    assert service["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "10.0.0.9", "port_value": 18000}}
    (requests,) = host[RATE_LIMIT_FILTER]["rate_limits"]
    assert requests["actions"][1]["generic_key"]["descriptor_value"] == "requests"

    _, host = config(TenantAccess("ai/a", ("k",), ("*",), tokens=RateLimit(100, 60, 100)))
    check, charge = host[RATE_LIMIT_FILTER]["rate_limits"]
    assert check["hits_addend"] == {"number": 0} and "apply_on_stream_done" not in check
    assert charge["apply_on_stream_done"] and charge["hits_addend"] == {"format": "%DYNAMIC_METADATA(llmfleet:tokens)%"}


def test_a_local_request_limit_is_envoys_own_bucket_and_never_asks_the_service() -> None:
    local = TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(10, 60, 3, local=True))
    table = dataclasses.replace(_table((local, TenantAccess("ai/b", ("k2",), ("*",)))),
                                rate_limit_service=Endpoint("10.0.0.9", 18000))
    built = build_config(table, listener_port=8080)
    host = built[ROUTE_TYPE][0]["virtual_hosts"][0]["typed_per_filter_config"]
    assert RATE_LIMIT_FILTER not in host and "llmfleet_ratelimit" not in [c["name"] for c in built[CLUSTER_TYPE]]
    # In the listener's filter, whose buckets outlive route updates (weights, keys).
    (local_filter,) = [f for f in _http_filters(built) if f["name"] == LOCAL_RATE_LIMIT_FILTER]
    assert not local_filter.get("disabled") and LOCAL_RATE_LIMIT_FILTER not in host
    (descriptor,) = local_filter["typed_config"]["descriptors"]
    assert descriptor == {"entries": [{"key": "tenant", "value": "ai/a"}, {"key": "limit", "value": "requests"}],
                          "token_bucket": {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "6.000000000s"}}
    # Its refusal's text and wait are ready for the tenant's requests (the reroute Lua).
    lua = host["llmfleet.reroute"]["source_code"]["inline_string"]
    assert '["ai/a"] = {"Rate limit reached for requests of tenant ai/a: limit 10 per minute on this Envoy ' \
           'replica. Please try again in 6s.", "6"}' in lua and "ai/b" not in lua
    # The probe spends nothing of it; the leader's limiter does not count it.
    (health,) = [r for r in built[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"] if r["name"] == "healthz"]
    assert health["typed_per_filter_config"][LOCAL_RATE_LIMIT_FILTER]["disabled"]
    limiter = Limiter()
    limiter.configure([local])
    assert all(limiter.decide("ai/a", REQUESTS, 1, 0.0).allowed for _ in range(20))
    # A global one is the service's again.
    built = build_config(dataclasses.replace(table, tenants=(dataclasses.replace(
        local, requests=RateLimit(10, 60, 3)),)), listener_port=8080)
    host = built[ROUTE_TYPE][0]["virtual_hosts"][0]["typed_per_filter_config"]
    assert host[RATE_LIMIT_FILTER]["rate_limits"]
    (local_filter,) = [f for f in _http_filters(built) if f["name"] == LOCAL_RATE_LIMIT_FILTER]
    assert local_filter["disabled"] and "descriptors" not in local_filter["typed_config"]


def _http_filters(built: dict) -> list[dict]:
    (listener,) = built[LISTENER_TYPE]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


@pytest.mark.parametrize(("limit", "bucket"), [
    (RateLimit(5, 1, 5), LocalBucket(5, 1, 0.2)),
    (RateLimit(10, 60, 3), LocalBucket(3, 1, 6.0)),
    # Faster than a fill per 50 ms: several tokens per fill, at the same rate.
    (RateLimit(1000, 1, 2000), LocalBucket(2000, 50, 0.05)),
    (RateLimit(30, 1, 30), LocalBucket(30, 2, 2 / 30)),
    # A burst below one fill is raised to it.
    (RateLimit(1000, 1, 10), LocalBucket(50, 50, 0.05)),
])
def test_a_local_bucket_keeps_the_rate_in_whole_tokens_a_fill_at_most_every_50_ms(limit, bucket) -> None:
    got = local_bucket(limit)
    assert (got.size, got.tokens) == (bucket.size, bucket.tokens)
    assert got.fill_seconds == pytest.approx(bucket.fill_seconds) and got.fill_seconds >= 0.05
    assert got.tokens / got.fill_seconds == pytest.approx(limit.per_second)
    assert got.retry_after == max(1, -(-bucket.fill_seconds // 1))


def test_a_concurrency_cap_counts_requests_in_flight_by_their_id() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",), max_concurrent=2),))
    assert [limiter.take_slot("ai/a", rid, now=0.0).allowed for rid in ("r1", "r2", "r3")] == [True, True, False]
    limiter.release_slot("ai/a", "r1")
    limiter.release_slot("ai/a", "never-taken")  # a refused request's end: nothing to give back
    assert limiter.take_slot("ai/a", "r4", now=1.0).allowed
    assert not limiter.take_slot("ai/a", "r5", now=1.0).allowed
    assert limiter.take_slot("ai/a", "r6", now=1.0 + SLOT_SECONDS + 1).allowed, "a slot whose end was lost expires"


def _ask_request(service: RateLimitService, request_id: str) -> rls_pb2.RateLimitResponse:
    """What Envoy asks before one request of tenant ai/a: its request limit and a slot."""
    request = rls_pb2.RateLimitRequest(domain="llmfleet")
    for kind in ("requests", "concurrency"):
        descriptor = request.descriptors.add()
        descriptor.entries.add(key="tenant", value="ai/a")
        descriptor.entries.add(key="limit", value=kind)
        descriptor.entries.add(key="request", value=request_id)
    return service.decide(request)


def test_a_request_refused_by_another_limit_gives_its_slot_back() -> None:
    registry = CollectorRegistry()
    service = RateLimitService(Counter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                               Counter("t", "t", ["tenant"], registry=registry), clock=lambda: 0.0)
    service.configure(RouteTable(tenants=(
        TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(1, 60, 1), max_concurrent=5),)))

    def ask(request_id: str) -> rls_pb2.RateLimitResponse:
        return _ask_request(service, request_id)

    assert ask("r1").overall_code == rls_pb2.RateLimitResponse.OK
    assert ask("r2").overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT  # the request bucket is empty
    assert [service.limiter.take_slot("ai/a", f"x{i}", now=0.0).allowed for i in range(5)] == [True] * 4 + [False], \
        "r1 holds one slot; r2's was given back"


def test_a_request_refused_by_its_concurrency_cap_leaves_its_request_limit_untouched() -> None:
    registry = CollectorRegistry()
    service = RateLimitService(Counter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                               Counter("t", "t", ["tenant"], registry=registry), clock=lambda: 0.0)
    service.configure(RouteTable(tenants=(
        TenantAccess("ai/a", ("k",), ("*",), requests=RateLimit(3, 60, 3), max_concurrent=1),)))

    def ask(request_id: str) -> rls_pb2.RateLimitResponse:
        return _ask_request(service, request_id)

    assert ask("r1").overall_code == rls_pb2.RateLimitResponse.OK  # holds the one slot
    assert [ask(f"r{i}").overall_code for i in range(2, 7)] == [rls_pb2.RateLimitResponse.OVER_LIMIT] * 5
    service.limiter.release_slot("ai/a", "r1")
    assert [ask(f"s{i}").overall_code for i in range(2)] == [rls_pb2.RateLimitResponse.OK,
                                                            rls_pb2.RateLimitResponse.OVER_LIMIT], \
        "two requests of the three left: the refused ones took none"
    service.limiter.release_slot("ai/a", "s0")
    assert ask("s2").overall_code == rls_pb2.RateLimitResponse.OK
    refused = ask("s3")
    assert json.loads(refused.raw_body)["error"]["type"] == "requests", "now the request limit itself is spent"


# --------------------------------------------------------------------------- budgets

DAY = BudgetLimit("day", dollars=1.0)
NOON = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC).timestamp()


def test_periods_are_calendar_periods_in_utc() -> None:
    assert window_start("hour", NOON + 1799) == NOON
    assert window_start("day", NOON) == NOON - 12 * 3600
    assert window_start("month", NOON) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    assert window_end("month", window_start("month", NOON)) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    assert window_end("day", window_start("day", NOON)) == window_start("day", NOON) + 86400


def test_a_spent_budget_refuses_until_its_next_period() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",), budgets=(DAY, BudgetLimit("hour", tokens=100,
                                                                                     action="notify"))),))
    limiter.charge("ai/a", 0.6, 60, NOON)
    assert limiter.check_budgets("ai/a", NOON).allowed, "the hourly token budget only notifies"
    limiter.charge("ai/a", 0.5, 50, NOON + 1)
    refused = limiter.check_budgets("ai/a", NOON + 2)
    assert not refused.allowed and refused.retry_after == 12 * 3600 - 2
    assert limiter.check_budgets("ai/a", NOON + 12 * 3600).allowed, "a new day starts from nothing"


def test_a_new_leader_starts_from_the_spend_its_predecessor_recorded() -> None:
    limiter = Limiter()
    limiter.configure((TenantAccess("ai/a", ("k",), ("*",), budgets=(DAY,)),))
    limiter.seed("ai/a", "day", Spend(window_start("day", NOON), 1.2, 500), NOON)
    assert not limiter.check_budgets("ai/a", NOON).allowed
    limiter.seed("ai/b", "day", Spend(window_start("day", NOON) - 86400, 9.0, 1), NOON)  # yesterday's: ignored
    assert limiter.spending("ai/a", NOON)[0][1].dollars == 1.2


def test_the_report_says_the_spend_and_marks_crossings_once() -> None:
    spend = Spend(window_start("day", NOON), 0.85, 400)
    report = budget_report([(DAY, spend)], {})
    assert report.budgets == [{"period": "day", "windowStart": "2026-12-03T00:00:00Z", "spentDollars": 0.85,
                               "spentTokens": 400, "usedPercent": 85.0}]
    assert [e[1] for e in report.events] == ["BudgetWarning"] and not report.exceeded.status
    assert budget_report([(DAY, spend)], {"day": 0.85}).events == [], "no second Event for the same crossing"
    spent = budget_report([(DAY, Spend(spend.window, 1.01, 500))], {"day": 0.85})
    assert spent.exceeded.status and [e[1] for e in spent.events] == ["BudgetExceeded"]
    assert "day budget: 1.01 of 1.00 spent" in spent.exceeded.message


def _ask_budget(service: RateLimitService, subject: tuple[str, str], kind: str, hits: int,
                cluster: str = "") -> rls_pb2.RateLimitResponse:
    """What Envoy sends for a budget: whose, the kind, the tokens (and the answering cluster)."""
    request = rls_pb2.RateLimitRequest(domain="llmfleet")
    descriptor = request.descriptors.add()
    descriptor.entries.add(key=subject[0], value=subject[1])
    descriptor.entries.add(key="limit", value=kind)
    if cluster:
        descriptor.entries.add(key="destination_cluster", value=cluster)
    descriptor.hits_addend.value = hits
    return service.decide(request)


def test_the_service_charges_each_kind_of_token_at_the_answering_backends_price() -> None:
    registry = CollectorRegistry()
    service = RateLimitService(Counter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                               Counter("t", "t", ["tenant"], registry=registry), wall=lambda: NOON)
    table = RouteTable(clusters=(Cluster("ai/a", "a", (), TokenPrices(1e-3, 1e-2)),),
                       tenants=(TenantAccess("ai/t", ("k",), ("*",), budgets=(BudgetLimit("day", dollars=0.5),)),))
    service.configure(table)

    def ask(kind: str, hits: int, cluster: str = "") -> rls_pb2.RateLimitResponse:
        return _ask_budget(service, ("tenant", "ai/t"), kind, hits, cluster)

    ask("spent-prompt", 100, "fallback-for:chat:ai/a")  # a policy's copy of ai/a: its price
    ask("spent-completion", 40, "ai/a")
    (_, spend), = service.limiter.spending("ai/t", NOON)
    assert (spend.dollars, spend.tokens) == (pytest.approx(0.1 + 0.4), 140)
    refused = ask("budget", 0)
    assert refused.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert json.loads(refused.raw_body)["error"]["code"] == "insufficient_quota"


# --------------------------------------------------------------------------- RoutePolicy budgets, downgrade


def _policy_view(budgets: list[dict], status_budgets: list[dict] | None = None) -> RoutePolicyView:
    return RoutePolicyView.from_body({
        "metadata": {"namespace": "ai", "name": "chat", "uid": "u", "generation": 1,
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"model": "chat", "backends": [{"modelDeployment": "big", "weight": 80},
                                               {"modelDeployment": "small", "weight": 20}],
                 "budgets": budgets},
        "status": {"budgets": status_budgets or []}})


def _md(name: str, price: float | None) -> ModelDeploymentView:
    spec: dict = {"model": {"uri": "hf://org/m", "servedName": name}, "engine": {"kind": "sim"}, "replicas": 1}
    if price is not None:
        spec["cost"] = {"perReplicaHour": 1.0, "perMillionOutputTokens": price}
    return ModelDeploymentView.from_body({"metadata": {"namespace": "ai", "name": name, "uid": name, "generation": 1},
                                          "spec": spec})


ENDPOINTS = {("ai", "big"): (Endpoint("10.0.0.1", 8000),), ("ai", "small"): (Endpoint("10.0.0.2", 8000),)}


def _spent_row(period: str, now: float, used: float = 100.0) -> dict:
    return {"period": period, "windowStart": rfc3339(window_start(period, now)), "spentDollars": 1.0,
            "spentTokens": 10, "usedPercent": used}


def test_a_policys_budgets_are_counted_under_its_own_name_and_its_cheapest_backend_is_known() -> None:
    mds = [_md("big", 10.0), _md("small", 0.5)]
    routing = compute_routing([_policy_view([{"period": "day", "dollars": 5}])], mds, ENDPOINTS, now=NOON)
    (route,) = routing.table.routes
    assert route.budget_subject == policy_subject("ai", "chat") == "routepolicy:ai/chat"
    assert route.budgets == (BudgetLimit("day", dollars=5.0),)
    assert route.cheapest == "ai/small" and not route.downgraded
    # Without a price, a backend is never the cheapest; with none priced there is none.
    assert compute_routing([_policy_view([])], [_md("big", 10.0), _md("small", None)], ENDPOINTS).table \
        .routes[0].cheapest == "ai/big"
    assert compute_routing([_policy_view([])], [_md("big", None), _md("small", None)], ENDPOINTS).table \
        .routes[0].cheapest is None


def test_a_spent_downgrading_budget_in_the_current_period_sends_all_traffic_to_the_cheapest_backend() -> None:
    mds = [_md("big", 10.0), _md("small", 0.5)]
    budget = {"period": "day", "dollars": 1, "action": "downgrade"}

    def route(rows: list[dict], now: float = NOON) -> Route:
        return compute_routing([_policy_view([budget], rows)], mds, ENDPOINTS, now=now).table.routes[0]

    assert route([_spent_row("day", NOON)]).downgraded
    assert not route([_spent_row("day", NOON, used=99.0)]).downgraded
    assert not route([_spent_row("day", NOON)], now=NOON + 86400).downgraded, "yesterday's spend: a new day"
    refusing = compute_routing([_policy_view([{"period": "day", "dollars": 1}], [_spent_row("day", NOON)])],
                               mds, ENDPOINTS, now=NOON).table.routes[0]
    assert not refusing.downgraded, "a refusing budget refuses (the rate-limit service), it does not reroute"

    table = dataclasses.replace(compute_routing([_policy_view([budget], [_spent_row("day", NOON)])], mds, ENDPOINTS,
                                                now=NOON).table)
    routes = {r["name"]: r for r in build_config(table, listener_port=1)[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"]}
    assert routes["chat"]["route"]["cluster"] == "ai/small" and "chat/rule-0" not in routes


def test_a_tenant_whose_downgrading_budget_is_spent_gets_each_models_cheapest_backend_others_the_split() -> None:
    tenant = TenantView.from_body({
        "metadata": {"namespace": "ai", "name": "team", "uid": "t", "generation": 1,
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"apiKeys": {"secretName": "keys"}, "models": ["*"],
                 "budgets": [{"period": "month", "tokens": 1000, "action": "downgrade"}]},
        "status": {"budgets": [_spent_row("month", NOON)]}})
    access, _ = compute_tenants([tenant], [_secret("keys", k="sk-1")], ["chat"], NOON)
    assert access is not None and access[0].downgraded
    mds = [_md("big", 10.0), _md("small", 0.5)]
    table = dataclasses.replace(compute_routing([_policy_view([])], mds, ENDPOINTS).table, tenants=access)
    routes = build_config(table, listener_port=1)[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"]
    chat = [r for r in routes if r["name"].startswith("chat")]
    assert [r["name"] for r in chat] == ["chat/downgraded", "chat"]
    assert chat[0]["route"]["cluster"] == "ai/small"
    assert chat[0]["match"]["headers"] == [{"name": "x-llmfleet-tenant",
                                            "string_match": {"safe_regex": {"regex": "ai/team"}}}]
    assert {c["name"] for c in chat[1]["route"]["weighted_clusters"]["clusters"]} == {"ai/big", "ai/small"}
    assert ACCESS_FILTER in chat[0]["typed_per_filter_config"], "the downgraded route checks model access too"


def test_a_policys_budget_is_asked_on_its_routes_beside_the_tenants_limits_and_refuses_everyone() -> None:
    mds = [_md("big", 10.0), _md("small", 0.5)]
    table = compute_routing([_policy_view([{"period": "day", "dollars": 0.001}])], mds, ENDPOINTS, now=NOON).table
    tenants = (TenantAccess("ai/t", ("k",), ("*",), RateLimit(10, 1, 10)),)
    config = build_config(dataclasses.replace(table, tenants=tenants), listener_port=1)
    assert "llmfleet_ratelimit" in {c["name"] for c in config[CLUSTER_TYPE]}
    (host,) = config[ROUTE_TYPE][0]["virtual_hosts"]
    chat = next(r for r in host["routes"] if r["name"] == "chat")
    limits = chat["typed_per_filter_config"][RATE_LIMIT_FILTER]["rate_limits"]
    kinds = [[a.get("generic_key", {}).get("descriptor_value") for a in rl["actions"]] for rl in limits]
    assert [None, "requests"] in kinds, "the tenants' request limit still applies on this route"
    assert ["routepolicy:ai/chat", "budget"] in kinds and ["routepolicy:ai/chat", "spent-completion", None] in kinds
    # Without tenants the policy's budget alone.
    open_config = build_config(table, listener_port=1)
    chat = next(r for r in open_config[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"] if r["name"] == "chat")
    assert len(chat["typed_per_filter_config"][RATE_LIMIT_FILTER]["rate_limits"]) == 3

    registry = CollectorRegistry()
    service = RateLimitService(Counter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                               Counter("t", "t", ["tenant"], registry=registry), wall=lambda: NOON)
    service.configure(table)

    def ask(kind: str, hits: int, cluster: str = "") -> rls_pb2.RateLimitResponse:
        return _ask_budget(service, ("policy", "routepolicy:ai/chat"), kind, hits, cluster)

    assert ask("budget", 0).overall_code == rls_pb2.RateLimitResponse.OK
    ask("spent-completion", 200, "ai/big")  # 200 × $10 per million: $0.002
    refused = ask("budget", 0)
    assert refused.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    error = json.loads(refused.raw_body)["error"]
    assert error["code"] == "insufficient_quota" and "RoutePolicy ai/chat" in error["message"]


def test_the_report_says_what_a_spent_budget_does() -> None:
    window = window_start("day", NOON)
    for action, says in (("refuse", "requests are refused"), ("downgrade", "requests go to the cheapest backend")):
        report = budget_report([(BudgetLimit("day", dollars=1.0, action=action), Spend(window, 1.5, 9))], {})
        assert says in report.exceeded.message
    notify = budget_report([(BudgetLimit("day", dollars=1.0, action="notify"), Spend(window, 1.5, 9))], {})
    assert notify.exceeded.status and notify.exceeded.message.endswith("spent since 2026-12-03T00:00:00Z")
