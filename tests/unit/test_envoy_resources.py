"""Route table → Envoy resources: pure builders, no Envoy."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from google.protobuf import json_format

from llmfleet.envoy.lua import lua_long_string, model_rewrite_source
from llmfleet.envoy.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    DataPlaneSettings,
    build_config,
    build_resources,
    referenced_clusters,
    resource_name,
    retry_policy,
)
from llmfleet.routing.table import (
    Cluster,
    Endpoint,
    Fallback,
    Retry,
    Route,
    RouteTable,
    Rule,
    RuleMatch,
    WeightedBackend,
)


def _table(weights: tuple[int, int] = (80, 20), *, a_endpoints: int = 2, served_a: str = "llama-8b",
           rules: tuple[Rule, ...] = (), retry: Retry | None = None) -> RouteTable:
    return RouteTable(
        routes=(Route("chat", (WeightedBackend("ai/llama-8b", weights[0]), WeightedBackend("ai/llama-70b", weights[1])),
                      rules=rules, retry=retry or Retry()),),
        clusters=(
            Cluster("ai/llama-8b", served_a, tuple(Endpoint(f"10.0.0.{i}", 8000) for i in range(1, a_endpoints + 1))),
            Cluster("ai/llama-70b", "llama-70b", (Endpoint("10.0.1.1", 8000, weight=2),)),
        ),
    )


def _serialized(table: RouteTable, type_url: str) -> list[bytes]:
    return [r.SerializeToString(deterministic=True) for r in build_resources(table, listener_port=8080)[type_url]]


def _routes(table: RouteTable) -> list[dict]:
    return build_config(table, listener_port=8080)[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"]


def _route(table: RouteTable, name: str) -> dict:
    return next(r for r in _routes(table) if r["name"] == name)


def _direct_body(route: dict) -> dict:
    """The JSON body of a direct response built from a text format ('%%' is '%')."""
    text = route["direct_response"]["body_format"]["text_format_source"]["inline_string"]
    return json.loads(text.replace("%%", "%"))


# --------------------------------------------------------------------------- stability


def test_weight_only_change_leaves_clusters_and_endpoints_identical() -> None:
    before, after = _table((80, 20)), _table((30, 70))
    assert _serialized(before, CLUSTER_TYPE) == _serialized(after, CLUSTER_TYPE)
    assert _serialized(before, ENDPOINT_TYPE) == _serialized(after, ENDPOINT_TYPE)
    assert _serialized(before, LISTENER_TYPE) == _serialized(after, LISTENER_TYPE)
    assert _serialized(before, ROUTE_TYPE) != _serialized(after, ROUTE_TYPE)


def test_replica_change_touches_only_endpoints() -> None:
    before, after = _table(a_endpoints=2), _table(a_endpoints=3)
    assert _serialized(before, CLUSTER_TYPE) == _serialized(after, CLUSTER_TYPE)
    assert _serialized(before, ROUTE_TYPE) == _serialized(after, ROUTE_TYPE)
    assert _serialized(before, ENDPOINT_TYPE) != _serialized(after, ENDPOINT_TYPE)


def test_served_name_change_rebuilds_only_that_cluster() -> None:
    before, after = _serialized(_table(), CLUSTER_TYPE), _serialized(_table(served_a="llama-8b-v2"), CLUSTER_TYPE)
    # Clusters are sorted by name: ai/llama-70b first.
    assert before[0] == after[0]
    assert before[1] != after[1]


def test_build_is_deterministic_and_endpoint_order_does_not_matter() -> None:
    t = _table()
    shuffled = replace(t, clusters=(replace(t.clusters[0], endpoints=t.clusters[0].endpoints[::-1]), t.clusters[1]))
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        assert _serialized(t, type_url) == _serialized(shuffled, type_url)


# --------------------------------------------------------------------------- routes


def test_split_is_weighted_clusters_in_rds() -> None:
    route = _route(_table((80, 20)), "chat")
    assert route["match"]["dynamic_metadata"] == [
        {"filter": "llmfleet", "path": [{"key": "model"}], "value": {"string_match": {"exact": "chat"}}}]
    assert route["route"]["weighted_clusters"] == {"clusters": [
        {"name": "ai/llama-8b", "weight": 80}, {"name": "ai/llama-70b", "weight": 20}]}
    assert route["route"]["timeout"] == "0s"  # long generations are never cut off


def test_single_backend_routes_straight_to_its_cluster() -> None:
    t = _table()
    t = replace(t, routes=(replace(t.routes[0], backends=(WeightedBackend("ai/llama-70b", 5),)),))
    action = _route(t, "chat")["route"]
    assert action["cluster"] == "ai/llama-70b" and "weighted_clusters" not in action


def test_header_rules_precede_the_split_in_order() -> None:
    rules = (Rule(RuleMatch(headers=(("x-tenant", "premium"),)), (WeightedBackend("ai/llama-70b", 1),)),
             Rule(RuleMatch(headers=(("x-tenant", "free"), ("x-region", "eu"))), (WeightedBackend("ai/llama-8b", 1),)))
    names = [r["name"] for r in _routes(_table(rules=rules))]
    assert names.index("chat/rule-0") < names.index("chat/rule-1") < names.index("chat")
    second = _route(_table(rules=rules), "chat/rule-1")
    assert second["match"]["headers"] == [
        {"name": "x-tenant", "string_match": {"exact": "free"}},
        {"name": "x-region", "string_match": {"exact": "eu"}},
    ]
    assert second["route"]["cluster"] == "ai/llama-8b"


def test_a_rule_becomes_envoy_matchers_its_body_fields_reach_the_listener_and_its_cap_a_header() -> None:
    match = RuleMatch(header_patterns=(("x-user", "^vip"),), headers_present=("x-debug",), endpoint="embeddings",
                      body=(("metadata.tier", "gold"), ("user", "ana")), prompt_bytes=(None, 4095))
    table = _table(rules=(Rule(match, (WeightedBackend("ai/llama-70b", 1),), max_tokens=64),))
    rule = _route(table, "chat/rule-0")
    assert rule["match"]["path"] == "/v1/embeddings" and "prefix" not in rule["match"]
    assert rule["match"]["headers"] == [
        {"name": "x-user", "string_match": {"safe_regex": {"regex": "^vip"}}},
        {"name": "x-debug", "present_match": True},
        {"name": "content-length", "range_match": {"start": "0", "end": "4096"}},
    ]
    assert [(m["path"], m["value"]) for m in rule["match"]["dynamic_metadata"]] == [
        ([{"key": "model"}], {"string_match": {"exact": "chat"}}),
        ([{"key": "metadata.tier"}], {"string_match": {"exact": "gold"}}),
        ([{"key": "user"}], {"string_match": {"exact": "ana"}}),
    ]
    assert rule["request_headers_to_add"] == [{"header": {"key": "x-llmfleet-max-tokens", "value": "64"},
                                               "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    # The default route strips a client's own cap header; it has no cap of its own.
    assert _route(table, "chat")["request_headers_to_remove"] == ["x-llmfleet-max-tokens"]
    assert "request_headers_to_add" not in _route(table, "chat")
    resources = build_resources(table, listener_port=8080)
    listener = json_format.MessageToDict(resources[LISTENER_TYPE][0], preserving_proto_field_name=True)
    rules = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"][
        "request_rules"]["rules"]
    assert [[sel["key"] for sel in r["selectors"]] for r in rules] == [["model"], ["metadata", "tier"], ["user"]]


def test_a_fallback_tier_is_an_aggregate_cluster_per_primary_and_retries_move_down_it() -> None:
    t = _table()
    fallback = Fallback(("ai/llama-70b",), ("5xx", "429"))
    t = replace(t, routes=(replace(t.routes[0], fallback=fallback),))
    action = _route(t, "chat")["route"]
    # Each backend of the split gets its own chain; the fallback itself needs none. The
    # fallback tier is the policy's own copy of its cluster (Envoy counts its requests apart).
    tier = "fallback-for:chat:ai/llama-70b"
    assert {c["name"] for c in action["weighted_clusters"]["clusters"]} == {
        f"fallback:ai/llama-8b>{tier}", "ai/llama-70b"}
    policy = action["retry_policy"]
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert "5xx" in policy["retry_on"] and 429 in policy["retriable_status_codes"]
    config = build_config(t, listener_port=8080)
    (aggregate,) = [c for c in config[CLUSTER_TYPE] if c["name"].startswith("fallback:")]
    assert aggregate["cluster_type"]["typed_config"]["clusters"] == ["ai/llama-8b", tier]
    (copy,) = [a for a in config[ENDPOINT_TYPE] if a["cluster_name"] == tier]
    (original,) = [a for a in config[ENDPOINT_TYPE] if a["cluster_name"] == "ai/llama-70b"]
    assert copy["endpoints"] == original["endpoints"] != []
    filters = aggregate["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.header_mutation", "envoy.filters.http.lua",
                                            "envoy.filters.http.upstream_codec"]
    # While Envoy still routes to a chain, the clusters in it are kept too.
    resources = build_resources(t, listener_port=8080)
    assert referenced_clusters(resources[ROUTE_TYPE][0]) >= {f"fallback:ai/llama-8b>{tier}", "ai/llama-8b", tier,
                                                             "ai/llama-70b"}


def test_a_saturation_limit_puts_a_gate_with_a_per_replica_circuit_breaker_first_in_the_chain() -> None:
    t = _table()  # llama-8b has 2 ready replicas
    fallback = Fallback(("ai/llama-70b",), ("5xx",), max_in_flight_per_replica=3)
    t = replace(t, routes=(replace(t.routes[0], fallback=fallback),))
    action = _route(t, "chat")["route"]
    gate = "saturation:3:ai/llama-8b"
    tier = "fallback-for:chat:ai/llama-70b"
    assert {c["name"] for c in action["weighted_clusters"]["clusters"]} == {f"fallback:{gate}>{tier}", "ai/llama-70b"}
    # The gate's answer to a full backend is retried down the chain, whatever retryOn says.
    policy = action["retry_policy"]
    assert "retriable-headers" in policy["retry_on"]
    assert policy["retriable_headers"] == [{"name": "x-llmfleet-saturated", "present_match": True}]
    config = build_config(t, listener_port=8080)
    clusters = {c["name"]: c for c in config[CLUSTER_TYPE]}
    assert clusters[f"fallback:{gate}>{tier}"]["cluster_type"]["typed_config"]["clusters"] == [gate, tier]
    (endpoint,) = clusters[gate]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"envoy_internal_address": {"server_listener_name": gate}}
    limited = clusters["limited:3:ai/llama-8b"]
    assert {t["max_requests"] for t in limited["circuit_breakers"]["thresholds"]} == {3 * 2}
    assert limited["eds_cluster_config"]["service_name"] == "limited:3:ai/llama-8b"
    assignments = {a["cluster_name"]: a for a in config[ENDPOINT_TYPE]}
    assert assignments["limited:3:ai/llama-8b"]["endpoints"] == assignments["ai/llama-8b"]["endpoints"]
    listeners = {x["name"]: x for x in config[LISTENER_TYPE]}
    hcm = listeners[gate]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "internal_listener" in listeners[gate]
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.lua", "envoy.filters.http.router"]
    assert hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "limited:3:ai/llama-8b"
    # Every resource converts, and routes still sending to a gate keep both of its clusters.
    resources = build_resources(t, listener_port=8080)
    assert referenced_clusters(resources[ROUTE_TYPE][0]) >= {gate, "limited:3:ai/llama-8b", "ai/llama-70b"}


def test_a_saturation_limit_without_another_backend_to_go_to_adds_no_gate() -> None:
    t = _table()
    fallback = Fallback(("ai/llama-8b",), max_in_flight_per_replica=3)
    t = replace(t, routes=(replace(t.routes[0], backends=(WeightedBackend("ai/llama-8b", 1),), fallback=fallback),))
    config = build_config(t, listener_port=8080)
    assert not any(c["name"].startswith(("saturation:", "limited:")) for c in config[CLUSTER_TYPE])
    assert [x["name"] for x in config[LISTENER_TYPE]] == ["llmfleet"]


def test_route_order_puts_catch_alls_last() -> None:
    t = RouteTable(routes=(Route("b", ()), Route("a", ())))
    names = [r["name"] for r in _routes(t)]
    assert names == ["healthz", "models", "models/b", "models/a", "b", "a",
                     "unknown-model", "not-found", "invalid-json", "missing-model"]
    not_found = _route(t, "not-found")["match"]["headers"]
    assert not_found == [{"name": ":method", "string_match": {"exact": "POST"}, "invert_match": True}]


def test_backends_without_cluster_or_endpoints_are_left_out() -> None:
    t = RouteTable(
        routes=(Route("chat", (WeightedBackend("ai/up", 3), WeightedBackend("ai/empty", 1),
                               WeightedBackend("ai/missing", 1), WeightedBackend("ai/zero", 0))),),
        clusters=(Cluster("ai/up", "up", (Endpoint("10.0.0.1", 80),)), Cluster("ai/empty", "e", ()),
                  Cluster("ai/zero", "z", (Endpoint("10.0.0.2", 80),))),
    )
    assert _route(t, "chat")["route"]["cluster"] == "ai/up"


def test_route_with_no_live_backend_answers_503_in_openai_shape() -> None:
    t = RouteTable(routes=(Route("chat", (WeightedBackend("ai/empty", 1),)),), clusters=(Cluster("ai/empty", "e", ()),))
    route = _route(t, "chat")
    assert "route" not in route
    assert route["direct_response"]["status"] == 503
    assert route["direct_response"]["body_format"]["content_type"] == "application/json"
    assert _direct_body(route) == {"error": {
        "message": "The model `chat` has no ready backend; try again later.",
        "type": "server_error", "param": None, "code": None}}


def test_models_list_comes_from_the_table() -> None:
    t = RouteTable(routes=(Route("chat", ()), Route("100%-code", ())))
    models = _route(t, "models")
    assert models["match"] == {"path": "/v1/models", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}
    assert models["direct_response"]["status"] == 200
    # '%' is escaped for the format string and comes back as itself.
    assert _direct_body(models) == {"object": "list", "data": [
        {"id": "chat", "object": "model", "created": 0, "owned_by": "llmfleet"},
        {"id": "100%-code", "object": "model", "created": 0, "owned_by": "llmfleet"},
    ]}
    assert _direct_body(_route(t, "models/chat"))["id"] == "chat"


def test_missing_and_unknown_model_errors() -> None:
    routes = {r["name"]: r for r in _routes(_table())}
    missing = routes["missing-model"]
    assert missing["direct_response"]["status"] == 400
    assert _direct_body(missing) == {"error": {"message": "You must provide a model parameter.",
                                               "type": "invalid_request_error", "param": "model", "code": None}}
    unknown = routes["unknown-model"]
    assert unknown["match"]["dynamic_metadata"][0]["value"] == {"present_match": True}
    assert unknown["direct_response"]["status"] == 404
    assert unknown["direct_response"]["body_format"]["json_format"] == {"error": {
        "message": "The model `%DYNAMIC_METADATA(llmfleet:model)%` does not exist.",
        "type": "invalid_request_error", "param": "model", "code": None}}
    assert routes["invalid-json"]["direct_response"]["status"] == 400


# --------------------------------------------------------------------------- retries


def test_retry_policy_maps_conditions() -> None:
    route = Route("chat", (), retry=Retry(attempts=3, per_try_timeout_seconds=45,
                                          on=("connect-failure", "reset", "503", "504", "gateway-error")))
    policy = retry_policy(route, DataPlaneSettings())
    assert policy is not None
    assert policy["retry_on"] == "connect-failure,reset,gateway-error,retriable-status-codes"
    assert policy["retriable_status_codes"] == [503, 504]
    assert policy["num_retries"] == 3
    assert policy["per_try_timeout"] == "45s"
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert policy["host_selection_retry_max_attempts"] == "25"


def test_default_retry_matches_routepolicy_default() -> None:
    policy = retry_policy(Route("chat", ()), DataPlaneSettings())
    assert policy is not None
    assert policy["retry_on"] == "connect-failure,reset,retriable-status-codes"
    assert policy["retriable_status_codes"] == [503]


def test_zero_attempts_means_no_retry_policy() -> None:
    assert retry_policy(Route("chat", (), retry=Retry(attempts=0)), DataPlaneSettings()) is None
    t = _table(retry=Retry(attempts=0))
    assert "retry_policy" not in _route(t, "chat")["route"]


def test_unknown_retry_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown retry condition 'sometimes'"):
        retry_policy(Route("chat", (), retry=Retry(on=("sometimes",))), DataPlaneSettings())


# --------------------------------------------------------------------------- listener & clusters


def test_listener_reads_model_from_body_with_room_for_long_prompts() -> None:
    config = build_config(_table(), listener_port=8443, listener_address="127.0.0.1")
    (lst,) = config[LISTENER_TYPE]
    assert lst["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 8443}}
    assert lst["per_connection_buffer_limit_bytes"] == 8 * 1024 * 1024
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"] == {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": "llmfleet"}
    assert hcm["stream_idle_timeout"] == "3600s" and hcm["request_timeout"] == "0s"
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.json_to_metadata", "llmfleet.auth", "llmfleet.reroute", "llmfleet.access",
                     "llmfleet.localratelimit",
                     "llmfleet.ratelimit", "llmfleet.usage", "llmfleet.prefix", "llmfleet.cascade",
                     "envoy.filters.http.router"]
    rule = hcm["http_filters"][0]["typed_config"]["request_rules"]["rules"][0]
    assert rule["selectors"] == [{"key": "model"}]
    assert rule["on_present"] == {"metadata_namespace": "llmfleet", "key": "model", "type": "STRING"}


def test_cluster_is_eds_least_request_with_outlier_detection_and_rewrite() -> None:
    config = build_config(_table(), listener_port=8080)
    c = next(c for c in config[CLUSTER_TYPE] if c["name"] == "ai/llama-8b")
    assert c["type"] == "EDS"
    assert c["eds_cluster_config"] == {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                                       "service_name": "ai/llama-8b"}
    assert c["lb_policy"] == "LEAST_REQUEST"
    assert c["alt_stat_name"] == "ai_llama-8b"
    assert c["outlier_detection"]["consecutive_5xx"] == 5
    assert c["outlier_detection"]["consecutive_gateway_failure"] == 3
    assert c["circuit_breakers"]["thresholds"][0]["max_retries"] == 1024
    filters = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.lua", "envoy.filters.http.upstream_codec"]
    source = filters[0]["typed_config"]["default_source_code"]["inline_string"]
    assert source == model_rewrite_source("llama-8b", "ai/llama-8b")
    assert 'local SERVED = [["llama-8b"]]' in source
    assert 'local BACKEND = [[ai/llama-8b]]' in source


def test_endpoints_carry_addresses_and_weights() -> None:
    config = build_config(_table(), listener_port=8080)
    cla = next(e for e in config[ENDPOINT_TYPE] if e["cluster_name"] == "ai/llama-70b")
    assert cla["endpoints"] == [{"lb_endpoints": [{
        "endpoint": {"address": {"socket_address": {"address": "10.0.1.1", "port_value": 8000}}},
        "load_balancing_weight": 2,
        # What a fallback chain's upstream filters read to rewrite the model name.
        "metadata": {"filter_metadata": {"llmfleet": {"served": '"llama-70b"', "backend": "ai/llama-70b"}}}}]}]
    empty = build_config(RouteTable(clusters=(Cluster("ai/x", "x", ()),)), listener_port=8080)[ENDPOINT_TYPE]
    assert empty == [{"cluster_name": "ai/x", "endpoints": []}]


def test_resources_convert_to_protos_with_names() -> None:
    rule = Rule(RuleMatch(headers=(("x-a", "1"),)), (WeightedBackend("ai/llama-70b", 1),))
    resources = build_resources(_table(rules=(rule,)), listener_port=8080)
    assert [resource_name(r) for r in resources[CLUSTER_TYPE]] == ["ai/llama-70b", "ai/llama-8b"]
    assert [resource_name(r) for r in resources[ENDPOINT_TYPE]] == ["ai/llama-70b", "ai/llama-8b"]
    assert [resource_name(r) for r in resources[LISTENER_TYPE]] == ["llmfleet"]
    assert [resource_name(r) for r in resources[ROUTE_TYPE]] == ["llmfleet"]
    assert referenced_clusters(resources[ROUTE_TYPE][0]) == {"ai/llama-8b", "ai/llama-70b"}


def test_duplicate_names_are_refused() -> None:
    c = Cluster("ai/a", "a", ())
    with pytest.raises(ValueError, match="duplicate cluster"):
        build_config(RouteTable(clusters=(c, c)), listener_port=8080)
    with pytest.raises(ValueError, match="duplicate public model"):
        build_config(RouteTable(routes=(Route("m", ()), Route("m", ()))), listener_port=8080)


# --------------------------------------------------------------------------- Lua


@pytest.mark.parametrize("text", ['"plain"', '"a]]b"', '"a]=]b]]"', '"ends with ]"', '"ends with ]="'])
def test_lua_long_string_never_closes_early(text: str) -> None:
    literal = lua_long_string(text)
    level = literal.index("[", 1) - 1
    assert literal.startswith("[" + "=" * level + "[")
    # Lua ends a long string at the first closing bracket of its level.
    close = "]" + "=" * level + "]"
    body_start = level + 2
    assert literal[body_start:literal.index(close, body_start)] == text


def test_rewrite_source_embeds_the_served_name_as_json() -> None:
    source = model_rewrite_source('we"ird\\name]]')
    assert 'local SERVED = [=["we\\"ird\\\\name]]"]=]' in source
    assert "function envoy_on_request(handle)" in source


def test_access_log_is_one_json_line_per_request_and_can_be_turned_off() -> None:
    """The stdout log can be turned off; the usage log to the operator cannot."""
    def hcm(settings: DataPlaneSettings) -> dict:
        (lst,) = build_config(_table(), listener_port=8080, settings=settings)[LISTENER_TYPE]
        return lst["filter_chains"][0]["filters"][0]["typed_config"]

    usage, log = hcm(DataPlaneSettings())["access_log"]
    fmt = log["typed_config"]["log_format"]["json_format"]
    assert fmt["model"] == "%DYNAMIC_METADATA(llmfleet:model)%"
    assert fmt["cluster"] == "%UPSTREAM_CLUSTER_RAW%"
    assert usage["name"] == "envoy.access_loggers.http_grpc"
    assert usage["typed_config"]["common_config"]["grpc_service"] == {"envoy_grpc": {"cluster_name": "llmfleet_xds"}}
    assert hcm(DataPlaneSettings(access_log=False))["access_log"] == [usage]
    build_resources(_table(), listener_port=8080, settings=DataPlaneSettings(access_log=False))


def test_oversized_body_and_upstream_failures_answer_in_openai_shape() -> None:
    (lst,) = build_config(_table(), listener_port=8080,
                          settings=DataPlaneSettings(max_request_body_bytes=4 * 1024 * 1024))[LISTENER_TYPE]
    assert lst["per_connection_buffer_limit_bytes"] == 4 * 1024 * 1024
    mappers = lst["filter_chains"][0]["filters"][0]["typed_config"]["local_reply_config"]["mappers"]
    upstream, *_tenants, too_large = mappers
    assert "UH" in upstream["filter"]["response_flag_filter"]["flags"]
    assert upstream["body_format_override"]["json_format"]["error"]["message"] == "%LOCAL_REPLY_BODY%"
    assert too_large["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] == 413
    assert too_large["body_format_override"]["json_format"]["error"]["message"] == (
        "The request body is larger than the 4 MiB this gateway accepts.")


def test_prefix_affinity_sends_the_split_to_ring_hash_copies_keyed_by_the_prefix_header() -> None:
    from llmfleet.envoy.lua import PREFIX_HEADER
    from llmfleet.envoy.resources import PREFIX_FILTER, prefix_cluster
    from llmfleet.routing.table import PrefixAffinity

    base = _table(rules=(Rule(RuleMatch(headers=(("x-tier", "gold"),)), (WeightedBackend("ai/llama-70b", 1),)),))
    (route,) = base.routes
    table = replace(base, routes=(replace(route, prefix=PrefixAffinity(chars=512, balance_percent=150)),))
    config = build_config(table, listener_port=10000)
    clusters = {c["name"]: c for c in config[CLUSTER_TYPE]}
    copy = clusters[prefix_cluster("chat", "ai/llama-8b")]
    assert copy["lb_policy"] == "RING_HASH"
    assert copy["common_lb_config"] == {"consistent_hashing_lb_config": {"hash_balance_factor": 150}}
    assert clusters["ai/llama-8b"]["lb_policy"] == "LEAST_REQUEST", "the backend's own cluster keeps least request"
    assert {a["cluster_name"] for a in config[ENDPOINT_TYPE]} >= {prefix_cluster("chat", "ai/llama-70b")}
    routes = {r["name"]: r for r in config[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"]}
    split = routes["chat"]["route"]
    assert {c["name"] for c in split["weighted_clusters"]["clusters"]} == {
        prefix_cluster("chat", "ai/llama-8b"), prefix_cluster("chat", "ai/llama-70b")}
    assert split["hash_policy"] == [{"header": {"header_name": PREFIX_HEADER}}]
    assert routes["chat/rule-0"]["route"]["cluster"] == prefix_cluster("chat", "ai/llama-70b")
    for name in ("chat", "chat/rule-0"):
        lua = routes[name]["typed_per_filter_config"][PREFIX_FILTER]["source_code"]["inline_string"]
        assert "local CHARS = 512" in lua
    assert referenced_clusters(build_resources(table, listener_port=10000)[ROUTE_TYPE][0]) >= {
        prefix_cluster("chat", "ai/llama-8b")}
    # Without it, nothing of the kind.
    plain = build_config(base, listener_port=10000)
    assert not any(c["name"].startswith("prefix-for:") for c in plain[CLUSTER_TYPE])
    assert "hash_policy" not in {k for r in plain[ROUTE_TYPE][0]["virtual_hosts"][0]["routes"]
                                 for k in r.get("route", {})}
