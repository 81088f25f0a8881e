"""The chart's documentation: every value documented, the README's values table current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.chart import CHART, load_script

table = load_script("chart-values-table.py")
VALUES_TEXT = (CHART / "values.yaml").read_text()
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _chart_owned_keys(schema: dict, values: dict, path: str = ""):
    """Dotted paths of every key of values.yaml down to the objects the chart owns (schema
    objects with properties); Kubernetes-typed values (resources, affinity...) are leaves."""
    schema = _resolve(schema)
    for key, value in values.items():
        key_path = f"{path}.{key}".lstrip(".")
        yield key_path
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict):
            yield from _chart_owned_keys(sub, value, key_path)


def test_every_value_is_documented() -> None:
    documented = table.value_docs(VALUES_TEXT)
    keys = list(_chart_owned_keys(SCHEMA, yaml.safe_load(VALUES_TEXT)))
    owned = [k for k in keys if not _inside_kubernetes_value(k)]
    missing = [k for k in owned if k not in documented]
    assert not missing, f"values.yaml keys without a `# --` comment: {missing}"
    assert all(documented[k] for k in owned)
    assert len(owned) > 80


def _resolve(node: dict) -> dict:
    return SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


def _inside_kubernetes_value(path: str) -> bool:
    """Whether ``path`` lies inside a Kubernetes-typed value (documented as a whole)."""
    node = SCHEMA
    for part in path.split(".")[:-1]:
        node = _resolve(node)
        if "properties" not in node:
            return True
        node = node["properties"][part]
    return "properties" not in _resolve(node)


def test_value_docs_follow_helm_docs_rules() -> None:
    text = (
        "# a plain comment is not documentation\n"
        "plain: 1\n"
        "# -- A section.\n"
        "section:\n"
        "  # -- First line\n"
        "  # continued.\n"
        "  leaf: x\n"
        "  # -- Detached by a blank line.\n"
        "\n"
        "  other: y\n"
        "# -- Back at the top.\n"
        "top: {}\n"
    )
    assert table.value_docs(text) == {"section": "A section.", "section.leaf": "First line continued.",
                                      "top": "Back at the top."}


def test_values_table_rows() -> None:
    rows = table.values_table(VALUES_TEXT).splitlines()
    assert rows[0] == "| Key | Default | Description |"
    assert "| `image` |  | The llmfleet image:" in "\n".join(rows)  # a section: no default
    assert any(r.startswith('| `image.repository` | `"ghcr.io/llmfleet/llmfleet"` | ') for r in rows)
    assert any(r.startswith("| `operator.replicas` | `2` | ") for r in rows)
    assert any(r.startswith("| `ingress.service.nodePort` | `null` | ") for r in rows)
    assert any(r.startswith('| `operator.resources` | `{"requests":') for r in rows)


def test_readme_values_documentation_is_current() -> None:
    for path, expected in table.expected_files().items():
        assert path.read_text() == expected, f"the values documentation in {path} is stale; run `{table.COMMAND}`"


def test_the_top_readme_shows_every_values_example() -> None:
    text = table.TOP_README.read_text()
    shown = text[text.index(table.EXAMPLES_START):text.index(table.EXAMPLES_END)]
    for path in sorted((CHART / "ci").glob("*.yaml")):
        assert path.read_text().rstrip() in shown, path


def test_check_reports_a_stale_table(tmp_path: Path, monkeypatch, capsys) -> None:
    readme, top = tmp_path / "README.md", tmp_path / "TOP.md"
    readme.write_text(f"# chart\n{table.START}\nold\n{table.END}\nafter\n")
    top.write_text(f"# top\n{table.START}\nold\n{table.END}\n{table.EXAMPLES_START}\nold\n{table.EXAMPLES_END}\n")
    monkeypatch.setattr(table, "README", readme)
    monkeypatch.setattr(table, "TOP_README", top)
    monkeypatch.setattr(table, "REPO", tmp_path)
    monkeypatch.setattr(table, "values_examples", lambda: "examples\n")
    assert table.main(["--check"]) == 1
    assert table.COMMAND in capsys.readouterr().err
    assert table.main([]) == 0
    assert table.main(["--check"]) == 0
    text = readme.read_text()
    assert text.startswith(f"# chart\n{table.START}\n| Key |") and text.endswith(f"{table.END}\nafter\n")
    assert f"{table.EXAMPLES_START}\nexamples\n{table.EXAMPLES_END}" in top.read_text()


def test_markers_are_required() -> None:
    with pytest.raises(ValueError, match="markers"):
        table.with_table("no markers here", "| table |")
