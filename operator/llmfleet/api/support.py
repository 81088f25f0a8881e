"""What each engine kind supports: the single table behind validation and rendering.

The pydantic validators in ``llmfleet.api.models``, the CEL rules in the generated
CRDs and the engine modules that build container args all read this module, so a
quantization, dtype or model source allowed here is allowed everywhere, and one
refused here is refused with the same message by the API server and the operator.

This module is plain data with no imports from the rest of llmfleet, so the API
models can import it without import cycles.
"""

from __future__ import annotations

from collections.abc import Mapping

VLLM = "vllm"
TENSORRT_LLM = "tensorrt-llm"
SGLANG = "sglang"
SIM = "sim"
TRITON = "triton"

ENGINE_KINDS: tuple[str, ...] = (VLLM, TENSORRT_LLM, SGLANG, TRITON, SIM)

# Engines that run on GPUs. They request `nvidia.com/gpu` unless spec.accelerator
# says otherwise; `sim` requests a GPU only when spec.accelerator is given.
GPU_ENGINE_KINDS: frozenset[str] = frozenset({VLLM, TENSORRT_LLM, SGLANG, TRITON})

# One replica is one pod on one node until multi-node replicas (LeaderWorkerSet) exist.
MAX_GPUS_PER_REPLICA = 8

# The quantization vocabulary of the API, engine-neutral. Values describe how the
# weights are stored (or, for fp8 and bitsandbytes, how vLLM/SGLang quantize a 16-bit
# checkpoint while loading it).
QUANTIZATIONS: tuple[str, ...] = (
    "none",  # no quantization requested
    "awq",  # AWQ 4-bit weights (W4A16)
    "gptq",  # GPTQ 4-bit weights (W4A16)
    "fp8",  # FP8 weights and activations (W8A8)
    "int8",  # INT8 weights and activations (W8A8, SmoothQuant-style)
    "nvfp4",  # NVIDIA FP4 (Blackwell)
    "mxfp4",  # OCP MX FP4 (e.g. gpt-oss)
    "bitsandbytes",  # bitsandbytes, quantized in flight
    "gguf",  # a llama.cpp GGUF file
    "compressed-tensors",  # an llm-compressor checkpoint (any scheme it records)
)

# kind -> {quantization -> value of the engine's --quantization flag}.
#
# None means "pass no flag": the engine reads the method from the checkpoint's
# config. For vLLM and SGLang that is the better choice for pre-quantized formats:
# an explicit `--quantization awq` forces the slower non-Marlin kernel, and an
# explicit method that differs from the checkpoint's (e.g. fp8 for a
# compressed-tensors FP8 checkpoint) is a startup error.
# TensorRT-LLM's `trtllm-serve` has no quantization flag at all: it serves
# checkpoints quantized offline with NVIDIA Model Optimizer and detects the recipe.
# Sources: docs.vllm.ai (quantization, engine args), docs.sglang.io
# (server_arguments: --quantization choices), nvidia.github.io/TensorRT-LLM
# (features/quantization: model and hardware support matrix).
_VLLM_QUANTIZATION_FLAGS: Mapping[str, str | None] = {
    "none": None,
    "awq": None,
    "gptq": None,
    "fp8": "fp8",
    "int8": None,
    "nvfp4": None,
    "mxfp4": None,
    "bitsandbytes": "bitsandbytes",
    "gguf": None,
    "compressed-tensors": None,
}
QUANTIZATION_FLAGS: Mapping[str, Mapping[str, str | None]] = {
    VLLM: _VLLM_QUANTIZATION_FLAGS,
    SGLANG: {
        "none": None,
        "awq": None,
        "gptq": None,
        "fp8": "fp8",
        "int8": "w8a8_int8",
        "nvfp4": None,
        "mxfp4": None,
        "bitsandbytes": "bitsandbytes",
        "gguf": None,
        "compressed-tensors": None,
    },
    TENSORRT_LLM: {
        "none": None,
        "awq": None,
        "gptq": None,
        "fp8": None,
        "nvfp4": None,
        "mxfp4": None,
    },
    # Triton's vLLM backend hands model.json to vLLM's engine arguments, so vLLM's
    # `quantization` key and values apply (vllm_backend README, "Using the vLLM Backend").
    TRITON: _VLLM_QUANTIZATION_FLAGS,
    # The simulator loads no weights; it accepts every value so that any spec can
    # switch its engine to `sim` for a test.
    SIM: {q: None for q in QUANTIZATIONS},
}

DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16", "float32")

# trtllm-serve has no dtype flag: the checkpoint decides.
DTYPE_SUPPORT: Mapping[str, tuple[str, ...]] = {
    VLLM: DTYPES,
    SGLANG: DTYPES,
    TENSORRT_LLM: ("auto",),
    TRITON: DTYPES,
    SIM: DTYPES,
}

# LoRA adapters, loaded into running replicas at runtime (vLLM's /v1/load_lora_adapter,
# enabled by VLLM_ALLOW_RUNTIME_LORA_UPDATING; the simulator serves the same endpoints).
# SGLang's runtime loading needs the target modules and rank of every adapter up front,
# TensorRT-LLM's trtllm-serve loads LoRA per request from a path: not supported yet.
LORA_ENGINE_KINDS: tuple[str, ...] = (VLLM, SIM)
# Where an adapter can come from: a Hugging Face repo the engine downloads, or a
# directory of a PersistentVolumeClaim mounted read-only.
ADAPTER_URI_SCHEMES: tuple[str, ...] = ("hf", "pvc")
# vLLM's --max-lora-rank accepts only these (LoRAConfig.max_lora_rank).
LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# Engines that report no KV-cache gauge: Triton's vLLM backend passes on vLLM's counters
# and histograms only (its load is derived from them; llmfleet.signals.load).
NO_KV_CACHE_ENGINE_KINDS: tuple[str, ...] = (TRITON,)


def kv_metric_refusal() -> str:
    return (f"metric kvCacheUtilization needs a KV-cache gauge, which engine kind "
            f"{', '.join(NO_KV_CACHE_ENGINE_KINDS)} does not report; use queueDepth, runningRequests or "
            "tokensPerSecond")


def lora_refusal() -> str:
    return f"LoRA adapters are served by engine kinds {', '.join(LORA_ENGINE_KINDS)} only"


MODEL_URI_SCHEMES: tuple[str, ...] = ("hf", "s3", "gs", "pvc", "oci")

# vLLM and SGLang stream s3:// and gs:// weights with the Run:ai Model Streamer
# (`--load-format runai_streamer`); trtllm-serve cannot read object storage.
URI_SCHEME_SUPPORT: Mapping[str, tuple[str, ...]] = {
    VLLM: MODEL_URI_SCHEMES,
    SGLANG: MODEL_URI_SCHEMES,
    TENSORRT_LLM: ("hf", "pvc", "oci"),
    # Whether Triton's vLLM image ships the Run:ai Model Streamer is not documented.
    TRITON: ("hf", "pvc", "oci"),
    SIM: MODEL_URI_SCHEMES,
}


def allowed_quantizations(kind: str) -> tuple[str, ...]:
    """Quantizations engine ``kind`` accepts, in vocabulary order."""
    flags = QUANTIZATION_FLAGS[kind]
    return tuple(q for q in QUANTIZATIONS if q in flags)


def quantization_flag(kind: str, quantization: str) -> str | None:
    """Value for the engine's ``--quantization`` flag, or None to pass no flag."""
    return QUANTIZATION_FLAGS[kind][quantization]


def allowed_dtypes(kind: str) -> tuple[str, ...]:
    return DTYPE_SUPPORT[kind]


def allowed_uri_schemes(kind: str) -> tuple[str, ...]:
    return URI_SCHEME_SUPPORT[kind]


# Refusal messages; "{value}" is the refused value. The CRD's CEL messageExpression
# is built from the same templates (text before and after "{value}").
CHOICE_REFUSAL = '"{value}" is not supported by engine "{kind}"; allowed: {allowed}'


def quantization_refusal(kind: str, quantization: str) -> str:
    """The message shown when ``quantization`` is not allowed for ``kind``."""
    return CHOICE_REFUSAL.format(value=quantization, kind=kind, allowed=", ".join(allowed_quantizations(kind)))


def dtype_refusal(kind: str, dtype: str) -> str:
    """The message shown when ``dtype`` is not allowed for ``kind``."""
    return CHOICE_REFUSAL.format(value=dtype, kind=kind, allowed=", ".join(allowed_dtypes(kind)))


def uri_scheme_refusal(kind: str) -> str:
    """The message shown when engine ``kind`` cannot load a model URI's scheme."""
    *rest, last = [f"{s}://" for s in allowed_uri_schemes(kind)]
    schemes = f"{', '.join(rest)} or {last}" if rest else last
    return f'engine "{kind}" can only load models from {schemes} URIs'
