"""Route table → Envoy xDS resources (LDS, RDS, CDS, EDS). Pure functions.

One listener whose HTTP connection manager reads ``model`` from the JSON body
(``json_to_metadata`` → dynamic metadata ``llmfleet.model``) and routes on it:

1. ``GET /v1/models`` (and ``/v1/models/<name>``) answered by Envoy from the table;
2. per public model, its header rules in order (first match wins), then its split as
   weighted clusters (weights live here, in RDS), or a 503 when no backend is left;
3. a model nobody serves → 404, a body without ``model`` → 400, bad JSON → 400,
   all in OpenAI's error shape.

One EDS cluster per ModelDeployment (LEAST_REQUEST, outlier detection, generous
circuit breakers) with an upstream Lua filter that rewrites the body's ``model`` to
the name that deployment serves. Endpoints live in EDS and weights in RDS, so a
weight or replica change never touches CDS and never drains a connection pool.

A fallback tier makes each backend of a split an aggregate cluster (its priorities:
the backend, then its fallbacks); with a saturation limit, the first priority is a
saturation gate: an internal listener in front of a copy of the backend's cluster
whose circuit breaker is the limit times its ready replicas (that copy, alone, is
rebuilt through CDS when the replica count changes).

A policy's cascade stages and fallback tiers are its own copies of those clusters
(``cascade:<model>:<cluster>``, ``fallback-for:<model>:<cluster>``: own EDS, the same
endpoints), and each public model's routes share one ``stat_prefix``, so Envoy counts
each policy's requests, what its fallback tiers took and what each stage took apart
(envoy/traffic.py reads them for ``status.traffic``).

Resources are first built as plain dicts in Envoy's JSON/YAML shape (easy to read,
diff and golden-test), then converted to xds-protos messages.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Importing these registers their message types, so "@type" Any values resolve.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2  # noqa: F401
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format
from google.protobuf.message import Message

from llmfleet.api import openai
from llmfleet.envoy.bootstrap import XDS_CLUSTER
from llmfleet.envoy.lua import (
    BACKEND_HEADER,
    MAX_TOKENS_HEADER,
    PREFIX_HEADER,
    SATURATED_HEADER,
    SERVED_HEADER,
    cascade_source,
    model_rewrite_source,
    prefix_key_source,
    saturation_gate_source,
    usage_source,
)
from llmfleet.routing.ratelimit import (
    BUDGET,
    CONCURRENCY,
    DONE,
    REQUESTS,
    SPENT_COMPLETION,
    SPENT_PROMPT,
    TOKENS,
    limit_message,
    local_bucket,
)
from llmfleet.routing.table import (
    ENDPOINT_PATHS,
    Cluster,
    Endpoint,
    RateLimit,
    Route,
    RouteTable,
    RuleMatch,
    TenantAccess,
    WeightedBackend,
)

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# The order in which ADS pushes them (xDS "eventual consistency considerations").
TYPE_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

_MESSAGE_CLASSES: dict[str, type[Message]] = {
    LISTENER_TYPE: listener_pb2.Listener,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
}

LISTENER_NAME = "llmfleet"
ROUTE_CONFIG_NAME = "llmfleet"
VIRTUAL_HOST = "llmfleet"  # route stats are vhost.<VIRTUAL_HOST>.route.<stat_prefix>.*
METADATA_NAMESPACE = "llmfleet"  # dynamic metadata written by json_to_metadata
MODEL_KEY = "model"
# Body fields rules match on ("user", "metadata.<key>") are copied by json_to_metadata
# into dynamic metadata keys of the same name, as strings.
CASCADE_FILTER = "llmfleet.cascade"  # the downstream Lua filter cascade routes configure
PREFIX_FILTER = "llmfleet.prefix"  # the downstream Lua filter that names a request's prefix (prefix affinity)
# Tenants: api_key_auth authenticates the key and names the tenant in TENANT_HEADER (set,
# never appended, so a client cannot claim another tenant), RBAC lets a model's routes
# admit only the tenants that may call it. Both do nothing until the routes configure
# them, so the listener never changes when tenants come and go.
AUTH_FILTER = "llmfleet.auth"
REROUTE_FILTER = "llmfleet.reroute"
ACCESS_FILTER = "llmfleet.access"
TENANT_HEADER = "x-llmfleet-tenant"
# Answered by Envoy itself, with or without tenants: the readiness probe of the chart's
# Envoys (it says the listener the operator programs is there).
HEALTH_PATH, HEALTH_ROUTE = "/healthz", "healthz"
# Tenants' rate limits: the ratelimit filter asks the operator's rate-limit service
# (cluster RATE_LIMIT_CLUSTER, the leader), which the virtual host's rate_limits name per
# request; the usage Lua reads a response's tokens for its token limit.
RATE_LIMIT_FILTER = "llmfleet.ratelimit"
# Request limits with scope local: each Envoy's own token bucket per tenant (the local_ratelimit
# filter), no call to the service. The buckets are in the listener's filter config, not the
# routes': Envoy builds a route config's buckets anew with each route update (weights move,
# keys rotate), so there they would start full again every time. Only a change of a local limit
# changes the listener. The refusal's text and Retry-After, per tenant, are set in dynamic
# metadata by the reroute Lua (in the routes) for the local reply to use.
LOCAL_RATE_LIMIT_FILTER = "llmfleet.localratelimit"
LOCAL_REFUSAL_KEY, LOCAL_RETRY_KEY = "local_refusal", "local_retry_after"
RATE_LIMIT_CLUSTER = "llmfleet_ratelimit"
USAGE_FILTER = "llmfleet.usage"
RATE_LIMIT_DOMAIN = "llmfleet"
# A descriptor's entries: ("tenant", "ai/team-a"), ("limit", "requests", "tokens", ...), and
# for a concurrency slot ("request", its x-request-id).
RATE_LIMIT_TENANT, RATE_LIMIT_KIND, RATE_LIMIT_REQUEST = "tenant", "limit", "request"
RATE_LIMIT_POLICY = "policy"  # a RoutePolicy's budgets: its routing.budgets.policy_subject
TOKENS_KEY = "tokens"  # dynamic metadata llmfleet.tokens: what a response used (the usage Lua sets it)
PROMPT_TOKENS_KEY, COMPLETION_TOKENS_KEY = "prompt_tokens", "completion_tokens"
FIRST_TOKEN_KEY = "first_token_ms"  # a stream's first event, in ms after the request was read
USAGE_LOG = "llmfleet-usage"  # the gRPC access log's name
BODY_ERROR_KEY = "body_error"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {"name": "envoy.filters.http.router",
           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _hcm_chain(hcm: dict[str, Any]) -> list[dict[str, Any]]:
    """A listener's one filter chain: the HTTP connection manager ``hcm``."""
    return [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
_ADS = {"ads": {}, "resource_api_version": "V3"}

Resources = dict[str, list[Message]]


@dataclass(frozen=True)
class DataPlaneSettings:
    """Knobs of the generated config that are not part of a RoutePolicy."""

    # json_to_metadata buffers the whole request body to read "model": long prompts
    # (and retries, which replay the buffered body) need room.
    max_request_body_bytes: int = 8 * 1024 * 1024
    # No overall route timeout: a long generation must never be cut off. The idle
    # timeout only fires when neither side sends a byte for this long (a non-streaming
    # request is silent until the whole completion is ready).
    stream_idle_timeout_seconds: int = 3600
    connect_timeout_seconds: float = 2.0
    # Outlier detection: consecutive failures before a replica is ejected.
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 3
    outlier_interval_seconds: float = 2.0
    base_ejection_seconds: float = 10.0
    max_ejection_percent: int = 100
    # A dead replica has no active requests, so least-request balancing keeps choosing
    # it until outlier detection ejects it; the previous_hosts predicate needs enough
    # re-picks (cheap, local) to find a live one with few replicas.
    host_selection_retry_max_attempts: int = 25
    # How long a request waits for the rate-limit service before it goes on unchecked.
    rate_limit_timeout_seconds: float = 0.25
    # Usage accounting: the usage Lua on every response and each request's log entry to the
    # operator, flushed this often. Off: no usage metrics, and token limits count nothing.
    usage_accounting: bool = True
    usage_flush_seconds: float = 1.0
    # Engines queue internally; Envoy's default 1024-request circuit breaker (and its
    # 3 concurrent retries) would throttle a busy fleet, so keep them out of the way.
    max_requests_per_cluster: int = 100_000
    max_concurrent_retries: int = 1024
    # One JSON line per request on Envoy's stdout (`kubectl logs`): model, backend, status.
    access_log: bool = True
    # "created" of the /v1/models entries (fixed, so RDS stays deterministic).
    models_created: int = 0
    owned_by: str = "llmfleet"


# --------------------------------------------------------------------------- errors


def openai_error(message: str, err_type: str = "invalid_request_error", param: str | None = "model",
                 code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body, with the defaults of a refused ``model``."""
    return openai.error_body(message, err_type, param=param, code=code)


def _json_response(status: int, body: Any) -> dict[str, Any]:
    """A direct_response whose body is the JSON text of ``body`` (no substitution)."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return {
        "status": status,
        "body_format": {
            # '%' starts a command operator in a format string; '%%' is a literal '%'.
            "text_format_source": {"inline_string": text.replace("%", "%%")},
            "content_type": "application/json",
        },
    }


def _formatted_error(status: int, error: dict[str, Any]) -> dict[str, Any]:
    """A direct_response with a JSON body whose strings may use command operators."""
    return {"status": status, "body_format": {"json_format": error}}


# --------------------------------------------------------------------------- retries


_RETRY_ON_NAMES = {"connect-failure", "reset", "refused-stream", "gateway-error", "5xx",
                   "retriable-4xx", "reset-before-request", "envoy-ratelimited"}


def retry_policy(route: Route, settings: DataPlaneSettings) -> dict[str, Any] | None:
    """Envoy's retry policy for a RoutePolicy ``retry``; None when retries are off.

    Named conditions pass through; status codes (``"503"``) become
    ``retriable-status-codes``. Retries go to another replica (previous_hosts); with a
    fallback tier, down its chain (and the fallback's conditions retry too, as does a
    saturation gate's answer).
    """
    retry, fallback = route.retry, route.fallback
    attempts = max(retry.attempts, len(fallback.clusters) if fallback else 0)
    if attempts <= 0:
        return None
    names: list[str] = []
    codes: list[int] = []
    for cond in dict.fromkeys((*retry.on, *(fallback.on if fallback else ()))):
        if cond.isdigit():
            codes.append(int(cond))
        elif cond in _RETRY_ON_NAMES:
            names.append(cond)
        else:
            raise ValueError(f"unknown retry condition {cond!r}")
    if codes:
        names.append("retriable-status-codes")
    gated = bool(fallback and fallback.max_in_flight_per_replica)
    if gated:
        names.append("retriable-headers")
    policy: dict[str, Any] = {
        "retry_on": ",".join(dict.fromkeys(names)),
        "num_retries": attempts,
        "per_try_timeout": f"{retry.per_try_timeout_seconds}s",
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }],
        "host_selection_retry_max_attempts": str(settings.host_selection_retry_max_attempts),
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }
    if codes:
        policy["retriable_status_codes"] = sorted(set(codes))
    if gated:
        policy["retriable_headers"] = [{"name": SATURATED_HEADER, "present_match": True}]
    if fallback:
        # A fallback chain is an aggregate cluster whose priorities are its clusters in
        # order: each retry leaves out the priorities already tried, so it moves down the chain.
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
                                      "PreviousPrioritiesConfig", "update_frequency": 1},
        }
    return policy


