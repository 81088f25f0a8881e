"""The CRDs' CEL rules agree with the pydantic validators, verdict and message.

A small stand-in for the API server's validation walks the generated schema the
way kube-apiserver does (apply defaults, then evaluate every
``x-kubernetes-validations`` rule where the object has a value, typed per the
schema) using cel-python. Real kube-apiserver checks (compilation with cel-go,
cost limits) belong to the cluster tests; this catches a rule whose logic or
message drifts from its pydantic twin.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from llmfleet.api import models as m
from llmfleet.api.cel import RULE_ERROR_TYPE
from llmfleet.api.crd import build_crds
from llmfleet.api import support

celpy = pytest.importorskip("celpy", reason="cel-python evaluates the CRDs' CEL rules")
from celpy import celtypes  # noqa: E402

ROOTS = {crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in build_crds()}
_ENV = celpy.Environment()


@cache
def _program(expr: str):
    return _ENV.program(_ENV.compile(expr))


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Schema defaults filled in, as the API server does before validating."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for name, prop in schema.get("properties", {}).items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = apply_defaults(prop, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(out) - set(schema.get("properties", {})):
                out[name] = apply_defaults(extra, out[name])
        return out
    if isinstance(value, list) and schema.get("type") == "array":
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _child_schema(schema: dict[str, Any], key: str) -> dict[str, Any]:
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def to_cel(schema: dict[str, Any], value: Any) -> Any:
    """``value`` as the CEL value the API server would bind, typed by ``schema``."""
    kind = schema.get("type")
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): to_cel(_child_schema(schema, k), v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(schema.get("items", {}), v) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(value)
    return celtypes.StringType(value)


def cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str, str]]:
    """(field path, message, rule) for every rule that ``value`` breaks."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": to_cel(schema, value)}
        if not bool(_program(rule["rule"]).evaluate(activation)):
            message = rule["message"]
            if "messageExpression" in rule:
                computed = str(_program(rule["messageExpression"]).evaluate(activation))
                # The API server uses the static message instead of a result with a line break.
                if computed.strip() and "\n" not in computed and "\r" not in computed:
                    message = computed
            errors.append(((path + rule.get("fieldPath", "")).lstrip("."), message, rule["rule"]))
    if isinstance(value, dict):
        for key, child in value.items():
            errors += cel_errors(_child_schema(schema, key), child, f"{path}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            errors += cel_errors(schema.get("items", {}), child, f"{path}[{i}]")
    return errors


def api_server_errors(kind: str, obj: dict[str, Any]) -> set[tuple[str, str]]:
    root = ROOTS[kind]
    return {(p, msg) for p, msg, _ in cel_errors(root, apply_defaults(root, obj), "")}


def pydantic_errors(cls: type[BaseModel], obj: dict[str, Any]) -> set[tuple[str, str]] | None:
    """The rule errors pydantic reports, or None when it accepts ``obj``.

    Any other error means the test produced an object the schema would refuse.
    """
    try:
        cls.model_validate(obj)
    except ValidationError as err:
        rule_errors = [e for e in err.errors() if e["type"] == RULE_ERROR_TYPE]
        assert len(rule_errors) == len(err.errors()), f"not a schema-valid object: {err}"
        return set(m.error_paths(err, root=""))
    return None


def md(spec: dict[str, Any], name: str = "llama") -> dict[str, Any]:
    return {"apiVersion": m.API_VERSION, "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def rp(spec: dict[str, Any], name: str = "chat") -> dict[str, Any]:
    return {"apiVersion": m.API_VERSION, "kind": "RoutePolicy", "metadata": {"name": name}, "spec": spec}


def _md_spec(**fields: Any) -> dict[str, Any]:
    return {"model": {"uri": "hf://org/model"}, "engine": {"kind": "vllm"}, **fields}


ENV_SECRET = {"secretKeyRef": {"name": "s", "key": "k"}}
ENV_CONFIG_MAP = {"configMapKeyRef": {"name": "c", "key": "k"}}

# One object breaking each rule (at least); the last test checks every rule is hit.
RULE_CASES = [
    ("prefix-not-gated", {"apiVersion": m.API_VERSION, "kind": "RoutePolicy", "metadata": {"name": "p"}, "spec": {
        "model": "chat", "backends": [{"modelDeployment": "a"}], "prefixAffinity": {},
        "fallback": {"backends": [{"modelDeployment": "b"}], "maxInFlightPerReplica": 4}}}),
    ("prefix-not-cascade", {"apiVersion": m.API_VERSION, "kind": "RoutePolicy", "metadata": {"name": "p"}, "spec": {
        "model": "chat", "strategy": "cascade", "backends": [{"modelDeployment": "a"}, {"modelDeployment": "b"}],
        "prefixAffinity": {}}}),
    ("budget-amount", {"apiVersion": m.API_VERSION, "kind": "Tenant", "metadata": {"name": "t"}, "spec": {
        "apiKeys": {"secretName": "k"}, "models": ["*"], "budgets": [{"period": "day", "dollars": 5, "tokens": 9}]}}),
    ("uri", md(_md_spec(model={"uri": "ftp://x"}))),
    ("uri-newline", md(_md_spec(model={"uri": "hf://org/model\n"}))),
    ("quantization", md(_md_spec(engine={"kind": "tensorrt-llm", "quantization": "gguf"}))),
    ("dtype", md(_md_spec(engine={"kind": "tensorrt-llm", "dtype": "float16"}))),
    ("uri-scheme", md(_md_spec(model={"uri": "gs://bucket/llama"}, engine={"kind": "tensorrt-llm"}))),
    ("uri-scheme-triton", md(_md_spec(model={"uri": "s3://bucket/llama"}, engine={"kind": "triton"}))),
    ("triton-served-name", md(_md_spec(model={"uri": "hf://org/model", "servedName": "meta-llama/Llama-3"},
                                       engine={"kind": "triton"}))),
    ("triton-served-name-dot", md(_md_spec(model={"uri": "hf://org/model", "servedName": ".."},
                                           engine={"kind": "triton"}))),
    ("parallelism", md(_md_spec(parallelism={"tensor": 8, "pipeline": 2}))),
    ("parallelism-default-pipeline", md(_md_spec(parallelism={"pipeline": 3, "tensor": 3}))),
    ("replicas", md(_md_spec(autoscaling={"minReplicas": 5, "maxReplicas": 2}))),
    ("replicas-default-min", md(_md_spec(autoscaling={"maxReplicas": 0 + 1, "minReplicas": 2}))),
    ("target-required", md(_md_spec(autoscaling={"maxReplicas": 2, "metric": "tokensPerSecond"}))),
    ("kv-target", md(_md_spec(autoscaling={"maxReplicas": 2, "metric": "kvCacheUtilization", "target": 2}))),
    ("slo-metric", md(_md_spec(autoscaling={"maxReplicas": 2, "slo": {"ttftP95Milliseconds": 1000}}))),
    ("env-both", md(_md_spec(engine={"kind": "vllm", "env": [{"name": "A", "value": "x", "valueFrom": ENV_SECRET}]}))),
    ("env-no-source", md(_md_spec(engine={"kind": "vllm", "env": [{"name": "A", "valueFrom": {}}]}))),
    (
        "env-two-sources",
        md(_md_spec(engine={"kind": "vllm", "env": [{"name": "A", "valueFrom": {**ENV_SECRET, **ENV_CONFIG_MAP}}]})),
    ),
    ("adapters-engine", md(_md_spec(engine={"kind": "sglang"}, adapters=[{"name": "sql", "uri": "hf://o/sql"}]))),
    ("lora-engine", md(_md_spec(engine={"kind": "tensorrt-llm"}, lora={"maxRank": 64}))),
    ("adapter-uri", md(_md_spec(engine={"kind": "vllm"}, adapters=[{"name": "sql", "uri": "s3://bucket/sql"}]))),
    ("adapters-unique", md(_md_spec(engine={"kind": "vllm"}, adapters=[{"name": "sql", "uri": "hf://o/a"},
                                                                       {"name": "sql", "uri": "hf://o/b"}]))),
    ("kv-metric-triton", md(_md_spec(engine={"kind": "triton"}, autoscaling={
        "maxReplicas": 2, "metric": "kvCacheUtilization", "target": 0.8}))),
    ("name", md(_md_spec(), name="Llama")),
    ("name-dot", md(_md_spec(), name="llama.8b")),
    ("rule-no-condition", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                              "rules": [{"match": {}, "backends": [{"modelDeployment": "b"}]}]})),
    ("rule-empty-headers", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                               "rules": [{"match": {"headers": {}, "body": {}}, "backends": [{"modelDeployment": "b"}]}]})),
    ("prompt-bytes-empty", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                               "rules": [{"match": {"promptBytes": {}}, "backends": [{"modelDeployment": "b"}]}]})),
    ("prompt-bytes-inverted", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                                  "rules": [{"match": {"promptBytes": {"min": 10, "max": 5}},
                                             "backends": [{"modelDeployment": "b"}]}]})),
    ("rule-header-name", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                             "rules": [{"match": {"headers": {"bad name": "x"}}, "backends": [{"modelDeployment": "b"}]}]})),
    ("rule-body-field", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                            "rules": [{"match": {"body": {"temperature": "0"}}, "backends": [{"modelDeployment": "b"}]}]})),
    ("cascade-without-its-strategy", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                                         "cascade": {"minMeanLogprob": -1}})),
    ("rule-as-cascade", rp({"model": "chat", "backends": [{"modelDeployment": "a"}],
                            "rules": [{"match": {"headers": {"x": "y"}}, "backends": [{"modelDeployment": "b"}],
                                       "strategy": "cascade"}]})),
    ("backends-empty", rp({"model": "chat", "backends": []})),
    ("backends-dup", rp({"model": "chat", "backends": [{"modelDeployment": "a"}, {"modelDeployment": "a"}]})),
    (
        "rule-backends",
        rp(
            {
                "model": "chat",
                "backends": [{"modelDeployment": "a"}],
                "rules": [{"match": {"headers": {"x": "y"}}, "backends": [{"modelDeployment": "b"}] * 2}],
            }
        ),
    ),
]

