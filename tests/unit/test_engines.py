"""Engines: registry, support table, and rendered flags against each engine's documented CLI.

The engines' own argument parsers cannot be imported here (no GPU wheels), so the
flags we render are checked against the flag lists below, taken from each
engine's documentation and source. The simulated engine's parser is ours, so its
args are parsed for real.
"""

from __future__ import annotations

import itertools

import pytest

from llmfleet.api import support
from llmfleet.api.models import parse_model_deployment_spec
from llmfleet.engines import (
    SGLangEngine,
    SimEngine,
    TensorRTLLMEngine,
    TritonEngine,
    VllmEngine,
    all_engines,
    get_engine,
)
from llmfleet.engines.base import CONTAINER_NAME, PORT

# vLLM `vllm serve`: docs.vllm.ai "Engine Arguments" (usage: vllm serve [--model MODEL] ...
# [--load-format {...,runai_streamer,...}] [--dtype {auto,half,float16,bfloat16,float,float32}]
# [--max-model-len] [--pipeline-parallel-size] [--tensor-parallel-size] [--quantization]),
# docs.vllm.ai/en/v0.12.0/cli/serve ("Frontend": --host, --port) and the OpenAI server
# docs (--served-model-name). Quantization choices: QuantizationMethods in
# vllm/model_executor/layers/quantization/__init__.py.
VLLM_FLAGS = {
    "--served-model-name",
    "--host",
    "--port",
    "--tensor-parallel-size",
    "--pipeline-parallel-size",
    "--dtype",
    "--quantization",
    "--max-model-len",
    "--load-format",
    "--shutdown-timeout",  # vLLM >= 0.18 (vllm-project/vllm#34730)
    # LoRA: docs.vllm.ai engine arguments, "LoRAConfig" (--enable-lora, --max-loras default 1,
    # --max-lora-rank with choices 1/8/16/32/64/128/256/320/512), and features/lora "Dynamically
    # serving LoRA Adapters" (VLLM_ALLOW_RUNTIME_LORA_UPDATING, /v1/load_lora_adapter).
    "--enable-lora",
    "--max-loras",
    "--max-lora-rank",
}
VLLM_CHOICES = {
    "--dtype": {"auto", "half", "float16", "bfloat16", "float", "float32"},
    "--quantization": {"awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors", "modelopt", "modelopt_fp4"},
    "--load-format": {"auto", "safetensors", "runai_streamer"},
}

# SGLang `python -m sglang.launch_server`: docs.sglang.io advanced_features/server_arguments
# ("--model-path", "--served-model-name", "--host" default 127.0.0.1, "--port" default 30000,
# "--tensor-parallel-size"/"--tp-size", "--pipeline-parallel-size"/"--pp-size", "--dtype",
# "--quantization" choices, "--context-length", "--enable-metrics", "--load-format" with
# runai_streamer).
SGLANG_FLAGS = {
    "--model-path",
    "--served-model-name",
    "--host",
    "--port",
    "--tp-size",
    "--pp-size",
    "--dtype",
    "--quantization",
    "--context-length",
    "--enable-metrics",
    "--load-format",
}
SGLANG_CHOICES = {
    "--dtype": {"auto", "half", "float16", "bfloat16", "float", "float32"},
    "--quantization": {"awq", "fp8", "gptq", "marlin", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf",
                       "modelopt", "modelopt_fp8", "modelopt_fp4", "w8a8_int8", "w8a8_fp8", "compressed-tensors"},
    "--load-format": {"auto", "safetensors", "runai_streamer"},
}

# TensorRT-LLM `trtllm-serve serve MODEL`: tensorrt_llm/commands/serve.py (click options
# --host, --port, --backend, --max_seq_len, --tensor_parallel_size/--tp_size,
# --pipeline_parallel_size/--pp_size, --config/--extra_llm_api_options; DefaultGroup
# with a "serve" subcommand) and --served_model_name (NVIDIA/TensorRT-LLM#11711,
# documented in the trtllm-serve CLI reference). No quantization or dtype flag exists.
TRTLLM_FLAGS = {
    "--served_model_name",
    "--host",
    "--port",
    "--tp_size",
    "--pp_size",
    "--max_seq_len",
}


def spec(**fields):
    base = {"model": {"uri": "hf://org/model"}, "engine": {"kind": "vllm"}}
    base.update(fields)
    return parse_model_deployment_spec(base)


def rendered_args(kind: str, **engine_fields) -> list[str]:
    model = engine_fields.pop("uri", "hf://org/model")
    s = spec(model={"uri": model}, engine={"kind": kind, **engine_fields}, parallelism={"tensor": 2, "pipeline": 2})
    return get_engine(kind).container(s, "llama")["args"]


