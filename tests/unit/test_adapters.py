"""LoRA adapters: what the engine is asked (pure), what the sim answers as vLLM does, where
routing sends an adapter's requests, and the leader's loader against a real sim replica
and a store of test objects."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import httpx
import pytest

from llmfleet.api.models import SpecError, parse_model_deployment_spec, parse_route_policy_spec
from llmfleet.controller.adapters import AdapterLoader
from llmfleet.engines import get_engine
from llmfleet.engines.base import adapter_path
from llmfleet.engines.lora import AdapterChanges, adapter_changes, served_adapters
from llmfleet.kube.client import MERGE
from llmfleet.kube.store import Store
from llmfleet.kube.views import (
    ADAPTERS_ANNOTATION,
    ModelDeploymentView,
    PodView,
    RoutePolicyView,
    adapters_record,
)
from llmfleet.routing.policy import compute_routing, ready_endpoints
from llmfleet.sim.config import SimConfig
from llmfleet.sim.server import SimServer, start_sim

NS = "ai"


# --------------------------------------------------------------------------- what the engine is asked


def test_only_the_difference_is_loaded_and_a_moved_adapter_is_reloaded():
    served = {"sql": "org/sql", "old": "org/old", "support": "/adapters/c/support-v2"}
    wanted = {"sql": "org/sql", "support": "/adapters/c/support-v3", "new": "org/new"}
    assert adapter_changes(wanted, served) == AdapterChanges(
        unload=("old", "support"), load=(("new", "org/new"), ("support", "/adapters/c/support-v3")))
    assert not adapter_changes(wanted, wanted)


def test_the_adapters_a_replica_serves_are_the_models_with_a_parent():
    # The shape of vLLM's /v1/models (OpenAIServingModels.show_available_models).
    models = {"object": "list", "data": [
        {"id": "llama", "object": "model", "root": "meta-llama/Llama-3.1-8B-Instruct", "parent": None},
        {"id": "sql", "object": "model", "root": "org/sql-lora", "parent": "llama"}]}
    assert served_adapters(models) == {"sql": "org/sql-lora"}


def test_an_adapter_is_loaded_from_its_repo_or_its_claims_mount():
    assert adapter_path("hf://org/sql-lora") == "org/sql-lora"
    assert adapter_path("pvc://loras/team-a/sql") == "/adapters/loras/team-a/sql"


# --------------------------------------------------------------------------- the spec and the pod template


def _md_spec(**fields):
    return {"model": {"uri": "hf://org/base"}, "engine": {"kind": "vllm"}, **fields}


def test_vllm_gets_runtime_lora_and_adding_an_adapter_changes_no_pod_template():
    engine = get_engine("vllm")
    two = parse_model_deployment_spec(_md_spec(adapters=[{"name": "a", "uri": "hf://o/a"},
                                                         {"name": "b", "uri": "pvc://loras/b"}]))
    three = parse_model_deployment_spec(_md_spec(adapters=[{"name": "a", "uri": "hf://o/a"},
                                                           {"name": "b", "uri": "pvc://loras/b"},
                                                           {"name": "c", "uri": "pvc://loras/c"}]))
    pod = engine.pod_spec(two, "base")
    container = pod["containers"][0]
    assert container["args"][-5:] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    assert {"name": "adapters-loras", "mountPath": "/adapters/loras", "readOnly": True} in container["volumeMounts"]
    assert engine.pod_spec(three, "base") == pod  # the third adapter restarts nothing
    plain = engine.pod_spec(parse_model_deployment_spec(_md_spec()), "base")["containers"][0]
    assert "--enable-lora" not in plain["args"] and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in str(plain)


def test_lora_on_an_engine_that_cannot_load_adapters_is_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"spec\.adapters: LoRA adapters are served by engine kinds vllm, sim only"):
        parse_model_deployment_spec(_md_spec(engine={"kind": "sglang"}, adapters=[{"name": "a", "uri": "hf://o/a"}]))
    with pytest.raises(SpecError, match=r"maxRank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512"):
        parse_model_deployment_spec(_md_spec(lora={"maxRank": 48}))


def test_a_policy_may_name_a_model_deployment_once_per_adapter():
    spec = parse_route_policy_spec({"model": "m", "strategy": "failover", "backends": [
        {"modelDeployment": "base", "adapter": "sql"}, {"modelDeployment": "base", "priority": 1}]})
    assert [b.key for b in spec.backends] == ["base/sql", "base"]
    with pytest.raises(SpecError, match="may appear only once"):
        parse_route_policy_spec({"model": "m", "backends": [{"modelDeployment": "base", "adapter": "sql"},
                                                            {"modelDeployment": "base", "adapter": "sql"}]})


# --------------------------------------------------------------------------- routing


def md_body(name="base", adapters=("sql", "chat"), generation=1):
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation,
                         "resourceVersion": "1"},
            "spec": {"model": {"uri": "hf://o/base"}, "engine": {"kind": "sim"},
                     "adapters": [{"name": a, "uri": f"hf://o/{a}"} for a in adapters]}}


def pod_body(index, port=8000, adapters=None, restarts=0, record_restarts=None, md="base"):
    annotations = {}
    if adapters is not None:
        annotations[ADAPTERS_ANNOTATION] = adapters_record(
            restarts if record_restarts is None else record_restarts, {a: f"o/{a}" for a in adapters})
    return {"metadata": {"name": f"{md}-{index}", "namespace": NS, "uid": f"{md}-{index}",
                         "labels": {"llmfleet.io/model-deployment": md}, "annotations": annotations,
                         "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"containers": [{"name": "model-server", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": f"127.0.0.{index + 1}",
                       "containerStatuses": [{"name": "model-server", "restartCount": restarts}],
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastTransitionTime": "2026-12-03T10:00:30Z"}]}}


def policy_body(name, model, backends):
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"model": model, "backends": backends}}


def test_a_restarted_container_has_lost_the_adapters_recorded_before():
    assert PodView.from_body(pod_body(0, adapters=["sql"], restarts=1, record_restarts=1)).adapters == (
        ("sql", "o/sql"),)
    assert PodView.from_body(pod_body(0, adapters=["sql"], restarts=2, record_restarts=1)).adapters == ()


def test_an_adapter_is_routed_under_its_name_to_the_replicas_that_loaded_it_only():
    pods = [PodView.from_body(pod_body(0, adapters=["sql"])), PodView.from_body(pod_body(1, adapters=[])),
            PodView.from_body(pod_body(2, adapters=["sql", "chat"], restarts=3, record_restarts=2))]
    policies = [RoutePolicyView.from_body(policy_body("sql", "sql", [{"modelDeployment": "base", "adapter": "sql"}])),
                RoutePolicyView.from_body(policy_body("base", "base", [{"modelDeployment": "base"}])),
                RoutePolicyView.from_body(policy_body("gone", "gone", [{"modelDeployment": "base",
                                                                         "adapter": "nope"}]))]
    result = compute_routing(policies, [ModelDeploymentView.from_body(md_body())], ready_endpoints(pods))
    clusters = {c.name: c for c in result.table.clusters}
    assert clusters["ai/base/sql"].served_model == "sql"
    assert [e.address for e in clusters["ai/base/sql"].endpoints] == ["127.0.0.1"]  # pod 2 restarted since
    assert [e.address for e in clusters["ai/base"].endpoints] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    statuses = {r.name: r for r in result.policies}
    assert statuses["sql"].backends == [{"modelDeployment": "base", "adapter": "sql", "weight": 100,
                                         "readyReplicas": 1, "reason": "weight 1 of 1 over ready backends"}]
    resolved = next(c for c in statuses["gone"].conditions if c.type == "ResolvedRefs")
    assert not resolved.status
    assert resolved.message == "ModelDeployment base with adapter nope not found in namespace ai"


# --------------------------------------------------------------------------- the sim, as vLLM


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start_sim(SimConfig(host="127.0.0.1", port=0, seed=0, time_scale=0.0,
                                       served_model_names=("base",), enable_lora=True))
    yield server
    await server.stop()


async def _chat(http: httpx.AsyncClient, url: str, model: str) -> int:
    r = await http.post(f"{url}/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                            "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code


async def test_the_sim_loads_serves_and_unloads_adapters_as_vllm_answers(sim: SimServer):
    url = sim.base_url.removesuffix("/v1")
    async with httpx.AsyncClient() as http:
        assert await _chat(http, url, "sql") == 404
        r = await http.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "o/sql"})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'sql' added successfully."
        again = await http.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "o/sql"})
        assert again.status_code == 400 and "has already been loaded" in again.json()["error"]["message"]
        assert served_adapters((await http.get(f"{url}/v1/models")).json()) == {"sql": "o/sql"}
        assert await _chat(http, url, "sql") == 200
        assert (await http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "sql"})).status_code == 200
        missing = await http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "sql"})
        assert missing.status_code == 404
        assert await _chat(http, url, "sql") == 404


# --------------------------------------------------------------------------- the leader's loader


class FakeClient:
    def __init__(self) -> None:
        self.requests: list[tuple] = []

    async def request(self, method, path, *, params=None, body=None, content_type=None):
        self.requests.append((method, path, params, copy.deepcopy(body), content_type))
        return {}

    async def event(self, involved, type_, reason, message, component):
        self.requests.append(("event", involved["metadata"]["name"], reason, message))


def _store(client, md, pods) -> Store:
    store = Store(client)
    store.model_deployments.put(md)
    for pod in pods:
        store.pods.put(pod)
    for informer in store.informers:
        informer.synced.set()
    return store


async def test_the_loader_brings_a_replica_to_the_spec_and_records_what_it_serves(sim: SimServer):
    client = FakeClient()
    md = md_body(adapters=("sql", "chat"))
    store = _store(client, md, [pod_body(0, port=sim.port)])
    loader = AdapterLoader(client, store, interval=0.1)  # type: ignore[arg-type]  # rounds run by the test
    try:
        await loader.round()
        (patch,) = client.requests
        assert patch[:3] == ("PATCH", "/api/v1/namespaces/ai/pods/base-0", {"fieldManager": "llmfleet-adapters"})
        assert patch[4] == MERGE
        record = patch[3]["metadata"]["annotations"][ADAPTERS_ANNOTATION]
        assert record == adapters_record(0, {"chat": "o/chat", "sql": "o/sql"})
        assert sorted(sim._adapters) == ["chat", "sql"]

        # Recorded: nothing to do. Then "chat" goes and "docs" comes, on the same running replica.
        store.pods.put(pod_body(0, port=sim.port, adapters=["sql", "chat"]))
        client.requests.clear()
        await loader.round()
        assert client.requests == []
        store.model_deployments.put(md_body(adapters=("sql", "docs"), generation=2))
        await loader.round()
        assert sorted(sim._adapters) == ["docs", "sql"]
        assert client.requests[0][3]["metadata"]["annotations"][ADAPTERS_ANNOTATION] == adapters_record(
            0, {"docs": "o/docs", "sql": "o/sql"})
    finally:
        await loader.stop()


async def test_an_adapter_the_engine_refuses_is_an_event_and_the_others_are_routed(sim: SimServer):
    client = FakeClient()
    # "base" is the base model's own name: the engine refuses to load an adapter under it.
    store = _store(client, md_body(adapters=("sql", "base")), [pod_body(0, port=sim.port)])
    loader = AdapterLoader(client, store, interval=0.1)  # type: ignore[arg-type]  # rounds run by the test
    try:
        await loader.round()
        patch, event = client.requests
        assert patch[3]["metadata"]["annotations"][ADAPTERS_ANNOTATION] == adapters_record(0, {"sql": "o/sql"})
        assert event[:3] == ("event", "base", "AdapterLoadFailed")
        assert "adapter base: HTTP 400: The lora adapter 'base' has already been loaded." in event[3]
        client.requests.clear()
        await loader.round()  # backing off: not asked again at once
        assert client.requests == []
    finally:
        await loader.stop()


def test_the_status_says_how_many_serving_replicas_have_each_adapter():
    from llmfleet.status.modeldeployment import model_deployment_status

    pods = [PodView.from_body(pod_body(0, adapters=["sql"])), PodView.from_body(pod_body(1, adapters=[]))]
    status = model_deployment_status("base", 1, {}, desired=2, deployment=None, pods=pods, nodes=[], gpu_need=None,
                                     adapters=("sql", "chat")).status
    assert status["adapters"] == [{"name": "sql", "readyReplicas": 1}, {"name": "chat", "readyReplicas": 0}]
    plain = model_deployment_status("base", 1, {}, desired=2, deployment=None, pods=pods, nodes=[], gpu_need=None)
    assert "adapters" not in plain.status
