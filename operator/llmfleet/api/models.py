"""Pydantic models of the llmfleet custom resources (API group ``llmfleet.io``, ``v1alpha1``).

These models are the one source of truth for the schema: ``llmfleet.api.crd``
generates the CRD YAML in ``crds/`` from them, field descriptions become
``kubectl explain`` output, and the CEL rules declared here are both emitted into
the CRD and enforced by the models' validators with the same messages.

Specs forbid unknown fields (a typo is an error, not a silently ignored field);
statuses ignore them, so an older operator can read a newer status.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from llmfleet.api.cel import RULE_ERROR_TYPE, CelRule, cel_list, cel_string, rule_error, x_validations
from llmfleet.api.uri import URI_FORMS, URI_PATTERNS, is_valid_model_uri, parse_model_uri, uri_refusal

from . import support

GROUP = "llmfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MODEL_DEPLOYMENT_KIND = "ModelDeployment"
MODEL_DEPLOYMENT_PLURAL = "modeldeployments"
ROUTE_POLICY_KIND = "RoutePolicy"
ROUTE_POLICY_PLURAL = "routepolicies"
TENANT_KIND = "Tenant"
TENANT_PLURAL = "tenants"
# The label the operator selects API-key Secrets by: it watches only Secrets that carry it.
API_KEYS_LABEL = "llmfleet.io/api-keys"
ALL_MODELS = "*"  # in a Tenant's models: every public model name

# Names a ModelDeployment lends to its Service: a DNS-1035 label.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
EXTENDED_RESOURCE_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_VAR_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
NO_WHITESPACE = r"^\S+$"

MAX_BACKENDS = 16
MAX_FALLBACKS = 4
MAX_CONDITIONS = 16


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --------------------------------------------------------------------------- enums


class EngineKind(StrEnum):
    """The model server that runs the model."""

    VLLM = support.VLLM
    TENSORRT_LLM = support.TENSORRT_LLM
    SGLANG = support.SGLANG
    TRITON = support.TRITON
    SIM = support.SIM


# Members come from engines.support (one home for what engines accept); mypy cannot see
# members of an enum built from a mapping, so code names them by value: Quantization("none").
Quantization = StrEnum("Quantization", {q.upper().replace("-", "_"): q for q in support.QUANTIZATIONS})  # type: ignore[misc]
Quantization.__doc__ = "How the weights are quantized."

DType = StrEnum("DType", {d.upper(): d for d in support.DTYPES})  # type: ignore[misc]
DType.__doc__ = "Data type of weights and activations."


class AutoscalingMetric(StrEnum):
    """The load signal the autoscaler holds at its per-replica target."""

    QUEUE_DEPTH = "queueDepth"
    RUNNING_REQUESTS = "runningRequests"
    KV_CACHE_UTILIZATION = "kvCacheUtilization"
    TOKENS_PER_SECOND = "tokensPerSecond"


# Targets that make sense for any model; the other metrics depend too much on the
# model and hardware to guess, so they need an explicit target.
DEFAULT_TARGETS: dict[AutoscalingMetric, float] = {
    AutoscalingMetric.QUEUE_DEPTH: 4.0,
    AutoscalingMetric.KV_CACHE_UTILIZATION: 0.8,
}


class RouteStrategy(StrEnum):
    """How a RoutePolicy splits traffic across its backends."""

    WEIGHTED = "weighted"
    FAILOVER = "failover"
    COST = "cost"
    LATENCY = "latency"
    CASCADE = "cascade"


class RetryOn(StrEnum):
    """A condition on which Envoy retries a request on another replica."""

    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"
    REFUSED_STREAM = "refused-stream"
    GATEWAY_ERROR = "gateway-error"
    SERVER_ERROR = "5xx"
    TOO_MANY_REQUESTS = "429"
    INTERNAL_SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    SERVICE_UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# --------------------------------------------------------------------------- rules
# Each rule's CEL text and its pydantic counterpart live side by side; the unit
# tests evaluate the CEL with a CEL interpreter and compare verdicts and messages.

MODEL_URI_RULE = CelRule(
    rule=" || ".join(f"self.matches({cel_string(p)})" for p in URI_PATTERNS.values()),
    message=f"not a supported model URI; use {URI_FORMS}",
    message_expression=f"{cel_string(chr(34))} + self + {cel_string(uri_refusal('')[1:])}",
)


def _engine_choice_rules(
    field: str, allowed_for: Callable[[str], tuple[str, ...]], vocabulary: tuple[str, ...]
) -> list[CelRule]:
    """One rule per engine kind that accepts only part of ``vocabulary`` for ``field``."""
    rules = []
    for kind in support.ENGINE_KINDS:
        allowed = allowed_for(kind)
        if set(allowed) >= set(vocabulary):
            continue
        message = support.CHOICE_REFUSAL.format(value="{value}", kind=kind, allowed=", ".join(allowed))
        before, after = message.split("{value}")
        rules.append(
            CelRule(
                rule=f"!has(self.{field}) || self.kind != {cel_string(kind)} || self.{field} in {cel_list(allowed)}",
                message=f"{field}{after.removeprefix(chr(34))}",
                message_expression=f"{cel_string(before)} + self.{field} + {cel_string(after)}",
                field_path=f".{field}",
            )
        )
    return rules


QUANTIZATION_RULES = _engine_choice_rules("quantization", support.allowed_quantizations, support.QUANTIZATIONS)
DTYPE_RULES = _engine_choice_rules("dtype", support.allowed_dtypes, support.DTYPES)


def _uri_scheme_rules() -> list[CelRule]:
    rules = []
    for kind in support.ENGINE_KINDS:
        schemes = support.allowed_uri_schemes(kind)
        if set(schemes) >= set(support.MODEL_URI_SCHEMES):
            continue
        accepted = " || ".join(f"self.model.uri.startsWith({cel_string(s + '://')})" for s in schemes)
        rules.append(
            CelRule(
                rule=f"self.engine.kind != {cel_string(kind)} || {accepted}",
                message=support.uri_scheme_refusal(kind),
                field_path=".model.uri",
            )
        )
    return rules


URI_SCHEME_RULES = _uri_scheme_rules()

# Triton serves a model under its model repository directory's name, and the operator
# names that directory after the served name: it must be one path segment.
TRITON_MODEL_NAME = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$"
TRITON_SERVED_NAME_MESSAGE = (
    'engine "triton" serves the model under its model repository directory, named after servedName: '
    'use letters, digits, "-", "_" and ".", starting with a letter or digit'
)
TRITON_SERVED_NAME_RULE = CelRule(
    rule=f"self.engine.kind != {cel_string(support.TRITON)} || !has(self.model.servedName) || "
    f"self.model.servedName.matches({cel_string(TRITON_MODEL_NAME)})",
    message=TRITON_SERVED_NAME_MESSAGE,
    field_path=".model.servedName",
)


# Static messages: the API server estimates string(int) in a messageExpression as
# unbounded and refuses the CRD, so these cannot quote the numbers.
PARALLELISM_MESSAGE = (
    f"tensor x pipeline must be at most {support.MAX_GPUS_PER_REPLICA}: a replica runs on one node "
    "and multi-node replicas are not supported yet"
)
PARALLELISM_RULE = CelRule(
    rule=f"self.tensor * self.pipeline <= {support.MAX_GPUS_PER_REPLICA}",
    message=PARALLELISM_MESSAGE,
)

MAX_REPLICAS_MESSAGE = "maxReplicas must be at least minReplicas"
MAX_REPLICAS_RULE = CelRule(
    rule="self.maxReplicas >= self.minReplicas",
    message=MAX_REPLICAS_MESSAGE,
    field_path=".maxReplicas",
)

TARGET_REQUIRED_MESSAGE = "target is required when metric is runningRequests or tokensPerSecond"
TARGET_REQUIRED_RULE = CelRule(
    rule="has(self.target) || self.metric in "
    + cel_list(m.value for m in DEFAULT_TARGETS),
    message=TARGET_REQUIRED_MESSAGE,
    field_path=".target",
    reason="FieldValueRequired",
)

KV_TARGET_MESSAGE = "target for kvCacheUtilization is a fraction of the KV cache and must be at most 1"
KV_TARGET_RULE = CelRule(
    rule="self.metric != 'kvCacheUtilization' || !has(self.target) || self.target <= 1.0",
    message=KV_TARGET_MESSAGE,
    field_path=".target",
)

SLO_METRIC_MESSAGE = "slo sizes the requests in flight per replica: it needs metric runningRequests"
SLO_METRIC_RULE = CelRule(
    rule="!has(self.slo) || self.metric == 'runningRequests'",
    message=SLO_METRIC_MESSAGE,
    field_path=".slo",
)

BACKENDS_REQUIRED_MESSAGE = "at least one backend is required"
BACKENDS_REQUIRED_RULE = CelRule(
    rule="size(self) > 0", message=BACKENDS_REQUIRED_MESSAGE, reason="FieldValueRequired"
)
BACKENDS_UNIQUE_MESSAGE = "each modelDeployment (or modelDeployment and adapter) may appear only once in a backend list"
BACKENDS_UNIQUE_RULE = CelRule(
    rule="self.all(b, self.exists_one(c, c.modelDeployment == b.modelDeployment"
    " && (has(c.adapter) ? c.adapter : '') == (has(b.adapter) ? b.adapter : '')))",
    message=BACKENDS_UNIQUE_MESSAGE,
    # Not reason FieldValueDuplicate: the API server then prints "Duplicate value" without the message.
)

ENV_VALUE_MESSAGE = "set either value or valueFrom, not both"
ENV_VALUE_RULE = CelRule(rule="!(has(self.value) && has(self.valueFrom))", message=ENV_VALUE_MESSAGE)
ENV_SOURCE_MESSAGE = "valueFrom needs exactly one of secretKeyRef or configMapKeyRef"
ENV_SOURCE_RULE = CelRule(
    rule="(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) == 1",
    message=ENV_SOURCE_MESSAGE,
)

NAME_MESSAGE = (
    "must be a DNS-1035 label of at most 63 characters: lowercase letters, digits and '-', "
    "starting with a letter and ending with a letter or digit (it also names the Service)"
)
# Sits on the CRD's root; the schema bounds metadata.name to 63 characters.
NAME_RULE = CelRule(
    rule=f"self.metadata.name.matches({cel_string(DNS1035_LABEL)})",
    message=NAME_MESSAGE,
    field_path=".metadata.name",
)


# --------------------------------------------------------------------------- ModelDeployment spec


class ModelSource(_Spec):
    """Which weights to serve and the name clients ask for."""

    uri: str = Field(
        max_length=512,
        description=(
            "Where the weights come from. hf://ORG/NAME downloads from Hugging Face at start-up; "
            "s3://BUCKET/PATH and gs://BUCKET/PATH stream from object storage (vllm and sglang, "
            "with the Run:ai Model Streamer); pvc://CLAIM/PATH mounts that PersistentVolumeClaim "
            "read-only at /models/CLAIM; oci://REFERENCE mounts that image read-only as an image "
            "volume (Kubernetes 1.35+), with the model at the image root."
        ),
        json_schema_extra=x_validations(MODEL_URI_RULE),
    )
    served_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=NO_WHITESPACE,
        description="Model name the engine answers to in OpenAI requests. Defaults to metadata.name.",
    )
    credentials_secret: str | None = Field(
        None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "Name of a Secret in the same namespace whose keys become environment variables of the "
            "model server (envFrom), e.g. HF_TOKEN for gated Hugging Face models or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://. Values are never copied or logged."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        if not is_valid_model_uri(uri):
            raise rule_error(uri_refusal(uri))
        return uri


class KeySelector(_Spec):
    """A key of a Secret or ConfigMap in the same namespace."""

    name: str = Field(max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the object.")
    key: str = Field(min_length=1, max_length=253, description="The key to select.")
    optional: bool | None = Field(None, description="Whether the object or its key may be missing.")


class EnvVarSource(_Spec):
    """Where an environment variable's value comes from."""

    model_config = ConfigDict(json_schema_extra=x_validations(ENV_SOURCE_RULE))

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise rule_error(ENV_SOURCE_MESSAGE)
        return self


