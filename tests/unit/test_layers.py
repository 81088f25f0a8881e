"""The installed package's imports point down: its top-level modules form no cycle, and
nothing in it reaches the dev cluster harness or the benches (which live outside it)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "llmfleet"


def imports_by_top_module() -> dict[str, set[str]]:
    """llmfleet's top-level module or subpackage → the absolute modules it imports."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts  # ("llmfleet", "kube", "views")
        top = parts[1] if len(parts) > 1 else parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out[top].update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(parts[:-1])  # the importing module's package (an __init__'s is itself)
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, node.module] if node.module else base)
                    if not node.module:  # from .. import x: x may be a module
                        out[top].update(f"{module}.{alias.name}" for alias in node.names)
                else:
                    module = node.module or ""
                out[top].add(module)
    return out


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for top, modules in imports_by_top_module().items():
        for module in modules:
            names = module.split(".")
            if names[0] == "llmfleet" and len(names) > 1 and names[1] != top:
                graph[top].add(names[1])
    return graph


def test_the_package_never_imports_the_dev_harness_or_the_benches():
    offenders = {top: sorted(m for m in modules if m.split(".")[0] in {"llmfleet_devcluster", "fleet", "naive"})
                 for top, modules in imports_by_top_module().items()}
    assert {top: mods for top, mods in offenders.items() if mods} == {}
    assert not (PACKAGE / "devcluster").exists()


# The layers, lowest first (README.md, "Code layout"): each imports only from those before it.
LAYERS = ("api", "engines", "render", "signals", "kube", "status", "autoscale", "routing", "config", "telemetry",
          "envoy", "controller", "sim", "openai_endpoint", "usage_report", "cli")


def test_imports_point_down_the_layers():
    graph = internal_graph()
    assert set(graph) - {"__init__"} <= set(LAYERS), "a new top-level module needs its place in LAYERS"
    upward = sorted(f"{top} -> {target}" for top, targets in graph.items() for target in targets
                    if LAYERS.index(target) >= LAYERS.index(top))
    assert upward == []


def test_top_level_modules_form_no_import_cycle():
    graph = internal_graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_the_cycle_check_sees_the_layers_it_guards():
    graph = internal_graph()
    assert "kube" in graph["controller"] and "routing" in graph["envoy"]  # the graph is read, not empty
    assert "controller" not in graph["envoy"] and "routing" not in graph["kube"] and "engines" not in graph["api"]
