"""Triton Inference Server: its OpenAI-compatible frontend with the vLLM backend.

The ``tritonserver:<yy.mm>-vllm-python-py3`` image ships the frontend ready to run at
``/opt/tritonserver/python/openai/openai_frontend/main.py`` (server repo,
``python/openai/README.md``); flag names follow that ``main.py``'s argparse options and
``tests/unit/test_engines.py`` checks them. The frontend serves ``/v1/*``, ``/metrics``
(Triton's own series) and ``/health/ready`` on ``--openai-port``.

Triton serves what a *model repository* holds. The container's command writes one
before it starts the frontend: ``<repo>/<served name>/config.pbtxt`` (``backend:
"vllm"``, one ``KIND_MODEL`` instance, custom metrics on) and ``1/model.json``, the
vLLM engine arguments (vllm_backend README, "Using the vLLM Backend", and its
``samples/model_repository``). Their text comes from environment variables, so the
rendered pod shows exactly what Triton gets and a user can replace either with
spec.engine.env; the repository is an emptyDir, so nothing new is owned.

The TensorRT-LLM backend is not offered: its model repository needs an engine or a
``model.yaml`` for the LLM API model that the OpenAI frontend does not document, and
its image needs the frontend's dependencies installed first (engine.kind tensorrt-llm
serves TensorRT-LLM with ``trtllm-serve``). Its metric series are mapped all the same
(see ``metric_names``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from llmfleet.api import support
from llmfleet.engines.base import PORT, Engine, MetricNames, ModelMount

if TYPE_CHECKING:
    from llmfleet.api.models import ModelDeploymentSpec

# Where the tag was verified: README, "Engines: what is verified here".
IMAGE = "nvcr.io/nvidia/tritonserver:26.08-vllm-python-py3"
FRONTEND = "/opt/tritonserver/python/openai/openai_frontend/main.py"
MODEL_REPOSITORY = "/model-repository"
MODEL_REPOSITORY_VOLUME = "model-repository"
# The variables the container's command writes the model repository from.
SERVED_NAME_ENV = "LLMFLEET_TRITON_MODEL_NAME"
CONFIG_ENV = "LLMFLEET_TRITON_CONFIG_PBTXT"
ENGINE_ARGS_ENV = "LLMFLEET_TRITON_MODEL_JSON"

# REPORT_CUSTOM_METRICS makes the vLLM backend report vLLM's counters and histograms
# through Triton's /metrics (vllm_backend README, "Triton Metrics").
CONFIG_PBTXT = """\
backend: "vllm"
instance_group [
  {
    count: 1
    kind: KIND_MODEL
  }
]
parameters: {
  key: "REPORT_CUSTOM_METRICS"
  value: {
    string_value: "true"
  }
}
"""

# Writes the repository, then replaces the shell with the frontend ("$@": our args and
# spec.engine.extraArgs). printf, not echo: the text is data, never interpreted.
SCRIPT = f"""\
set -eu
dir="{MODEL_REPOSITORY}/${SERVED_NAME_ENV}"
mkdir -p "$dir/1"
printf '%s' "${CONFIG_ENV}" > "$dir/config.pbtxt"
printf '%s' "${ENGINE_ARGS_ENV}" > "$dir/1/model.json"
exec python3 {FRONTEND} "$@"
"""


class TritonEngine(Engine):
    kind = support.TRITON
    default_image = IMAGE
    health_path = "/health/ready"
    # Triton's series with label matchers. The gauges are the TensorRT-LLM backend's
    # (tensorrtllm_backend README, "Triton Metrics"; the same choice as the Gateway API
    # Inference Extension's model-server protocol for Triton): "scheduled" is the
    # in-flight batch of the iteration, "waiting" the requests queued before it.
    # The vLLM backend reports only vLLM's counters and histograms (its
    # src/utils/metrics.py), not vLLM's queue, running or KV-cache gauges, and Triton's
    # own nv_inference_pending_request_count stays near 0 with it because the backend
    # takes every request at once: a vLLM-backend replica reports no load gauges, and
    # the scraper says which are missing (README, "Engines: what is verified here").
    metric_names: ClassVar[MetricNames] = MetricNames(
        queue_depth='nv_trt_llm_request_metrics{request_type="waiting"}',
        running_requests='nv_trt_llm_request_metrics{request_type="scheduled"}',
        kv_cache_utilization='nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}',
        generation_tokens_total="vllm:generation_tokens_total",
        ttft_seconds_histogram="vllm:time_to_first_token_seconds",
        finished_requests_total="nv_inference_request_success_total",  # TYPE counter, no _total
        prompt_tokens_total="vllm:prompt_tokens_total",
        # Without those gauges (the vLLM backend), queue and running are derived from the
        # rates of the TTFT and end-to-end latency sums (llmfleet.signals.load).
        request_latency_seconds_histogram="vllm:e2e_request_latency_seconds",
    )

    def command(self) -> list[str]:
        # "$0" of the script is the name after it; the container's args become "$@".
        return ["/bin/sh", "-c", SCRIPT, "triton"]

    def args(self, spec: ModelDeploymentSpec, served_name: str, mount: ModelMount) -> list[str]:
        return [
            "--model-repository", MODEL_REPOSITORY,
            # Chat templates come from the model's tokenizer: the HF repo id or the local path.
            "--tokenizer", mount.model_arg,
            "--host", "0.0.0.0",
            "--openai-port", str(PORT),  # the frontend's default is 9000
        ]  # fmt: skip

    def engine_args(self, spec: ModelDeploymentSpec, mount: ModelMount) -> dict[str, Any]:
        """model.json: vLLM's engine arguments, as the vLLM backend passes them to vLLM."""
        engine_args: dict[str, Any] = {
            "model": mount.model_arg,
            "tensor_parallel_size": spec.parallelism.tensor,
            "pipeline_parallel_size": spec.parallelism.pipeline,
            "dtype": spec.engine.dtype.value,
            # vLLM's stats feed the backend's metrics; this is vLLM's default, spelled out
            # because the vLLM backend reads no metrics without it.
            "disable_log_stats": False,
        }
        quantization = self.quantization_flag(spec.engine.quantization.value)
        if quantization:
            engine_args["quantization"] = quantization
        if spec.engine.max_model_len:
            engine_args["max_model_len"] = spec.engine.max_model_len
        return engine_args

    def model_mount(self, spec: ModelDeploymentSpec) -> ModelMount:
        mount = super().model_mount(spec)
        mount.volumes.append({"name": MODEL_REPOSITORY_VOLUME, "emptyDir": {}})
        mount.volume_mounts.append({"name": MODEL_REPOSITORY_VOLUME, "mountPath": MODEL_REPOSITORY})
        mount.env += [
            {"name": CONFIG_ENV, "value": CONFIG_PBTXT},
            {"name": ENGINE_ARGS_ENV, "value": json.dumps(self.engine_args(spec, mount))},
        ]
        return mount

    def container(self, spec: ModelDeploymentSpec, name: str) -> dict[str, Any]:
        container = super().container(spec, name)
        # The directory's name is the model name clients ask for.
        served = {"name": SERVED_NAME_ENV, "value": spec.served_name_for(name)}
        if all(var.name != SERVED_NAME_ENV for var in spec.engine.env):
            container["env"] = [served, *container.get("env", [])]
        return container