class EnvVar(_Spec):
    """An environment variable of the model server container."""

    model_config = ConfigDict(json_schema_extra=x_validations(ENV_VALUE_RULE))

    name: str = Field(min_length=1, max_length=256, pattern=ENV_VAR_NAME, description="Variable name.")
    value: str | None = Field(None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(None, description="Take the value from a Secret or ConfigMap key.")

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise rule_error(ENV_VALUE_MESSAGE)
        return self


class EngineSpec(_Spec):
    """The model server: which engine, which image, and how it loads the model."""

    model_config = ConfigDict(json_schema_extra=x_validations(*QUANTIZATION_RULES, *DTYPE_RULES))

    kind: EngineKind = Field(
        description=(
            "Engine: vllm, tensorrt-llm (trtllm-serve), sglang, triton (Triton Inference Server's "
            "OpenAI-compatible frontend with its vLLM backend; the operator writes the model repository), "
            "or sim (llmfleet's simulated engine, which needs no GPU and loads no weights)."
        )
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description=(
            "Container image. Defaults to a pinned release of the engine's official image "
            "(for sim, the llmfleet image of the operator's version)."
        ),
    )
    quantization: Quantization = Field(
        Quantization("none"),
        description=(
            "How the weights are quantized; which values an engine accepts is checked on admission. "
            "vllm and sglang quantize a 16-bit checkpoint while loading for fp8 and bitsandbytes "
            "(sglang also for int8); for checkpoints that are already quantized (awq, gptq, "
            "compressed-tensors, nvfp4, mxfp4, gguf) they read the method from the checkpoint, so "
            "no flag is passed. tensorrt-llm serves checkpoints quantized offline with NVIDIA Model "
            "Optimizer and detects the recipe."
        ),
    )
    dtype: DType = Field(
        DType("auto"),
        description=(
            "Data type of weights and activations; auto follows the checkpoint. tensorrt-llm accepts only auto."
        ),
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        le=16_777_216,
        description="Maximum context length in tokens (prompt plus output). Defaults to the model's own.",
    )
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra engine command-line arguments, passed verbatim after the ones llmfleet sets.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables; one with the same name as llmfleet's replaces it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("quantization")
    @classmethod
    def _check_quantization(cls, q: Quantization, info: ValidationInfo) -> Quantization:
        kind = info.data.get("kind")
        if kind is not None and q.value not in support.allowed_quantizations(kind.value):
            raise rule_error(support.quantization_refusal(kind.value, q.value))
        return q

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, d: DType, info: ValidationInfo) -> DType:
        kind = info.data.get("kind")
        if kind is not None and d.value not in support.allowed_dtypes(kind.value):
            raise rule_error(support.dtype_refusal(kind.value, d.value))
        return d

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in env:
            if var.name in seen:
                raise ValueError(f'duplicate environment variable "{var.name}"')
            seen.add(var.name)
        return env


