"""LoRA adapters on the dev cluster: one sim ModelDeployment with two adapters serves three
public model names through Envoy; a third adapter added with kubectl becomes routable on
the running replicas (same pods, same processes, no restart), and one removed is unloaded
and no longer routed.

The sim serves vLLM's runtime-loading endpoints (``--enable-lora``, rendered from
``spec.adapters``); the operator's leader loads each adapter into every ready replica and
records it on the pod, and routing sends an adapter's name only to replicas that have it.
"""

from __future__ import annotations

import httpx

from tests.e2e.test_routing import sim_md
from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

REPLICAS = 2


def _adapters(sim: str = "llmfleet") -> list[dict]:
    return [{"name": name, "uri": f"hf://{sim}/{name}-lora"} for name in ("sql", "support")]


def _policy(name: str, model: str, adapter: str | None) -> dict:
    backend = {"modelDeployment": "lora-base"} | ({"adapter": adapter} if adapter else {})
    return {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": name},
            "spec": {"model": model, "backends": [backend]}}


def _answered_by(url: str, model: str) -> tuple[int, str | None]:
    """(status, the model name the engine answered as) of one request for public ``model``."""
    r = httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code, (r.json().get("model") if r.status_code == 200 else None)


def _loaded(replica: dict) -> set[str]:
    """The adapters one sim replica serves, from its own /v1/models."""
    models = httpx.get(f"http://{replica['address']}:{replica['port']}/v1/models", timeout=5, trust_env=False).json()
    return {m["id"] for m in models["data"] if m.get("parent")}


def _pods(cluster, ns: str) -> dict[str, tuple[str, int]]:
    """name → (uid, the model server's restartCount) of the base model's pods."""
    pods = kubectl_json(cluster, "get", "pods", "-n", ns, "-l", "llmfleet.io/model-deployment=lora-base")["items"]
    return {p["metadata"]["name"]: (p["metadata"]["uid"], sum(c.get("restartCount", 0) for c in
                                                              p["status"].get("containerStatuses") or []))
            for p in pods if not p["metadata"].get("deletionTimestamp")}


def test_adapters_are_public_models_and_one_added_needs_no_restart(dev_cluster, operator, fleet, envoy, namespace):
    ns = namespace
    md = sim_md("lora-base", "llama-8b")
    md["spec"]["replicas"] = REPLICAS
    md["spec"].pop("autoscaling", None)
    md["spec"]["adapters"] = _adapters()
    assert apply(dev_cluster, ns, md).returncode == 0
    wait_ready(dev_cluster, ns, "lora-base", replicas=REPLICAS)
    fleet.wait_ready(REPLICAS, ns, timeout=60)
    names = {"base": f"base-{ns}", "sql": f"sql-{ns}", "support": f"support-{ns}"}
    for adapter, model in names.items():
        assert apply(dev_cluster, ns, _policy(adapter, model, None if adapter == "base" else adapter)).returncode == 0

    # Three public names, each answered as what the engine serves it under.
    want = {names["base"]: "llama-8b", names["sql"]: "sql", names["support"]: "support"}
    wait_for(lambda: all(_answered_by(envoy.url, m) == (200, served) for m, served in want.items()),
             timeout=60, what="the base model and both adapters served through Envoy")
    listed = {m["id"] for m in httpx.get(f"{envoy.url}/v1/models", timeout=10).json()["data"]}
    assert set(want) <= listed
    replicas = {k: r for k, r in fleet.replicas().items() if k.startswith(f"{ns}/") and r["ready"]}
    assert len(replicas) == REPLICAS and all(_loaded(r) == {"sql", "support"} for r in replicas.values())
    wait_for(lambda: kubectl_json(dev_cluster, "get", "md", "lora-base", "-n", ns)["status"].get("adapters") == [
        {"name": "sql", "readyReplicas": REPLICAS}, {"name": "support", "readyReplicas": REPLICAS}],
        timeout=30, what="status.adapters: each adapter on every replica")
    pods, pids = _pods(dev_cluster, ns), {k: r["pid"] for k, r in replicas.items()}
    generation = kubectl_json(dev_cluster, "get", "deployment", "lora-base", "-n", ns)["metadata"]["generation"]

    # A third adapter, added to the running model: routable without a restart.
    md["spec"]["adapters"] = [*_adapters(), {"name": "docs", "uri": "hf://llmfleet/docs-lora"}]
    assert apply(dev_cluster, ns, md).returncode == 0
    docs = f"docs-{ns}"
    assert apply(dev_cluster, ns, _policy("docs", docs, "docs")).returncode == 0
    wait_for(lambda: _answered_by(envoy.url, docs) == (200, "docs"), timeout=30, what="the third adapter served")
    answers = [_answered_by(envoy.url, docs) for _ in range(20)]
    assert answers == [(200, "docs")] * 20
    assert all(_loaded(r) == {"sql", "support", "docs"} for r in replicas.values())
    assert _pods(dev_cluster, ns) == pods, "the base model's pods were replaced or restarted"
    assert {k: r["pid"] for k, r in fleet.replicas().items() if k in pids} == pids
    assert kubectl_json(dev_cluster, "get", "deployment", "lora-base", "-n", ns)["metadata"]["generation"] == generation

    # An adapter removed: unloaded from every replica, its policy no longer resolves.
    md["spec"]["adapters"] = [a for a in md["spec"]["adapters"] if a["name"] != "sql"]
    assert apply(dev_cluster, ns, md).returncode == 0
    wait_for(lambda: all(_loaded(r) == {"support", "docs"} for r in replicas.values()), timeout=30,
             what="the removed adapter unloaded")

    def unresolved() -> str:
        conditions = kubectl_json(dev_cluster, "get", "routepolicy", "sql", "-n", ns).get("status", {}).get(
            "conditions") or []
        return next((c["message"] for c in conditions if c["type"] == "ResolvedRefs" and c["status"] == "False"), "")
    wait_for(unresolved, timeout=30, what="ResolvedRefs False on the removed adapter's policy")
    assert unresolved() == f"ModelDeployment lora-base with adapter sql not found in namespace {ns}"
    assert _answered_by(envoy.url, names["sql"])[0] != 200
    assert _answered_by(envoy.url, names["support"]) == (200, "support")
    assert _pods(dev_cluster, ns) == pods
