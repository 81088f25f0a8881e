"""A RoutePolicy's budget on the dev cluster: crossed under load, its traffic downgrades to the
cheapest backend within an accounting interval, and stays there across an operator restart.

No Tenant exists: the budget counts every request of the public model (the ingress stays
open). Two sim ModelDeployments answer under their own served names, so each answer says
which backend it came from: "premium" (weight 100, $20 per million output tokens) and
"economy" (weight 0: no share of the split, $0.20 per million).
"""

from __future__ import annotations

import json
import time

import httpx

from tests.e2e.test_routing import sim_md
from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

BUDGET_TOKENS = 300


def _ask(url: str, model: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=10) as client:
        return client.post("/v1/chat/completions", json={
            "model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})


def test_a_route_policy_budget_crossed_under_load_downgrades_at_once_and_after_an_operator_restart(
        dev_cluster, operator, fleet, envoy, namespace):
    ns = namespace
    for name, price in (("premium", 20.0), ("economy", 0.2)):
        md = sim_md(name, name)
        md["spec"]["cost"] = {"perReplicaHour": 1.0, "perMillionOutputTokens": price}
        assert apply(dev_cluster, ns, md).returncode == 0
    for name in ("premium", "economy"):
        wait_ready(dev_cluster, ns, name)
    fleet.wait_ready(2, ns)
    model = f"budget-{ns}"
    policy = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "chat"},
              "spec": {"model": model, "backends": [{"modelDeployment": "premium", "weight": 100},
                                                    {"modelDeployment": "economy", "weight": 0}],
                       "budgets": [{"period": "day", "tokens": BUDGET_TOKENS, "action": "downgrade"}]}}
    assert apply(dev_cluster, ns, policy).returncode == 0
    wait_for(lambda: _ask(envoy.url, model).status_code == 200, timeout=60, what="the public model served")

    def answered_by() -> str | None:
        try:
            r = _ask(envoy.url, model)
        except httpx.HTTPError:
            return None  # the ingress between two states of a restart
        return r.json()["model"] if r.status_code == 200 else None

    used, crossed, first_economy = 0, None, None
    for _ in range(100):  # bounded: 300 tokens run out after a dozen answers, the status follows in seconds
        r = _ask(envoy.url, model)
        assert r.status_code == 200, r.text
        if r.json()["model"] == "economy":
            first_economy = time.monotonic()
            break
        assert r.json()["model"] == "premium"
        used += r.json()["usage"]["total_tokens"]
        if crossed is None and used >= BUDGET_TOKENS:
            crossed = time.monotonic()
        time.sleep(0.1)
    assert crossed is not None and first_economy is not None, f"{used} tokens served by premium, never downgraded"
    took = first_economy - crossed
    print(f"\ndowngraded {took:.2f} s after the answer that spent the budget ({used} tokens)")
    assert took < 2 + 1.5, "one accounting interval (2 s) and the route's way to Envoy"
    assert [answered_by() for _ in range(5)] == ["economy"] * 5

    status = kubectl_json(dev_cluster, "get", "routepolicy", "chat", "-n", ns)["status"]
    cond = next(c for c in status["conditions"] if c["type"] == "BudgetExceeded")
    assert cond["status"] == "True" and "cheapest backend" in cond["message"], cond
    assert status["budgets"][0]["spentTokens"] >= BUDGET_TOKENS
    assert {c["type"] for c in status["conditions"]} >= {"Accepted", "ResolvedRefs", "Programmed", "BudgetExceeded"}
    events = kubectl_json(dev_cluster, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=chat")
    assert any(e["reason"] == "BudgetExceeded" for e in events["items"])

    operator.restart()
    wait_for(lambda: answered_by() == "economy", timeout=90, interval=0.5,
             what="the downgrade in force again once the restarted operator serves")
    assert [answered_by() for _ in range(5)] == ["economy"] * 5

    # A larger budget lifts it: premium answers again.
    dev_cluster.kubectl("patch", "routepolicy", "chat", "-n", ns, "--type=merge", "-p", json.dumps(
        {"spec": {"budgets": [{"period": "day", "tokens": 10 * BUDGET_TOKENS, "action": "downgrade"}]}}))
    wait_for(lambda: answered_by() == "premium", timeout=20, interval=0.5, what="premium again under a larger budget")
