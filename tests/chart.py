"""Render charts/llmfleet with the pinned helm binary, for the chart tests of every tier.

The binary comes from ``llmfleet_devcluster.tools.require_tools()``; without it the
tests fail (never skip) and say how to build it.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "llmfleet"
RELEASE = "llmfleet"
NAMESPACE = "llmfleet-system"


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>`` (a file name with dashes) as a module."""
    path = REPO / "scripts" / name
    module_name = path.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@functools.cache
def helm_binary() -> Path:
    return tool("helm")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False)


def template_args(sets: Iterable[str] = (), values: Iterable[str | Path] = (), release: str = RELEASE,
                  namespace: str = NAMESPACE) -> list[str]:
    args = [release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    for v in values:
        args += ["--values", str(v)]
    return args


@functools.cache
def _render_text(sets: tuple[str, ...], values: tuple[str, ...], release: str, namespace: str,
                 extra: tuple[str, ...]) -> str:
    done = run_helm("template", *template_args(sets, values, release, namespace), *extra)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return done.stdout


def render_text(*sets: str, values: Iterable[str | Path] = (), release: str = RELEASE,
                namespace: str = NAMESPACE, hooks: bool = True) -> str:
    """What `helm template` prints (hooks such as the test pod included)."""
    extra = () if hooks else ("--no-hooks",)
    return _render_text(tuple(sets), tuple(str(v) for v in values), release, namespace, extra)


def render(*sets: str, values: Iterable[str | Path] = (), release: str = RELEASE, namespace: str = NAMESPACE,
           hooks: bool = True) -> list[dict[str, Any]]:
    """The objects `helm template` renders (hooks such as the test pod included)."""
    text = render_text(*sets, values=values, release=release, namespace=namespace, hooks=hooks)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def refusal(*sets: str, command: str = "template") -> str:
    """stderr of a helm command that must fail with these values."""
    if command == "install":
        args = ["install", *template_args(sets), "--dry-run=client"]
    else:
        args = ["template", *template_args(sets)]
    done = run_helm(*args)
    assert done.returncode != 0, f"helm {command} accepted {sets}"
    return done.stderr


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``, ``namespace``)."""
    matches = list(select(objects, kind, name, namespace))
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def select(objects: list[dict[str, Any]], kind: str, name: str | None = None,
           namespace: str | None = None) -> Iterator[dict[str, Any]]:
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] == kind and name in (None, meta["name"]) and namespace in (None, meta.get("namespace")):
            yield obj


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the chart renders (Deployments' templates and bare Pods), by object name."""
    specs = {}
    for obj in objects:
        if obj["kind"] == "Deployment":
            specs[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            specs[obj["metadata"]["name"]] = obj["spec"]
    return specs


def container(objects: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (c,) = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c


def tool(name: str) -> Path:
    """A pinned tool built or fetched by build-tools.sh (promtool, prometheus, ...): fail, never skip."""
    from llmfleet_devcluster.tools import ToolsMissing, require_tools

    try:
        return require_tools().path(name)
    except ToolsMissing as exc:
        pytest.fail(f"this test needs the pinned {name}: {exc}", pytrace=False)


def rule_file(*sets: str, values: Iterable[str | Path] = (), release: str = RELEASE,
              annotations: bool = True) -> dict[str, Any]:
    """The chart's PrometheusRule (enabled, with ``sets``) as a Prometheus rule file; without
    its alerts' annotations when ``annotations`` is false (promtool's unit tests compare them
    whole)."""
    spec = find(render("metrics.prometheusRule.enabled=true", *sets, values=values, release=release),
                "PrometheusRule")["spec"]
    if not annotations:
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    return spec


def dashboard(*sets: str, release: str = RELEASE) -> dict[str, Any]:
    """The Grafana dashboard of the chart's ConfigMap (enabled, with ``sets``)."""
    import json

    (configmap,) = [c for c in select(render("metrics.dashboards.enabled=true", *sets, release=release), "ConfigMap")
                    if c["metadata"]["name"].endswith("-dashboard")]
    return json.loads(configmap["data"]["llmfleet.json"])