# --------------------------------------------------------------------------- routes


def _metadata_match(path: list[str], value: str) -> dict[str, Any]:
    return {"filter": METADATA_NAMESPACE, "path": [{"key": k} for k in path],
            "value": {"string_match": {"exact": value}}}


def _model_match(model: str, rule: RuleMatch | None = None) -> dict[str, Any]:
    """The model's requests, and with ``rule`` only those that carry all of it."""
    match: dict[str, Any] = {"prefix": "/", "dynamic_metadata": [_metadata_match([MODEL_KEY], model)]}
    if rule is None:
        return match
    if rule.endpoint is not None:
        del match["prefix"]
        match["path"] = ENDPOINT_PATHS[rule.endpoint]
    headers: list[dict[str, Any]] = [{"name": n, "string_match": {"exact": v}} for n, v in rule.headers]
    headers += [{"name": n, "string_match": {"safe_regex": {"regex": v}}} for n, v in rule.header_patterns]
    headers += [{"name": n, "present_match": True} for n in rule.headers_present]
    if rule.prompt_bytes is not None:
        low, high = rule.prompt_bytes
        # Envoy's range is [start, end) over the header's integer value.
        headers.append({"name": "content-length", "range_match": {
            "start": str(low or 0), "end": str(high + 1 if high is not None else 2**63 - 1)}})
    if headers:
        match["headers"] = headers
    match["dynamic_metadata"] += [_metadata_match([field], value) for field, value in rule.body]
    return match


def body_fields(table: RouteTable) -> list[str]:
    """The body fields the table's rules match on, besides "model"."""
    return sorted({f for route in table.routes for rule in route.rules for f, _ in rule.match.body})


def _body_rule(field: str) -> dict[str, Any]:
    """Copy a body field ("user", "metadata.tier") into dynamic metadata of that name."""
    return {"selectors": [{"key": k} for k in field.split(".")],
            "on_present": {"metadata_namespace": METADATA_NAMESPACE, "key": field, "type": "STRING"}}


def live_backends(backends: Iterable[WeightedBackend], table: RouteTable) -> list[WeightedBackend]:
    """Backends Envoy can send to: positive weight, a known cluster with endpoints."""
    out = []
    for b in backends:
        cluster = table.cluster(b.cluster)
        if b.weight > 0 and cluster is not None and cluster.endpoints:
            out.append(b)
    return out


def _route_action(backends: list[WeightedBackend], route: Route,
                  settings: DataPlaneSettings) -> dict[str, Any]:
    action: dict[str, Any] = {}
    names = [chain_name(fallback_chain(route, b.cluster)) for b in backends]
    if len(backends) == 1:
        action["cluster"] = names[0]
    else:
        action["weighted_clusters"] = {
            "clusters": [{"name": n, "weight": b.weight} for n, b in zip(names, backends, strict=True)]
        }
    action["timeout"] = "0s"  # no overall limit: streams last as long as generation does
    if route.prefix is not None:
        # The prefix copies' ring hash picks the replica from the prefix filter's header.
        action["hash_policy"] = [{"header": {"header_name": PREFIX_HEADER}}]
    policy = retry_policy(route, settings)
    if policy is not None:
        action["retry_policy"] = policy
    return action


