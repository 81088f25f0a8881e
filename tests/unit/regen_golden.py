"""Golden Deployments and Services for the examples and a few extra specs.

Regenerate after an intended rendering change, then review the diff:

    python -m tests.unit.regen_golden        (or UPDATE_GOLDEN=1 pytest tests/unit/test_render.py)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from llmfleet.render import render_deployment, render_service

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
GOLDEN = ROOT / "tests" / "data" / "golden"
NAMESPACE = "examples"

# Model sources and engine combinations the examples do not show.
EXTRA_CASES: dict[str, dict[str, Any]] = {
    "vllm-pvc-env": {
        "model": {"uri": "pvc://models/meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-3.1-8b"},
        "engine": {
            "kind": "vllm",
            "image": "registry.example.com/vllm-openai:v0.26.0-patched",
            "env": [
                {"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "vllm-api", "key": "key"}}},
            ],
        },
        "replicas": 3,
    },
    "vllm-s3-stream": {
        "model": {"uri": "s3://models-bucket/llama-3.1-8b", "credentialsSecret": "s3-creds"},
        "engine": {"kind": "vllm", "dtype": "bfloat16"},
        "parallelism": {"tensor": 2},
    },
    "sglang-oci-image": {
        "model": {"uri": "oci://ghcr.io/acme/qwen2.5-7b-instruct:2025-06"},
        "engine": {"kind": "sglang", "quantization": "fp8"},
    },
    "trtllm-pvc-tp8": {
        "model": {"uri": "pvc://engines/llama-70b-fp8"},
        "engine": {"kind": "tensorrt-llm", "quantization": "fp8", "maxModelLen": 16384},
        "parallelism": {"tensor": 8},
        "accelerator": {"product": "NVIDIA-H100-80GB-HBM3"},
    },
    "triton-vllm-tp2": {
        "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama-3.1-8b",
                  "credentialsSecret": "hf-token"},
        "engine": {"kind": "triton", "quantization": "fp8", "maxModelLen": 8192},
        "parallelism": {"tensor": 2},
        "accelerator": {"product": "NVIDIA-H100-80GB-HBM3"},
    },
    "triton-pvc-extra-args": {
        "model": {"uri": "pvc://models/qwen2.5-7b-instruct-awq"},
        "engine": {"kind": "triton", "quantization": "awq", "dtype": "float16",
                   "extraArgs": ["--tool-call-parser", "llama3"]},
    },
    "sim-on-gpu-nodes": {
        "model": {"uri": "hf://meta-llama/Llama-3.1-70B-Instruct"},
        "engine": {"kind": "sim", "extraArgs": ["--max-num-seqs", "64"]},
        "parallelism": {"tensor": 4},
        "accelerator": {"product": "NVIDIA-H100-80GB-HBM3"},
        "replicas": 0,
    },
}


def _object(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def model_deployments() -> dict[str, dict[str, Any]]:
    """Golden name -> ModelDeployment object, from the examples and EXTRA_CASES."""
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ModelDeployment":
                name = doc["metadata"]["name"]
                out[name] = _object(name, doc["spec"])
    for name, spec in EXTRA_CASES.items():
        out[name] = _object(name, spec)
    return out


def render_golden(md: dict[str, Any]) -> str:
    return yaml.safe_dump_all([render_deployment(md), render_service(md)], sort_keys=False, width=100)


def golden_files() -> dict[str, str]:
    """File name in tests/data/golden -> expected content."""
    return {f"{name}.yaml": render_golden(md) for name, md in model_deployments().items()}


def write_golden() -> list[Path]:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    expected = golden_files()
    for stale in GOLDEN.glob("*.yaml"):
        if stale.name not in expected:
            stale.unlink()
    paths = []
    for name, content in expected.items():
        path = GOLDEN / name
        path.write_text(content)
        paths.append(path)
    return paths


def main() -> int:
    for path in write_golden():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
