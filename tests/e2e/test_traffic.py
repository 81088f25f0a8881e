"""`kubectl describe rp` says what the traffic did: the share a fallback answered and the
share each cascade stage escalated, counted by every Envoy replica and summed by the
leader, equal to what the clients saw."""

from __future__ import annotations

import asyncio
import collections

import httpx

from tests.dataplane.test_cascade import PROMPTS, THRESHOLD
from tests.e2e.test_routing import sim_md
from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

FALLBACK_REQUESTS = 200


def policy(name: str, model: str, spec: dict) -> dict:
    return {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": name},
            "spec": {"model": model, **spec}}


def programmed(cluster, ns: str, name: str) -> bool:
    status = kubectl_json(cluster, "get", "rp", name, "-n", ns).get("status", {})
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in status.get("conditions", []))


async def _ask_all(url: str) -> tuple[collections.Counter, collections.Counter]:
    """The cascade's prompts (which stage answered) and the fallback policy's requests
    (which backend answered), through the ingress Service (either Envoy replica)."""
    stages: collections.Counter = collections.Counter()
    answers: collections.Counter = collections.Counter()
    sem = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        async def ask(prompt: str) -> None:
            async with sem:
                r = await client.post("/v1/chat/completions", json={
                    "model": "traffic-ask", "messages": [{"role": "user", "content": prompt}]})
                assert r.status_code == 200, r.text
                stages[r.headers["x-llmfleet-cascade-stage"]] += 1

        async def fall() -> None:
            async with sem:
                r = await client.post("/v1/chat/completions", json={
                    "model": "traffic-fb", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
                answers[r.json()["model"] if r.status_code == 200 else r.status_code] += 1

        await asyncio.gather(*(ask(p) for p in PROMPTS), *(fall() for _ in range(FALLBACK_REQUESTS)))
    return stages, answers


def test_describe_shows_the_fallback_share_and_the_escalation_rates_clients_saw(
        dev_cluster, operator, fleet, envoy, namespace):
    ns = namespace
    quality = ["--output-tokens", "8"]
    mds = {"weak": ("model-weak", [*quality, "--accuracy", "0.64"]),
           "strong": ("model-strong", [*quality, "--accuracy", "0.86"]),
           "flaky": ("model-flaky", ["--error-rate", "0.3"]), "steady": ("model-steady", [])}
    for name, (served, args) in mds.items():
        manifest = sim_md(name, served)
        manifest["spec"]["engine"]["extraArgs"] += args
        assert apply(dev_cluster, ns, manifest).returncode == 0
    for name in mds:
        wait_ready(dev_cluster, ns, name)
    fleet.wait_ready(len(mds), ns)
    apply(dev_cluster, ns, policy("ask", "traffic-ask", {
        "strategy": "cascade", "backends": [{"modelDeployment": "weak"}, {"modelDeployment": "strong"}],
        "cascade": {"minMeanLogprob": THRESHOLD}}))
    apply(dev_cluster, ns, policy("fb", "traffic-fb", {
        "backends": [{"modelDeployment": "flaky"}], "fallback": {"backends": [{"modelDeployment": "steady"}]}}))
    for name in ("ask", "fb"):
        wait_for(lambda name=name: programmed(dev_cluster, ns, name), what=f"RoutePolicy {name} Programmed")

    stages, answers = asyncio.run(_ask_all(envoy.url))
    n = len(PROMPTS)
    assert stages["weak"] and stages["strong"], stages
    assert answers["model-steady"] and answers["model-flaky"] and sum(answers.values()) == FALLBACK_REQUESTS, answers

    def traffic(name: str) -> dict:
        return kubectl_json(dev_cluster, "get", "rp", name, "-n", ns).get("status", {}).get("traffic") or {}

    cascade = [{"modelDeployment": "weak", "requests": n, "escalatedShare": round(stages["strong"] / n, 3)},
               {"modelDeployment": "strong", "requests": stages["strong"]}]
    wait_for(lambda: traffic("ask").get("cascade") == cascade, timeout=30,
             what=f"status.traffic of the cascade to say {cascade}")
    share = round(answers["model-steady"] / FALLBACK_REQUESTS, 3)
    wait_for(lambda: (traffic("fb").get("requests"), traffic("fb").get("fallbackShare")) == (FALLBACK_REQUESTS, share),
             timeout=30, what=f"status.traffic of the fallback policy to say {FALLBACK_REQUESTS} requests, {share}")

    described = dev_cluster.kubectl("describe", "rp", "ask", "-n", ns).stdout
    assert "Traffic:" in described and "Escalated Share:" in described, described
    assert str(round(stages["strong"] / n, 3)) in described, described
    described = dev_cluster.kubectl("describe", "rp", "fb", "-n", ns).stdout
    assert f"Fallback Share:  {share}" in described, described
