"""TensorRT-LLM: ``trtllm-serve serve`` from NVIDIA's ``tensorrt-llm/release`` image.

Flag names follow ``tensorrt_llm/commands/serve.py`` (click options; the CLI uses
underscores) and the trtllm-serve reference (nvidia.github.io/TensorRT-LLM,
commands/trtllm-serve); ``tests/unit/test_engines.py`` checks them.
``--served_model_name`` arrived in early 2026 (NVIDIA/TensorRT-LLM#11711), so the
pinned image is a 1.3 release candidate. trtllm-serve has no quantization or dtype
flag: it serves checkpoints quantized offline (NVIDIA Model Optimizer) and detects
the recipe, and it cannot read s3:// or gs:// (refused on admission).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from llmfleet.api import support
from llmfleet.engines.base import PORT, Engine, MetricNames, ModelMount, parallel_args

if TYPE_CHECKING:
    from llmfleet.api.models import ModelDeploymentSpec

# Where the tag was verified: README, "Engines: what is verified here".
IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc27"


class TensorRTLLMEngine(Engine):
    kind = support.TENSORRT_LLM
    default_image = IMAGE
    # trtllm-serve exposes Prometheus text here (/metrics serves JSON iteration stats).
    metrics_path = "/prometheus/metrics"
    metric_names: ClassVar[MetricNames] = MetricNames(
        queue_depth="trtllm_num_requests_waiting",
        running_requests="trtllm_num_requests_running",
        kv_cache_utilization="trtllm_kv_cache_utilization",
        generation_tokens_total="trtllm_generation_tokens_total",
        ttft_seconds_histogram="trtllm_time_to_first_token_seconds",
        # Names from tensorrt_llm/metrics/collector.py (MetricsCollector, "trtllm_" prefix).
        finished_requests_total="trtllm_request_success_total",  # labelled by finished_reason
        prompt_tokens_total="trtllm_prompt_tokens_total",
    )

    def command(self) -> list[str]:
        return ["trtllm-serve", "serve"]

    def args(self, spec: ModelDeploymentSpec, served_name: str, mount: ModelMount) -> list[str]:
        args = [
            mount.model_arg,  # positional: HF repo id or local checkpoint/engine directory
            "--served_model_name", served_name,
            "--host", "0.0.0.0",  # trtllm-serve's default is localhost
            "--port", str(PORT),
            *parallel_args("--tp_size", "--pp_size", spec),
        ]  # fmt: skip
        if spec.engine.max_model_len:
            args += ["--max_seq_len", str(spec.engine.max_model_len)]
        return args + mount.args
