"""The API models: defaults, every validation rule and its refusal message, helpers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from llmfleet.api import models as m
from llmfleet.api.models import (
    ModelDeployment,
    ModelDeploymentSpec,
    RoutePolicy,
    SpecError,
    dump,
    format_validation_error,
    parse_model_deployment_spec,
    parse_route_policy_spec,
)
from llmfleet.api.uri import parse_model_uri
from llmfleet.api import support

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"

MINIMAL_MD = {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}, "engine": {"kind": "vllm"}}
MINIMAL_RP = {"model": "chat", "backends": [{"modelDeployment": "llama"}]}


def md_spec(**changes) -> dict:
    """MINIMAL_MD with the given top-level fields replaced."""
    return {**copy.deepcopy(MINIMAL_MD), **changes}


def refusal(spec: dict, parse=parse_model_deployment_spec) -> str:
    with pytest.raises(SpecError) as err:
        parse(spec)
    return str(err.value)


# --------------------------------------------------------------------------- defaults


def test_model_deployment_defaults_match_design():
    spec = parse_model_deployment_spec(MINIMAL_MD)
    assert spec.replicas == 1
    assert (spec.parallelism.tensor, spec.parallelism.pipeline) == (1, 1)
    assert spec.engine.dtype == "auto"
    assert spec.engine.quantization == "none"
    assert spec.engine.image is None and spec.engine.extra_args == [] and spec.engine.env == []
    assert spec.accelerator is None and spec.autoscaling is None and spec.cost is None


def test_autoscaling_defaults_match_design():
    spec = parse_model_deployment_spec(md_spec(autoscaling={"maxReplicas": 8}))
    a = spec.autoscaling
    assert (a.min_replicas, a.max_replicas) == (1, 8)
    assert a.metric == "queueDepth"
    assert a.target is None and a.effective_target == 4
    assert (a.scale_up_stabilization_seconds, a.scale_down_stabilization_seconds) == (0, 300)
    assert a.scale_to_zero.idle_seconds == 0


def test_kv_cache_target_defaults_to_a_fraction():
    spec = parse_model_deployment_spec(md_spec(autoscaling={"maxReplicas": 2, "metric": "kvCacheUtilization"}))
    assert spec.autoscaling.effective_target == 0.8


def test_route_policy_defaults():
    spec = parse_route_policy_spec(MINIMAL_RP)
    assert spec.strategy == "weighted"
    assert (spec.backends[0].weight, spec.backends[0].priority) == (1, 0)
    assert spec.retry.attempts == 2 and spec.retry.per_try_timeout_seconds == 120
    assert spec.retry.retry_on == ["connect-failure", "reset", "503"]
    assert spec.rules == [] and spec.slo is None


def test_dump_uses_camel_case_and_round_trips():
    spec = parse_model_deployment_spec(
        md_spec(autoscaling={"maxReplicas": 3}, engine={"kind": "sglang", "maxModelLen": 4096})
    )
    out = dump(spec)
    assert out["engine"]["maxModelLen"] == 4096
    assert out["autoscaling"]["scaleDownStabilizationSeconds"] == 300
    assert "accelerator" not in out  # unset optional fields are omitted
    assert parse_model_deployment_spec(out) == spec


def test_snake_case_names_are_accepted_too():
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "hf://x", "served_name": "x"}, "engine": {"kind": "sim", "max_model_len": 10}}
    )
    assert spec.model.served_name == "x" and spec.engine.max_model_len == 10


# --------------------------------------------------------------------------- accelerator


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tensorrt-llm", "triton"])
def test_real_engines_request_nvidia_gpus_by_default(kind):
    spec = parse_model_deployment_spec(md_spec(engine={"kind": kind}, parallelism={"tensor": 2, "pipeline": 2}))
    assert spec.effective_accelerator.resource == "nvidia.com/gpu"
    assert spec.gpus_per_replica == 4


def test_triton_served_name_must_name_one_directory():
    msg = refusal(md_spec(model={"uri": "hf://org/model", "servedName": "org/model"}, engine={"kind": "triton"}))
    assert msg == f"spec.model.servedName: {m.TRITON_SERVED_NAME_MESSAGE}"
    spec = parse_model_deployment_spec(md_spec(model={"uri": "hf://o/m", "servedName": "Llama-3.1_8b"},
                                               engine={"kind": "triton"}))
    assert spec.served_name_for("x") == "Llama-3.1_8b"
    # Other engines take any name without whitespace.
    parse_model_deployment_spec(md_spec(model={"uri": "hf://o/m", "servedName": "org/model"}))


def test_sim_requests_no_gpu_unless_asked():
    spec = parse_model_deployment_spec(md_spec(engine={"kind": "sim"}, parallelism={"tensor": 2}))
    assert spec.effective_accelerator is None and spec.gpus_per_replica == 0
    spec = parse_model_deployment_spec(
        md_spec(engine={"kind": "sim"}, parallelism={"tensor": 2}, accelerator={"product": "NVIDIA-H100-80GB-HBM3"})
    )
    assert spec.effective_accelerator.resource == "nvidia.com/gpu" and spec.gpus_per_replica == 2


def test_served_name_defaults_to_the_resource_name():
    assert parse_model_deployment_spec(MINIMAL_MD).served_name_for("llama") == "llama"
    spec = parse_model_deployment_spec(md_spec(model={"uri": "hf://x", "servedName": "llama-3.1-8b"}))
    assert spec.served_name_for("llama") == "llama-3.1-8b"


# --------------------------------------------------------------------------- rules and messages


def test_quantization_refused_per_engine_names_the_field_and_the_allowed_values():
    msg = refusal(md_spec(engine={"kind": "tensorrt-llm", "quantization": "gguf"}))
    assert msg == (
        'spec.engine.quantization: "gguf" is not supported by engine "tensorrt-llm"; '
        "allowed: none, awq, gptq, fp8, nvfp4, mxfp4"
    )


@pytest.mark.parametrize("kind", support.ENGINE_KINDS)
@pytest.mark.parametrize("quantization", support.QUANTIZATIONS)
def test_quantization_follows_the_support_table(kind, quantization):
    spec = md_spec(engine={"kind": kind, "quantization": quantization})
    if quantization in support.allowed_quantizations(kind):
        assert parse_model_deployment_spec(spec).engine.quantization == quantization
    else:
        assert refusal(spec) == f"spec.engine.quantization: {support.quantization_refusal(kind, quantization)}"


def test_unknown_quantization_is_refused_by_the_enum():
    msg = refusal(md_spec(engine={"kind": "vllm", "quantization": "int3"}))
    assert msg.startswith("spec.engine.quantization: Input should be 'none', 'awq'")


def test_dtype_refused_for_tensorrt_llm():
    msg = refusal(md_spec(engine={"kind": "tensorrt-llm", "dtype": "bfloat16"}))
    assert msg == 'spec.engine.dtype: "bfloat16" is not supported by engine "tensorrt-llm"; allowed: auto'


@pytest.mark.parametrize("tensor,pipeline", [(8, 2), (4, 4), (3, 3)])
def test_more_than_eight_gpus_per_replica_is_refused(tensor, pipeline):
    msg = refusal(md_spec(parallelism={"tensor": tensor, "pipeline": pipeline}))
    assert msg == (
        "spec.parallelism: tensor x pipeline must be at most 8: a replica runs on one node "
        "and multi-node replicas are not supported yet"
    )


@pytest.mark.parametrize("tensor,pipeline", [(8, 1), (4, 2), (2, 4), (1, 8), (1, 1)])
def test_up_to_eight_gpus_per_replica_is_fine(tensor, pipeline):
    spec = parse_model_deployment_spec(md_spec(parallelism={"tensor": tensor, "pipeline": pipeline}))
    assert spec.gpus_per_replica == tensor * pipeline


def test_parallelism_bounds_come_from_the_schema():
    assert "spec.parallelism.tensor: Input should be less than or equal to 8" in refusal(
        md_spec(parallelism={"tensor": 16})
    )
    assert "spec.parallelism.pipeline: Input should be greater than or equal to 1" in refusal(
        md_spec(parallelism={"pipeline": 0})
    )


def test_max_replicas_below_min_replicas_is_refused():
    msg = refusal(md_spec(autoscaling={"minReplicas": 3, "maxReplicas": 2}))
    assert msg == "spec.autoscaling.maxReplicas: maxReplicas must be at least minReplicas"


def test_max_replicas_equal_to_min_is_fine():
    assert parse_model_deployment_spec(md_spec(autoscaling={"minReplicas": 2, "maxReplicas": 2}))


def test_max_replicas_is_required():
    assert refusal(md_spec(autoscaling={"minReplicas": 2})) == "spec.autoscaling.maxReplicas: Field required"


@pytest.mark.parametrize("metric", ["runningRequests", "tokensPerSecond"])
def test_target_required_for_metrics_without_a_default(metric):
    msg = refusal(md_spec(autoscaling={"maxReplicas": 3, "metric": metric}))
    assert msg == "spec.autoscaling.target: target is required when metric is runningRequests or tokensPerSecond"
    spec = parse_model_deployment_spec(md_spec(autoscaling={"maxReplicas": 3, "metric": metric, "target": 32}))
    assert spec.autoscaling.effective_target == 32


def test_kv_cache_target_above_one_is_refused():
    msg = refusal(md_spec(autoscaling={"maxReplicas": 3, "metric": "kvCacheUtilization", "target": 80}))
    assert msg == (
        "spec.autoscaling.target: target for kvCacheUtilization is a fraction of the KV cache and must be at most 1"
    )


def test_target_must_be_positive():
    assert "spec.autoscaling.target: Input should be greater than 0" in refusal(
        md_spec(autoscaling={"maxReplicas": 3, "target": 0})
    )


def test_min_replicas_is_at_least_one_scale_to_zero_is_separate():
    assert "spec.autoscaling.minReplicas: Input should be greater than or equal to 1" in refusal(
        md_spec(autoscaling={"minReplicas": 0, "maxReplicas": 3})
    )
    spec = parse_model_deployment_spec(md_spec(autoscaling={"maxReplicas": 3, "scaleToZero": {"idleSeconds": 600}}))
    assert spec.autoscaling.scale_to_zero.idle_seconds == 600


VALID_URIS = [
    ("hf://meta-llama/Llama-3.1-8B-Instruct", "hf"),
    ("hf://gpt2", "hf"),
    ("hf://Qwen/Qwen2.5-7B-Instruct", "hf"),
    ("s3://my-bucket/models/llama-3.1-8b", "s3"),
    ("s3://my.bucket", "s3"),
    ("gs://my_bucket/models/llama/", "gs"),
    ("pvc://models/llama-3.1-8b", "pvc"),
    ("pvc://models", "pvc"),
    ("pvc://models/org/Llama_3.1-8B/", "pvc"),
    ("oci://ghcr.io/acme/llama-3.1-8b:v1", "oci"),
    ("oci://registry.local:5000/models/llama@sha256:" + "a" * 64, "oci"),
    ("oci://acme/llama", "oci"),
]

INVALID_URIS = [
    "meta-llama/Llama-3.1-8B-Instruct",  # no scheme
    "http://example.com/model",
    "hf://",
    "hf://org/name/extra",
    "hf://org/name\n",
    "s3://",
    "s3://Bucket/x",  # bucket names are lowercase
    "s3://bucket/with space",
    "pvc://Models/x",
    "pvc://models/../etc",
    "pvc://models/.hidden",
    "pvc://-models/x",
    "oci://",
    "oci://ghcr.io",  # no repository
    "oci://ghcr.io/Acme/x",
    "oci://ghcr.io/acme/x@sha256:abc",
    "file:///models/llama",
]


@pytest.mark.parametrize("uri,scheme", VALID_URIS)
def test_valid_model_uris(uri, scheme):
    spec = parse_model_deployment_spec(md_spec(model={"uri": uri}))
    assert parse_model_uri(spec.model.uri).scheme == scheme


@pytest.mark.parametrize("uri", INVALID_URIS)
def test_invalid_model_uris_are_refused_with_the_accepted_forms(uri):
    msg = refusal(md_spec(model={"uri": uri}))
    quoted = "" if "\n" in uri else f'"{uri}" is '
    assert msg == (
        f"spec.model.uri: {quoted}not a supported model URI; use hf://ORG/NAME, s3://BUCKET/PATH, "
        "gs://BUCKET/PATH, pvc://CLAIM/PATH or oci://REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]"
    )


def test_model_uri_parts():
    pvc = parse_model_uri("pvc://models/org/llama/")
    assert (pvc.pvc_claim, pvc.pvc_path) == ("models", "org/llama")
    assert parse_model_uri("pvc://models").pvc_path == ""
    assert parse_model_uri("hf://org/name").hf_repo == "org/name"
    assert parse_model_uri("oci://ghcr.io/a/b:1").oci_reference == "ghcr.io/a/b:1"
    with pytest.raises(ValueError, match="is not a supported model URI"):
        parse_model_uri("ftp://x")


@pytest.mark.parametrize("uri", ["s3://bucket/llama", "gs://bucket/llama"])
def test_tensorrt_llm_cannot_stream_from_object_storage(uri):
    msg = refusal(md_spec(model={"uri": uri}, engine={"kind": "tensorrt-llm"}))
    assert msg == 'spec.model.uri: engine "tensorrt-llm" can only load models from hf://, pvc:// or oci:// URIs'
    for kind in ("vllm", "sglang", "sim"):
        assert parse_model_deployment_spec(md_spec(model={"uri": uri}, engine={"kind": kind}))


def test_env_value_and_value_from_are_exclusive():
    ref = {"secretKeyRef": {"name": "s", "key": "k"}}
    msg = refusal(md_spec(engine={"kind": "vllm", "env": [{"name": "A", "value": "1", "valueFrom": ref}]}))
    assert msg == "spec.engine.env[0]: set either value or valueFrom, not both"


@pytest.mark.parametrize(
    "source",
    [{}, {"secretKeyRef": {"name": "s", "key": "k"}, "configMapKeyRef": {"name": "c", "key": "k"}}],
)
def test_env_value_from_needs_exactly_one_source(source):
    msg = refusal(md_spec(engine={"kind": "vllm", "env": [{"name": "A", "valueFrom": source}]}))
    assert msg == "spec.engine.env[0].valueFrom: valueFrom needs exactly one of secretKeyRef or configMapKeyRef"


def test_env_names_are_unique():
    msg = refusal(md_spec(engine={"kind": "vllm", "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}))
    assert msg == 'spec.engine.env: Value error, duplicate environment variable "A"'


def test_unknown_fields_are_refused_by_name():
    msg = refusal(md_spec(engine={"kind": "vllm", "quantisation": "awq"}))
    assert msg == "spec.engine.quantisation: Extra inputs are not permitted"


def test_several_problems_are_reported_together():
    msg = refusal(
        md_spec(
            engine={"kind": "tensorrt-llm", "quantization": "gguf"},
            parallelism={"tensor": 8, "pipeline": 8},
            autoscaling={"minReplicas": 4, "maxReplicas": 1},
        )
    )
    assert msg.count("; spec.") >= 2
    for path in ("spec.engine.quantization:", "spec.parallelism:", "spec.autoscaling.maxReplicas:"):
        assert path in msg


def test_backends_are_required():
    assert refusal({"model": "chat", "backends": []}, parse_route_policy_spec) == (
        "spec.backends: at least one backend is required"
    )


def test_a_model_deployment_may_back_a_policy_once_per_adapter():
    spec = {"model": "chat", "backends": [{"modelDeployment": "a", "adapter": "sql"}, {"modelDeployment": "a"}]}
    assert [b.key for b in parse_route_policy_spec(spec).backends] == ["a/sql", "a"]


def test_backend_names_are_unique():
    spec = {"model": "chat", "backends": [{"modelDeployment": "a"}, {"modelDeployment": "b"}, {"modelDeployment": "a"}]}
    assert refusal(spec, parse_route_policy_spec) == (
        "spec.backends: each modelDeployment (or modelDeployment and adapter) may appear only once in a backend list"
    )


def test_rule_backend_lists_follow_the_same_rules():
    rule = {"match": {"headers": {"x-tenant": "premium"}}, "backends": []}
    spec = {**MINIMAL_RP, "rules": [rule]}
    assert refusal(spec, parse_route_policy_spec) == "spec.rules[0].backends: at least one backend is required"


def test_strategy_is_one_of_the_implemented_ones():
    for strategy in ("weighted", "failover", "cost", "latency"):
        assert parse_route_policy_spec({**MINIMAL_RP, "strategy": strategy}).strategy == strategy
    msg = refusal({**MINIMAL_RP, "strategy": "random"}, parse_route_policy_spec)
    assert msg == "spec.strategy: Input should be 'weighted', 'failover', 'cost', 'latency' or 'cascade'"


def test_a_rule_cannot_be_a_cascade():
    rule = {"match": {"headers": {"x-tier": "free"}}, "backends": [{"modelDeployment": "a"}], "strategy": "cascade"}
    assert refusal({**MINIMAL_RP, "rules": [rule]}, parse_route_policy_spec) == (
        "spec.rules[0].strategy: a rule splits by weighted, failover, cost or latency; a cascade is the whole "
        "policy's strategy")


def test_retry_conditions_are_unique():
    msg = refusal({**MINIMAL_RP, "retry": {"retryOn": ["reset", "reset"]}}, parse_route_policy_spec)
    assert msg == "spec.retry.retryOn: Value error, each retry condition may appear only once"


def test_route_match_needs_a_condition():
    spec = {**MINIMAL_RP, "rules": [{"match": {"headers": {}}, "backends": [{"modelDeployment": "a"}]}]}
    assert refusal(spec, parse_route_policy_spec) == (
        "spec.rules[0].match: a rule needs at least one condition: headers, headerPatterns, headersPresent, "
        "endpoint, body or promptBytes")


@pytest.mark.parametrize("match, refused", [
    ({"headerPatterns": {"x-user": "(?=a)b"}},
     "spec.rules[0].match.headerPatterns: Value error, x-user: lookarounds and backreferences are not RE2 syntax"),
    ({"headerPatterns": {"x-user": "(unclosed"}}, "spec.rules[0].match.headerPatterns: Value error, x-user: not a "
                                                  "regular expression (missing ), unterminated subpattern at "
                                                  "position 0)"),
    ({"body": {"temperature": "0"}}, 'spec.rules[0].match.body: body fields are "user" or "metadata.<key>"'),
    ({"endpoint": "images"}, "spec.rules[0].match.endpoint: Input should be 'chat', 'completions' or 'embeddings'"),
    ({"headers": {"bad header": "x"}}, "spec.rules[0].match.headers: header names must be HTTP tokens"),
])
def test_bad_rule_conditions_are_refused_naming_the_field(match, refused):
    spec = {**MINIMAL_RP, "rules": [{"match": match, "backends": [{"modelDeployment": "a"}]}]}
    assert refusal(spec, parse_route_policy_spec).startswith(refused)


def test_every_rule_condition_and_action_parses():
    spec = parse_route_policy_spec({**MINIMAL_RP, "rules": [{
        "match": {"headers": {"x-a": "1"}, "headerPatterns": {"x-b": "^v[0-9]+$"}, "headersPresent": ["x-c"],
                  "endpoint": "completions", "body": {"user": "ana", "metadata.tier": "gold"},
                  "promptBytes": {"min": 10, "max": 4096}},
        "backends": [{"modelDeployment": "a"}], "strategy": "failover", "maxTokens": 256}]})
    rule = spec.rules[0]
    assert rule.strategy == "failover" and rule.max_tokens == 256
    assert rule.match.prompt_bytes is not None and (rule.match.prompt_bytes.min, rule.match.prompt_bytes.max) == (
        10, 4096)


def test_model_deployment_name_must_be_a_dns_label():
    obj = {"metadata": {"name": "Llama.8b"}, "spec": MINIMAL_MD}
    with pytest.raises(ValidationError) as err:
        ModelDeployment.model_validate(obj)
    assert format_validation_error(err.value, root="") == f"metadata.name: {m.NAME_MESSAGE}"
    assert ModelDeployment.model_validate({"metadata": {"name": "llama-8b"}, "spec": MINIMAL_MD})


def test_error_paths_format_list_indexes():
    spec = {"model": "chat", "backends": [{"modelDeployment": "a"}, {"modelDeployment": "a", "weight": -1}]}
    assert refusal(spec, parse_route_policy_spec) == (
        "spec.backends[1].weight: Input should be greater than or equal to 0"
    )


def test_spec_error_keeps_the_structured_errors():
    with pytest.raises(SpecError) as err:
        parse_model_deployment_spec({"engine": {"kind": "vllm"}})
    assert err.value.errors[0]["loc"] == ("model",)


# --------------------------------------------------------------------------- statuses and whole objects


def test_status_is_tolerant_of_unknown_and_missing_fields():
    status = m.ModelDeploymentStatus.model_validate(
        {"readyReplicas": 2, "somethingNew": 1, "conditions": [{"type": "Ready", "status": "True"}]}
    )
    assert status.ready_replicas == 2 and status.conditions[0].type == "Ready"
    assert m.RoutePolicyStatus.model_validate({}).backends == []


def test_ready_text():
    assert m.ready_text(2, 3) == "2/3"


def test_whole_objects_parse():
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "llmfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "llama", "namespace": "ai", "uid": "u", "generation": 2, "finalizers": []},
            "spec": MINIMAL_MD,
            "status": {"observedGeneration": 1, "load": {"queueDepth": 7.5}},
        }
    )
    assert md.metadata.namespace == "ai" and md.status.load.queue_depth == 7.5
    rp = RoutePolicy.model_validate({"metadata": {"name": "chat"}, "spec": MINIMAL_RP})
    assert rp.spec.backends[0].model_deployment == "llama"


# --------------------------------------------------------------------------- examples


def _example_docs():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield pytest.param(doc, id=f"{path.name}:{doc['metadata']['name']}")


@pytest.mark.parametrize("doc", list(_example_docs()))
def test_examples_are_valid_and_namespace_less(doc):
    assert "namespace" not in doc["metadata"]
    if doc["kind"] == "Secret":  # a Tenant example's API keys
        assert doc["apiVersion"] == "v1" and m.API_KEYS_LABEL in doc["metadata"]["labels"]
        return
    assert doc["apiVersion"] == m.API_VERSION
    cls = {"ModelDeployment": ModelDeployment, "RoutePolicy": RoutePolicy, "Tenant": m.Tenant}[doc["kind"]]
    cls.model_validate(doc)


def test_examples_cover_every_engine_and_the_route_policy_refers_to_them():
    docs = [p.values[0] for p in _example_docs()]
    kinds = {d["spec"]["engine"]["kind"] for d in docs if d["kind"] == "ModelDeployment"}
    assert kinds == set(support.ENGINE_KINDS)
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "ModelDeployment"}
    for rp in (d for d in docs if d["kind"] == "RoutePolicy"):
        assert {b["modelDeployment"] for b in rp["spec"]["backends"]} <= names