class Parallelism(_Spec):
    """How one replica's model is split across GPUs; GPUs per replica = tensor x pipeline."""

    model_config = ConfigDict(json_schema_extra=x_validations(PARALLELISM_RULE))

    tensor: int = Field(1, ge=1, le=support.MAX_GPUS_PER_REPLICA, description="Tensor-parallel size.")
    pipeline: int = Field(1, ge=1, le=support.MAX_GPUS_PER_REPLICA, description="Pipeline-parallel size.")

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline

    @model_validator(mode="after")
    def _fits_one_node(self) -> Parallelism:
        if self.gpus > support.MAX_GPUS_PER_REPLICA:
            raise rule_error(PARALLELISM_MESSAGE)
        return self


class Accelerator(_Spec):
    """The GPUs a replica runs on."""

    resource: str = Field(
        "nvidia.com/gpu",
        max_length=253,
        pattern=EXTENDED_RESOURCE_NAME,
        description="Extended resource requested per GPU (tensor x pipeline of them per replica).",
    )
    product: str | None = Field(
        None,
        max_length=63,
        pattern=LABEL_VALUE,
        description=(
            "GPU model, e.g. NVIDIA-H100-80GB-HBM3; replicas are placed on nodes whose "
            "nvidia.com/gpu.product label has this value."
        ),
    )


class ScaleToZero(_Spec):
    """Scaling to zero replicas when no requests arrive."""

    idle_seconds: int = Field(
        0,
        ge=0,
        le=604_800,
        description="Scale to zero after this many seconds without requests; 0 never scales to zero.",
    )


class AutoscalingSlo(_Spec):
    """The latency objective the autoscaler holds."""

    ttft_p95_milliseconds: int = Field(
        ge=1, le=600_000, description="95th percentile time to first token, as the engine measures it."
    )


class Autoscaling(_Spec):
    """Load-based autoscaling. Without it, replicas stay as set (by you, an HPA or KEDA)."""

    model_config = ConfigDict(json_schema_extra=x_validations(MAX_REPLICAS_RULE, TARGET_REQUIRED_RULE, KV_TARGET_RULE,
                                                              SLO_METRIC_RULE))

    min_replicas: int = Field(1, ge=1, le=1000, description="Fewest replicas while there is traffic.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas, whatever the load.")
    metric: AutoscalingMetric = Field(
        AutoscalingMetric.QUEUE_DEPTH,
        description=(
            "Load signal held at the target, per replica: queueDepth (requests waiting), "
            "runningRequests (requests in flight: in the running batch or waiting for a slot), "
            "kvCacheUtilization (0 to 1) or tokensPerSecond (generated tokens)."
        ),
    )
    target: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        validate_default=True,
        description=(
            "Per-replica value of the metric to hold. Defaults to 4 for queueDepth and 0.8 for "
            "kvCacheUtilization; required for runningRequests and tokensPerSecond."
        ),
    )
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale up on the lowest recommendation of this window."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down on the highest recommendation of this window."
    )
    scale_to_zero: ScaleToZero = Field(
        default_factory=ScaleToZero,
        description="Scaling to zero when idle.",
        json_schema_extra={"default": {}},
    )
    headroom_percent: int = Field(
        0,
        ge=0,
        le=400,
        description=(
            "Spare capacity kept for the next rise, in percent of the load: replicas are sized so the metric "
            "sits at target / (1 + headroom). It costs that much more capacity all the time and buys the SLO "
            "on rises faster than a new replica starts (see the README for what each amount buys)."
        ),
    )
    slo: AutoscalingSlo | None = Field(
        None,
        description=(
            "SLO-driven sizing (metric runningRequests): target is the starting point, then the scaler learns "
            "the requests in flight per replica that meet the objective: the batch the engine runs full without "
            "queueing (less the tolerance band), and less when the objective is missed with nothing waiting."
        ),
    )
    spare_replicas: int = Field(
        0,
        ge=0,
        le=1000,
        description=(
            "Ready replicas kept beyond what the load (and headroomPercent) asks for, within maxReplicas (near it, "
            "the replicas the load needs come first and the spare is what is left over): "
            "capacity for a step or a ramp that outgrows the fleet faster than a model loads, even at low load. "
            "Let go while the load falls by a replica's worth or more per trend window, once it is under the "
            "band of the replicas serving without it; asked for again once the fall ends. Replaced at once when a "
            "rise reaches it (two samples in a row over what the serving replicas hold)."
        ),
    )

    @field_validator("max_replicas")
    @classmethod
    def _max_at_least_min(cls, max_replicas: int, info: ValidationInfo) -> int:
        min_replicas = info.data.get("min_replicas")
        if min_replicas is not None and max_replicas < min_replicas:
            raise rule_error(MAX_REPLICAS_MESSAGE)
        return max_replicas

    @field_validator("target")
    @classmethod
    def _check_target(cls, target: float | None, info: ValidationInfo) -> float | None:
        metric = info.data.get("metric")
        if metric is None:
            return target
        if target is None and metric not in DEFAULT_TARGETS:
            raise rule_error(TARGET_REQUIRED_MESSAGE)
        if target is not None and metric == AutoscalingMetric.KV_CACHE_UTILIZATION and target > 1:
            raise rule_error(KV_TARGET_MESSAGE)
        return target

    @model_validator(mode="after")
    def _slo_needs_running_requests(self) -> Autoscaling:
        if self.slo is not None and self.metric is not AutoscalingMetric.RUNNING_REQUESTS:
            raise rule_error(SLO_METRIC_MESSAGE, "slo")
        return self

    @property
    def effective_target(self) -> float:
        """The target, or the metric's default when none is set."""
        return self.target if self.target is not None else DEFAULT_TARGETS[self.metric]


class Cost(_Spec):
    """What a replica costs, for cost-aware routing and usage accounting."""

    per_replica_hour: float = Field(
        ge=0, le=1_000_000, description="Cost of one replica for one hour, in your currency."
    )
    per_million_output_tokens: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description=(
            "Price of a million generated (completion) tokens, as usage accounting charges them and cost routing "
            "ranks the backend. Default: perReplicaHour over the tokens per second one replica serves at its "
            "autoscaling target (status.load.capacityTokensPerSecond, learned from the load)."
        ),
    )
    per_million_input_tokens: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Price of a million prompt tokens, as usage accounting charges them. Default: 0 (prefill is "
        "counted in the price of the generated tokens).",
    )


ADAPTER_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ADAPTER_URI_PATTERNS = tuple(URI_PATTERNS[s] for s in support.ADAPTER_URI_SCHEMES)
ADAPTER_URI_MESSAGE = "an adapter comes from hf://ORG/NAME or pvc://CLAIM/PATH"
ADAPTER_URI_RULE = CelRule(
    rule=" || ".join(f"self.matches({cel_string(p)})" for p in ADAPTER_URI_PATTERNS),
    message=ADAPTER_URI_MESSAGE,
)
ADAPTERS_UNIQUE_MESSAGE = "adapter names must be unique"
ADAPTERS_UNIQUE_RULE = CelRule(
    rule="self.all(a, self.exists_one(b, b.name == a.name))", message=ADAPTERS_UNIQUE_MESSAGE)
KV_METRIC_ENGINE_RULE = CelRule(
    rule=f"!has(self.autoscaling) || self.autoscaling.metric != 'kvCacheUtilization' "
    f"|| !(self.engine.kind in {cel_list(support.NO_KV_CACHE_ENGINE_KINDS)})",
    message=support.kv_metric_refusal(),
    field_path=".autoscaling.metric",
)
LORA_ENGINE_RULE = CelRule(
    rule=f"((!has(self.adapters) || size(self.adapters) == 0) && !has(self.lora)) "
    f"|| self.engine.kind in {cel_list(support.LORA_ENGINE_KINDS)}",
    message=support.lora_refusal(),
    field_path=".adapters",
)