def _prefix_config(route: Route) -> dict[str, Any]:
    """The per-route Lua that names the request's prefix for the route's hash policy."""
    assert route.prefix is not None
    return {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "source_code": {"inline_string": prefix_key_source(route.prefix.chars)}}


def _cascade_config(route: Route) -> dict[str, Any]:
    """The per-route Lua that runs ``route``'s cascade before the router would."""
    c = route.cascade
    assert c is not None
    source = cascade_source(route.model, [(s.backend, cascade_cluster(route.model, s.cluster), s.served_model)
                                          for s in c.stages],
                            min_logprob=c.min_mean_logprob, on_length=c.on_length, on_empty=c.on_empty,
                            refusals=c.refusals, timeout_seconds=c.timeout_seconds)
    return {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "source_code": {"inline_string": source}}


def _cap(entry: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """Tell the upstream Lua filter to cap the body's max_tokens (a client's own header
    of that name is replaced, so it can only ever lower its own cap)."""
    entry["request_headers_to_remove"] = [MAX_TOKENS_HEADER]
    if max_tokens is not None:
        entry["request_headers_to_add"] = [{"header": {"key": MAX_TOKENS_HEADER, "value": str(max_tokens)},
                                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return entry


def _not_found() -> dict[str, Any]:
    return _formatted_error(404, openai_error("Invalid URL (%REQ(:METHOD)% %REQ(:PATH)%)", param=None))


def _no_backend(model: str) -> dict[str, Any]:
    return _json_response(503, openai_error(
        f"The model `{model}` has no ready backend; try again later.",
        err_type="server_error", param=None))


def _cheapest_route(route: Route, table: RouteTable, settings: DataPlaneSettings,
                    match: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A route entry sending ``match`` to the route's cheapest backend alone (no rule, cascade
    or fallback tier), or None when it has no live cheapest backend."""
    backends = live_backends([WeightedBackend(route.cheapest, 1)], table) if route.cheapest else []
    if not backends:
        return None
    entry = {"name": name, "stat_prefix": route_stat_prefix(route.model), "match": match,
             "route": _route_action(backends, dataclasses.replace(route, fallback=None, prefix=None), settings)}
    _cap(entry, None)
    return entry


def model_routes(route: Route, table: RouteTable, settings: DataPlaneSettings) -> list[dict[str, Any]]:
    """The routes of one public model: header rules first, then the split. A spent budget
    that downgrades sends the policy's traffic (or its tenant's) to the cheapest backend."""
    if route.downgraded:
        cheap = _cheapest_route(route, table, settings, _model_match(route.model), route.model)
        if cheap is not None:
            return [cheap]
    out = []
    downgraded = sorted(t.name for t in table.tenants or () if t.downgraded)
    if downgraded:
        tenants = RuleMatch(header_patterns=((TENANT_HEADER, "|".join(re.escape(t) for t in downgraded)),))
        cheap = _cheapest_route(route, table, settings, _model_match(route.model, tenants), f"{route.model}/downgraded")
        if cheap is not None:
            out.append(cheap)
    for i, rule in enumerate(route.rules):
        backends = live_backends(rule.backends, table)
        entry: dict[str, Any] = {"name": f"{route.model}/rule-{i}", "stat_prefix": route_stat_prefix(route.model),
                                 "match": _model_match(route.model, rule.match)}
        if backends:
            entry["route"] = _route_action(backends, route, settings)
            _cap(entry, rule.max_tokens)
            _reaches(entry, route, backends)
            if route.prefix is not None:
                entry["typed_per_filter_config"] = {PREFIX_FILTER: _prefix_config(route)}
        else:
            entry["direct_response"] = _no_backend(route.model)
        out.append(entry)
    backends = live_backends(route.backends, table)
    entry = {"name": route.model, "stat_prefix": route_stat_prefix(route.model), "match": _model_match(route.model)}
    if backends:
        entry["route"] = _route_action(backends, route, settings)
        _cap(entry, None)
        if route.cascade is not None:
            entry["typed_per_filter_config"] = {CASCADE_FILTER: _cascade_config(route)}
        if route.prefix is not None:
            entry["typed_per_filter_config"] = {PREFIX_FILTER: _prefix_config(route)}
        _reaches(entry, route, backends)
    else:
        entry["direct_response"] = _no_backend(route.model)
    out.append(entry)
    return out


def _reaches(entry: dict[str, Any], route: Route, backends: list[WeightedBackend]) -> None:
    """Name in the route's metadata the clusters its traffic reaches besides those its
    action names (a fallback chain's tiers, a gate's copy, a cascade's copies), so the
    xDS server keeps them while Envoy still runs this route (referenced_clusters)."""
    reached: set[str] = set()
    for b in backends:
        chain = fallback_chain(route, b.cluster)
        if len(chain) > 1:
            reached.update(chain)
        reached.update(limited_name(name) for name in chain if gate_of(name))
    if route.cascade is not None:
        reached.update(cascade_cluster(route.model, s.cluster) for s in route.cascade.stages)
    if reached:
        entry["metadata"] = {"filter_metadata": {METADATA_NAMESPACE: {REACHES_KEY: sorted(reached)}}}


def _model_object(model: str, settings: DataPlaneSettings) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": settings.models_created,
            "owned_by": settings.owned_by}


def route_configuration(table: RouteTable, settings: DataPlaneSettings | None = None) -> dict[str, Any]:
    """The RouteConfiguration (RDS) for the whole table."""
    settings = settings or DataPlaneSettings()
    get = [{"name": ":method", "string_match": {"exact": "GET"}}]
    health: dict[str, Any] = {"name": HEALTH_ROUTE, "match": {"path": HEALTH_PATH, "headers": get},
                              "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    if table.tenants is not None:
        # Kubelet's readiness probe has no API key; nor is it a tenant's request (a client
        # naming a tenant in its header here must not spend that tenant's limits).
        off = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
        health["typed_per_filter_config"] = {AUTH_FILTER: off, RATE_LIMIT_FILTER: off, LOCAL_RATE_LIMIT_FILTER: off}
    routes: list[dict[str, Any]] = [health]
    # With tenants, each one lists the models it may call (the route is chosen again once
    # auth has named the tenant); without, every public model.
    for t in sorted(table.tenants or (), key=lambda t: t.name):
        tenant = {"name": TENANT_HEADER, "string_match": {"exact": t.name}}
        mine = [_model_object(r.model, settings) for r in table.routes if t.may_call(r.model)]
        routes.append({"name": f"models/tenant/{t.name}", "match": {"path": "/v1/models", "headers": [*get, tenant]},
                       "direct_response": _json_response(200, {"object": "list", "data": mine})})
    routes.append({
        "name": "models",
        "match": {"path": "/v1/models", "headers": get},
        "direct_response": _json_response(200, {
            "object": "list", "data": [_model_object(r.model, settings) for r in table.routes]}),
    })
    for r in table.routes:
        one: dict[str, Any] = {
            "name": f"models/{r.model}",
            "match": {"path": f"/v1/models/{r.model}", "headers": get},
            "direct_response": _json_response(200, _model_object(r.model, settings)),
        }
        if table.tenants is not None:
            one["typed_per_filter_config"] = {ACCESS_FILTER: access(r.model, table.tenants)}
        routes.append(one)
    tenant_limits = rate_limits(table.tenants) if table.tenants is not None else []
    for r in table.routes:
        entries = model_routes(r, table, settings)
        if table.tenants is not None:
            rbac = access(r.model, table.tenants)
            for entry in entries:
                entry.setdefault("typed_per_filter_config", {})[ACCESS_FILTER] = rbac
        if policy_limits := policy_rate_limits(r):
            # The route's own config replaces the virtual host's: the tenants' limits again.
            for entry in entries:
                entry.setdefault("typed_per_filter_config", {})[RATE_LIMIT_FILTER] = \
                    _rate_limit_per_route(tenant_limits + policy_limits)
        routes.extend(entries)
    metadata = f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{{key}})%"
    routes += [
        {
            "name": "unknown-model",
            "match": {"prefix": "/", "dynamic_metadata": [{
                "filter": METADATA_NAMESPACE, "path": [{"key": MODEL_KEY}],
                "value": {"present_match": True}}]},
            "direct_response": _formatted_error(404, openai_error(
                f"The model `{metadata.format(key=MODEL_KEY)}` does not exist.")),
        },
        {
            # Anything but POST (a GET without a body, say) is an unknown URL, not a
            # request that forgot its model.
            "name": "not-found",
            "match": {"prefix": "/", "headers": [
                {"name": ":method", "string_match": {"exact": "POST"}, "invert_match": True}]},
            "direct_response": _not_found(),
        },
        {
            "name": "invalid-json",
            "match": {"prefix": "/", "dynamic_metadata": [{
                "filter": METADATA_NAMESPACE, "path": [{"key": BODY_ERROR_KEY}],
                "value": {"present_match": True}}]},
            "direct_response": _json_response(400, openai_error(
                "We could not parse the JSON body of your request. The OpenAI API expects a "
                "JSON payload with a `model` field.", param=None)),
        },
        {
            "name": "missing-model",
            "match": {"prefix": "/"},
            "direct_response": _json_response(400, openai_error(
                "You must provide a model parameter.")),
        },
    ]
    host: dict[str, Any] = {"name": VIRTUAL_HOST, "domains": ["*"], "routes": routes}
    if table.tenants is not None:
        host["typed_per_filter_config"] = {
            AUTH_FILTER: authentication(table.tenants),
            REROUTE_FILTER: {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                             "source_code": {"inline_string": reroute_source(local_limits(table))}}}
        if tenant_limits:
            # In the filter's per-route config, not the host's own rate_limits: only these
            # carry hits_addend to the service.
            host["typed_per_filter_config"][RATE_LIMIT_FILTER] = _rate_limit_per_route(tenant_limits)
    return {"name": ROUTE_CONFIG_NAME, "virtual_hosts": [host]}


# --------------------------------------------------------------------------- listener


# Envoy's own upstream failures (no healthy replica, connect failure, reset, timeout)
# are answered in OpenAI's error shape too, so clients parse every error the same way.
_UPSTREAM_FAILURE_FLAGS = ["UH", "UF", "UO", "URX", "UC", "UT", "NC", "UMSDR", "UPE"]


ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "model": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{MODEL_KEY})%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "first_byte_ms": "%RESPONSE_DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    # The tenant the ingress authenticated (with tenants; on a 401, what the client sent).
    "tenant": f"%REQ({TENANT_HEADER})%",
    # The tokens the response used (usage's total_tokens), with a tenant's token limit.
    "tokens": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{TOKENS_KEY})%",
}


_API_KEY_AUTH = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"
_API_KEY_AUTH_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def _status_is(code: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {
        "op": "EQ", "value": {"default_value": code, "runtime_key": f"llmfleet.status_{code}"}}}}


def _tenant_error_mappers() -> list[dict[str, Any]]:
    """401 and 403 from the tenant filters, in OpenAI's shape (with the codes OpenAI uses)."""
    no_key = {"header_filter": {"header": {"name": "authorization", "present_match": False}}}
    return [
        {
            "filter": {"and_filter": {"filters": [_status_is(401), no_key]}},
            "body_format_override": {"json_format": openai_error(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                param=None, code="invalid_api_key")},
        },
        {
            "filter": _status_is(401),
            "body_format_override": {"json_format": openai_error(
                "Incorrect API key provided.", param=None, code="invalid_api_key")},
        },
        {
            "filter": _status_is(403),
            "body_format_override": {"json_format": openai_error(
                f"Your API key may not call the model `%DYNAMIC_METADATA({METADATA_NAMESPACE}:{MODEL_KEY})%`.",
                code="model_not_allowed")},
        },
    ]


def _local_limit_mapper() -> dict[str, Any]:
    """A local request limit's 429, in OpenAI's shape, with the tenant's text and Retry-After."""
    metadata = f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{{key}})%"
    return {
        "filter": {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": "response.code_details == 'local_rate_limited'"}}},
        "headers_to_add": [{"header": {"key": "retry-after", "value": metadata.format(key=LOCAL_RETRY_KEY)},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        "body_format_override": {"json_format": openai_error(
            metadata.format(key=LOCAL_REFUSAL_KEY), err_type=REQUESTS, param=None, code="rate_limit_exceeded")},
    }


def authentication(tenants: tuple[TenantAccess, ...]) -> dict[str, Any]:
    """The virtual host's api_key_auth: every tenant's keys (Authorization: Bearer <key>)."""
    credentials = sorted((key, t.name) for t in tenants for key in t.keys)
    return {
        "@type": _API_KEY_AUTH_PER_ROUTE,
        "credentials": [{"key": key, "client": client} for key, client in credentials],
        "key_sources": [{"header": "Authorization"}],
        # The engines never see a key; the routes below see who sent the request.
        "forwarding": {"header": TENANT_HEADER, "hide_credentials": True},
    }


def access(model: str, tenants: tuple[TenantAccess, ...]) -> dict[str, Any]:
    """One model's RBAC: only the tenants that may call it (none: every request is refused)."""
    allowed = sorted(t.name for t in tenants if t.may_call(model))
    policies = {"tenants": {
        "permissions": [{"any": True}],
        "principals": [{"header": {"name": TENANT_HEADER, "string_match": {"exact": name}}} for name in allowed],
    }} if allowed else {}
    return {"@type": _RBAC_PER_ROUTE, "rbac": {"rules": {"action": "ALLOW", "policies": policies}}}


_TENANT_DESCRIPTOR = {"request_headers": {"header_name": TENANT_HEADER, "descriptor_key": RATE_LIMIT_TENANT}}


def _limit_descriptor(kind: str) -> list[dict[str, Any]]:
    return [_TENANT_DESCRIPTOR,
            {"generic_key": {"descriptor_key": RATE_LIMIT_KIND, "descriptor_value": kind}}]


def rate_limits(tenants: tuple[TenantAccess, ...]) -> list[dict[str, Any]]:
    """What Envoy asks the rate-limit service per request (nothing when no tenant has a
    limit of that kind)."""
    out: list[dict[str, Any]] = []
    if any(t.requests and not t.requests.local for t in tenants):
        out.append({"actions": _limit_descriptor(REQUESTS)})
    if any(t.tokens for t in tenants):
        out += [
            # Before the request: is anything left? (takes nothing)
            {"actions": _limit_descriptor(TOKENS), "hits_addend": {"number": 0}},
            # Once the response has ended: the tokens it used (the usage Lua's count).
            {"actions": _limit_descriptor(TOKENS), "apply_on_stream_done": True,
             "hits_addend": {"format": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{TOKENS_KEY})%"}},
        ]
    if any(t.budgets for t in tenants):
        out += _budget_limits(_TENANT_DESCRIPTOR, check=any(b.refuse for t in tenants for b in t.budgets))
    if any(t.max_concurrent for t in tenants):
        request_id = {"request_headers": {"header_name": "x-request-id", "descriptor_key": RATE_LIMIT_REQUEST}}
        out += [
            # A slot for the request, by its ID; given back when its stream ends.
            {"actions": [*_limit_descriptor(CONCURRENCY), request_id]},
            {"actions": [*_limit_descriptor(DONE), request_id], "apply_on_stream_done": True},
        ]
    return out


LocalLimits = tuple[tuple[str, RateLimit], ...]  # (tenant, its local request limit), by tenant


def local_limits(table: RouteTable) -> LocalLimits:
    """The tenants' request limits of scope local."""
    return tuple((t.name, t.requests) for t in sorted(table.tenants or (), key=lambda t: t.name)
                 if t.requests and t.requests.local)


def local_rate_limit(limits: LocalLimits) -> dict[str, Any]:
    """The local_ratelimit filter's config for the tenants' local request limits: a token
    bucket per tenant in each Envoy."""
    everyone = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    unlimited = 2**32 - 1
    descriptors = []
    for tenant, limit in limits:
        bucket = local_bucket(limit)
        descriptors.append({
            "entries": [{"key": RATE_LIMIT_TENANT, "value": tenant},
                        {"key": RATE_LIMIT_KIND, "value": REQUESTS}],
            "token_bucket": {"max_tokens": bucket.size, "tokens_per_fill": bucket.tokens,
                             "fill_interval": f"{bucket.fill_seconds:.9f}s"},  # a Duration has ns precision
        })
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "llmfleet_local_ratelimit",
        "filter_enabled": {"runtime_key": "llmfleet.local_ratelimit.enabled", **everyone},
        "filter_enforced": {"runtime_key": "llmfleet.local_ratelimit.enforced", **everyone},
        # Envoy wants a bucket for requests no descriptor matches (tenants without a local
        # limit): one that never runs out, and is not taken from otherwise.
        "token_bucket": {"max_tokens": unlimited, "tokens_per_fill": unlimited, "fill_interval": "1s"},
        "always_consume_default_token_bucket": False,
        "descriptors": descriptors,
        "rate_limits": [{"actions": _limit_descriptor(REQUESTS)}],
    }


def reroute_source(limits: LocalLimits) -> str:
    """The Lua that runs once auth has named the tenant: the route is chosen again (rules may
    match the tenant), and a tenant with a local request limit gets its refusal ready."""
    rows = "".join(
        f"  [{json.dumps(name)}] = {{{json.dumps(limit_message(name, REQUESTS, limit, b.retry_after))}, "
        f"\"{b.retry_after}\"}},\n"
        for name, limit in limits for b in (local_bucket(limit),))
    if not rows:
        return "function envoy_on_request(handle)\n  handle:clearRouteCache()\nend\n"
    return (
        f"local refusals = {{\n{rows}}}\n"
        "function envoy_on_request(handle)\n"
        "  handle:clearRouteCache()\n"
        f"  local refusal = refusals[handle:headers():get({json.dumps(TENANT_HEADER)})]\n"
        "  if refusal then\n"
        "    local metadata = handle:streamInfo():dynamicMetadata()\n"
        f"    metadata:set({json.dumps(METADATA_NAMESPACE)}, {json.dumps(LOCAL_REFUSAL_KEY)}, refusal[1])\n"
        f"    metadata:set({json.dumps(METADATA_NAMESPACE)}, {json.dumps(LOCAL_RETRY_KEY)}, refusal[2])\n"
        "  end\n"
        "end\n")


def _budget_limits(subject: dict[str, Any], *, check: bool) -> list[dict[str, Any]]:
    """Budgets of ``subject`` (a descriptor entry naming the tenant or the RoutePolicy)."""
    def kind(k: str) -> list[dict[str, Any]]:
        return [subject, {"generic_key": {"descriptor_key": RATE_LIMIT_KIND, "descriptor_value": k}}]
    cluster: dict[str, Any] = {"destination_cluster": {}}
    return [
        # Before the request: is a budget that refuses spent?
        *([{"actions": kind(BUDGET), "hits_addend": {"number": 0}}] if check else []),
        # Once the response has ended: its prompt and completion tokens, and the cluster that
        # answered (their price).
        *({"actions": [*kind(k), cluster], "apply_on_stream_done": True,
           "hits_addend": {"format": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{key})%"}}
          for k, key in ((SPENT_PROMPT, PROMPT_TOKENS_KEY), (SPENT_COMPLETION, COMPLETION_TOKENS_KEY))),
    ]


def policy_rate_limits(route: Route) -> list[dict[str, Any]]:
    """What Envoy asks the rate-limit service for the budgets of the route's RoutePolicy."""
    if not route.budget_subject or not route.budgets:
        return []
    subject = {"generic_key": {"descriptor_key": RATE_LIMIT_POLICY, "descriptor_value": route.budget_subject}}
    return _budget_limits(subject, check=any(b.refuse for b in route.budgets))


def _rate_limit_per_route(rate_limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
            "rate_limits": rate_limits}


def _limited(table: RouteTable) -> bool:
    """Whether Envoy asks the rate-limit service anything (then it needs its cluster)."""
    return (table.tenants is not None and bool(rate_limits(table.tenants))) or \
        any(policy_rate_limits(r) for r in table.routes)


def rate_limit_cluster(service: Endpoint | None, settings: DataPlaneSettings) -> dict[str, Any]:
    """Where Envoy asks for rate limits: the operator replica that leads (no endpoint yet:
    the filter's calls fail and requests go through)."""
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": service.address,
                                                              "port_value": service.port}}}}] if service else []
    return {
        "name": RATE_LIMIT_CLUSTER,
        "type": "STATIC",
        "connect_timeout": f"{settings.connect_timeout_seconds}s",
        "load_assignment": {"cluster_name": RATE_LIMIT_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    }


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def listener(listener_port: int, listener_address: str = "0.0.0.0",
             settings: DataPlaneSettings | None = None, body: Iterable[str] = (),
             local: LocalLimits = ()) -> dict[str, Any]:
    """The one Listener (LDS): HCM with json_to_metadata and the router, RDS over ADS.
    ``body``: the body fields rules match on, ``local``: the tenants' local request limits
    (a change of either changes the listener, which Envoy swaps in while draining the old
    one's connections)."""
    settings = settings or DataPlaneSettings()
    hcm: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "llmfleet",
        "codec_type": "AUTO",
        "use_remote_address": True,
        # Keep a client's x-request-id, so its logs and ours (access log) can be joined.
        "preserve_external_request_id": True,
        "rds": {"config_source": _ADS, "route_config_name": ROUTE_CONFIG_NAME},
        "stream_idle_timeout": f"{settings.stream_idle_timeout_seconds}s",
        "request_timeout": "0s",
        "http_filters": [
            {
                "name": "envoy.filters.http.json_to_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
                    "request_rules": {
                        "rules": [{
                            "selectors": [{"key": MODEL_KEY}],
                            "on_present": {"metadata_namespace": METADATA_NAMESPACE, "key": MODEL_KEY,
                                           "type": "STRING"},
                            "on_error": {"metadata_namespace": METADATA_NAMESPACE, "key": BODY_ERROR_KEY,
                                         "value": {"string_value": "invalid JSON body"}},
                        }, *(_body_rule(f) for f in body)],
                        # "application/json" with or without parameters (charset=...).
                        "allow_content_types_regex": {"regex": r"^application/json\s*(;.*)?$"},
                    },
                },
            },
            {"name": AUTH_FILTER, "disabled": True, "typed_config": {"@type": _API_KEY_AUTH}},
            # With tenants: the route is chosen again once auth has named the tenant, so
            # rules may match x-llmfleet-tenant (the route found before named whatever the
            # client sent).
            {"name": REROUTE_FILTER, "disabled": True,
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}},
            # Not disabled: Envoy enables a disabled filter from the route it finds before
            # the body is read, and a request's model route is known only after it. With no
            # rules it lets everything through; a model's routes carry its rules.
            {"name": ACCESS_FILTER, "typed_config": {"@type": _RBAC}},
            {"name": LOCAL_RATE_LIMIT_FILTER, "typed_config": local_rate_limit(local)} if local else
            {"name": LOCAL_RATE_LIMIT_FILTER, "disabled": True, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "llmfleet_local_ratelimit"}},
            {"name": RATE_LIMIT_FILTER, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": RATE_LIMIT_DOMAIN,
                # Unreachable or slow: let the request through rather than refuse everyone.
                "failure_mode_deny": False,
                "timeout": f"{settings.rate_limit_timeout_seconds}s",
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": RATE_LIMIT_CLUSTER}},
                                       "transport_api_version": "V3"},
            }},
            # Every response: its tokens and a stream's first token (token limits, accounting).
            *([{"name": USAGE_FILTER, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": usage_source()}}}] if settings.usage_accounting else []),
            # Runs only on routes with prefix affinity (their per-route source).
            {"name": PREFIX_FILTER,
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}},
            # Runs only on routes that carry a cascade's per-route source.
            {"name": CASCADE_FILTER,
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}},
            _ROUTER,
        ],
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {"response_flag_filter": {"flags": _UPSTREAM_FAILURE_FLAGS}},
                    "body_format_override": {"json_format": openai_error(
                        "%LOCAL_REPLY_BODY%", err_type="server_error", param=None)},
                },
                *_tenant_error_mappers(),
                _local_limit_mapper(),
                {
                    "filter": {"status_code_filter": {"comparison": {
                        "op": "EQ", "value": {"default_value": 413, "runtime_key": "llmfleet.body_too_large"}}}},
                    "body_format_override": {"json_format": openai_error(
                        f"The request body is larger than the {_size(settings.max_request_body_bytes)} "
                        "this gateway accepts.", param=None)},
                },
            ],
        },
    }
    # Every request's entry streams to the operator (the replica this Envoy's xDS stream
    # reaches), which counts usage per tenant, model and backend (envoy/accounting.py).
    hcm["access_log"] = [] if not settings.usage_accounting else [{
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": USAGE_LOG,
                "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
                "transport_api_version": "V3",
                "buffer_flush_interval": f"{settings.usage_flush_seconds}s",
            },
            "additional_request_headers_to_log": [TENANT_HEADER],
        },
    }]
    if settings.access_log:
        hcm["access_log"].append({
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"json_format": ACCESS_LOG_FORMAT},
            },
        })
    return {
        "name": LISTENER_NAME,
        "address": {"socket_address": {"address": listener_address, "port_value": listener_port}},
        # Request bodies are buffered whole (json_to_metadata, retries): allow long prompts.
        "per_connection_buffer_limit_bytes": settings.max_request_body_bytes,
        "filter_chains": _hcm_chain(hcm),
    }


