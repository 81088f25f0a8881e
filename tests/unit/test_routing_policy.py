"""Route table and RoutePolicy status from cluster state: what `kubectl describe rp` explains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmfleet.kube.views import ModelDeploymentView, PodView, RoutePolicyView
from llmfleet.routing import policy as routing
from llmfleet.routing.policy import _percentages
from llmfleet.routing.table import Endpoint, Fallback, RuleMatch, WeightedBackend


def ready_endpoints(pods):
    return routing.ready_endpoints(PodView.from_body(p) for p in pods)


def compute_routing(policies, mds, pods, activator=None, previous_loads=None):
    """The pure function, fed the views the store would hold for these objects."""
    return routing.compute_routing([RoutePolicyView.from_body(p) for p in policies],
                                   [ModelDeploymentView.from_body(m) for m in mds], ready_endpoints(pods),
                                   activator, previous_loads)


def md(name, served=None, ns="ai"):
    spec = {"model": {"uri": "hf://x/y"}, "engine": {"kind": "sim"}}
    if served:
        spec["model"]["servedName"] = served
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod(md_name, ip, ready=True, ns="ai", phase="Running", deleting=False):
    meta = {"name": f"{md_name}-{ip}", "namespace": ns, "labels": {"llmfleet.io/model-deployment": md_name}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "model-server", "ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def rp(name, model, backends, strategy="weighted", created="2026-01-01T00:00:00Z", rules=(), ns="ai"):
    return {
        "metadata": {"name": name, "namespace": ns, "generation": 1, "creationTimestamp": created},
        "spec": {"model": model, "strategy": strategy, "backends": backends, "rules": list(rules)},
    }


def weights(result, policy=0):
    return {b["modelDeployment"]: b["weight"] for b in result.policies[policy].backends}


def cond(result, type_, policy=0):
    return next(c for c in result.policies[policy].conditions if c.type == type_)


FLEET = [md("small", served="llama-8b"), md("big", served="llama-70b")]
PODS = [pod("small", "127.1.0.1"), pod("small", "127.1.0.2"), pod("big", "127.1.0.3")]


def test_weighted_split_as_written_with_served_names():
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "small", "weight": 80},
                                             {"modelDeployment": "big", "weight": 20}])], FLEET, PODS)
    assert weights(r) == {"small": 80, "big": 20}
    (route,) = r.table.routes
    assert route.model == "chat"
    assert route.backends == (WeightedBackend("ai/small", 80), WeightedBackend("ai/big", 20))
    small = r.table.cluster("ai/small")
    assert small.served_model == "llama-8b"
    assert small.endpoints == (Endpoint("127.1.0.1", 8000), Endpoint("127.1.0.2", 8000))
    assert [b["readyReplicas"] for b in r.policies[0].backends] == [2, 1]
    assert cond(r, "Accepted").status and cond(r, "ResolvedRefs").status


def test_backend_without_ready_replicas_gives_its_share_to_the_others():
    pods = [pod("small", "127.1.0.1"), pod("big", "127.1.0.3", ready=False)]
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "small", "weight": 80},
                                             {"modelDeployment": "big", "weight": 20}])], FLEET, pods)
    assert weights(r) == {"small": 100, "big": 0}
    big = r.policies[0].backends[1]
    assert big["readyReplicas"] == 0 and "no ready replicas" in big["reason"]
    assert r.table.routes[0].backends == (WeightedBackend("ai/small", 100),)


def test_missing_backend_is_named_in_resolved_refs():
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "small"}, {"modelDeployment": "ghost"}])],
                        FLEET, PODS)
    c = cond(r, "ResolvedRefs")
    assert not c.status and c.reason == "BackendNotFound" and "ghost" in c.message
    assert weights(r) == {"small": 100, "ghost": 0}
    assert "not found" in r.policies[0].backends[1]["reason"]


def test_failover_sends_everything_to_lowest_ready_priority():
    policy = rp("chat", "chat", [{"modelDeployment": "small", "priority": 0},
                                 {"modelDeployment": "big", "priority": 1}], strategy="failover")
    r = compute_routing([policy], FLEET, PODS)
    assert weights(r) == {"small": 100, "big": 0}
    assert "standby" in r.policies[0].backends[1]["reason"]
    primary_gone = [p for p in PODS if p["metadata"]["labels"]["llmfleet.io/model-deployment"] != "small"]
    r = compute_routing([policy], FLEET, primary_gone)
    assert weights(r) == {"small": 0, "big": 100}


def test_no_ready_backend_leaves_route_without_backends():
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "small"}])], FLEET, [])
    assert r.table.routes[0].backends == ()
    assert weights(r) == {"small": 0}


def test_older_policy_wins_a_model_name_conflict():
    older = rp("first", "chat", [{"modelDeployment": "small"}], created="2026-01-01T00:00:00Z")
    newer = rp("second", "chat", [{"modelDeployment": "big"}], created="2026-02-01T00:00:00Z", ns="other")
    r = compute_routing([newer, older], FLEET + [md("big", ns="other")], PODS)
    by_name = {p.name: p for p in r.policies}
    assert by_name["first"].accepted and not by_name["second"].accepted
    accepted = next(c for c in by_name["second"].conditions if c.type == "Accepted")
    assert accepted.reason == "ModelNameConflict" and "ai/first" in accepted.message
    assert [route.backends for route in r.table.routes] == [(WeightedBackend("ai/small", 100),)]


def test_header_rules_resolve_to_their_own_backends():
    policy = rp("chat", "chat", [{"modelDeployment": "small"}],
                rules=[{"match": {"headers": {"X-Tenant": "premium"}}, "backends": [{"modelDeployment": "big"}]}])
    r = compute_routing([policy], FLEET, PODS)
    (rule,) = r.table.routes[0].rules
    assert rule.match.headers == (("x-tenant", "premium"),)
    assert rule.backends == (WeightedBackend("ai/big", 100),)
    assert {c.name for c in r.table.clusters} == {"ai/small", "ai/big"}


def test_a_rule_carries_its_conditions_cap_and_own_strategy():
    policy = rp("chat", "chat", [{"modelDeployment": "small"}], rules=[{
        "match": {"headersPresent": ["X-Debug"], "headerPatterns": {"X-User": "^a"}, "endpoint": "chat",
                  "body": {"user": "ana"}, "promptBytes": {"max": 100}},
        "backends": [{"modelDeployment": "small", "priority": 1}, {"modelDeployment": "big", "priority": 0}],
        "strategy": "failover", "maxTokens": 64}])
    (rule,) = compute_routing([policy], FLEET, PODS).table.routes[0].rules
    assert rule.match == RuleMatch(header_patterns=(("x-user", "^a"),), headers_present=("x-debug",),
                                   endpoint="chat", body=(("user", "ana"),), prompt_bytes=(None, 100))
    assert rule.max_tokens == 64
    # failover (the rule's strategy, not the policy's weighted split): all to priority 0.
    assert rule.backends == (WeightedBackend("ai/big", 100),)


def test_a_fallback_tier_lists_its_ready_backends_in_order_and_says_so_in_status():
    policy = rp("chat", "chat", [{"modelDeployment": "small"}])
    policy["spec"]["fallback"] = {"backends": [{"modelDeployment": "ghost"}, {"modelDeployment": "big"}],
                                  "retryOn": ["5xx", "429"]}
    r = compute_routing([policy], FLEET, PODS)
    route = r.table.routes[0]
    assert route.fallback == Fallback(("ai/big",), ("5xx", "429"))
    rows = {b["modelDeployment"]: b["reason"] for b in r.policies[0].backends}
    assert rows["big"] == "fallback 2: takes requests the backend before it fails"
    assert rows["ghost"] == "fallback 1: ModelDeployment ghost not found"
    assert not cond(r, "ResolvedRefs").status  # a missing fallback is a missing reference too


def test_a_cascade_lists_its_ready_stages_cheapest_first_and_explains_each():
    policy = rp("chat", "chat", [{"modelDeployment": "small"}, {"modelDeployment": "big"}], strategy="cascade")
    policy["spec"]["cascade"] = {"minMeanLogprob": -0.4, "refusalPatterns": ["I Cannot"]}
    r = compute_routing([policy], FLEET, PODS)
    route = r.table.routes[0]
    assert route.cascade is not None
    assert [(s.backend, s.cluster, s.served_model) for s in route.cascade.stages] == [
        ("small", "ai/small", "llama-8b"), ("big", "ai/big", "llama-70b")]
    assert (route.cascade.min_mean_logprob, route.cascade.refusals) == (-0.4, ("i cannot",))
    assert route.backends == (WeightedBackend("ai/big", 100),)  # what Envoy would send to without the cascade
    reasons = [b["reason"] for b in r.policies[0].backends]
    assert reasons == ["stage 1 of 2: answers unless an escalation condition holds",
                       "stage 2 of 2: the last stage, answers what the others escalate"]


def test_invalid_policy_is_not_accepted_and_named():
    r = compute_routing([rp("chat", "chat", [])], FLEET, PODS)
    c = cond(r, "Accepted")
    assert not c.status and c.reason == "InvalidSpec" and "spec.backends" in c.message
    assert r.table.routes == ()


def test_only_running_ready_not_terminating_pods_are_endpoints():
    eps = ready_endpoints([
        pod("small", "127.1.0.1"), pod("small", "127.1.0.2", ready=False),
        pod("small", "127.1.0.3", phase="Pending"), pod("small", "127.1.0.4", deleting=True),
    ])
    assert eps == {("ai", "small"): (Endpoint("127.1.0.1", 8000),)}


def test_same_inputs_same_table():
    policies = [rp("chat", "chat", [{"modelDeployment": "small", "weight": 3}, {"modelDeployment": "big"}])]
    assert compute_routing(policies, FLEET, PODS).table == compute_routing(policies, FLEET, list(reversed(PODS))).table


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=16))
def test_percentages_sum_to_100_and_follow_the_weights(ws):
    ps = _percentages(ws)
    if sum(ws) == 0:
        assert ps == [0] * len(ws)
        return
    assert sum(ps) == 100
    for w, p in zip(ws, ps):
        assert abs(p - w * 100 / sum(ws)) < 1
        if w == 0:
            assert p == 0


def loaded_md(name, *, cost, tps, running=0, queue=0, ttft=None, target=6, capacity=None, max_replicas=4,
              served=None):
    m = md(name, served=served)
    m["spec"]["cost"] = {"perReplicaHour": cost}
    m["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": max_replicas, "metric": "runningRequests",
                                "target": target}
    load = {"tokensPerSecond": tps, "runningRequests": running, "queueDepth": queue}
    if ttft is not None:
        load["ttftP95Seconds"] = ttft
    if capacity is not None:
        load["capacityTokensPerSecond"] = capacity
    m["status"] = {"load": load}
    return m


TWO_PODS = [pod("cheap", "127.1.0.1"), pod("dear", "127.1.0.2")]
COST_POLICY = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")


def reasons(result):
    return {b["modelDeployment"]: b["reason"] for b in result.policies[0].backends}


def test_cost_sends_everything_to_the_cheaper_backend_while_it_has_room():
    # Demand 300 tokens/s; cheap serves 300 tokens/s per replica at its target (learned,
    # kept while the load is light) and may grow: room for 1.2 x 300.
    fleet = [loaded_md("cheap", cost=1.0, tps=150, running=2, capacity=300),
             loaded_md("dear", cost=4.0, tps=150, running=1, capacity=600)]
    r = compute_routing([COST_POLICY], fleet, TWO_PODS)
    assert weights(r) == {"cheap": 100, "dear": 0}
    assert "cost rank 1" in reasons(r)["cheap"] and "/1k tokens" in reasons(r)["cheap"]
    assert "300 tokens/s per replica at target, 1 ready (may grow to 4)" in reasons(r)["cheap"]


def test_cost_fills_a_backend_that_may_grow_past_its_target_so_that_it_scales_up():
    # Demand 1000: cheap's one replica takes 1.2 x 200 (its scaler then sees 120 % of
    # target and adds replicas); the rest overflows to dear.
    fleet = [loaded_md("cheap", cost=0.5, tps=500, running=6, capacity=200),
             loaded_md("dear", cost=4.0, tps=500, running=2, capacity=1000)]
    assert weights(compute_routing([COST_POLICY], fleet, TWO_PODS)) == {"cheap": 24, "dear": 76}
    # At its maxReplicas it gets its target capacity only: 200 of 1000.
    fleet[0]["spec"]["autoscaling"]["maxReplicas"] = 1
    r = compute_routing([COST_POLICY], fleet, TWO_PODS)
    assert weights(r) == {"cheap": 20, "dear": 80}
    assert "(at its maximum)" in reasons(r)["cheap"]


def test_cost_ranks_by_price_per_token_not_per_replica_hour():
    # dear's replica costs 2x but serves 4x the tokens: it is the cheaper per token.
    fleet = [loaded_md("cheap", cost=1.0, tps=100, running=3, capacity=100),
             loaded_md("dear", cost=2.0, tps=100, running=1, capacity=400)]
    r = compute_routing([COST_POLICY], fleet, TWO_PODS)
    assert weights(r) == {"cheap": 0, "dear": 100}
    assert "cost rank 1" in reasons(r)["dear"]


def test_cost_holds_a_backend_over_the_slo_at_what_it_serves():
    fleet = [loaded_md("cheap", cost=1.0, tps=300, running=3, ttft=0.9, capacity=400),
             loaded_md("dear", cost=4.0, tps=300, running=1, capacity=600)]
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")
    policy["spec"]["slo"] = {"ttftP95Milliseconds": 500}
    r = compute_routing([policy], fleet, TWO_PODS)
    assert weights(r) == {"cheap": 50, "dear": 50}
    assert "TTFT p95 900 ms over the 500 ms SLO: held" in reasons(r)["cheap"]


def test_cost_capacity_comes_from_the_load_until_the_autoscaler_has_learned_it():
    # cheap: a full batch of 4 with 2 waiting serves 300 tokens/s, so at its target of 6
    # (beyond the batch) 300; dear: 3 running of 6 at 300 tokens/s, so 600 at its target.
    # Demand counts what waits: cheap is asked for 300 x 6/4 = 450, dear 300; cheap's
    # room is 1.2 x 300 = 360 of 750.
    fleet = [loaded_md("cheap", cost=1.0, tps=300, running=4, queue=2),
             loaded_md("dear", cost=4.0, tps=300, running=3)]
    r = compute_routing([COST_POLICY], fleet, TWO_PODS)
    assert weights(r) == {"cheap": 48, "dear": 52}
    assert "300 tokens/s per replica at target" in reasons(r)["cheap"]
    assert "600 tokens/s per replica at target" in reasons(r)["dear"]


def test_cost_grows_a_backend_of_unknown_capacity_step_by_step_not_all_at_once():
    # Far under target the load says little about capacity: cheap may grow to 1.5x
    # what it serves (150 of 1000).
    fleet = [loaded_md("cheap", cost=1.0, tps=100, running=1), loaded_md("dear", cost=4.0, tps=900, running=2)]
    r = compute_routing([COST_POLICY], fleet, TWO_PODS)
    assert weights(r) == {"cheap": 15, "dear": 85}
    assert "capacity not measured yet" in reasons(r)["cheap"]


def test_latency_shifts_share_away_from_the_slow_backend_and_the_slo():
    fleet = [loaded_md("cheap", cost=1, tps=100, queue=0, ttft=0.2), loaded_md("dear", cost=1, tps=100, queue=3, ttft=2.0)]
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="latency")
    policy["spec"]["slo"] = {"ttftP95Milliseconds": 1000}
    r = compute_routing([policy], fleet, TWO_PODS)
    w = weights(r)
    assert w["cheap"] > 95 and w["cheap"] + w["dear"] == 100
    assert "over the 1000 ms SLO" in r.policies[0].backends[1]["reason"]


def all_to_cheap():
    """A fleet in which cost sends everything to cheap (it has room for 1200 tokens/s of 200)."""
    return [loaded_md("cheap", cost=1.0, tps=100, running=3, capacity=1000),
            loaded_md("dear", cost=4.0, tps=100, running=1, capacity=1000)]


def test_load_strategies_move_half_way_from_the_previous_weights():
    fleet = all_to_cheap()
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")
    policy["status"] = {"backends": [{"modelDeployment": "cheap", "weight": 20}, {"modelDeployment": "dear", "weight": 80}]}
    assert weights(compute_routing([policy], fleet, TWO_PODS)) == {"cheap": 60, "dear": 40}


ACTIVATOR = Endpoint("127.0.0.1", 18001)


def sleepy_md(name):
    m = md(name)
    m["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2, "scaleToZero": {"idleSeconds": 60}}
    return m


def test_scaled_to_zero_backend_is_reached_through_the_activator_when_nothing_serves():
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "small"}])], [sleepy_md("small")], [],
                        activator=ACTIVATOR)
    assert r.table.routes[0].backends == (WeightedBackend("ai/small", 100),)
    assert r.table.cluster("ai/small").endpoints == (ACTIVATOR,)
    assert "activator" in r.policies[0].backends[0]["reason"]


def test_activator_is_not_used_while_another_backend_serves_or_without_scale_to_zero():
    fleet = [sleepy_md("small"), md("big")]
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "small"}, {"modelDeployment": "big"}])], fleet,
                        [pod("big", "127.1.0.3")], activator=ACTIVATOR)
    assert weights(r) == {"small": 0, "big": 100}
    assert r.table.cluster("ai/small").endpoints == ()
    r = compute_routing([rp("chat", "chat", [{"modelDeployment": "big"}])], [md("big")], [], activator=ACTIVATOR)
    assert r.table.routes[0].backends == ()


def test_load_strategies_step_once_per_new_load_sample():
    fleet = all_to_cheap()
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")
    policy["status"] = {"backends": [{"modelDeployment": "cheap", "weight": 20}, {"modelDeployment": "dear", "weight": 80}]}
    first = compute_routing([policy], fleet, TWO_PODS)
    assert weights(first) == {"cheap": 60, "dear": 40}
    # Recomputed for another reason (its own status write) with the same loads: it holds.
    policy["status"] = {"backends": first.policies[0].backends}
    assert weights(compute_routing([policy], fleet, TWO_PODS, previous_loads=first.loads)) == {"cheap": 60, "dear": 40}
    # A new load sample: one more step.
    fleet[0]["status"]["load"]["tokensPerSecond"] = 101
    assert weights(compute_routing([policy], fleet, TWO_PODS, previous_loads=first.loads)) == {"cheap": 80, "dear": 20}


def previous_weights(policy, cheap, dear):
    policy["status"] = {"backends": [{"modelDeployment": "cheap", "weight": cheap},
                                     {"modelDeployment": "dear", "weight": dear}]}
    return policy


def test_load_strategies_settle_a_goal_near_their_weights_is_noise():
    # cheap's room: 1.2 x 300 of a demand of 500 = 72 %.
    fleet = [loaded_md("cheap", cost=1.0, tps=250, running=3, capacity=300),
             loaded_md("dear", cost=4.0, tps=250, running=1, capacity=1000)]
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")
    assert weights(compute_routing([previous_weights(policy, 70, 30)], fleet, TWO_PODS)) == {"cheap": 70, "dear": 30}
    assert weights(compute_routing([previous_weights(policy, 74, 26)], fleet, TWO_PODS)) == {"cheap": 74, "dear": 26}
    # A few points away: straight to the goal; farther: half way.
    assert weights(compute_routing([previous_weights(policy, 67, 33)], fleet, TWO_PODS)) == {"cheap": 72, "dear": 28}
    assert weights(compute_routing([previous_weights(policy, 50, 50)], fleet, TWO_PODS)) == {"cheap": 61, "dear": 39}


def test_load_strategies_empty_a_backend_whose_goal_is_zero_however_small_its_weight():
    # A backend left with 1 % would never idle, so it would never scale down.
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")
    assert weights(compute_routing([previous_weights(policy, 99, 1)], all_to_cheap(), TWO_PODS)) == \
        {"cheap": 100, "dear": 0}




def test_load_strategies_step_when_a_backend_gets_ready_even_without_a_new_load_sample():
    fleet = all_to_cheap()
    policy = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}], strategy="cost")
    only_dear = compute_routing([policy], fleet, [pod("dear", "127.1.0.2")])
    assert weights(only_dear) == {"cheap": 0, "dear": 100}
    policy["status"] = {"backends": only_dear.policies[0].backends}
    r = compute_routing([policy], fleet, TWO_PODS, previous_loads=only_dear.loads)
    assert weights(r) == {"cheap": 50, "dear": 50}  # half way to all on cheap


def test_cost_without_measured_traffic_spreads_by_capacity_so_the_first_requests_find_room():
    fleet = [loaded_md("cheap", cost=1.0, tps=0, capacity=100), loaded_md("dear", cost=4.0, tps=0, capacity=300)]
    pods = [pod("cheap", "127.1.0.1"), pod("cheap", "127.1.0.3"), pod("dear", "127.1.0.2")]
    assert weights(compute_routing([COST_POLICY], fleet, pods)) == {"cheap": 40, "dear": 60}


def test_cost_tells_each_backends_autoscaler_what_it_should_carry_once_scaled():
    # Demand 1000: cheap could carry 4 x 200 at maxReplicas, dear the remaining 200,
    # though cheap's one ready replica takes 240 now.
    fleet = [loaded_md("cheap", cost=0.5, tps=500, running=6, capacity=200),
             loaded_md("dear", cost=4.0, tps=500, running=2, capacity=1000)]
    rows = {b["modelDeployment"]: b for b in compute_routing([COST_POLICY], fleet, TWO_PODS).policies[0].backends}
    assert rows["cheap"]["demandTokensPerSecond"] == 800 and rows["dear"]["demandTokensPerSecond"] == 200
    assert rows["cheap"]["weight"] == 24
    weighted = rp("chat", "chat", [{"modelDeployment": "cheap"}, {"modelDeployment": "dear"}])
    assert all("demandTokensPerSecond" not in b for b in compute_routing([weighted], fleet, TWO_PODS).policies[0].backends)


def test_prefix_affinity_reaches_the_route_with_its_balance_in_percent():
    from llmfleet.routing.table import PrefixAffinity

    policy = rp("chat", "chat", [{"modelDeployment": "small"}, {"modelDeployment": "big"}])
    policy["spec"]["prefixAffinity"] = {"prefixChars": 1024, "maxLoadFactor": 1.5}
    (route,) = compute_routing([policy], FLEET, PODS).table.routes
    assert route.prefix == PrefixAffinity(chars=1024, balance_percent=150)
    policy["spec"]["prefixAffinity"] = {}
    assert compute_routing([policy], FLEET, PODS).table.routes[0].prefix == PrefixAffinity(256, 125)
    del policy["spec"]["prefixAffinity"]
    assert compute_routing([policy], FLEET, PODS).table.routes[0].prefix is None
