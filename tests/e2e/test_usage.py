"""Usage accounting on the dev cluster: what clients were answered, the operator counted.

Sim replicas answer with their usage; every Envoy streams its log entries to the
operator replica it is connected to; summed over the replicas, the counters equal what
the clients received, per tenant, model and backend, and the cost is its formula.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmfleet.usage_report import Row, from_metrics_text
from tests.e2e.test_routing import sim_md
from tests.e2e.test_tenants import _open, _ready, _secret, _tenant
from tests.helpers import wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

N = 40
INPUT, OUTPUT = 0.5, 2.0  # per million tokens


def _counters(operator, labels: dict[str, str]) -> dict[str, float]:
    """llmfleet_usage_* counters matching ``labels``, summed over every operator replica."""
    out: dict[str, float] = {}
    for pod in operator.ready_pods():
        try:
            text = operator.metrics(pod)
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("llmfleet_usage_") and sample.name.endswith("_total") and \
                        all(sample.labels.get(k) == v for k, v in labels.items()):
                    key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items())
                                                if k in ("kind", "code"))
                    out[key] = out.get(key, 0.0) + sample.value
    return out


async def _ask(url: str, model: str, n: int, key: str | None = None) -> list[httpx.Response]:
    """``n`` chat completions of varied lengths, 8 at a time, each on a fresh connection (over every Envoy)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=8, max_keepalive_connections=0)) as c:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> httpx.Response:
            async with sem:
                return await c.post("/v1/chat/completions", headers=headers, json={
                    "model": model, "max_tokens": 3 + i % 5,
                    "messages": [{"role": "user", "content": "count " + "and more " * (i % 7)}]})
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_the_counters_equal_what_clients_got_and_the_cost_its_formula(dev_cluster, operator, fleet, envoy,
                                                                      namespace):
    ns = namespace
    md = sim_md("priced", "llama-8b")
    md["spec"]["cost"] = {"perReplicaHour": 1.0, "perMillionInputTokens": INPUT, "perMillionOutputTokens": OUTPUT}
    assert apply(dev_cluster, ns, md).returncode == 0
    wait_ready(dev_cluster, ns, "priced")
    fleet.wait_ready(1, ns)
    model = f"usage-{ns}"
    apply(dev_cluster, ns, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "u"},
                            "spec": {"model": model, "backends": [{"modelDeployment": "priced"}]}})

    def ask(n: int) -> list[httpx.Response]:
        return asyncio.run(_ask(envoy.url, model, n))

    probes: list[int] = []

    def served() -> bool:
        probes.append(ask(1)[0].status_code)
        return probes[-1] == 200

    def report() -> Row:
        return from_metrics_text(operator.metrics(pod) for pod in operator.ready_pods()).get(("", model), Row())

    wait_for(served, timeout=60, what="the model served")
    labels = {"tenant": "", "model": model, "backend": f"{ns}/priced"}
    # Every probe counted (an error answered before the route was served too: each Envoy
    # flushes on its own, every second) before the counts the N are measured from.
    wait_for(lambda: report().requests >= len(probes), timeout=15, what=f"the {len(probes)} probes counted")
    before, before_row = _counters(operator, labels), report()
    answers = ask(N)
    assert [r.status_code for r in answers] == [200] * N
    prompt = sum(r.json()["usage"]["prompt_tokens"] for r in answers)
    completion = sum(r.json()["usage"]["completion_tokens"] for r in answers)

    def counted() -> dict[str, float]:
        now = _counters(operator, labels)
        return {k: round(v - before.get(k, 0.0), 9) for k, v in now.items()}

    wait_for(lambda: counted().get("llmfleet_usage_requests_total,code=200") == N, timeout=15,
             what=f"all {N} requests counted (each Envoy flushes every second)")
    got = counted()
    print(f"\n{N} requests: {prompt} prompt and {completion} completion tokens answered; counted {got}")
    assert got["llmfleet_usage_tokens_total,kind=prompt"] == prompt
    assert got["llmfleet_usage_tokens_total,kind=completion"] == completion
    assert got["llmfleet_usage_cost_total"] == pytest.approx((prompt * INPUT + completion * OUTPUT) / 1e6, rel=1e-9)

    # `llmfleet usage --metrics ...` reads the same replicas: its row for the model has them all.
    row = report()
    assert row.requests == before_row.requests + N
    assert row.errors == before_row.errors
    assert row.completion == before_row.completion + completion