CLASSES = {"ModelDeployment": m.ModelDeployment, "RoutePolicy": m.RoutePolicy, "Tenant": m.Tenant}


@pytest.mark.parametrize("obj", [c[1] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_cel_rule_and_pydantic_refuse_with_the_same_message(obj):
    cel = api_server_errors(obj["kind"], obj)
    pyd = pydantic_errors(CLASSES[obj["kind"]], obj)
    assert cel, "the CEL rules accepted an object pydantic should refuse"
    assert pyd == cel


def test_every_cel_rule_is_exercised_by_a_case():
    def rules(node: Any) -> set[str]:
        found = set()
        if isinstance(node, dict):
            found |= {r["rule"] for r in node.get("x-kubernetes-validations", [])}
            for value in node.values():
                found |= rules(value)
        elif isinstance(node, list):
            for value in node:
                found |= rules(value)
        return found

    all_rules = rules(list(ROOTS.values()))
    fired = set()
    for _, obj in RULE_CASES:
        root = ROOTS[obj["kind"]]
        fired |= {rule for _, _, rule in cel_errors(root, apply_defaults(root, obj), "")}
    assert all_rules - fired == set()


@pytest.mark.parametrize("obj", [md(_md_spec()), rp({"model": "chat", "backends": [{"modelDeployment": "a"}]})])
def test_valid_objects_pass_both(obj):
    assert api_server_errors(obj["kind"], obj) == set()
    assert pydantic_errors(CLASSES[obj["kind"]], obj) is None


@pytest.mark.parametrize("kind", support.ENGINE_KINDS)
def test_quantization_rule_follows_the_support_table(kind):
    for q in support.QUANTIZATIONS:
        cel = api_server_errors("ModelDeployment", md(_md_spec(engine={"kind": kind, "quantization": q})))
        if q in support.allowed_quantizations(kind):
            assert cel == set()
        else:
            assert cel == {("spec.engine.quantization", support.quantization_refusal(kind, q))}


def _defaults(node: dict[str, Any], path: str = ""):
    yield from ([(path, node)] if "default" in node else [])
    for name, prop in node.get("properties", {}).items():
        yield from _defaults(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _defaults(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", sorted(ROOTS))
def test_schema_defaults_pass_their_rules_as_written(kind):
    """The API server checks each default against the rules without filling in nested defaults."""
    for path, node in _defaults(ROOTS[kind]):
        assert cel_errors(node, node["default"], path) == [], path


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"uri": "hf://x"}, "engine": {"kind": "sim"}},
        {"model": {"uri": "hf://x"}, "engine": {"kind": "vllm"}, "autoscaling": {"maxReplicas": 3}},
    ],
)
def test_crd_defaults_equal_pydantic_defaults(spec):
    schema = ROOTS["ModelDeployment"]["properties"]["spec"]
    defaulted = apply_defaults(schema, spec)
    parsed = m.dump(m.parse_model_deployment_spec(spec))
    parsed = {k: v for k, v in parsed.items() if v != []}  # empty lists are not defaults
    parsed["engine"] = {k: v for k, v in parsed["engine"].items() if v != []}
    assert defaulted == parsed