class Adapter(_Spec):
    """A LoRA adapter served on top of the base model, under its own model name."""

    name: str = Field(
        max_length=63,
        pattern=ADAPTER_NAME,
        description=(
            "Model name the engine serves the adapter under; a RoutePolicy backend names it in "
            "`adapter` to make it a public model."
        ),
    )
    uri: str = Field(
        max_length=512,
        description=(
            "Where the adapter comes from: hf://ORG/NAME (the engine downloads it) or pvc://CLAIM/PATH "
            "(the claim is mounted read-only at /adapters/CLAIM)."
        ),
        json_schema_extra=x_validations(ADAPTER_URI_RULE),
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        if not any(re.fullmatch(p, uri) for p in ADAPTER_URI_PATTERNS):
            raise rule_error(ADAPTER_URI_MESSAGE)
        return uri


def _check_adapters(adapters: list[Adapter]) -> list[Adapter]:
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise rule_error(ADAPTERS_UNIQUE_MESSAGE)
    return adapters


class Lora(_Spec):
    """How the engine holds LoRA adapters. Set it (or at least one adapter) when the
    ModelDeployment is created: turning LoRA on later restarts the replicas, while adapters
    are added and removed on running replicas."""

    max_rank: int = Field(
        16,
        description="Largest adapter rank the engine accepts (vLLM --max-lora-rank).",
        json_schema_extra={"enum": list(support.LORA_RANKS)},
    )
    max_loaded: int = Field(
        4, ge=1, le=64, description="Adapters one batch can use at once on the GPU (vLLM --max-loras)."
    )

    @field_validator("max_rank")
    @classmethod
    def _check_rank(cls, rank: int) -> int:
        if rank not in support.LORA_RANKS:
            raise rule_error(f"maxRank must be one of {', '.join(map(str, support.LORA_RANKS))}")
        return rank


class ModelDeploymentSpec(_Spec):
    """One model served by one engine, as a set of identical replicas."""

    model_config = ConfigDict(json_schema_extra=x_validations(*URI_SCHEME_RULES, LORA_ENGINE_RULE,
                                                              TRITON_SERVED_NAME_RULE, KV_METRIC_ENGINE_RULE))

    model: ModelSource = Field(description="The model to serve.")
    engine: EngineSpec = Field(description="The model server.")
    parallelism: Parallelism = Field(
        default_factory=Parallelism,
        description="Tensor and pipeline parallelism of one replica.",
        # Spelled out: the API server checks a default against the object's CEL rules
        # without filling in the nested defaults first.
        json_schema_extra={"default": {"tensor": 1, "pipeline": 1}},
    )
    accelerator: Accelerator | None = Field(
        None,
        description=(
            "GPUs per replica. vllm, sglang, tensorrt-llm and triton request nvidia.com/gpu when this is "
            "omitted; sim requests no GPU unless this is set."
        ),
    )
    replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description=(
            "Number of replicas. The scale subresource points here (kubectl scale, HPA, KEDA); "
            "with autoscaling set, llmfleet's autoscaler writes it."
        ),
    )
    autoscaling: Autoscaling | None = Field(None, description="Load-based autoscaling.")
    cost: Cost | None = Field(None, description="Cost of a replica, used by cost-aware routing and reports.")
    adapters: Annotated[list[Adapter], AfterValidator(_check_adapters)] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "LoRA adapters served on top of the model, each under its own model name. The operator loads "
            "them into every ready replica and routes an adapter only to replicas that have it; adding or "
            "removing one does not restart the replicas."
        ),
        json_schema_extra=x_validations(ADAPTERS_UNIQUE_RULE),
    )
    lora: Lora | None = Field(
        None, description="LoRA settings of the engine; defaults apply when adapters are listed without it."
    )

    @model_validator(mode="after")
    def _engine_serves_adapters(self) -> ModelDeploymentSpec:
        if (self.adapters or self.lora is not None) and self.engine.kind.value not in support.LORA_ENGINE_KINDS:
            raise rule_error(support.lora_refusal(), field="adapters")
        return self

    @model_validator(mode="after")
    def _engine_reports_kv_cache(self) -> ModelDeploymentSpec:
        if (self.autoscaling is not None and self.autoscaling.metric is AutoscalingMetric.KV_CACHE_UTILIZATION
                and self.engine.kind.value in support.NO_KV_CACHE_ENGINE_KINDS):
            raise rule_error(support.kv_metric_refusal(), field="autoscaling.metric")
        return self

    @property
    def lora_enabled(self) -> bool:
        return bool(self.adapters) or self.lora is not None

    @model_validator(mode="after")
    def _engine_loads_uri(self) -> ModelDeploymentSpec:
        kind = self.engine.kind.value
        scheme = parse_model_uri(self.model.uri).scheme
        if scheme not in support.allowed_uri_schemes(kind):
            raise rule_error(support.uri_scheme_refusal(kind), field="model.uri")
        return self

    @model_validator(mode="after")
    def _triton_model_name(self) -> ModelDeploymentSpec:
        name = self.model.served_name
        if self.engine.kind is EngineKind.TRITON and name is not None and not re.match(TRITON_MODEL_NAME, name):
            raise rule_error(TRITON_SERVED_NAME_MESSAGE, field="model.servedName")
        return self

    def served_name_for(self, name: str) -> str:
        """The served model name: spec.model.servedName, else the resource's name."""
        return self.model.served_name or name

    @property
    def effective_accelerator(self) -> Accelerator | None:
        """The accelerator replicas request, or None when they need no GPU (sim by default)."""
        if self.accelerator is not None:
            return self.accelerator
        if self.engine.kind.value in support.GPU_ENGINE_KINDS:
            return Accelerator()
        return None

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one replica requests: tensor x pipeline, or 0 without an accelerator."""
        return self.parallelism.gpus if self.effective_accelerator is not None else 0


# --------------------------------------------------------------------------- status


class Condition(_Status):
    """A condition in the shape of metav1.Condition."""

    model_config = ConfigDict(
        json_schema_extra={"required": ["type", "status", "lastTransitionTime", "reason", "message"]}
    )

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of the condition, e.g. Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed for."
    )
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    reason: str = Field(
        "",
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")


_CONDITIONS_SCHEMA: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class LoadStatus(_Status):
    """Load observed on the ready replicas, averaged per replica."""

    queue_depth: float | None = Field(None, description="Requests waiting for a batch slot, per replica.")
    running_requests: float | None = Field(None, description="Requests in the running batch, per replica.")
    kv_cache_utilization: float | None = Field(
        None, description="Fraction of the KV cache in use (0 to 1), per replica."
    )
    tokens_per_second: float | None = Field(None, description="Generated tokens per second, per replica.")
    ttft_p95_seconds: float | None = Field(None, description="95th percentile time to first token, in seconds.")
    capacity_tokens_per_second: float | None = Field(
        None,
        description="Generated tokens per second one replica serves at the autoscaling target, learned from the "
        "load (a running average, kept while the load is too light to measure it); cost routing fills a backend "
        "up to it.",
    )
    sampled_replicas: int | None = Field(None, ge=0, description="Replicas whose metrics were scraped.")
    sample_time: datetime | None = Field(None, description="When the metrics were scraped.")


class AdapterStatus(_Status):
    """One LoRA adapter of a ModelDeployment."""

    name: str = Field(description="The adapter's name.")
    ready_replicas: int = Field(0, ge=0, description="Serving replicas that have loaded it (where it is routed).")


class ModelDeploymentStatus(_Status):
    """Observed state of a ModelDeployment."""

    observed_generation: int | None = Field(None, description="metadata.generation this status reflects.")
    replicas: int | None = Field(None, description="Replicas that exist (the scale subresource reads this).")
    ready_replicas: int | None = Field(None, description="Replicas that are ready to serve.")
    desired_replicas: int | None = Field(None, description="Replicas the autoscaler wants; see scaleReason.")
    ready_text: str | None = Field(
        None,
        description='Ready and desired replicas as "ready/desired" (e.g. "2/3"), for the READY column.',
    )
    selector: str | None = Field(
        None, description="Label selector of the replicas' pods (the scale subresource reads this)."
    )
    load: LoadStatus | None = Field(None, description="Load on the replicas.")
    last_scale_time: datetime | None = Field(None, description="When the replica count last changed.")
    scale_reason: str | None = Field(None, description="Why desiredReplicas has its value.")
    adapters: list[AdapterStatus] = Field(
        default_factory=list, max_length=64, description="Each LoRA adapter and the replicas that serve it.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Ready, Progressing, Degraded and ScalingLimited.",
        json_schema_extra=_CONDITIONS_SCHEMA,
    )


def ready_text(ready_replicas: int, desired_replicas: int) -> str:
    """status.readyText, shown in the READY column: "ready/desired"."""
    return f"{ready_replicas}/{desired_replicas}"


# --------------------------------------------------------------------------- RoutePolicy


class Backend(_Spec):
    """A ModelDeployment that receives part of a RoutePolicy's traffic."""

    model_deployment: str = Field(
        max_length=63, pattern=DNS1035_LABEL, description="Name of a ModelDeployment in the same namespace."
    )
    weight: int = Field(
        1,
        ge=0,
        le=1000,
        description="Relative share of traffic for the weighted strategy, renormalised over ready backends.",
    )
    priority: int = Field(
        0,
        ge=0,
        le=100,
        description="Failover order: all traffic goes to the lowest priority that has ready replicas.",
    )
    adapter: str | None = Field(
        None,
        max_length=63,
        pattern=ADAPTER_NAME,
        description=(
            "One of the ModelDeployment's LoRA adapters: requests go to the replicas that have loaded it, "
            "asking for the adapter's model name."
        ),
    )

    @property
    def key(self) -> str:
        """What the backend names: the ModelDeployment, or "MODELDEPLOYMENT/ADAPTER"."""
        return backend_key(self.model_deployment, self.adapter)