# --------------------------------------------------------------------------- clusters


def stat_name(name: str) -> str:
    """Cluster names are "<namespace>/<name>"; stats read better without the slash, and
    a dot or colon would split the stat's name (Envoy turns colons into underscores)."""
    return name.replace("/", "_").replace(".", "_").replace(":", "_")


def route_stat_prefix(model: str) -> str:
    """The stat_prefix of a public model's routes: Envoy counts their requests as
    ``vhost.llmfleet.route.<prefix>.*``."""
    return stat_name(model)


def cluster(c: Cluster, settings: DataPlaneSettings | None = None, *, name: str | None = None,
            max_requests: int | None = None, balance_percent: int | None = None) -> dict[str, Any]:
    """One ModelDeployment as an EDS cluster (CDS). Nothing here depends on weights or
    endpoints, so the resource stays byte-identical while those change. ``name`` and
    ``max_requests``: a copy of it under another name (its own EDS resource) that takes
    at most that many requests at once (a saturation gate's). ``balance_percent``: a
    prefix-affinity copy, balanced by consistent hashing with bounded load (a replica over
    that percent of the average requests in flight is passed over)."""
    settings = settings or DataPlaneSettings()
    name = name or c.name
    lb: dict[str, Any] = {"lb_policy": "LEAST_REQUEST"}
    if balance_percent is not None:
        lb = {"lb_policy": "RING_HASH",
              "common_lb_config": {"consistent_hashing_lb_config": {"hash_balance_factor": balance_percent}}}
    return {
        "name": name,
        "alt_stat_name": stat_name(name),
        "type": "EDS",
        "eds_cluster_config": {"eds_config": _ADS, "service_name": name},
        "connect_timeout": f"{settings.connect_timeout_seconds}s",
        **lb,
        "per_connection_buffer_limit_bytes": settings.max_request_body_bytes,
        "circuit_breakers": _circuit_breakers(settings, max_requests),
        "outlier_detection": {
            "consecutive_5xx": settings.consecutive_5xx,
            "consecutive_gateway_failure": settings.consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": f"{settings.outlier_interval_seconds}s",
            "base_ejection_time": f"{settings.base_ejection_seconds}s",
            "max_ejection_percent": settings.max_ejection_percent,
        },
        "typed_extension_protocol_options": _upstream_filters([_lua(model_rewrite_source(c.served_model, c.name))]),
    }


