"""Prefix affinity on the dev cluster: a RoutePolicy with prefixAffinity, applied with kubectl,
keeps each conversation on one of the model's replicas, whose prefix cache then holds its
history; without it the same conversations scatter.

Three sim replicas with prefix caching (``--enable-prefix-caching``) behind the chart's
Envoy; each replica's own counters say which requests it served and what its cache hit.
"""

from __future__ import annotations

import httpx

from tests.e2e.test_routing import sim_md
from tests.helpers import wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

REPLICAS = 3


def _counters(replica: dict) -> tuple[float, float, float]:
    """(requests served, prefix-cache queries, hits) of one sim replica."""
    text = httpx.get(f"http://{replica['address']}:{replica['port']}/metrics", timeout=2, trust_env=False).text
    out = {"vllm:request_success_total": 0.0, "vllm:prefix_cache_queries_total": 0.0,
           "vllm:prefix_cache_hits_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return (out["vllm:request_success_total"], out["vllm:prefix_cache_queries_total"],
            out["vllm:prefix_cache_hits_total"])


def _conversation(url: str, model: str, user: int, turns: int) -> None:
    messages = [{"role": "system", "content": "You answer questions about fleets of language models. " * 8},
                {"role": "user", "content": f"I am user {user}; how should I size my fleet of {user} models? " * 4}]
    with httpx.Client(base_url=url, timeout=20) as client:
        for turn in range(turns):
            r = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 24, "messages": messages})
            assert r.status_code == 200, r.text
            messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
                         {"role": "user", "content": f"and then, question {turn}?"}]


def test_prefix_affinity_keeps_each_conversation_on_one_replica(dev_cluster, operator, fleet, envoy, namespace):
    ns = namespace
    md = sim_md("chatty", "llama-8b")
    md["spec"]["replicas"] = REPLICAS
    md["spec"].pop("autoscaling", None)
    md["spec"]["engine"]["extraArgs"] += ["--enable-prefix-caching"]
    assert apply(dev_cluster, ns, md).returncode == 0
    wait_ready(dev_cluster, ns, "chatty", replicas=REPLICAS)
    fleet.wait_ready(REPLICAS, ns, timeout=60)
    model = f"prefix-{ns}"
    policy = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "chat"},
              "spec": {"model": model, "backends": [{"modelDeployment": "chatty"}],
                       "prefixAffinity": {"prefixChars": 128}}}
    assert apply(dev_cluster, ns, policy).returncode == 0

    def served() -> bool:
        with httpx.Client(base_url=envoy.url, timeout=10) as client:
            return client.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    wait_for(served, timeout=60, what="the public model served")
    replicas = {k: r for k, r in fleet.replicas().items() if k.startswith(f"{ns}/") and r["ready"]}
    assert len(replicas) == REPLICAS

    def run(users: range) -> dict[int, list[str]]:
        """Each conversation, one after another: the replicas whose request count moved."""
        where: dict[int, list[str]] = {}
        for user in users:
            before = {k: _counters(r)[0] for k, r in replicas.items()}
            _conversation(envoy.url, model, user, turns=4)
            where[user] = sorted(k for k, r in replicas.items() if _counters(r)[0] > before[k])
        return where

    start = {k: _counters(r) for k, r in replicas.items()}
    affine = run(range(8))
    assert all(len(w) == 1 for w in affine.values()), f"a conversation over several replicas: {affine}"
    assert len({w[0] for w in affine.values()}) >= 2, f"8 conversations on one replica: {affine}"
    after = {k: _counters(r) for k, r in replicas.items()}
    queries = sum(after[k][1] - start[k][1] for k in replicas)
    hits = sum(after[k][2] - start[k][2] for k in replicas)
    print(f"\nprefix affinity: conversations per replica {affine}; prefix-cache hit rate {hits / queries:.1%}")
    assert hits / queries > 0.6, "each turn finds its history cached"

    # The same conversations without prefix affinity: least request scatters them.
    dev_cluster.kubectl("patch", "routepolicy", "chat", "-n", ns, "--type=json", "-p",
                        '[{"op": "remove", "path": "/spec/prefixAffinity"}]')
    wait_for(lambda: any(len(w) > 1 for w in run(range(100, 104)).values()), timeout=60, interval=0,
             what="least request spreading a conversation over replicas once prefixAffinity is gone")