def backend_key(model_deployment: str, adapter: str | None) -> str:
    return f"{model_deployment}/{adapter}" if adapter else model_deployment


def check_backends(backends: list[Backend]) -> list[Backend]:
    """The rules every backend list follows (the policy's and each rule's)."""
    if not backends:
        raise rule_error(BACKENDS_REQUIRED_MESSAGE)
    names = [b.key for b in backends]
    if len(set(names)) != len(names):
        raise rule_error(BACKENDS_UNIQUE_MESSAGE)
    return backends


_BACKENDS_SCHEMA = x_validations(BACKENDS_REQUIRED_RULE, BACKENDS_UNIQUE_RULE)
# A backend list of a policy, a rule or a fallback: checked by check_backends.
BackendList = Annotated[list[Backend], AfterValidator(check_backends)]


class OpenAIEndpoint(StrEnum):
    """An OpenAI endpoint a rule can match."""

    CHAT = "chat"  # /v1/chat/completions
    COMPLETIONS = "completions"  # /v1/completions
    EMBEDDINGS = "embeddings"  # /v1/embeddings


HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"  # an HTTP token (RFC 9110)
BODY_FIELD = r"^(user|metadata\.[A-Za-z0-9_-]{1,64})$"
_HeaderName = Annotated[str, Field(min_length=1, max_length=128, pattern=HEADER_NAME)]
# Map keys cannot carry a schema pattern in a CRD (no patternProperties): CEL checks them.
HEADER_KEYS_MESSAGE = "header names must be HTTP tokens of at most 128 letters, digits or !#$%&'*+.^_`|~-"
HEADER_KEYS_RULE = CelRule(rule=f"self.all(k, k.matches({cel_string(HEADER_NAME)}))", message=HEADER_KEYS_MESSAGE)
BODY_KEYS_MESSAGE = 'body fields are "user" or "metadata.<key>" (a key of at most 64 letters, digits, _ or -)'
BODY_KEYS_RULE = CelRule(rule=f"self.all(k, k.matches({cel_string(BODY_FIELD)}))", message=BODY_KEYS_MESSAGE)


def _check_keys(keys: Iterable[str], pattern: str, message: str) -> None:
    if not all(re.match(pattern, k) for k in keys):
        raise rule_error(message)
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]")  # lookarounds and backreferences: Python has them, RE2 not

MATCH_REQUIRED_MESSAGE = (
    "a rule needs at least one condition: headers, headerPatterns, headersPresent, endpoint, body or promptBytes"
)
MATCH_REQUIRED_RULE = CelRule(
    rule=" || ".join(f"(has(self.{f}) && size(self.{f}) > 0)" for f in ("headers", "headerPatterns",
                                                                          "headersPresent", "body"))
    + " || has(self.endpoint) || has(self.promptBytes)",
    message=MATCH_REQUIRED_MESSAGE,
    reason="FieldValueRequired",
)
PROMPT_BYTES_MESSAGE = "promptBytes needs min or max, and min must not exceed max"
PROMPT_BYTES_RULE = CelRule(
    rule="(has(self.min) || has(self.max)) && (!has(self.min) || !has(self.max) || self.min <= self.max)",
    message=PROMPT_BYTES_MESSAGE,
)


class ByteRange(_Spec):
    """Bounds on a request body's size, in bytes, both inclusive."""

    model_config = ConfigDict(json_schema_extra=x_validations(PROMPT_BYTES_RULE))

    min: int | None = Field(None, ge=0, le=2**40, description="Smallest size that matches.")
    max: int | None = Field(None, ge=0, le=2**40, description="Largest size that matches.")

    @model_validator(mode="after")
    def _bounds(self) -> ByteRange:
        if (self.min is None and self.max is None) or (
                self.min is not None and self.max is not None and self.min > self.max):
            raise rule_error(PROMPT_BYTES_MESSAGE)
        return self


class RouteMatch(_Spec):
    """What a request must carry for a rule to apply: every condition given must hold."""

    model_config = ConfigDict(json_schema_extra=x_validations(MATCH_REQUIRED_RULE))

    headers: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict,
        max_length=8,
        description="Request headers that must be present with exactly these values.",
        json_schema_extra=x_validations(HEADER_KEYS_RULE),
    )
    header_patterns: dict[str, Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=dict,
        max_length=8,
        description="Request headers whose whole value must match these regular expressions (RE2 syntax).",
        json_schema_extra=x_validations(HEADER_KEYS_RULE),
    )
    headers_present: list[_HeaderName] = Field(
        default_factory=list,
        max_length=8,
        description="Request headers that must be present, whatever their value.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    endpoint: OpenAIEndpoint | None = Field(
        None, description="The OpenAI endpoint: chat (/v1/chat/completions), completions or embeddings."
    )
    body: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        max_length=8,
        json_schema_extra=x_validations(BODY_KEYS_RULE),
        description=(
            'Fields of the JSON body with exactly these string values: "user", or "metadata.<key>" '
            "for a key of the request's metadata object."
        ),
    )
    prompt_bytes: ByteRange | None = Field(
        None,
        description=(
            "The request body's size in bytes (its Content-Length): a stand-in for the prompt's length. "
            "A request without Content-Length matches no size condition."
        ),
    )

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        _check_keys(headers, HEADER_NAME, HEADER_KEYS_MESSAGE)
        return headers

    @field_validator("body")
    @classmethod
    def _body_fields(cls, body: dict[str, str]) -> dict[str, str]:
        _check_keys(body, BODY_FIELD, BODY_KEYS_MESSAGE)
        return body

    @field_validator("header_patterns")
    @classmethod
    def _re2(cls, patterns: dict[str, str]) -> dict[str, str]:
        _check_keys(patterns, HEADER_NAME, HEADER_KEYS_MESSAGE)
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name}: not a regular expression ({exc})") from None
            if _NOT_RE2.search(pattern):
                raise ValueError(f"{name}: lookarounds and backreferences are not RE2 syntax")
        return patterns

    @model_validator(mode="after")
    def _something(self) -> RouteMatch:
        if not (self.headers or self.header_patterns or self.headers_present or self.body
                or self.endpoint is not None or self.prompt_bytes is not None):
            raise rule_error(MATCH_REQUIRED_MESSAGE)
        return self


