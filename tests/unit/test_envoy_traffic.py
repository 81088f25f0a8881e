"""status.traffic from Envoy's counters: what is read, how increases add up over the
window across Envoys and their restarts, and what a policy's status says."""

from __future__ import annotations

import pytest

from llmfleet.api.models import RoutePolicySpec
from llmfleet.envoy.resources import cascade_cluster, fallback_cluster
from llmfleet.envoy.traffic import (
    COMPLETED,
    REQUESTS,
    UPTIME,
    TrafficWindow,
    copy_stat,
    parse_counters,
    traffic_status,
)

# What Envoy's /stats/prometheus prints for a route with stat_prefix "chat" and a
# cascade copy cluster (captured from Envoy, trimmed).
ENVOY_TEXT = """\
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="cascade_ask_ai_weak"} 40
envoy_cluster_upstream_rq_total{envoy_cluster_name="fallback-for_ask_ai_steady"} 3
envoy_cluster_upstream_rq_total{envoy_cluster_name="ai_weak"} 7
# TYPE envoy_vhost_route_upstream_rq_completed counter
envoy_vhost_route_upstream_rq_completed{envoy_virtual_host="llmfleet",envoy_route="chat"} 9
envoy_vhost_route_upstream_rq_completed{envoy_virtual_host="ready",envoy_route="chat"} 100
# TYPE envoy_vhost_route_upstream_rq_retry_success counter
envoy_vhost_route_upstream_rq_retry_success{envoy_virtual_host="llmfleet",envoy_route="chat"} 5
# TYPE envoy_vhost_route_upstream_rq_total counter
envoy_vhost_route_upstream_rq_total{envoy_virtual_host="llmfleet",envoy_route="chat"} 14
# TYPE envoy_server_uptime gauge
envoy_server_uptime{} 3600
"""


def test_only_the_routes_and_the_policies_copies_counters_are_read() -> None:
    assert parse_counters(ENVOY_TEXT) == {
        ("cascade_ask_ai_weak", REQUESTS): 40, ("fallback-for_ask_ai_steady", REQUESTS): 3, ("chat", COMPLETED): 9,
        UPTIME: 3600}


def test_increases_add_up_over_envoys_and_survive_a_restart_and_a_missed_read() -> None:
    key = ("chat", COMPLETED)
    w = TrafficWindow(seconds=60)
    w.observe(0, {"a": {key: 100}, "b": {}}, present=["a", "b"])  # baselines: earlier requests are not ours
    assert w.totals() == {}
    w.observe(10, {"a": {key: 110}, "b": {key: 5}}, present=["a", "b"])
    assert w.totals() == {key: 15}
    w.observe(20, {"b": {key: 6}}, present=["a", "b"])  # a did not answer: its increase comes later
    w.observe(30, {"a": {key: 3}, "b": {key: 9}}, present=["a", "b"])  # a restarted: 3 new requests
    assert w.totals() == {key: 15 + 1 + 3 + 3}
    w.observe(75, {"a": {key: 3}, "b": {key: 10}}, present=["a", "b"])
    assert w.totals() == {key: 1 + 3 + 3 + 1}, "rounds older than the window are dropped"
    assert w.covered(75) == 60


def test_an_envoy_that_is_gone_starts_again_from_a_baseline() -> None:
    key = ("chat", COMPLETED)
    w = TrafficWindow()
    w.observe(0, {"a": {key: 10}}, present=["a"])
    w.observe(1, {}, present=[])  # a left (its pod was deleted)
    w.observe(2, {"a": {key: 50}}, present=["a"])  # a new Envoy with the same name
    assert w.totals() == {}


def test_an_envoy_that_started_after_the_first_round_counts_from_zero() -> None:
    key = ("chat", COMPLETED)
    w = TrafficWindow()
    w.observe(0, {"a": {key: 10, UPTIME: 500}}, present=["a"])
    # b is a new pod (up 5 s); c was there all along, only not read before (up 500 s).
    w.observe(30, {"a": {key: 10, UPTIME: 530}, "b": {key: 4, UPTIME: 5}, "c": {key: 70, UPTIME: 530}},
              present=["a", "b", "c"])
    assert w.totals() == {key: 4}


def spec(**fields) -> RoutePolicySpec:
    return RoutePolicySpec.model_validate({"model": "ask", **fields})


def test_a_cascade_says_how_much_each_stage_took_and_escalated() -> None:
    cascade = spec(strategy="cascade", backends=[{"modelDeployment": m} for m in ("weak", "mid", "strong")])
    def stage(name: str) -> tuple[str, str]:
        return copy_stat(cascade_cluster, "ask", "ai", name), REQUESTS

    totals = {stage("weak"): 200, stage("mid"): 50, stage("strong"): 10}
    assert traffic_status("ai", cascade, totals, 120.4) == {
        "windowSeconds": 120, "requests": 200, "cascade": [
            {"modelDeployment": "weak", "requests": 200, "escalatedShare": 0.25},
            {"modelDeployment": "mid", "requests": 50, "escalatedShare": 0.2},
            {"modelDeployment": "strong", "requests": 10}]}
    # mid had no ready replica: weak escalated straight to strong
    del totals[stage("mid")]
    assert traffic_status("ai", cascade, totals, 300)["cascade"] == [
        {"modelDeployment": "weak", "requests": 200, "escalatedShare": 0.05},
        {"modelDeployment": "mid", "requests": 0},
        {"modelDeployment": "strong", "requests": 10}]


@pytest.mark.parametrize("fallback, expected", [
    ({"backends": [{"modelDeployment": "steady"}, {"modelDeployment": "last"}]},
     {"windowSeconds": 300, "requests": 80, "fallbackShare": 0.15}),
    (None, {"windowSeconds": 300, "requests": 80}),
])
def test_the_fallback_share_is_what_the_policys_fallback_tiers_took(fallback, expected) -> None:
    policy = spec(backends=[{"modelDeployment": "flaky"}], fallback=fallback)
    totals = {("ask", COMPLETED): 80, ("other", COMPLETED): 5,
              (copy_stat(fallback_cluster, "ask", "ai", "steady"), REQUESTS): 10,
              (copy_stat(fallback_cluster, "ask", "ai", "last"), REQUESTS): 2,
              (copy_stat(fallback_cluster, "other", "ai", "steady"), REQUESTS): 5}
    assert traffic_status("ai", policy, totals, 300) == expected
