"""ModelDeployment end to end against the dev cluster, with the operator running.

What a platform engineer sees: `kubectl apply` of the examples gives Deployments
with the right engine arguments and GPUs on the right nodes, `kubectl get md` shows
READY, `kubectl scale` works, edits roll, deletes clean up, impossible specs say why,
invalid specs are refused by the API server, and a restart of the operator changes
nothing that is already correct.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import kubectl_json, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
MD_LABEL = "llmfleet.io/model-deployment"


def example_mds() -> list[Path]:
    return sorted(
        p for p in EXAMPLES.glob("*.yaml")
        if any(d and d.get("kind") == "ModelDeployment" for d in yaml.safe_load_all(p.read_text()))
    )


def load_md(path: Path) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ModelDeployment")


def apply(cluster, namespace: str, manifest: dict | str | Path):
    if isinstance(manifest, Path):
        return cluster.kubectl("apply", "-n", namespace, "-f", str(manifest))
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False)


def get_md(cluster, namespace, name) -> dict:
    return kubectl_json(cluster, "get", "md", name, "-n", namespace)


def condition(md: dict, type_: str) -> dict | None:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def wait_ready(cluster, namespace, name, replicas=1, timeout=60) -> dict:
    def ready():
        md = get_md(cluster, namespace, name)
        st = md.get("status", {})
        ok = (
            st.get("readyReplicas") == replicas
            and st.get("observedGeneration") == md["metadata"]["generation"]
            and (condition(md, "Ready") or {}).get("status") == "True"
        )
        return md if ok else None

    return wait_for(ready, timeout=timeout, what=f"md/{name} Ready with {replicas} replicas")


def deployment_of(cluster, namespace, name) -> dict:
    return kubectl_json(cluster, "get", "deployment", name, "-n", namespace)


def pods_of(cluster, namespace, name) -> list[dict]:
    return kubectl_json(cluster, "get", "pods", "-n", namespace, "-l", f"{MD_LABEL}={name}")["items"]


def server_container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", example_mds(), ids=lambda p: p.stem)
def test_example_runs_on_matching_gpu_nodes(dev_cluster, operator, namespace, example):
    md_manifest = load_md(example)
    name, spec = md_manifest["metadata"]["name"], md_manifest["spec"]
    apply(dev_cluster, namespace, example)
    replicas = spec.get("replicas", 1)
    md = wait_ready(dev_cluster, namespace, name, replicas)

    deployment = deployment_of(dev_cluster, namespace, name)
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelDeployment", name, True)
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmfleet"
    container = server_container(deployment)
    args = [*container.get("command", []), *container.get("args", [])]
    if spec["engine"]["kind"] == "triton":
        # Triton's model repository, written by the container's command: its directory is the
        # served name, model.json holds vLLM's engine arguments.
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        engine_args = json.loads(env["LLMFLEET_TRITON_MODEL_JSON"])
        args += [env["LLMFLEET_TRITON_MODEL_NAME"], *(str(x) for item in engine_args.items() for x in item)]
    served = spec["model"].get("servedName", name)
    assert served in args, args
    if spec.get("engine", {}).get("maxModelLen"):
        assert str(spec["engine"]["maxModelLen"]) in args

    par = spec.get("parallelism", {})
    gpus = par.get("tensor", 1) * par.get("pipeline", 1)
    kind = spec["engine"]["kind"]
    limits = container.get("resources", {}).get("limits", {})
    product = (spec.get("accelerator") or {}).get("product")
    if kind != "sim" or spec.get("accelerator"):
        assert limits.get("nvidia.com/gpu") == str(gpus)
        if par.get("tensor", 1) > 1:
            tp_flag = {"vllm": "--tensor-parallel-size", "sglang": "--tp-size", "tensorrt-llm": "--tp_size",
                       "triton": "tensor_parallel_size"}[kind]
            assert flag_value(args, tp_flag) == str(par["tensor"]), args
    # Load-time quantization is a flag; pre-quantized checkpoints (awq, gptq) are detected
    # by the engine from the checkpoint itself.
    if spec.get("engine", {}).get("quantization") == "fp8" and kind in ("vllm", "sglang"):
        assert flag_value(args, "--quantization") == "fp8", args
    if product:
        assert deployment["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == product

    pods = [p for p in pods_of(dev_cluster, namespace, name) if p["status"].get("phase") == "Running"]
    assert len(pods) == replicas
    for pod in pods:
        node = kubectl_json(dev_cluster, "get", "node", pod["spec"]["nodeName"])
        if product:
            assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == product
        assert pod["status"]["podIP"].startswith("127.")

    table = dev_cluster.kubectl("get", "md", name, "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "ENGINE", "MODEL", "READY", "DESIRED", "QUEUE", "AGE"]
    assert row.split()[:2] == [name, kind] and f"{replicas}/{replicas}" in row.split()
    assert md["status"]["selector"] == f"{MD_LABEL}={name}"


@pytest.fixture
def sim_md(dev_cluster, operator, namespace):
    manifest = load_md(EXAMPLES / "sim-quickstart.yaml")
    apply(dev_cluster, namespace, EXAMPLES / "sim-quickstart.yaml")
    name = manifest["metadata"]["name"]
    wait_ready(dev_cluster, namespace, name, manifest["spec"].get("replicas", 1))
    return name


def test_kubectl_scale_gives_three_ready_replicas(dev_cluster, namespace, sim_md):
    dev_cluster.kubectl("scale", f"md/{sim_md}", "--replicas=3", "-n", namespace)
    wait_ready(dev_cluster, namespace, sim_md, 3)
    running = [p for p in pods_of(dev_cluster, namespace, sim_md) if p["status"].get("phase") == "Running"]
    assert len(running) == 3
    row = dev_cluster.kubectl("get", "md", sim_md, "-n", namespace).stdout.splitlines()[1].split()
    assert "3/3" in row
    scale = json.loads(dev_cluster.kubectl(
        "get", "--raw", f"/apis/llmfleet.io/v1alpha1/namespaces/{namespace}/modeldeployments/{sim_md}/scale"
    ).stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == f"{MD_LABEL}={sim_md}"


def test_editing_max_model_len_rolls_the_deployment(dev_cluster, namespace, sim_md):
    before = deployment_of(dev_cluster, namespace, sim_md)
    old_pods = {p["metadata"]["name"] for p in pods_of(dev_cluster, namespace, sim_md)}
    dev_cluster.kubectl("patch", "md", sim_md, "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"engine": {"maxModelLen": 2048}}}))

    def rolled():
        d = deployment_of(dev_cluster, namespace, sim_md)
        c = server_container(d)
        args = [*c.get("command", []), *c.get("args", [])]
        return d if flag_value(args, "--max-model-len") == "2048" else None

    after = wait_for(rolled, what="the Deployment template to carry --max-model-len 2048")
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    wait_ready(dev_cluster, namespace, sim_md)
    # The rollout ends when the old replica is gone: Progressing turns False.
    wait_for(lambda: condition(get_md(dev_cluster, namespace, sim_md), "Progressing")["status"] == "False",
             what="Progressing=False after the rollout")
    new_pods = {p["metadata"]["name"] for p in pods_of(dev_cluster, namespace, sim_md)
                if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")}
    assert new_pods and not (new_pods & old_pods), "the pods were not replaced"


def test_deleting_a_model_deployment_leaves_no_children(dev_cluster, namespace, sim_md):
    dev_cluster.kubectl("delete", "md", sim_md, "-n", namespace, "--wait=true")

    def no_children():
        left = kubectl_json(dev_cluster, "get", "deployments,services,replicasets,pods", "-n", namespace,
                            "-l", f"{MD_LABEL}={sim_md}")["items"]
        return not left or None

    wait_for(no_children, what="garbage collection of the Deployment, Service and pods")


def test_more_gpus_than_any_node_has_is_not_ready_with_a_reason(dev_cluster, operator, namespace):
    manifest = load_md(EXAMPLES / "llama-3.1-70b-fp8-tp4-h100.yaml")
    manifest["metadata"] = {"name": "llama-70b-on-l4"}
    manifest["spec"]["accelerator"] = {"product": "NVIDIA-L4"}  # L4 nodes have 1 GPU; this asks 4
    assert apply(dev_cluster, namespace, manifest).returncode == 0

    def not_ready():
        md = get_md(dev_cluster, namespace, "llama-70b-on-l4")
        cond = condition(md, "Ready")
        return md if cond and cond["status"] == "False" and cond["reason"] == "InsufficientGPU" else None

    md = wait_for(not_ready, what="Ready=False InsufficientGPU")
    message = condition(md, "Ready")["message"]
    assert "4 nvidia.com/gpu" in message and "NVIDIA-L4" in message and "has 1" in message
    assert condition(md, "Degraded")["status"] == "True"
    describe = dev_cluster.kubectl("describe", "md", "llama-70b-on-l4", "-n", namespace).stdout
    assert "InsufficientGPU" in describe  # the Warning event


INVALID = [
    (
        "quantization the engine lacks",
        {"engine": {"kind": "tensorrt-llm", "quantization": "gguf"}},
        ["spec.engine.quantization", "gguf"],
    ),
    (
        "maxReplicas below minReplicas",
        {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}},
        ["maxReplicas", "minReplicas"],
    ),
    (
        "more GPUs per replica than one node",
        {"parallelism": {"tensor": 8, "pipeline": 2}},
        ["spec.parallelism", "8"],
    ),
    (
        "unknown engine kind",
        {"engine": {"kind": "llamacpp"}},
        ["spec.engine.kind", "vllm", "sglang"],
    ),
    (
        "unknown model URI scheme",
        {"model": {"uri": "ftp://models/llama"}},
        ["spec.model.uri"],
    ),
]


@pytest.mark.parametrize("what,patch,expected", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_spec_is_refused_by_the_api_server_naming_the_field(dev_cluster, crds, namespace, what, patch, expected):
    manifest = load_md(EXAMPLES / "llama-3.1-8b-awq-vllm.yaml")
    spec = manifest["spec"]
    for key, value in patch.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    result = apply(dev_cluster, namespace, manifest)
    assert result.returncode != 0, f"{what}: accepted"
    for text in expected:
        assert text in result.stderr, f"{what}: {text!r} not in {result.stderr!r}"


def test_routepolicy_without_backends_is_refused(dev_cluster, crds, namespace):
    result = apply(dev_cluster, namespace, {
        "apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "chat"},
        "spec": {"model": "chat", "backends": []},
    })
    assert result.returncode != 0
    assert "spec.backends" in result.stderr


def test_operator_restart_changes_nothing_that_is_already_correct(dev_cluster, operator, namespace, sim_md):
    vllm = EXAMPLES / "llama-3.1-8b-awq-vllm.yaml"
    apply(dev_cluster, namespace, vllm)
    wait_ready(dev_cluster, namespace, load_md(vllm)["metadata"]["name"])

    def versions():
        items = kubectl_json(dev_cluster, "get", "md,deployments,services,replicasets", "-n", namespace)["items"]
        return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in items}

    # Idle first: nothing written for 4 s (the autoscaler's first rounds write status.load
    # and scaleReason once replicas are scraped).
    seen = {"versions": None, "since": 0.0}

    def idle():
        import time

        current = versions()
        if current != seen["versions"]:
            seen.update(versions=current, since=time.monotonic())
            return None
        return current if time.monotonic() - seen["since"] >= 4 else None

    before = wait_for(idle, timeout=60, interval=0.5, what="the objects to be idle")
    reconciles_before = _successful_reconciles(operator)
    operator.restart()
    # The restarted operator lists every ModelDeployment and reconciles each one.
    wait_for(lambda: _successful_reconciles(operator) >= 2, what="the restarted operator to reconcile both")
    settled = wait_for(_settled(operator), timeout=30, what="reconciles to stop")
    assert reconciles_before >= 2 and settled
    after = versions()
    changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not changed, f"rewritten by the restart: {changed}\n" + dev_cluster.kubectl(
        "get", "md", "-n", namespace, "-o", "yaml").stdout


def _settled(operator):
    """A predicate true once the success count has not moved for 2 s."""
    import time

    seen = {"count": -1.0, "since": time.monotonic()}

    def check():
        count = _successful_reconciles(operator)
        if count != seen["count"]:
            seen.update(count=count, since=time.monotonic())
            return False
        return time.monotonic() - seen["since"] >= 2

    return check


def _successful_reconciles(operator) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith('llmfleet_reconcile_total{kind="ModelDeployment",result="success"}'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_operator_exposes_liveness_and_metrics(operator, sim_md):
    import httpx

    assert httpx.get(operator.health_url, timeout=5, trust_env=False).status_code == 200
    text = operator.metrics()
    assert "llmfleet_reconcile_duration_seconds_bucket" in text
    assert _successful_reconciles(operator) > 0
    assert any(
        line.startswith("llmfleet_modeldeployment_replicas{") and f'name="{sim_md}"' in line and 'state="ready"' in line
        for line in text.splitlines()
    )


def test_ready_transition_is_recorded_as_an_event(dev_cluster, namespace, sim_md):
    events = kubectl_json(dev_cluster, "get", "events", "-n", namespace,
                          "--field-selector", f"involvedObject.name={sim_md},involvedObject.kind=ModelDeployment")
    reasons = {(e["type"], e["reason"]) for e in events["items"]}
    assert ("Normal", "Ready") in reasons