def _circuit_breakers(settings: DataPlaneSettings, max_requests: int | None = None) -> dict[str, Any]:
    big = {"max_connections": settings.max_requests_per_cluster,
           "max_pending_requests": settings.max_requests_per_cluster,
           "max_requests": max_requests or settings.max_requests_per_cluster,
           "max_retries": settings.max_concurrent_retries}
    return {"thresholds": [dict(big, priority=p) for p in ("DEFAULT", "HIGH")]}


def _lua(source: str) -> dict[str, Any]:
    return {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": source}}}


def _upstream_filters(filters: list[dict[str, Any]]) -> dict[str, Any]:
    """HTTP/1.1 to the engines, through these upstream filters, then the codec."""
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [*filters, {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}],
    }}


FALLBACK_PREFIX = "fallback:"  # an aggregate cluster: "fallback:<primary>><fallback>>..."


GATE_PREFIX = "saturation:"  # "saturation:<limit>:<cluster>": a saturation gate (internal listener + cluster)
LIMITED_PREFIX = "limited:"  # "limited:<limit>:<cluster>": the cluster behind a gate, <limit> per replica
# A policy's own copies of a cluster (own EDS, same endpoints), so that Envoy counts
# that policy's requests to it apart (envoy/traffic.py):
CASCADE_PREFIX = "cascade:"  # "cascade:<public model>:<cluster>": a cascade stage's
FALLBACK_COPY_PREFIX = "fallback-for:"  # "fallback-for:<public model>:<cluster>": a fallback tier's
PREFIX_COPY_PREFIX = "prefix-for:"  # "prefix-for:<public model>:<cluster>": a ring-hash copy (prefix affinity)
REACHES_KEY = "reaches"  # route metadata: the clusters a route reaches besides those its action names