def test_each_tenant_model_and_backend_is_counted_apart_and_priced_at_its_backend(dev_cluster, operator, fleet,
                                                                                  envoy, namespace):
    ns = namespace
    prices = {"priced": (INPUT, OUTPUT), "cheap": (0.1, 0.4)}
    for name, (inp, out) in prices.items():
        md = sim_md(name, "llama-8b")
        md["spec"]["cost"] = {"perReplicaHour": 1.0, "perMillionInputTokens": inp, "perMillionOutputTokens": out}
        assert apply(dev_cluster, ns, md).returncode == 0
    for name in prices:
        wait_ready(dev_cluster, ns, name)
    fleet.wait_ready(2, ns)
    models = {"priced": f"big-{ns}", "cheap": f"small-{ns}"}
    for backend, model in models.items():
        apply(dev_cluster, ns, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy",
                                "metadata": {"name": backend},
                                "spec": {"model": model, "backends": [{"modelDeployment": backend}]}})
    keys = {"team-x": f"sk-x-{uuid.uuid4().hex}", "team-y": f"sk-y-{uuid.uuid4().hex}"}
    calls = {("team-x", "priced"): 17, ("team-x", "cheap"): 9, ("team-y", "priced"): 11}
    try:
        for tenant, key in keys.items():
            mine = sorted({models[b] for t, b in calls if t == tenant})
            assert apply(dev_cluster, ns, _secret(tenant, k=key)).returncode == 0
            assert apply(dev_cluster, ns, _tenant(tenant, mine)).returncode == 0
        wait_for(lambda: all(_ready(dev_cluster, ns, t) for t in keys), timeout=30, what="both Tenants Ready")
        for (tenant, backend) in calls:
            wait_for(lambda t=tenant, b=backend: asyncio.run(_ask(envoy.url, models[b], 1, keys[t]))[0].status_code
                     == 200, timeout=60, what=f"{tenant}'s key live for {models[backend]}")

        def labels(tenant: str, backend: str) -> dict[str, str]:
            return {"tenant": f"{ns}/{tenant}", "model": models[backend], "backend": f"{ns}/{backend}"}

        wait_for(lambda: all(_counters(operator, labels(t, b)).get("llmfleet_usage_requests_total,code=200", 0) >= 1
                             for t, b in calls), timeout=15, what="each probe counted")
        before = {c: _counters(operator, labels(*c)) for c in calls}
        answered: dict[tuple[str, str], tuple[int, int]] = {}
        for (tenant, backend), n in calls.items():
            answers = asyncio.run(_ask(envoy.url, models[backend], n, keys[tenant]))
            assert [r.status_code for r in answers] == [200] * n
            answered[(tenant, backend)] = (sum(r.json()["usage"]["prompt_tokens"] for r in answers),
                                           sum(r.json()["usage"]["completion_tokens"] for r in answers))

        def counted(c: tuple[str, str]) -> dict[str, float]:
            now = _counters(operator, labels(*c))
            return {k: round(v - before[c].get(k, 0.0), 9) for k, v in now.items()}

        wait_for(lambda: all(counted(c).get("llmfleet_usage_requests_total,code=200") == n for c, n in calls.items()),
                 timeout=15, what="every request counted under its tenant, model and backend")
        for c, (prompt, completion) in answered.items():
            got = counted(c)
            inp, out = prices[c[1]]
            print(f"\n{c}: {calls[c]} requests, {prompt} prompt and {completion} completion tokens; counted {got}")
            assert got["llmfleet_usage_tokens_total,kind=prompt"] == prompt
            assert got["llmfleet_usage_tokens_total,kind=completion"] == completion
            assert got["llmfleet_usage_cost_total"] == pytest.approx((prompt * inp + completion * out) / 1e6,
                                                                     rel=1e-9)
    finally:
        dev_cluster.kubectl("delete", "tenant", "--all", "-n", ns, "--wait=true")
        wait_for(lambda: _open(envoy.url), timeout=30, what="the ingress open again once no Tenant exists")