RULE_NOT_CASCADE_MESSAGE = (
    "a rule splits by weighted, failover, cost or latency; a cascade is the whole policy's strategy"
)
RULE_NOT_CASCADE = CelRule(rule="!has(self.strategy) || self.strategy != 'cascade'",
                           message=RULE_NOT_CASCADE_MESSAGE, field_path=".strategy")


class RouteRule(_Spec):
    """Requests that match go to these backends instead of the policy's split."""

    model_config = ConfigDict(json_schema_extra=x_validations(RULE_NOT_CASCADE))

    match: RouteMatch = Field(description="Which requests the rule applies to.")
    backends: BackendList = Field(
        max_length=MAX_BACKENDS,
        description="Backends for matching requests, split by the rule's strategy (default: the policy's).",
        json_schema_extra=_BACKENDS_SCHEMA,
    )
    strategy: RouteStrategy | None = Field(
        None, description="How matching requests are split across the rule's backends; default: the policy's."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description=(
            "Cap on the completion length of matching requests: max_tokens (and max_completion_tokens) "
            "above it are lowered to it, and a request without either gets it."
        ),
    )

    @model_validator(mode="after")
    def _not_a_cascade(self) -> RouteRule:
        if self.strategy is RouteStrategy.CASCADE:
            raise rule_error(RULE_NOT_CASCADE_MESSAGE, "strategy")
        return self


class RetryPolicy(_Spec):
    """How Envoy retries a failed attempt on another replica."""

    attempts: int = Field(2, ge=0, le=10, description="Retries after the first attempt; 0 disables retries.")
    per_try_timeout_seconds: int = Field(
        120, ge=1, le=3600, description="Timeout of each attempt, in seconds."
    )
    # Not "on": YAML 1.1 parsers (kubectl's included) read a bare `on` key as true.
    retry_on: list[RetryOn] = Field(
        default_factory=lambda: [RetryOn.CONNECT_FAILURE, RetryOn.RESET, RetryOn.SERVICE_UNAVAILABLE],
        max_length=len(RetryOn),
        description="Conditions that trigger a retry: connection failures, resets, or response codes.",
        json_schema_extra={"default": ["connect-failure", "reset", "503"], "x-kubernetes-list-type": "set"},
    )

    @field_validator("retry_on")
    @classmethod
    def _unique(cls, retry_on: list[RetryOn]) -> list[RetryOn]:
        if len(set(retry_on)) != len(retry_on):
            raise ValueError("each retry condition may appear only once")
        return retry_on


class Slo(_Spec):
    """Service level objective for the policy's traffic."""

    ttft_p95_milliseconds: int = Field(
        ge=1, le=600_000, description="Target 95th percentile time to first token, in milliseconds."
    )


PREFIX_NOT_CASCADE_MESSAGE = "prefixAffinity does not apply to strategy cascade (its stages are tried in order)"
PREFIX_NOT_GATED_MESSAGE = ("prefixAffinity and fallback.maxInFlightPerReplica cannot be combined (the saturation "
                            "gate counts the backend's requests, not the prefix-affine ones)")
PREFIX_NOT_GATED_RULE = CelRule(
    rule="!has(self.prefixAffinity) || !has(self.fallback) || !has(self.fallback.maxInFlightPerReplica)",
    message=PREFIX_NOT_GATED_MESSAGE, field_path=".prefixAffinity")
PREFIX_NOT_CASCADE_RULE = CelRule(rule="!has(self.prefixAffinity) || self.strategy != 'cascade'",
                                  message=PREFIX_NOT_CASCADE_MESSAGE, field_path=".prefixAffinity")
CASCADE_ONLY_MESSAGE = "cascade settings need strategy: cascade"
CASCADE_ONLY_RULE = CelRule(rule="!has(self.cascade) || self.strategy == 'cascade'", message=CASCADE_ONLY_MESSAGE,
                            field_path=".cascade")


class Cascade(_Spec):
    """When a cascade stage's answer is not good enough and the request goes to the next."""

    min_mean_logprob: float | None = Field(
        None,
        ge=-100,
        le=0,
        description=(
            "Escalate when the answer's mean token logprob is below this (the stage is asked for logprobs). "
            "Unset: confidence is not checked."
        ),
    )
    escalate_on_length: bool = Field(True, description='Escalate an answer cut short (finish_reason "length").')
    escalate_on_empty: bool = Field(True, description="Escalate an empty answer.")
    refusal_patterns: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=16,
        description="Escalate an answer containing one of these phrases (case-insensitive, plain text).",
    )


FALLBACK_ON_DEFAULT = ("5xx", "429", "reset", "connect-failure")


class PrefixAffinity(_Spec):
    """Prefix-cache-aware balancing: requests that start alike go to the same replica, whose
    engine still holds their prefix in its KV cache, while no replica takes more than
    maxLoadFactor times the average load (consistent hashing with bounded load)."""

    prefix_chars: int = Field(
        256, ge=16, le=8192,
        description=(
            "Characters of the request's first user message (chat; the prompt for completions) that "
            "choose its replica: every turn of a conversation carries the same first message, so its "
            "turns land on the replica that served the earlier ones. Requests without one are spread."
        ),
    )
    max_load_factor: float = Field(
        1.25, ge=1.0, le=10.0,
        description=(
            "A replica holding this many times the average of its cluster's requests in flight takes no "
            "more: the request goes to the next replica on the hash ring (Envoy's hash_balance_factor)."
        ),
    )


class Fallback(_Spec):
    """Backends that take a request the primary backend failed, one attempt each, in order."""

    backends: BackendList = Field(
        max_length=MAX_FALLBACKS,
        description=(
            "Tried in this order after the backend the split chose fails (weight and priority are not "
            "used here); a fallback backend that is also the failed one is skipped."
        ),
        json_schema_extra=_BACKENDS_SCHEMA,
    )
    retry_on: list[RetryOn] = Field(
        default_factory=lambda: [RetryOn(v) for v in FALLBACK_ON_DEFAULT],
        max_length=len(RetryOn),
        description=(
            "What sends a request on to the next backend: 5xx (including an attempt that exceeds "
            "retry.perTryTimeoutSeconds or is reset), 429, connection failures, resets or status codes. "
            "A backend that keeps answering 5xx is ejected for a cooldown, and its requests go "
            "straight to the fallback meanwhile."
        ),
        json_schema_extra={"default": list(FALLBACK_ON_DEFAULT), "x-kubernetes-list-type": "set"},
    )
    max_in_flight_per_replica: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description=(
            "Saturation: a backend of the split whose replicas hold this many requests each (running or "
            "queued in the engine) is saturated, and a request beyond that goes straight to the fallback "
            "instead of queueing. Counted per backend over its ready replicas, in each ingress Envoy. "
            "Unset: requests queue in the engine."
        ),
    )


# --------------------------------------------------------------------------- budgets


