"""vLLM: ``vllm serve`` from the ``vllm/vllm-openai`` image.

Flag names follow the vLLM CLI reference (docs.vllm.ai, "vllm serve" / engine
arguments); ``tests/unit/test_engines.py`` checks them against that list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from llmfleet.api import support
from llmfleet.api.models import Lora
from llmfleet.engines.base import PORT, Engine, MetricNames, ModelMount, parallel_args

if TYPE_CHECKING:
    from llmfleet.api.models import ModelDeploymentSpec

IMAGE = "vllm/vllm-openai:v0.26.0"  # where the tag was verified: README, "Engines: what is verified here"


class VllmEngine(Engine):
    kind = support.VLLM
    default_image = IMAGE
    metric_names: ClassVar[MetricNames] = MetricNames(
        queue_depth="vllm:num_requests_waiting",
        running_requests="vllm:num_requests_running",
        kv_cache_utilization="vllm:kv_cache_usage_perc",
        kv_cache_utilization_fallbacks=("vllm:gpu_cache_usage_perc",),
        generation_tokens_total="vllm:generation_tokens_total",
        ttft_seconds_histogram="vllm:time_to_first_token_seconds",
        finished_requests_total="vllm:request_success_total",  # labelled by finished_reason
        prompt_tokens_total="vllm:prompt_tokens_total",
    )

    def command(self) -> list[str]:
        # Explicit, so the args do not depend on the image's ENTRYPOINT.
        return ["vllm", "serve"]

    def args(self, spec: ModelDeploymentSpec, served_name: str, mount: ModelMount) -> list[str]:
        args = [
            mount.model_arg,  # positional: HF repo id, local path, or s3:// / gs:// URI
            "--served-model-name", served_name,
            "--host", "0.0.0.0",
            "--port", str(PORT),
            *parallel_args("--tensor-parallel-size", "--pipeline-parallel-size", spec),
            "--dtype", spec.engine.dtype.value,
            # On SIGTERM, finish in-flight requests (vLLM >= 0.18; its default 0 aborts
            # them): the grace period less the preStop sleep and 5 s to exit.
            "--shutdown-timeout", str(self.shutdown_timeout_seconds),
        ]  # fmt: skip
        quantization = self.quantization_flag(spec.engine.quantization.value)
        if quantization:
            args += ["--quantization", quantization]
        if spec.engine.max_model_len:
            args += ["--max-model-len", str(spec.engine.max_model_len)]
        return args + lora_args(spec) + mount.args

    def lora_env(self, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
        # Turns on /v1/load_lora_adapter and /v1/unload_lora_adapter ("Dynamically serving
        # LoRA Adapters" in vLLM's LoRA docs), through which the operator adds and removes adapters.
        return [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}] if spec.lora_enabled else []

    def object_storage_args(self) -> list[str]:
        # The vllm-openai image ships the Run:ai Model Streamer, which reads s3:// and gs://.
        return ["--load-format", "runai_streamer"]


def lora_args(spec: ModelDeploymentSpec) -> list[str]:
    """vLLM's LoRA flags (docs.vllm.ai, engine arguments "LoRAConfig"): no --lora-modules,
    the operator loads the adapters into each running replica."""
    if not spec.lora_enabled:
        return []
    lora = spec.lora or Lora()
    return ["--enable-lora", "--max-loras", str(lora.max_loaded), "--max-lora-rank", str(lora.max_rank)]