def test_route_policy_crd_defaults_equal_pydantic_defaults():
    spec = {"model": "chat", "backends": [{"modelDeployment": "a"}]}
    defaulted = apply_defaults(ROOTS["RoutePolicy"]["properties"]["spec"], spec)
    parsed = {k: v for k, v in m.dump(m.parse_route_policy_spec(spec)).items() if v != []}
    assert defaulted == parsed


# --------------------------------------------------------------------------- property test

NAMES = st.sampled_from(["llama", "llama-8b", "Llama", "8b", "a.b", "x-"])
URIS = st.sampled_from(
    [
        "hf://org/model",
        "hf://gpt2",
        "s3://bucket/llama",
        "gs://bucket/llama",
        "pvc://models/llama",
        "pvc://models/../x",
        "oci://ghcr.io/acme/llama:1",
        "oci://ghcr.io",
        "http://x",
        "hf://a/b/c",
    ]
)
ENV_SOURCES = st.fixed_dictionaries({}, optional={"secretKeyRef": st.just(ENV_SECRET["secretKeyRef"]),
                                                   "configMapKeyRef": st.just(ENV_CONFIG_MAP["configMapKeyRef"])})
ENV_VARS = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["A", "B", "HF_HOME"])},
        optional={"value": st.sampled_from(["", "1"]), "valueFrom": ENV_SOURCES},
    ),
    max_size=3,
    unique_by=lambda e: e["name"],
)
ENGINES = st.fixed_dictionaries(
    {"kind": st.sampled_from(support.ENGINE_KINDS)},
    optional={
        "quantization": st.sampled_from(support.QUANTIZATIONS),
        "dtype": st.sampled_from(support.DTYPES),
        "maxModelLen": st.integers(1, 100_000),
        "env": ENV_VARS,
    },
)
AUTOSCALING = st.fixed_dictionaries(
    {"maxReplicas": st.integers(1, 6)},
    optional={
        "minReplicas": st.integers(1, 6),
        "metric": st.sampled_from([x.value for x in m.AutoscalingMetric]),
        "target": st.one_of(st.integers(1, 50), st.floats(0.05, 3.0)),
    },
)
MD_SPECS = st.fixed_dictionaries(
    {"model": st.fixed_dictionaries({"uri": URIS}), "engine": ENGINES},
    optional={
        "parallelism": st.fixed_dictionaries({}, optional={"tensor": st.integers(1, 8), "pipeline": st.integers(1, 8)}),
        "autoscaling": AUTOSCALING,
        "replicas": st.integers(0, 4),
    },
)
BACKENDS = st.lists(st.fixed_dictionaries({"modelDeployment": st.sampled_from(["a", "b", "c"])}), max_size=4)
RP_SPECS = st.fixed_dictionaries(
    {"model": st.just("chat"), "backends": BACKENDS},
    optional={
        "rules": st.lists(
            st.fixed_dictionaries({"match": st.just({"headers": {"x": "y"}}), "backends": BACKENDS}), max_size=2
        )
    },
)


def _agree(kind: str, obj: dict[str, Any]) -> None:
    cel = api_server_errors(kind, obj)
    pyd = pydantic_errors(CLASSES[kind], obj)
    assert (pyd is None) == (not cel), (cel, pyd)
    if pyd is not None:
        # pydantic skips a model's own checks once one of its fields failed, so it may
        # report fewer problems than the API server, never different ones.
        assert pyd <= cel
        if len(cel) == 1:
            assert pyd == cel


_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(name=NAMES, spec=MD_SPECS)
def test_model_deployment_rules_agree_on_generated_specs(name, spec):
    _agree("ModelDeployment", md(spec, name))


@_SETTINGS
@given(spec=RP_SPECS)
def test_route_policy_rules_agree_on_generated_specs(spec):
    _agree("RoutePolicy", rp(spec))