class BudgetPeriod(StrEnum):
    """A budget's calendar period (UTC)."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class BudgetAction(StrEnum):
    """What happens once a budget is spent."""

    REFUSE = "refuse"
    DOWNGRADE = "downgrade"
    NOTIFY = "notify"


BUDGET_AMOUNT_MESSAGE = "a budget is in dollars or in tokens: set exactly one of them"
BUDGET_AMOUNT_RULE = CelRule(rule="has(self.dollars) != has(self.tokens)", message=BUDGET_AMOUNT_MESSAGE)


class Budget(_Spec):
    """What a tenant, or all the traffic of a RoutePolicy, may spend per hour, day or month (calendar
    periods, UTC)."""

    model_config = ConfigDict(json_schema_extra=x_validations(BUDGET_AMOUNT_RULE))

    period: BudgetPeriod = Field(description="hour, day or month (a calendar period in UTC).")
    dollars: float | None = Field(
        None, gt=0, le=1e9,
        description="Spend allowed in the period, in the currency of the backends' cost (usage accounting's prices).")
    tokens: int | None = Field(
        None, ge=1, le=10**15, description="Tokens (prompt and completion) allowed in the period.")
    warn_at_percent: int = Field(80, ge=1, le=100, description="Share of the budget at which a Warning Event says so.")
    action: BudgetAction = Field(
        BudgetAction.REFUSE,
        description="refuse: once spent, requests get 429 insufficient_quota until the next period. "
        "downgrade: once spent, requests go to the cheapest ready backend of the public model they name "
        "(by its price per output token) until the next period. "
        "notify: Events and the BudgetExceeded condition only.",
    )

    @model_validator(mode="after")
    def _one_amount(self) -> Budget:
        if (self.dollars is None) == (self.tokens is None):
            raise rule_error(BUDGET_AMOUNT_MESSAGE)
        return self


class BudgetStatus(_Status):
    """What was spent in a budget's current period."""

    period: BudgetPeriod = Field(description="The budget's period.")
    window_start: datetime = Field(description="When the current period began (UTC).")
    spent_dollars: float = Field(0.0, ge=0, description="Spent in the period, at the backends' prices.")
    spent_tokens: int = Field(0, ge=0, description="Tokens used in the period.")
    used_percent: float = Field(0.0, ge=0, description="Share of the budget used, in percent.")


# --------------------------------------------------------------------------- RoutePolicy spec and status


class RoutePolicySpec(_Spec):
    """One public model name and how its traffic is split across ModelDeployments."""

    model_config = ConfigDict(json_schema_extra=x_validations(CASCADE_ONLY_RULE, PREFIX_NOT_CASCADE_RULE,
                                                              PREFIX_NOT_GATED_RULE))

    model: str = Field(
        min_length=1,
        max_length=256,
        pattern=NO_WHITESPACE,
        description='Model name clients put in the OpenAI request body\'s "model" field.',
    )
    strategy: RouteStrategy = Field(
        RouteStrategy.WEIGHTED,
        description=(
            "weighted: split by backend weight, renormalised over backends with ready replicas. "
            "failover: all traffic to the lowest priority with ready replicas. "
            "cost: cheapest cost per token first (cost.perReplicaHour over the tokens/s a replica serves at "
            "its autoscaling target, status.load.capacityTokensPerSecond), each backend filled up to that "
            "target (past it while it may still scale up, so that it does), the rest to the next cheapest. "
            "latency: shares follow measured TTFT p95 and queue depth, away from backends over the SLO. "
            "cascade: the backends are stages tried in order, cheapest first (see cascade)."
        ),
    )
    backends: BackendList = Field(
        max_length=MAX_BACKENDS,
        description="ModelDeployments that serve this model.",
        json_schema_extra=_BACKENDS_SCHEMA,
    )
    rules: list[RouteRule] = Field(
        default_factory=list,
        max_length=16,
        description="Optional routing rules, checked in order before the split; the first match wins.",
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Retries of failed attempts.",
        json_schema_extra={"default": {}},
    )
    slo: Slo | None = Field(None, description="Latency objective, used by reports (and the latency strategy).")
    cascade: Cascade | None = Field(
        None,
        description=(
            "With strategy cascade: the backends are stages, cheapest first; each stage's answer is returned "
            "unless one of these conditions holds, and then the request goes to the next stage."
        ),
    )
    fallback: Fallback | None = Field(
        None,
        description=(
            "A fallback tier: a request the chosen backend fails (5xx, 429, a timed-out or reset attempt) is "
            "sent on to these backends in turn, with the client seeing only the final answer."
        ),
    )
    prefix_affinity: PrefixAffinity | None = Field(
        None,
        description=(
            "Balance each backend's replicas by the request's leading content instead of least request, "
            "so the engines' prefix caches hit (the split between backends is unchanged). Unset: least "
            "request."
        ),
    )
    budgets: list[Budget] = Field(
        default_factory=list, max_length=4,
        description="What all the public model's traffic (every tenant's, and every request's without tenants) "
        "may spend per hour, day or month, at the answering backends' prices. Spend is kept in status.budgets, "
        "so it survives operator restarts.")

    @model_validator(mode="after")
    def _cascade_only_with_its_strategy(self) -> RoutePolicySpec:
        if self.cascade is not None and self.strategy is not RouteStrategy.CASCADE:
            raise rule_error(CASCADE_ONLY_MESSAGE, "cascade")
        if self.prefix_affinity is not None and self.strategy is RouteStrategy.CASCADE:
            raise rule_error(PREFIX_NOT_CASCADE_MESSAGE, "prefixAffinity")
        if self.prefix_affinity is not None and self.fallback is not None \
                and self.fallback.max_in_flight_per_replica is not None:
            raise rule_error(PREFIX_NOT_GATED_MESSAGE, "prefixAffinity")
        return self


class BackendStatus(_Status):
    """The effective share of one backend and why."""

    model_deployment: str = Field(description="Name of the ModelDeployment.")
    adapter: str | None = Field(None, description="The LoRA adapter, for a backend that names one.")
    weight: int | None = Field(
        None, ge=0, description="Effective weight in use; weights of a policy's backends sum to 100."
    )
    ready_replicas: int | None = Field(None, ge=0, description="Ready replicas of the backend.")
    reason: str | None = Field(None, description="One line on why the backend has this weight.")
    demand_tokens_per_second: float | None = Field(
        None,
        ge=0,
        description=(
            "strategy cost: the generated tokens/s this policy wants the backend to carry once scaled "
            "(cheapest first, each up to maxReplicas at its target); its autoscaler provisions for it."
        ),
    )


class StageTraffic(_Status):
    """One cascade stage's part of the traffic."""

    model_deployment: str = Field(description="The stage's ModelDeployment.")
    requests: int = Field(ge=0, description="Requests the stage took over the window.")
    escalated_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Share of the stage's requests it escalated to the next stage (an answer below the confidence "
            "threshold, cut at max_tokens, empty, refused, or an error). The last stage has none."
        ),
    )


class TrafficStatus(_Status):
    """What the policy's traffic did lately, as its Envoys counted it (every Envoy replica)."""

    window_seconds: int = Field(ge=0, description="The span the numbers cover (up to the last 5 minutes).")
    requests: int = Field(ge=0, description="Requests for the public model name answered over the window.")
    fallback_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "With a fallback tier: share of the requests routed by the split or a rule that a fallback answered "
            "(the backend before it failed, timed out or was saturated)."
        ),
    )
    cascade: list[StageTraffic] = Field(
        default_factory=list, max_length=MAX_BACKENDS, description="strategy cascade: per stage, in order."
    )
    sample_time: datetime | None = Field(None, description="When the Envoys were last read for these numbers.")