def cascade_cluster(model: str, cluster_name: str) -> str:
    return f"{CASCADE_PREFIX}{model}:{cluster_name}"


def fallback_cluster(model: str, cluster_name: str) -> str:
    return f"{FALLBACK_COPY_PREFIX}{model}:{cluster_name}"


def prefix_cluster(model: str, cluster_name: str) -> str:
    return f"{PREFIX_COPY_PREFIX}{model}:{cluster_name}"


def _prefix_pairs(route: Route) -> list[tuple[str, str]]:
    """(ring-hash copy, the cluster it copies) for every backend a route with prefix
    affinity splits over."""
    if route.prefix is None:
        return []
    return [(prefix_cluster(route.model, b.cluster), b.cluster)
            for backends in (route.backends, *(rule.backends for rule in route.rules)) for b in backends]


def prefix_copies(table: RouteTable) -> dict[str, int]:
    """The ring-hash copies of prefix affinity: copy name → its hash_balance_factor."""
    return {name: route.prefix.balance_percent for route in table.routes if route.prefix is not None
            for name, _ in _prefix_pairs(route)}


def policy_copies(table: RouteTable) -> list[tuple[str, Cluster]]:
    """(copy name, the cluster it copies) for every cascade stage, fallback tier and
    prefix-affine backend."""
    out = {}
    for route in table.routes:
        pairs = [(cascade_cluster(route.model, s.cluster), s.cluster) for s in route.cascade.stages] \
            if route.cascade else []
        pairs += [(fallback_cluster(route.model, c), c) for c in route.fallback.clusters] if route.fallback else []
        pairs += _prefix_pairs(route)
        for name, copied in pairs:
            backend = table.cluster(copied)
            if backend is not None:
                out[name] = backend
    return sorted(out.items())


