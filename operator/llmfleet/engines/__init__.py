"""Model server engines: one module per engine, and a registry.

``get_engine(kind)`` returns the :class:`~llmfleet.engines.base.Engine` that
builds the pod spec for that engine kind. What each kind accepts (quantizations,
dtypes, model URI schemes) is in :mod:`llmfleet.api.support`.
"""

from __future__ import annotations

from llmfleet.engines.base import Engine, MetricNames, ModelMount
from llmfleet.engines.sglang import SGLangEngine
from llmfleet.engines.sim import SimEngine
from llmfleet.engines.tensorrt_llm import TensorRTLLMEngine
from llmfleet.engines.triton import TritonEngine
from llmfleet.engines.vllm import VllmEngine

_ENGINES: dict[str, Engine] = {
    engine.kind: engine
    for engine in (VllmEngine(), TensorRTLLMEngine(), SGLangEngine(), TritonEngine(), SimEngine())
}


def get_engine(kind: str) -> Engine:
    """The engine for ``kind`` (an EngineKind or its string value)."""
    try:
        return _ENGINES[str(kind)]
    except KeyError:
        raise KeyError(f"unknown engine kind {kind!r}; known: {', '.join(_ENGINES)}") from None


def all_engines() -> list[Engine]:
    return list(_ENGINES.values())


__all__ = [
    "Engine",
    "MetricNames",
    "ModelMount",
    "SGLangEngine",
    "SimEngine",
    "TensorRTLLMEngine",
    "TritonEngine",
    "VllmEngine",
    "all_engines",
    "get_engine",
]