class RoutePolicyStatus(_Status):
    """Observed state of a RoutePolicy."""

    observed_generation: int | None = Field(None, description="metadata.generation this status reflects.")
    backends: list[BackendStatus] = Field(
        default_factory=list,
        max_length=MAX_BACKENDS + MAX_FALLBACKS,
        description="Effective routing per backend.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Accepted, ResolvedRefs and Programmed, as in Gateway API; BudgetExceeded: a budget is spent.",
        json_schema_extra=_CONDITIONS_SCHEMA,
    )
    traffic: TrafficStatus | None = Field(
        None, description="Requests, fallback share and cascade escalation rates over the last minutes."
    )
    budgets: list[BudgetStatus] = Field(
        default_factory=list, max_length=4, description="Spend in each budget's current period (the leader writes "
        "it every few seconds while it changes).")


# --------------------------------------------------------------------------- Tenant


class RateUnit(StrEnum):
    """The span a rate limit counts over."""

    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"


RATE_UNIT_SECONDS = {RateUnit.SECOND: 1, RateUnit.MINUTE: 60, RateUnit.HOUR: 3600}


class RateScope(StrEnum):
    """Where a request limit is counted."""

    GLOBAL = "global"
    LOCAL = "local"


class RequestLimit(_Spec):
    """Requests a tenant may send: a token bucket of ``burst`` requests refilled at ``limit`` per ``per``."""

    limit: int = Field(ge=1, le=1_000_000_000, description="Requests allowed per `per`.")
    per: RateUnit = Field(RateUnit.MINUTE, description="second, minute or hour.")
    burst: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="Requests that may arrive at once, after a quiet spell (the bucket's size). Default: limit.",
    )
    scope: RateScope = Field(
        RateScope.GLOBAL,
        description=(
            "global: counted once across every Envoy replica by the operator's rate-limit service (exact; "
            "Envoy asks it before each request, about a millisecond). local: each Envoy replica counts on its "
            "own, with no call (no added latency), so N replicas let through up to N times the limit; a change "
            "of a local limit starts the buckets full and has Envoy drain its open connections."
        ),
    )


class TokenLimit(_Spec):
    """Tokens a tenant may use: prompt and completion tokens, as each response's usage reports them."""

    limit: int = Field(ge=1, le=1_000_000_000_000, description="Tokens allowed per `per`.")
    per: RateUnit = Field(RateUnit.MINUTE, description="second, minute or hour.")


class TenantLimits(_Spec):
    """Rate limits on a tenant's requests, across every model it calls and every Envoy replica."""

    requests: RequestLimit | None = Field(
        None, description="Requests per second, minute or hour. Beyond it: 429 rate_limit_exceeded with Retry-After."
    )
    tokens: TokenLimit | None = Field(
        None,
        description=(
            "Tokens per second, minute or hour. A response is counted when it ends (a stream included), so the "
            "limit can be overshot by the responses in flight; then requests get 429 until the tokens refill."
        ),
    )
    max_concurrent_requests: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Requests the tenant may have in flight at once, across every Envoy. Beyond it: 429.",
    )


class ApiKeysRef(_Spec):
    """Where a tenant's API keys are."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            f"A Secret in the Tenant's namespace with the label {API_KEYS_LABEL} (the operator watches only "
            "those). Each value in it is one accepted API key; clients send it as `Authorization: Bearer <key>`. "
            "To rotate, add the new key, move the clients, remove the old one: each change is live within seconds."
        ),
    )


_PublicModel = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_WHITESPACE)]


class TenantSpec(_Spec):
    """Who may call which public models, with which keys, and how much."""

    api_keys: ApiKeysRef = Field(description="The Secret that holds the tenant's API keys.")
    models: list[_PublicModel] = Field(
        min_length=1,
        max_length=256,
        description=f'Public model names (RoutePolicy spec.model) the tenant may call; "{ALL_MODELS}" for all.',
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    limits: TenantLimits | None = Field(None, description="Request and token rate limits.")
    budgets: list[Budget] = Field(
        default_factory=list, max_length=4,
        description="What the tenant may spend per hour, day or month. Spend is kept in status.budgets, so it "
        "survives operator restarts.")

    @field_validator("models")
    @classmethod
    def _unique_models(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("each model may appear only once")
        return names


class TenantStatus(_Status):
    """Observed state of a Tenant."""

    observed_generation: int | None = Field(None, description="metadata.generation this status reflects.")
    keys: int | None = Field(None, ge=0, description="API keys the ingress accepts for the tenant (never the keys).")
    budgets: list[BudgetStatus] = Field(
        default_factory=list, max_length=4, description="Spend in each budget's current period (the leader writes "
        "it every few seconds while it changes).")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Ready: the ingress accepts the tenant's keys. BudgetExceeded: a budget is spent.",
        json_schema_extra=_CONDITIONS_SCHEMA,
    )


# --------------------------------------------------------------------------- whole objects


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta llmfleet reads."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class _Object(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = API_VERSION
    kind: str
    metadata: ObjectMeta


class ModelDeployment(_Object):
    """A whole ModelDeployment object, as read from the API server."""

    kind: str = MODEL_DEPLOYMENT_KIND
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name_is_label(cls, meta: ObjectMeta) -> ObjectMeta:
        if not re.fullmatch(DNS1035_LABEL, meta.name) or len(meta.name) > 63:
            raise rule_error(NAME_MESSAGE, field="name")
        return meta


class RoutePolicy(_Object):
    """A whole RoutePolicy object, as read from the API server."""

    kind: str = ROUTE_POLICY_KIND
    spec: RoutePolicySpec
    status: RoutePolicyStatus | None = None


class Tenant(_Object):
    """A whole Tenant object, as read from the API server."""

    kind: str = TENANT_KIND
    spec: TenantSpec
    status: TenantStatus | None = None


# --------------------------------------------------------------------------- errors


class SpecError(ValueError):
    """A spec failed validation. ``str()`` is one readable line naming every field."""

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]]):
        super().__init__(message)
        self.errors = errors


def _path(loc: tuple[Any, ...], root: str) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "<root>"


def error_paths(err: ValidationError, root: str = "spec") -> list[tuple[str, str]]:
    """Each problem in ``err`` as (field path, message), e.g. ("spec.parallelism", "needs 16 GPUs ...").

    ``root`` is the path of the validated object: ``spec`` for a spec, ``""`` for a
    whole object. A rule raised by a parent model for one of its fields (see
    :func:`llmfleet.api.cel.rule_error`) is reported at that field.
    """
    out = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        field = (e.get("ctx") or {}).get("field") if e["type"] == RULE_ERROR_TYPE else None
        if field:
            loc += tuple(field.split("."))
        out.append((_path(loc, root), e["msg"]))
    return out


def format_validation_error(err: ValidationError, root: str = "spec") -> str:
    """One readable message for ``err``, each problem prefixed with its field path::

        spec.engine.quantization: "gptq" is not supported by engine "tensorrt-llm"; allowed: ...

    Problems are joined with "; ".
    """
    return "; ".join(f"{path}: {message}" for path, message in error_paths(err, root))


def parse_model_deployment_spec(spec: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Validate a ModelDeployment's spec; raise :class:`SpecError` naming the fields."""
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(format_validation_error(err), err.errors(include_url=False)) from None


def parse_route_policy_spec(spec: Mapping[str, Any]) -> RoutePolicySpec:
    """Validate a RoutePolicy's spec; raise :class:`SpecError` naming the fields."""
    try:
        return RoutePolicySpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(format_validation_error(err), err.errors(include_url=False)) from None


def parse_tenant_spec(spec: Mapping[str, Any]) -> TenantSpec:
    """Validate a Tenant's spec; raise :class:`SpecError` naming the fields."""
    try:
        return TenantSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(format_validation_error(err), err.errors(include_url=False)) from None


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as Kubernetes JSON: camelCase keys, no unset optional fields."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
