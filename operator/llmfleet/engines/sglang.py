"""SGLang: ``python3 -m sglang.launch_server`` from the ``lmsysorg/sglang`` image.

Flag names follow SGLang's server arguments reference (docs.sglang.io,
advanced_features/server_arguments); ``tests/unit/test_engines.py`` checks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from llmfleet.api import support
from llmfleet.engines.base import PORT, Engine, MetricNames, ModelMount, parallel_args

if TYPE_CHECKING:
    from llmfleet.api.models import ModelDeploymentSpec

IMAGE = "lmsysorg/sglang:v0.5.18"  # where the tag was verified: README, "Engines: what is verified here"


class SGLangEngine(Engine):
    kind = support.SGLANG
    default_image = IMAGE
    # SGLang adds a request's generated tokens to its counter only when the request
    # finishes, so the counter lags by whole requests; the scheduler's gen_throughput
    # gauge is the live decode rate and is preferred (see llmfleet.signals.load).
    # num_requests_total counts finished requests.
    metric_names: ClassVar[MetricNames] = MetricNames(
        queue_depth="sglang:num_queue_reqs",
        running_requests="sglang:num_running_reqs",
        kv_cache_utilization="sglang:token_usage",
        generation_tokens_total="sglang:generation_tokens_total",
        generation_throughput="sglang:gen_throughput",
        ttft_seconds_histogram="sglang:time_to_first_token_seconds",
        finished_requests_total="sglang:num_requests_total",
        prompt_tokens_total="sglang:prompt_tokens_total",
    )

    def command(self) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def args(self, spec: ModelDeploymentSpec, served_name: str, mount: ModelMount) -> list[str]:
        args = [
            "--model-path", mount.model_arg,
            "--served-model-name", served_name,
            "--host", "0.0.0.0",  # SGLang's default is 127.0.0.1
            "--port", str(PORT),  # and its default port is 30000
            *parallel_args("--tp-size", "--pp-size", spec),
            "--dtype", spec.engine.dtype.value,
        ]  # fmt: skip
        quantization = self.quantization_flag(spec.engine.quantization.value)
        if quantization:
            args += ["--quantization", quantization]
        if spec.engine.max_model_len:
            args += ["--context-length", str(spec.engine.max_model_len)]
        # SGLang serves /metrics only when asked to.
        args.append("--enable-metrics")
        return args + mount.args

    def object_storage_args(self) -> list[str]:
        return ["--load-format", "runai_streamer"]