def fallback_chain(route: Route, primary: str) -> tuple[str, ...]:
    """The clusters an attempt goes through, in order, when the split picks ``primary``
    (through its saturation gate when the fallback sets a limit, through the route's
    ring-hash copy with prefix affinity), then the route's own copies of its fallback
    clusters."""
    fallback = route.fallback
    first = prefix_cluster(route.model, primary) if route.prefix is not None else primary
    if fallback is None:
        return (first,)
    rest = tuple(fallback_cluster(route.model, c) for c in fallback.clusters if c != primary)
    limit = fallback.max_in_flight_per_replica
    # (The API refuses a saturation limit with prefix affinity: the gate would count another cluster.)
    return (f"{GATE_PREFIX}{limit}:{primary}" if limit and rest and route.prefix is None else first, *rest)


def gate_of(name: str) -> tuple[int, str] | None:
    """(limit, cluster) of a saturation gate's name; None for any other name."""
    if not name.startswith(GATE_PREFIX):
        return None
    limit, cluster_name = name.removeprefix(GATE_PREFIX).split(":", 1)
    return int(limit), cluster_name


def limited_name(gate: str) -> str:
    return LIMITED_PREFIX + gate.removeprefix(GATE_PREFIX)


def chain_name(chain: tuple[str, ...]) -> str:
    return chain[0] if len(chain) == 1 else FALLBACK_PREFIX + ">".join(chain)


def saturation_gates(table: RouteTable) -> list[str]:
    """Every saturation gate a fallback chain of ``table`` starts with."""
    return sorted({chain[0] for chain in fallback_chains(table) if gate_of(chain[0])})


def gate_resources(gate: str, table: RouteTable, settings: DataPlaneSettings) -> dict[str, list[dict[str, Any]]]:
    """A saturation gate: a cluster whose one endpoint is an internal listener, whose
    router sends to a copy of the backend's cluster that takes at most limit x ready
    replicas requests at once. Beyond that the copy's circuit breaker answers 503 at
    once (no queueing), the gate's filter marks it (saturation_gate_source) and the
    route retries into the fallback. In-process: no extra network hop."""
    parsed = gate_of(gate)
    backend = table.cluster(parsed[1]) if parsed else None
    if parsed is None or backend is None:
        raise ValueError(f"no cluster behind saturation gate {gate!r}")
    limit = parsed[0]
    limited = limited_name(gate)
    hcm = {
        "@type": _HCM,
        "stat_prefix": stat_name(gate),
        "request_timeout": "0s",
        "stream_idle_timeout": f"{settings.stream_idle_timeout_seconds}s",
        "route_config": {"name": gate, "virtual_hosts": [{
            "name": gate, "domains": ["*"],
            # No timeout of its own: the route that sent the request here times it out.
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": limited, "timeout": "0s"}}]}]},
        "http_filters": [
            _lua(saturation_gate_source()),
            _ROUTER,
        ],
    }
    gate_cluster = {
        "name": gate,
        "alt_stat_name": stat_name(gate),
        "type": "STATIC",
        "connect_timeout": f"{settings.connect_timeout_seconds}s",
        "per_connection_buffer_limit_bytes": settings.max_request_body_bytes,
        "circuit_breakers": _circuit_breakers(settings),
        "load_assignment": {"cluster_name": gate, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"envoy_internal_address": {"server_listener_name": gate}}},
            "metadata": _endpoint_labels(backend)}]}]},
    }
    return {
        CLUSTER_TYPE: [gate_cluster, cluster(backend, settings, name=limited,
                                             max_requests=limit * max(1, len(backend.endpoints)))],
        ENDPOINT_TYPE: [load_assignment(backend, name=limited)],
        LISTENER_TYPE: [{
            "name": gate,
            "internal_listener": {},
            "per_connection_buffer_limit_bytes": settings.max_request_body_bytes,
            "filter_chains": _hcm_chain(hcm),
        }],
    }


def fallback_chains(table: RouteTable) -> list[tuple[str, ...]]:
    """Every fallback chain a route of ``table`` sends to (aggregate clusters to define)."""
    chains = {fallback_chain(route, b.cluster)
              for route in table.routes if route.fallback
              for backends in (route.backends, *(rule.backends for rule in route.rules))
              for b in live_backends(backends, table)}
    return sorted(c for c in chains if len(c) > 1)


