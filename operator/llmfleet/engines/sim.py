"""The simulated engine: ``llmfleet sim`` from the operator's own image.

It speaks the OpenAI API and exposes vLLM's metric names, needs no GPU and loads
no weights, so it runs on a laptop cluster (and under KWOK in tests). Its flags
mirror vLLM's names; spec.engine.extraArgs carries the simulation knobs
(``--max-num-seqs``, ``--kv-cache-tokens``, ``--time-scale`` ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from llmfleet import __version__
from llmfleet.api import support
from llmfleet.engines.base import PORT, Engine, MetricNames, ModelMount
from llmfleet.engines.vllm import VllmEngine, lora_args

if TYPE_CHECKING:
    from llmfleet.api.models import ModelDeploymentSpec

IMAGE = f"ghcr.io/llmfleet/llmfleet:{__version__}"
# The operator image's unprivileged user (distroless "nonroot").
NONROOT_UID = 65532


class SimEngine(Engine):
    kind = support.SIM
    default_image = IMAGE
    metric_names: ClassVar[MetricNames] = VllmEngine.metric_names
    startup_period_seconds = 1
    startup_failure_threshold = 60
    # Routes drop a pod within about 0.1 s (bench/bench_propagation.py); the sim drains
    # in-flight requests for up to its --shutdown-timeout (10 s by default) after SIGTERM.
    pre_stop_sleep_seconds = 2
    termination_grace_period_seconds = 15

    def command(self) -> list[str]:
        return ["llmfleet", "sim"]

    def args(self, spec: ModelDeploymentSpec, served_name: str, mount: ModelMount) -> list[str]:
        args = [
            "--host", "0.0.0.0",
            "--port", str(PORT),
            "--served-model-name", served_name,
        ]  # fmt: skip
        if spec.engine.max_model_len:
            args += ["--max-model-len", str(spec.engine.max_model_len)]
        return args + lora_args(spec)

    def model_mount(self, spec: ModelDeploymentSpec) -> ModelMount:
        # The simulator loads nothing: no volumes, so a pvc:// or oci:// spec switched
        # to sim still schedules on a cluster without that claim or image.
        return ModelMount(model_arg="")

    def adapter_mount(self, spec: ModelDeploymentSpec) -> ModelMount:
        return ModelMount(model_arg="")  # the simulator reads no adapter files either

    def lora_env(self, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
        return []  # the simulator's load/unload endpoints are on with --enable-lora

    def resources(self, spec: ModelDeploymentSpec) -> dict[str, Any]:
        resources = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
        gpu = super().resources(spec)  # only when spec.accelerator is set
        for key in ("requests", "limits"):
            resources[key].update(gpu.get(key, {}))
        return resources

    def shm_size(self, gpus: int) -> str | None:
        return None

    def probes(self) -> dict[str, Any]:
        probes = super().probes()
        probes["readinessProbe"].update(periodSeconds=2, timeoutSeconds=2)
        probes["livenessProbe"].update(periodSeconds=10, timeoutSeconds=5, failureThreshold=3)
        probes["startupProbe"]["timeoutSeconds"] = 2
        return probes

    def container_security_context(self) -> dict[str, Any]:
        return {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }

    def pod_security_context(self) -> dict[str, Any]:
        return {
            "runAsNonRoot": True,
            "runAsUser": NONROOT_UID,
            "runAsGroup": NONROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
