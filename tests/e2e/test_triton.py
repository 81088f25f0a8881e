"""An `engine.kind: triton` ModelDeployment on the dev cluster, with a sim standing in for Triton.

The operator renders Triton's pod (the OpenAI frontend with the vLLM backend, its model
repository written by the container's command); the dev cluster's sim fleet runs
`llmfleet sim --serve-as triton` behind it, started from that container's own port and
model repository directory, answering Triton's /health/ready and exposing what Triton
with its vLLM backend exposes: Triton's own series and vLLM's counters and histograms,
none of vLLM's load gauges. Through a RoutePolicy and the chart's Envoy it serves chat
completions, and the operator derives its queue and running batch from the TTFT and
latency histograms' sums into status.load (no KV cache: the backend reports none).

What the sim cannot stand in for: Triton itself (no GPU, no image here).
"""

from __future__ import annotations

import httpx

from tests.helpers import Load, kubectl_json, wait_for
from tests.integration.test_modeldeployment import apply, wait_ready

SERVED = "llama-3.1-8b-triton"


def triton_md(name: str) -> dict:
    return {
        "apiVersion": "llmfleet.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "servedName": SERVED},
            "engine": {
                "kind": "triton", "maxModelLen": 1024,
                # The sim's knobs, read by the dev cluster's sim fleet only: a batch of 2, a
                # decode slow enough that concurrent requests queue, and a KV cache small
                # enough that two short requests show in it.
                "env": [{"name": "LLMFLEET_SIM_ARGS",
                         "value": "--max-num-seqs 2 --time-scale 0.5 --kv-cache-tokens 1024"}],
            },
            "accelerator": {"product": "NVIDIA-L4"},
            "replicas": 1,
        },
    }


def test_triton_model_deployment_serves_through_envoy_and_reports_load(dev_cluster, operator, fleet, envoy,
                                                                       namespace):
    ns = namespace
    assert apply(dev_cluster, ns, triton_md("triton-llama")).returncode == 0
    wait_ready(dev_cluster, ns, "triton-llama", timeout=90)
    (key,) = fleet.wait_ready(1, ns, timeout=60)
    replica = fleet.replicas()[key]

    # The pod is Triton's, as rendered for a GPU node; the process behind it is the sim.
    (pod,) = kubectl_json(dev_cluster, "get", "pods", "-n", ns, "-l",
                          "llmfleet.io/model-deployment=triton-llama")["items"]
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "openai_frontend/main.py" in container["command"][2]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    base = f"http://{replica['address']}:{replica['port']}"
    assert httpx.get(f"{base}/health/ready", timeout=5, trust_env=False).status_code == 200
    metrics = httpx.get(f"{base}/metrics", timeout=5, trust_env=False).text
    assert 'nv_inference_request_success_total{model="' + SERVED in metrics
    assert "vllm:num_requests_waiting" not in metrics and "nv_trt_llm_request_metrics" not in metrics

    model = f"triton-{ns}"
    policy = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "chat"},
              "spec": {"model": model, "backends": [{"modelDeployment": "triton-llama"}]}}
    assert apply(dev_cluster, ns, policy).returncode == 0

    def answered() -> dict | None:
        r = httpx.post(f"{envoy.url}/v1/chat/completions", timeout=10, json={
            "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        return r.json() if r.status_code == 200 else None
    answer = wait_for(answered, timeout=60, what="a chat completion through Envoy")
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]

    # Under load (8 at once, a batch of 2) the derived queue and running batch become status.load.
    with Load(envoy.url, model, concurrency=8, max_tokens=40, max_seconds=60) as load:
        def loaded() -> dict | None:
            status = kubectl_json(dev_cluster, "get", "md", "triton-llama", "-n", ns).get("status", {})
            found = status.get("load") or {}
            return found if found.get("queueDepth", 0) > 0 and found.get("runningRequests", 0) > 0 else None
        found = wait_for(loaded, timeout=45, what="status.load derived from Triton's histograms under load")
    print(f"\nderived load of the Triton stand-in: {found}")
    assert found["queueDepth"] + found["runningRequests"] <= 16  # 8 in flight, with a window's slack
    assert "kvCacheUtilization" not in found and found.get("sampledReplicas") == 1
    assert load.failed == 0 and load.ok > 0
