"""How an engine is told which LoRA adapters to serve, at runtime.

vLLM (with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) and the simulator load an adapter
with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``, drop one with ``POST
/v1/unload_lora_adapter {"lora_name"}``, and list the loaded ones in ``/v1/models`` as
models with a ``parent`` (the base model) and their path as ``root`` (vLLM's
``OpenAIServingModels``). Pure: the operator's glue (llmfleet.controller.adapters)
does the HTTP calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
MODELS_PATH = "/v1/models"


@dataclass(frozen=True)
class AdapterChanges:
    """What to ask one replica: unload first (a name whose path changed is unloaded, then loaded)."""

    unload: tuple[str, ...] = ()
    load: tuple[tuple[str, str], ...] = ()  # (name, path)

    def __bool__(self) -> bool:
        return bool(self.unload or self.load)


def served_adapters(models: Mapping[str, Any]) -> dict[str, str]:
    """The adapters a ``/v1/models`` answer lists: name → path (models with a parent)."""
    out = {}
    for model in models.get("data") or ():
        if isinstance(model, Mapping) and model.get("parent") and model.get("id"):
            out[str(model["id"])] = str(model.get("root") or "")
    return out


def adapter_changes(wanted: Mapping[str, str], served: Mapping[str, str]) -> AdapterChanges:
    """From the adapters a replica serves (name → path) to the ones wanted."""
    unload = sorted(name for name, path in served.items() if wanted.get(name) != path)
    load = sorted((name, path) for name, path in wanted.items() if served.get(name) != path)
    return AdapterChanges(tuple(unload), tuple(load))


def load_body(name: str, path: str) -> dict[str, str]:
    return {"lora_name": name, "lora_path": path}


def unload_body(name: str) -> dict[str, str]:
    return {"lora_name": name}


def after(served: Mapping[str, str], unloaded: Iterable[str], loaded: Iterable[tuple[str, str]]) -> dict[str, str]:
    """What a replica serves once ``unloaded`` and ``loaded`` succeeded."""
    out = {n: p for n, p in served.items() if n not in set(unloaded)}
    out.update(loaded)
    return out