def _flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _variants(kind: str):
    """Every quantization and dtype the engine accepts, with and without a length, from each URI kind."""
    uris = ["hf://org/model", "pvc://models/llama", "oci://ghcr.io/acme/llama:1"]
    if "s3" in support.allowed_uri_schemes(kind):
        uris += ["s3://bucket/llama", "gs://bucket/llama"]
    for q, d, uri in itertools.product(support.allowed_quantizations(kind), support.allowed_dtypes(kind), uris):
        yield {"quantization": q, "dtype": d, "uri": uri, "maxModelLen": 4096}


@pytest.mark.parametrize(
    "kind,documented,choices",
    [
        ("vllm", VLLM_FLAGS, VLLM_CHOICES),
        ("sglang", SGLANG_FLAGS, SGLANG_CHOICES),
        ("tensorrt-llm", TRTLLM_FLAGS, {}),
    ],
)
def test_rendered_flags_are_documented(kind, documented, choices):
    for variant in _variants(kind):
        args = rendered_args(kind, **variant)
        assert set(_flags(args)) <= documented, (variant, set(_flags(args)) - documented)
        for flag, allowed in choices.items():
            if flag in args:
                assert _value(args, flag) in allowed, (variant, flag)


def test_vllm_lora_flags_are_documented():
    s = spec(adapters=[{"name": "sql", "uri": "hf://org/sql-lora"}], lora={"maxRank": 64, "maxLoaded": 8})
    container = get_engine("vllm").container(s, "llama")
    assert container["args"][-5:] == ["--enable-lora", "--max-loras", "8", "--max-lora-rank", "64"]
    assert set(_flags(container["args"])) <= VLLM_FLAGS
    assert _value(container["args"], "--max-lora-rank") in {"1", "8", "16", "32", "64", "128", "256", "320", "512"}
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    assert "--lora-modules" not in container["args"]  # loaded at runtime: the list can change without a restart


def test_vllm_command_and_args():
    args = rendered_args("vllm", quantization="fp8", dtype="bfloat16", maxModelLen=8192)
    assert get_engine("vllm").command() == ["vllm", "serve"]
    assert args == [
        "org/model",
        "--served-model-name", "llama",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "2",
        "--dtype", "bfloat16",
        "--shutdown-timeout", "110",  # drains for the 120 s grace period less the 5 s preStop and 5 s to exit
        "--quantization", "fp8",
        "--max-model-len", "8192",
    ]  # fmt: skip


def test_sglang_command_and_args():
    args = rendered_args("sglang", quantization="int8", maxModelLen=4096, uri="s3://bucket/qwen")
    assert get_engine("sglang").command() == ["python3", "-m", "sglang.launch_server"]
    assert args == [
        "--model-path", "s3://bucket/qwen",
        "--served-model-name", "llama",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tp-size", "2",
        "--pp-size", "2",
        "--dtype", "auto",
        "--quantization", "w8a8_int8",
        "--context-length", "4096",
        "--enable-metrics",
        "--load-format", "runai_streamer",
    ]  # fmt: skip