def aggregate_cluster(chain: tuple[str, ...], settings: DataPlaneSettings | None = None) -> dict[str, Any]:
    """A fallback chain as an aggregate cluster (CDS): its clusters are its priorities, in
    order. Upstream filters run with the aggregate's configuration, so the model name to
    send is read from the chosen endpoint's metadata (EDS) instead of being built in."""
    settings = settings or DataPlaneSettings()
    name = chain_name(chain)
    from_host = [{"append": {"header": {"key": key, "value": f'%UPSTREAM_METADATA(["{METADATA_NAMESPACE}", '
                                                                      f'"{field}"])%'},
                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}
                 for key, field in ((SERVED_HEADER, "served"), (BACKEND_HEADER, "backend"))]
    return {
        "name": name,
        "alt_stat_name": stat_name(name),
        "connect_timeout": f"{settings.connect_timeout_seconds}s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
            "clusters": list(chain)}},
        # The router counts retries and requests against this cluster.
        "circuit_breakers": _circuit_breakers(settings),
        "typed_extension_protocol_options": _upstream_filters([
            {"name": "envoy.filters.http.header_mutation", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": from_host}}},
            _lua(model_rewrite_source(None, None)),
        ]),
    }


def _endpoint_labels(c: Cluster) -> dict[str, Any]:
    """What an endpoint of ``c`` serves, read by the upstream filters of fallback chains."""
    return {"filter_metadata": {METADATA_NAMESPACE: {
        "served": json.dumps(c.served_model, ensure_ascii=True), "backend": c.name}}}


def load_assignment(c: Cluster, name: str | None = None) -> dict[str, Any]:
    """The ready replicas of one cluster (EDS; ``name``: a copy's), each labelled with
    what its cluster serves."""
    labels = _endpoint_labels(c)
    lb_endpoints = [
        {
            "endpoint": {"address": {"socket_address": {"address": e.address, "port_value": e.port}}},
            "load_balancing_weight": max(1, e.weight),
            "metadata": labels,
        }
        for e in sorted(c.endpoints)
    ]
    return {"cluster_name": name or c.name, "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else []}


# --------------------------------------------------------------------------- all


def _check(table: RouteTable) -> None:
    names = [c.name for c in table.clusters]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate cluster names in route table: {sorted(names)}")
    models = [r.model for r in table.routes]
    if len(set(models)) != len(models):
        raise ValueError(f"duplicate public model names in route table: {sorted(models)}")


def build_config(table: RouteTable, *, listener_port: int, listener_address: str = "0.0.0.0",
                 settings: DataPlaneSettings | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every resource as a plain dict, by type URL."""
    settings = settings or DataPlaneSettings()
    _check(table)
    clusters = sorted(table.clusters, key=lambda c: c.name)
    copies = policy_copies(table)
    balances = prefix_copies(table)
    config = {
        CLUSTER_TYPE: [cluster(c, settings) for c in clusters]
        + [aggregate_cluster(chain, settings) for chain in fallback_chains(table)]
        + [cluster(c, settings, name=name, balance_percent=balances.get(name)) for name, c in copies]
        + ([rate_limit_cluster(table.rate_limit_service, settings)] if _limited(table) else []),
        ENDPOINT_TYPE: [load_assignment(c) for c in clusters] + [load_assignment(c, name=name) for name, c in copies],
        LISTENER_TYPE: [listener(listener_port, listener_address, settings, body_fields(table), local_limits(table))],
        ROUTE_TYPE: [route_configuration(table, settings)],
    }
    for gate in saturation_gates(table):
        for type_url, items in gate_resources(gate, table, settings).items():
            config[type_url] += items
    return config


def to_proto(type_url: str, resource: Mapping[str, Any]) -> Message:
    """Convert one resource dict to its xds-protos message (unknown fields raise)."""
    return json_format.ParseDict(resource, _MESSAGE_CLASSES[type_url]())


def to_protos(config: Mapping[str, Iterable[Mapping[str, Any]]]) -> Resources:
    return {type_url: [to_proto(type_url, r) for r in items] for type_url, items in config.items()}


def build_resources(table: RouteTable, *, listener_port: int, listener_address: str = "0.0.0.0",
                    settings: DataPlaneSettings | None = None) -> Resources:
    """Every resource as an xds-protos message, by type URL (what the xDS server sends).

    The same as ``to_protos(build_config(...))``, but a cluster and a load assignment are
    converted once per distinct value and reused: with a thousand models a route change
    would otherwise convert every cluster again (most of a recompute's time).
    """
    settings = settings or DataPlaneSettings()
    _check(table)
    clusters = sorted(table.clusters, key=lambda c: c.name)
    copies = policy_copies(table)
    balances = prefix_copies(table)
    resources = {
        CLUSTER_TYPE: [_cluster_proto(c.name, c.served_model, settings) for c in clusters]
        + [_aggregate_proto(chain, settings) for chain in fallback_chains(table)]
        + [_cluster_proto(c.name, c.served_model, settings, name, balances.get(name)) for name, c in copies]
        + ([to_proto(CLUSTER_TYPE, rate_limit_cluster(table.rate_limit_service, settings))]
           if _limited(table) else []),
        ENDPOINT_TYPE: [_assignment_proto(c.name, c.served_model, c.endpoints) for c in clusters]
        + [_assignment_proto(name, c.served_model, c.endpoints) for name, c in copies],
        LISTENER_TYPE: [_listener_proto(listener_port, listener_address, settings, tuple(body_fields(table)),
                                        local_limits(table))],
        ROUTE_TYPE: [to_proto(ROUTE_TYPE, route_configuration(table, settings))],
    }
    for gate in saturation_gates(table):
        for type_url, items in gate_resources(gate, table, settings).items():
            resources[type_url] += [to_proto(type_url, r) for r in items]
    return resources


# The messages are shared between builds: nothing may modify them after conversion.
@functools.lru_cache(maxsize=16384)
def _cluster_proto(name: str, served_model: str, settings: DataPlaneSettings, copy: str | None = None,
                   balance_percent: int | None = None) -> Message:
    return to_proto(CLUSTER_TYPE, cluster(Cluster(name, served_model), settings, name=copy,
                                          balance_percent=balance_percent))


@functools.lru_cache(maxsize=16384)
def _assignment_proto(name: str, served_model: str, endpoints: tuple[Endpoint, ...]) -> Message:
    return to_proto(ENDPOINT_TYPE, load_assignment(Cluster(name, served_model, endpoints)))


@functools.lru_cache(maxsize=4096)
def _aggregate_proto(chain: tuple[str, ...], settings: DataPlaneSettings) -> Message:
    return to_proto(CLUSTER_TYPE, aggregate_cluster(chain, settings))


@functools.lru_cache(maxsize=16)
def _listener_proto(port: int, address: str, settings: DataPlaneSettings, body: tuple[str, ...],
                    local: LocalLimits) -> Message:
    return to_proto(LISTENER_TYPE, listener(port, address, settings, body, local))


def resource_name(resource: Message) -> str:
    """The xDS name of a resource (ClusterLoadAssignment names itself by cluster_name)."""
    if isinstance(resource, endpoint_pb2.ClusterLoadAssignment):
        return resource.cluster_name
    return resource.name


def referenced_clusters(route_config: Message) -> set[str]:
    """Cluster names a RouteConfiguration sends traffic to."""
    out: set[str] = set()
    for vh in route_config.virtual_hosts:
        for r in vh.routes:
            if r.HasField("route"):
                names = [r.route.cluster] if r.route.cluster else []
                names += [w.name for w in r.route.weighted_clusters.clusters]
                out.update(names)
            labels = r.metadata.filter_metadata.get(METADATA_NAMESPACE)
            if labels is not None and REACHES_KEY in labels.fields:
                out.update(v.string_value for v in labels.fields[REACHES_KEY].list_value.values)
    return out
