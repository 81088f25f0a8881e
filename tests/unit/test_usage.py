"""Usage accounting's pure parts: a log entry → labels and tokens, its cost, a backend's prices."""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format
from prometheus_client import CollectorRegistry

from llmfleet.envoy.accounting import Usage, UsageMetrics, backend_of, cost_of, usage_of
from llmfleet.routing.policy import BackendState
from llmfleet.routing.table import Cluster, Route, RouteTable, TenantAccess, TokenPrices, WeightedBackend

TABLE = RouteTable(routes=(Route("chat", (WeightedBackend("ai/small", 100),)),),
                   clusters=(Cluster("ai/small", "small"),), tenants=(TenantAccess("ai/team-a", ("k",), ("*",)),))


def _entry(tenant: str, model: str, cluster: str, code: int = 200, **meta: float) -> accesslog_pb2.HTTPAccessLogEntry:
    return json_format.ParseDict({
        "common_properties": {"upstream_cluster": cluster, "duration": "2.5s",
                              "metadata": {"filter_metadata": {"llmfleet": {"model": model, **meta}}}},
        "request": {"request_headers": {"x-llmfleet-tenant": tenant}},
        "response": {"response_code": code},
    }, accesslog_pb2.HTTPAccessLogEntry())


def test_an_entry_becomes_one_request_with_its_tokens_and_first_token() -> None:
    usage = usage_of(_entry("ai/team-a", "chat", "ai/small", prompt_tokens=30, completion_tokens=12,
                            first_token_ms=250), TABLE)
    assert usage == Usage("ai/team-a", "chat", "ai/small", 200, 30, 12, 2.5, 0.25)


def test_labels_the_table_does_not_know_are_counted_as_nobodys() -> None:
    """A client cannot mint label values: not a tenant, a model or a backend of its own."""
    usage = usage_of(_entry("ai/made-up", "gpt-9", "somewhere", code=404), TABLE)
    assert (usage.tenant, usage.model, usage.backend, usage.code) == ("", "", "", 404)


def test_a_policys_copy_of_a_cluster_is_its_backend() -> None:
    assert backend_of("cascade:chat:ai/small", TABLE) == "ai/small"
    assert backend_of("fallback-for:my:model:ai/small", TABLE) == "ai/small"
    assert backend_of("limited:4:ai/small", TABLE) == "ai/small"
    assert backend_of("cascade:chat:ai/gone", TABLE) == ""


def test_cost_is_each_kind_of_token_at_its_price() -> None:
    usage = Usage("", "chat", "ai/small", 200, 1000, 500, 1.0, None)
    assert cost_of(usage, TokenPrices(0.5e-6, 2e-6)) == 1000 * 0.5e-6 + 500 * 2e-6
    assert cost_of(usage, None) is None and cost_of(usage, TokenPrices(0.0, None)) is None


def test_prices_are_declared_or_derived_from_the_replica_price_and_capacity() -> None:
    derived = BackendState("ai", "small", "small", (), cost_per_replica_hour=3.6, load={"capacityTokensPerSecond": 100})
    assert derived.prices() == TokenPrices(0.0, 3.6 / 3600 / 100)  # $0.00001 per generated token
    declared = BackendState("ai", "small", "small", (), cost_per_replica_hour=3.6, declared_prices=(0.5, 2.0))
    assert declared.prices() == TokenPrices(0.5e-6, 2e-6)
    assert BackendState("ai", "small", "small", (), cost_per_replica_hour=3.6).prices() == TokenPrices(0.0, None), \
        "no capacity learned yet: the output price is not known"
    assert BackendState("ai", "small", "small", ()).prices() is None


def test_streams_give_time_to_first_token_and_per_token() -> None:
    registry = CollectorRegistry()
    metrics = UsageMetrics(registry)
    metrics.record(Usage("ai/team-a", "chat", "ai/small", 200, 10, 11, 2.5, 0.5), TokenPrices(0.0, 1e-6))
    labels = {"tenant": "ai/team-a", "model": "chat", "backend": "ai/small"}
    assert registry.get_sample_value("llmfleet_usage_time_to_first_token_seconds_sum", labels) == 0.5
    assert registry.get_sample_value("llmfleet_usage_time_per_output_token_seconds_sum", labels) == 0.2
    assert registry.get_sample_value("llmfleet_usage_cost_total", labels) == 11e-6


def test_usage_accounting_can_be_left_out_of_the_listener() -> None:
    from llmfleet.envoy.resources import LISTENER_TYPE, USAGE_FILTER, DataPlaneSettings, build_config

    def hcm(settings: DataPlaneSettings) -> dict:
        (lst,) = build_config(TABLE, listener_port=8080, settings=settings)[LISTENER_TYPE]
        return lst["filter_chains"][0]["filters"][0]["typed_config"]

    on, off = hcm(DataPlaneSettings()), hcm(DataPlaneSettings(usage_accounting=False, access_log=False))
    assert USAGE_FILTER in [f["name"] for f in on["http_filters"]]
    assert USAGE_FILTER not in [f["name"] for f in off["http_filters"]] and off["access_log"] == []


def test_readiness_probes_are_nobodys_usage() -> None:
    from envoy.service.accesslog.v3 import als_pb2

    from llmfleet.envoy.accounting import AccessLogService

    registry = CollectorRegistry()
    service = AccessLogService(UsageMetrics(registry))
    service.configure(TABLE)
    probe = _entry("ai/team-a", "", "")
    probe.common_properties.route_name = "healthz"
    request = _entry("ai/team-a", "chat", "ai/small")
    service.count(als_pb2.StreamAccessLogsMessage(
        http_logs=als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(log_entry=[probe, request])))
    assert registry.get_sample_value("llmfleet_usage_requests_total", {
        "tenant": "ai/team-a", "model": "chat", "backend": "ai/small", "code": "200"}) == 1
    assert registry.get_sample_value("llmfleet_usage_requests_total", {
        "tenant": "ai/team-a", "model": "", "backend": "", "code": "200"}) is None


def test_the_operator_flag_leaves_usage_accounting_out_of_every_replicas_config() -> None:
    from llmfleet.cli import build_parser
    from llmfleet.config import OperatorOptions
    from llmfleet.controller.operator import data_plane_settings

    def settings(*args: str):
        return data_plane_settings(OperatorOptions.from_args(build_parser().parse_args(["run", *args])))

    assert settings().usage_accounting
    assert not settings("--no-usage-accounting").usage_accounting