def test_tensorrt_llm_command_and_args():
    args = rendered_args("tensorrt-llm", quantization="fp8", maxModelLen=8192, uri="pvc://models/llama")
    assert get_engine("tensorrt-llm").command() == ["trtllm-serve", "serve"]
    assert args == [
        "/models/models/llama",
        "--served_model_name", "llama",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tp_size", "2",
        "--pp_size", "2",
        "--max_seq_len", "8192",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
@pytest.mark.parametrize("quantization", ["awq", "gptq", "compressed-tensors", "nvfp4", "none"])
def test_pre_quantized_checkpoints_get_no_quantization_flag(kind, quantization):
    # An explicit method would force a slower kernel or clash with the checkpoint's config.
    assert "--quantization" not in rendered_args(kind, quantization=quantization)


def test_extra_args_come_last_verbatim():
    extra = ["--enable-prefix-caching", "--gpu-memory-utilization", "0.9", "--port", "9999"]
    for kind in support.ENGINE_KINDS:
        args = rendered_args(kind, extraArgs=extra)
        assert args[-len(extra):] == extra


def test_served_name_comes_from_the_spec():
    s = spec(model={"uri": "hf://org/model", "servedName": "llama-3.1-8b"})
    assert _value(get_engine("vllm").container(s, "md-name")["args"], "--served-model-name") == "llama-3.1-8b"


# --------------------------------------------------------------------------- sim


def test_sim_args_parse_with_the_simulators_own_parser():
    from llmfleet.sim.server import build_parser

    s = spec(
        engine={"kind": "sim", "maxModelLen": 4096, "extraArgs": ["--max-num-seqs", "16", "--time-scale", "0.5"]}
    )
    container = get_engine("sim").container(s, "quickstart")
    assert container["command"] == ["llmfleet", "sim"]
    ns = build_parser().parse_args(container["args"])
    assert ns.host == "0.0.0.0" and ns.port == PORT
    assert ns.served_model_name == ["quickstart"]
    assert ns.max_model_len == 4096 and ns.max_num_seqs == 16 and ns.time_scale == 0.5


def test_sim_loads_no_model_and_runs_unprivileged_without_gpu():
    s = spec(model={"uri": "pvc://models/llama"}, engine={"kind": "sim"}, parallelism={"tensor": 4})
    engine = get_engine("sim")
    pod = engine.pod_spec(s, "quickstart")
    (container,) = pod["containers"]
    assert "volumes" not in pod and "volumeMounts" not in container
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == SimEngine.default_image
    from llmfleet import __version__

    assert SimEngine.default_image == f"ghcr.io/llmfleet/llmfleet:{__version__}"


def test_sim_with_an_accelerator_requests_gpus():
    s = spec(engine={"kind": "sim"}, parallelism={"tensor": 2}, accelerator={"product": "NVIDIA-L4"})
    pod = get_engine("sim").pod_spec(s, "x")
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2" and resources["requests"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# --------------------------------------------------------------------------- shared pod logic


def test_registry():
    assert {e.kind for e in all_engines()} == set(support.ENGINE_KINDS)
    assert isinstance(get_engine("vllm"), VllmEngine)
    assert isinstance(get_engine("sglang"), SGLangEngine)
    assert isinstance(get_engine("tensorrt-llm"), TensorRTLLMEngine)
    assert isinstance(get_engine("sim"), SimEngine)
    assert isinstance(get_engine("triton"), TritonEngine)
    with pytest.raises(KeyError, match="unknown engine kind 'tgi'"):
        get_engine("tgi")


def test_default_images_are_pinned():
    assert VllmEngine.default_image.startswith("vllm/vllm-openai:v")
    assert SGLangEngine.default_image.startswith("lmsysorg/sglang:v")
    assert TensorRTLLMEngine.default_image.startswith("nvcr.io/nvidia/tensorrt-llm/release:")
    assert TritonEngine.default_image.startswith("nvcr.io/nvidia/tritonserver:")
    for engine in all_engines():
        assert not engine.default_image.endswith(":latest")
    custom = spec(engine={"kind": "vllm", "image": "my/vllm:1"})
    assert get_engine("vllm").container(custom, "x")["image"] == "my/vllm:1"


def test_quantization_table_covers_the_vocabulary():
    for kind in support.ENGINE_KINDS:
        assert set(support.QUANTIZATION_FLAGS[kind]) <= set(support.QUANTIZATIONS)
        assert "none" in support.allowed_quantizations(kind)
        assert support.quantization_flag(kind, "none") is None
        assert set(support.allowed_dtypes(kind)) <= set(support.DTYPES)
        assert set(support.allowed_uri_schemes(kind)) <= set(support.MODEL_URI_SCHEMES)
    assert support.allowed_quantizations("sim") == support.QUANTIZATIONS
    # trtllm-serve has no quantization flag at all
    assert all(v is None for v in support.QUANTIZATION_FLAGS["tensorrt-llm"].values())


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tensorrt-llm"])
def test_gpu_engines_probe_health_and_wait_thirty_minutes_for_loading(kind):
    engine = get_engine(kind)
    container = engine.container(spec(engine={"kind": kind}), "x")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 30 * 60
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["name"] == CONTAINER_NAME


@pytest.mark.parametrize("tensor,pipeline,shm", [(1, 1, "4Gi"), (2, 1, "8Gi"), (4, 2, "32Gi")])
def test_shm_is_memory_backed_and_sized_per_gpu(tensor, pipeline, shm):
    s = spec(parallelism={"tensor": tensor, "pipeline": pipeline})
    pod = get_engine("vllm").pod_spec(s, "x")
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": str(tensor * pipeline)}


def test_gpu_resource_and_product_come_from_the_accelerator():
    s = spec(accelerator={"resource": "amd.com/gpu", "product": "MI300X"})
    pod = get_engine("vllm").pod_spec(s, "x")
    assert pod["containers"][0]["resources"]["requests"] == {"amd.com/gpu": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "MI300X"}


def test_hf_models_download_into_an_empty_dir_and_use_the_credentials_secret():
    s = spec(model={"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "credentialsSecret": "hf-token"})
    pod = get_engine("vllm").pod_spec(s, "x")
    (container,) = pod["containers"]
    assert container["args"][0] == "meta-llama/Llama-3.1-8B-Instruct"
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert {"name": "HF_HOME", "value": "/cache/huggingface"} in container["env"]
    assert {"name": "model-cache", "emptyDir": {}} in pod["volumes"]
    assert "hf-token" not in str(container["env"])  # referenced, never copied


@pytest.mark.parametrize(
    "uri,arg,mount",
    [
        ("pvc://models/org/llama", "/models/models/org/llama", "/models/models"),
        ("pvc://models", "/models/models", "/models/models"),
    ],
)
def test_pvc_models_are_mounted_read_only(uri, arg, mount):
    pod = get_engine("vllm").pod_spec(spec(model={"uri": uri}), "x")
    (container,) = pod["containers"]
    assert container["args"][0] == arg
    assert {"name": "model", "mountPath": mount, "readOnly": True} in container["volumeMounts"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]


def test_oci_models_are_image_volumes():
    s = spec(model={"uri": "oci://ghcr.io/acme/llama:1"}, engine={"kind": "sglang"})
    pod = get_engine("sglang").pod_spec(s, "x")
    (container,) = pod["containers"]
    assert _value(container["args"], "--model-path") == "/models/image"
    assert {"name": "model", "image": {"reference": "ghcr.io/acme/llama:1", "pullPolicy": "IfNotPresent"}} in pod[
        "volumes"
    ]
    assert {"name": "model", "mountPath": "/models/image", "readOnly": True} in container["volumeMounts"]


def test_user_env_replaces_ours_by_name_and_keeps_order():
    s = spec(engine={"kind": "vllm", "env": [{"name": "HF_HOME", "value": "/data/hf"}, {"name": "A", "value": "1"}]})
    env = get_engine("vllm").container(s, "x")["env"]
    assert env == [{"name": "HF_HOME", "value": "/data/hf"}, {"name": "A", "value": "1"}]


def test_pods_do_not_get_service_links_or_api_tokens():
    pod = get_engine("vllm").pod_spec(spec(), "x")
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("engine", all_engines(), ids=lambda e: e.kind)
def test_removed_replicas_sleep_before_sigterm_within_the_grace_period(engine):
    pod = engine.pod_spec(spec(engine={"kind": engine.kind}), "x")
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["terminationGracePeriodSeconds"]
    assert 1 <= sleep == engine.pre_stop_sleep_seconds
    # The grace period (preStop included) leaves room for a long generation to finish.
    assert grace - sleep >= 10


def test_sim_drains_inside_its_grace_period():
    from llmfleet.sim.config import SimConfig

    # SIGTERM comes after the preStop; the sim's default drain must end before SIGKILL.
    assert SimEngine.pre_stop_sleep_seconds + SimConfig().shutdown_timeout < SimEngine.termination_grace_period_seconds


def test_metrics_endpoints_and_names():
    assert get_engine("vllm").metrics_path == "/metrics"
    assert get_engine("sglang").metrics_path == "/metrics"
    assert get_engine("tensorrt-llm").metrics_path == "/prometheus/metrics"
    assert get_engine("vllm").metric_names.queue_depth == "vllm:num_requests_waiting"
    assert get_engine("vllm").metric_names.kv_cache_utilization_fallbacks == ("vllm:gpu_cache_usage_perc",)
    assert get_engine("sim").metric_names == get_engine("vllm").metric_names
    assert get_engine("sglang").metric_names.queue_depth == "sglang:num_queue_reqs"


# --------------------------------------------------------------------------- triton

# Triton's OpenAI-compatible frontend, python/openai/openai_frontend/main.py in
# triton-inference-server/server (branch r26.08, argparse): --model-repository (required),
# --tokenizer (HF id or local folder), --host (default 0.0.0.0), --openai-port (default 9000).
TRITON_FLAGS = {"--model-repository", "--tokenizer", "--host", "--openai-port"}
# model.json keys: vLLM's engine arguments (vllm/engine/arg_utils.py EngineArgs fields), which the
# vLLM backend passes on (vllm_backend README, "Using the vLLM Backend").
VLLM_ENGINE_ARGS = {"model", "tensor_parallel_size", "pipeline_parallel_size", "dtype", "quantization",
                    "max_model_len", "disable_log_stats"}


def _triton_files(container: dict) -> dict[str, str]:
    from llmfleet.engines import triton

    env = {e["name"]: e["value"] for e in container["env"]}
    return {"name": env[triton.SERVED_NAME_ENV], "config": env[triton.CONFIG_ENV],
            "engine_args": env[triton.ENGINE_ARGS_ENV]}


def test_triton_rendered_flags_and_engine_args_are_documented():
    import json

    for variant in _variants("triton"):
        container = get_engine("triton").container(
            spec(model={"uri": variant.pop("uri")}, engine={"kind": "triton", **variant}), "llama")
        assert set(_flags(container["args"])) <= TRITON_FLAGS
        engine_args = json.loads(_triton_files(container)["engine_args"])
        assert set(engine_args) <= VLLM_ENGINE_ARGS, set(engine_args) - VLLM_ENGINE_ARGS
        assert engine_args["dtype"] in VLLM_CHOICES["--dtype"]
        assert engine_args.get("quantization", "fp8") in VLLM_CHOICES["--quantization"]


def test_triton_command_args_and_model_repository():
    import json

    from llmfleet.engines import triton

    s = spec(model={"uri": "hf://org/model", "servedName": "llama-3.1-8b"},
             engine={"kind": "triton", "quantization": "fp8", "dtype": "bfloat16", "maxModelLen": 8192},
             parallelism={"tensor": 2, "pipeline": 2})
    pod = get_engine("triton").pod_spec(s, "md-name")
    (container,) = pod["containers"]
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:26.08-vllm-python-py3"
    assert container["args"] == [
        "--model-repository", "/model-repository",
        "--tokenizer", "org/model",
        "--host", "0.0.0.0",
        "--openai-port", "8000",
    ]  # fmt: skip
    files = _triton_files(container)
    assert files["name"] == "llama-3.1-8b"  # the repository directory, so the name clients ask for
    assert json.loads(files["engine_args"]) == {
        "model": "org/model", "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "dtype": "bfloat16",
        "disable_log_stats": False, "quantization": "fp8", "max_model_len": 8192,
    }
    assert 'backend: "vllm"' in files["config"] and "kind: KIND_MODEL" in files["config"]
    assert 'key: "REPORT_CUSTOM_METRICS"' in files["config"]
    assert {"name": "model-repository", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model-repository", "mountPath": "/model-repository"} in container["volumeMounts"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert triton.TritonEngine.metrics_path == "/metrics"


def test_triton_container_command_writes_the_repository_and_starts_the_frontend(tmp_path):
    # Run the rendered command with /bin/sh, the repository and the frontend moved under tmp_path.
    import json
    import subprocess
    import sys

    from llmfleet.engines import triton

    s = spec(model={"uri": "pvc://models/llama"}, engine={
        "kind": "triton", "extraArgs": ["--tool-call-parser", "llama3"],
        "env": [{"name": "EXTRA", "value": "1"}]})
    container = get_engine("triton").container(s, "chat")
    frontend = tmp_path / "main.py"
    frontend.write_text("import json, sys; print(json.dumps(sys.argv[1:]))\n")
    command = [c.replace(triton.MODEL_REPOSITORY, str(tmp_path / "repo")).replace(triton.FRONTEND, str(frontend))
               .replace("exec python3", f"exec {sys.executable}") for c in container["command"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    out = subprocess.run([*command, *container["args"]], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)[-2:] == ["--tool-call-parser", "llama3"]  # extraArgs reach the frontend
    assert json.loads(out.stdout)[:4] == ["--model-repository", "/model-repository", "--tokenizer",
                                          "/models/models/llama"]
    model = tmp_path / "repo" / "chat"
    assert (model / "config.pbtxt").read_text() == triton.CONFIG_PBTXT
    assert json.loads((model / "1" / "model.json").read_text())["model"] == "/models/models/llama"


def test_triton_user_env_replaces_the_rendered_files():
    from llmfleet.engines import triton

    mine = '{"model": "/models/x", "gpu_memory_utilization": 0.5}'
    s = spec(engine={"kind": "triton", "env": [{"name": triton.ENGINE_ARGS_ENV, "value": mine},
                                               {"name": triton.SERVED_NAME_ENV, "value": "other"}]})
    env = get_engine("triton").container(s, "x")["env"]
    assert [e["value"] for e in env if e["name"] == triton.ENGINE_ARGS_ENV] == [mine]
    assert [e["value"] for e in env if e["name"] == triton.SERVED_NAME_ENV] == ["other"]


def test_triton_metric_names_select_by_label():
    names = get_engine("triton").metric_names
    assert names.queue_depth == 'nv_trt_llm_request_metrics{request_type="waiting"}'
    assert names.running_requests == 'nv_trt_llm_request_metrics{request_type="scheduled"}'
    assert names.kv_cache_utilization == 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}'
