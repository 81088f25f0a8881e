"""What every engine module provides, and the pod-spec logic they share.

An :class:`Engine` turns a validated ModelDeployment spec into the pod template of
its model servers: image, command and args, how the model gets into the
container (volumes, env), GPU resources, probes and ``/dev/shm``. Subclasses
fill in the engine-specific parts (flag names, image, metrics); the Deployment
and Service around the pod are built by :mod:`llmfleet.render`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from llmfleet.api import support
from llmfleet.api.uri import parse_model_uri

if TYPE_CHECKING:
    from llmfleet.api.models import ModelDeploymentSpec

PORT = 8000
PORT_NAME = "http"
CONTAINER_NAME = "model-server"
MODELS_DIR = "/models"
CACHE_DIR = "/cache"
ADAPTERS_DIR = "/adapters"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class MetricNames:
    """Prometheus series an engine exposes for each load signal llmfleet uses.

    Gauges: ``queue_depth``, ``running_requests``, ``kv_cache_utilization`` (0..1) and
    ``generation_throughput`` (tokens/s, for engines whose token counter lags).
    Counters (full sample names, with ``_total``): generated tokens, finished requests,
    prompt tokens. ``ttft_seconds_histogram`` is a histogram's base name.
    ``kv_cache_utilization_fallbacks`` are older names tried when the first is absent.
    :mod:`llmfleet.signals` reads them.
    """

    queue_depth: str
    running_requests: str
    kv_cache_utilization: str
    generation_tokens_total: str | None = None
    generation_throughput: str | None = None
    ttft_seconds_histogram: str | None = None
    kv_cache_utilization_fallbacks: tuple[str, ...] = ()
    finished_requests_total: str | None = None
    prompt_tokens_total: str | None = None
    # The end-to-end request latency histogram's base name. For an engine without queue
    # and running gauges (Triton's vLLM backend), the rates of its sum and of the TTFT
    # histogram's sum are the mean number of requests in the engine and awaiting their
    # first token (Little's law): llmfleet.signals.load derives the load from them.
    request_latency_seconds_histogram: str | None = None


@dataclass
class ModelMount:
    """How the model reaches the container: the path or id given to the engine and what it needs."""

    model_arg: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)


class Engine(ABC):
    """One model server engine. Subclasses are stateless singletons (see ``get_engine``)."""

    kind: ClassVar[str]
    metrics_path: ClassVar[str] = "/metrics"
    health_path: ClassVar[str] = "/health"
    metric_names: ClassVar[MetricNames]
    # Real engines load weights for minutes: allow 30 minutes before the first
    # successful health check, then restart a replica that stays unhealthy for 2.
    startup_period_seconds: ClassVar[int] = 10
    startup_failure_threshold: ClassVar[int] = 180
    # Removing a replica: Kubernetes sends SIGTERM at the moment it marks the pod
    # terminating, while our routes (Envoy EDS) still take a moment to drop it. The
    # preStop sleep keeps the engine serving until they have; then SIGTERM starts the
    # engine's own drain, and the grace period (counted from the deletion, preStop
    # included) bounds the whole: it must cover the sleep plus a long generation.
    pre_stop_sleep_seconds: ClassVar[int] = 5
    termination_grace_period_seconds: ClassVar[int] = 120

    @property
    def shutdown_timeout_seconds(self) -> int:
        """How long the engine may drain after SIGTERM: the grace period less the
        preStop sleep and 5 s for the process to exit before SIGKILL."""
        return max(0, self.termination_grace_period_seconds - self.pre_stop_sleep_seconds - 5)

    # ------------------------------------------------------------------ engine-specific

    @property
    @abstractmethod
    def default_image(self) -> str:
        """The pinned image used when spec.engine.image is empty."""

    @abstractmethod
    def command(self) -> list[str]:
        """The container command (entrypoint), without arguments."""

    @abstractmethod
    def args(self, spec: ModelDeploymentSpec, served_name: str, mount: ModelMount) -> list[str]:
        """Our arguments, before spec.engine.extraArgs."""

    def object_storage_args(self) -> list[str]:
        """Extra arguments for s3:// and gs:// models; engines that cannot stream refuse them in support."""
        return []

    # ------------------------------------------------------------------ shared logic

    @property
    def allowed_quantizations(self) -> tuple[str, ...]:
        return support.allowed_quantizations(self.kind)

    def quantization_flag(self, quantization: str) -> str | None:
        """Value for the engine's quantization flag, or None when no flag is passed."""
        return support.quantization_flag(self.kind, quantization)

    def image(self, spec: ModelDeploymentSpec) -> str:
        return spec.engine.image or self.default_image

    def model_mount(self, spec: ModelDeploymentSpec) -> ModelMount:
        """Volumes, env and the model argument for spec.model.uri."""
        uri = parse_model_uri(spec.model.uri)
        if uri.scheme == "hf":
            return ModelMount(
                model_arg=uri.hf_repo,
                volumes=[{"name": "model-cache", "emptyDir": {}}],
                volume_mounts=[{"name": "model-cache", "mountPath": CACHE_DIR}],
                env=[{"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"}],
            )
        if uri.scheme == "pvc":
            mount_path = f"{MODELS_DIR}/{uri.pvc_claim}"
            return ModelMount(
                model_arg=f"{mount_path}/{uri.pvc_path}" if uri.pvc_path else mount_path,
                volumes=[
                    {
                        "name": "model",
                        "persistentVolumeClaim": {"claimName": uri.pvc_claim, "readOnly": True},
                    }
                ],
                volume_mounts=[{"name": "model", "mountPath": mount_path, "readOnly": True}],
            )
        if uri.scheme == "oci":
            mount_path = f"{MODELS_DIR}/image"
            return ModelMount(
                model_arg=mount_path,
                volumes=[
                    {
                        "name": "model",
                        "image": {"reference": uri.oci_reference, "pullPolicy": "IfNotPresent"},
                    }
                ],
                volume_mounts=[{"name": "model", "mountPath": mount_path, "readOnly": True}],
            )
        # s3:// and gs://: the engine streams the weights itself.
        return ModelMount(model_arg=uri.uri, args=self.object_storage_args())

    def adapter_mount(self, spec: ModelDeploymentSpec) -> ModelMount:
        """Volumes for the adapters that come from PersistentVolumeClaims: each claim read-only
        at /adapters/CLAIM. The adapter list itself is not in the pod template: adapters are
        loaded into running replicas (see llmfleet.controller.adapters), so adding one from
        Hugging Face or from a claim already mounted restarts nothing."""
        claims = sorted({parse_model_uri(a.uri).pvc_claim for a in spec.adapters
                         if parse_model_uri(a.uri).scheme == "pvc"})
        return ModelMount(
            model_arg="",
            volumes=[{"name": f"adapters-{claim}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
                     for claim in claims],
            volume_mounts=[{"name": f"adapters-{claim}", "mountPath": f"{ADAPTERS_DIR}/{claim}", "readOnly": True}
                           for claim in claims],
        )

    def lora_env(self, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
        """Variables that let the engine load adapters at runtime (engines that serve LoRA)."""
        return []

    def env(self, spec: ModelDeploymentSpec, mount: ModelMount) -> list[dict[str, Any]]:
        """Our variables, then spec.engine.env; a user variable replaces ours of the same name."""
        merged: dict[str, dict[str, Any]] = {e["name"]: e for e in [*mount.env, *self.lora_env(spec)]}
        for var in spec.engine.env:
            merged[var.name] = var.model_dump(mode="json", by_alias=True, exclude_none=True)
        return list(merged.values())

    def resources(self, spec: ModelDeploymentSpec) -> dict[str, Any]:
        accelerator = spec.effective_accelerator
        if accelerator is None:
            return {}
        gpus = str(spec.parallelism.gpus)
        # Extended resources cannot be overcommitted: requests must equal limits.
        return {"limits": {accelerator.resource: gpus}, "requests": {accelerator.resource: gpus}}

    def shm_size(self, gpus: int) -> str | None:
        """Size of the memory-backed /dev/shm; NCCL and the engines' workers use it."""
        return f"{4 * max(gpus, 1)}Gi"

    def probes(self) -> dict[str, Any]:
        def http_get() -> dict[str, Any]:
            return {"path": self.health_path, "port": PORT_NAME}

        return {
            "startupProbe": {
                "httpGet": http_get(),
                "periodSeconds": self.startup_period_seconds,
                "timeoutSeconds": 5,
                "failureThreshold": self.startup_failure_threshold,
            },
            "readinessProbe": {
                "httpGet": http_get(),
                "periodSeconds": 5,
                "timeoutSeconds": 5,
                "failureThreshold": 3,
            },
            # Lenient: a restart costs a full model load, so only a replica that stays
            # unresponsive for two minutes is restarted.
            "livenessProbe": {
                "httpGet": http_get(),
                "periodSeconds": 15,
                "timeoutSeconds": 10,
                "failureThreshold": 8,
            },
        }

    def container_security_context(self) -> dict[str, Any]:
        # The vLLM, SGLang and TensorRT-LLM images run as root and write their caches
        # under /root; keep them from gaining more than that.
        return {"allowPrivilegeEscalation": False}

    def pod_security_context(self) -> dict[str, Any]:
        return {"seccompProfile": {"type": "RuntimeDefault"}}

    def container(self, spec: ModelDeploymentSpec, name: str) -> dict[str, Any]:
        """The model server container of a ModelDeployment named ``name``."""
        mount = self.model_mount(spec)
        served_name = spec.served_name_for(name)
        container: dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": self.image(spec),
            "command": self.command(),
            "args": self.args(spec, served_name, mount) + list(spec.engine.extra_args),
            "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        }
        env = self.env(spec, mount)
        if env:
            container["env"] = env
        if spec.model.credentials_secret:
            container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
        resources = self.resources(spec)
        if resources:
            container["resources"] = resources
        mounts = list(mount.volume_mounts) + self.adapter_mount(spec).volume_mounts
        if self.shm_size(spec.gpus_per_replica):
            mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        if mounts:
            container["volumeMounts"] = mounts
        container.update(self.probes())
        if self.pre_stop_sleep_seconds:
            # The kubelet's own sleep action (GA in Kubernetes 1.34): nothing needed in the image.
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": self.pre_stop_sleep_seconds}}}
        container["securityContext"] = self.container_security_context()
        return container

    def volumes(self, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
        volumes = list(self.model_mount(spec).volumes) + self.adapter_mount(spec).volumes
        shm = self.shm_size(spec.gpus_per_replica)
        if shm:
            volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        return volumes

    def pod_spec(self, spec: ModelDeploymentSpec, name: str) -> dict[str, Any]:
        """The pod template spec of a ModelDeployment named ``name``."""
        pod: dict[str, Any] = {
            "containers": [self.container(spec, name)],
            # Service env vars are noise here and can clash with engine settings
            # (a Service named "vllm" would set VLLM_PORT, which vLLM reads).
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": self.termination_grace_period_seconds,
            "securityContext": self.pod_security_context(),
        }
        accelerator = spec.effective_accelerator
        if accelerator is not None:
            if accelerator.product:
                pod["nodeSelector"] = {GPU_PRODUCT_LABEL: accelerator.product}
            pod["tolerations"] = [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
        volumes = self.volumes(spec)
        if volumes:
            pod["volumes"] = volumes
        return pod

    @property
    def startup_budget_seconds(self) -> int:
        """How long a replica may take to become healthy before it is restarted."""
        return self.startup_period_seconds * self.startup_failure_threshold


def parallel_args(tensor_flag: str, pipeline_flag: str, spec: ModelDeploymentSpec) -> list[str]:
    """Tensor and pipeline parallel sizes under the engine's flag names."""
    return [tensor_flag, str(spec.parallelism.tensor), pipeline_flag, str(spec.parallelism.pipeline)]


def adapter_path(uri: str) -> str:
    """What the engine loads an adapter from: the Hugging Face repo id, or its path under
    the claim's mount (see Engine.adapter_mount)."""
    parsed = parse_model_uri(uri)
    if parsed.scheme == "pvc":
        return "/".join(p for p in (ADAPTERS_DIR, parsed.pvc_claim, parsed.pvc_path) if p)
    return parsed.hf_repo
