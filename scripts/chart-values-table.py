"""Write the chart's values documentation from the chart itself.

    .venv/bin/python scripts/chart-values-table.py           # rewrite the tables
    .venv/bin/python scripts/chart-values-table.py --check   # exit 1 if one is stale

The values table goes into charts/llmfleet/README.md and README.md; README.md also
shows the values examples, the files in charts/llmfleet/ci/ (which the tests lint,
render and have the API server admit), between `<!-- values-examples:start -->` and
`<!-- values-examples:end -->`.

Each key of values.yaml is documented by the `# --` comment right above it (helm-docs
style; following `#` lines continue it). The table (key, default, description) goes
between the markers `<!-- values-table:start -->` and `<!-- values-table:end -->`.
Sections (keys whose children are documented too) get a row without a default.
tests/unit/test_chart_docs.py fails when the table is stale or a key is undocumented.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "llmfleet"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
TOP_README = REPO / "README.md"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
EXAMPLES_START = "<!-- values-examples:start -->"
EXAMPLES_END = "<!-- values-examples:end -->"
COMMAND = ".venv/bin/python scripts/chart-values-table.py"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")


def value_docs(text: str) -> dict[str, str]:
    """Dotted key path -> its `# --` description, in file order.

    A description belongs to the key on the line right after it (blank lines in
    between break the link, as in helm-docs).
    """
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            if pending is not None:
                docs[".".join(key for _, key in stack)] = " ".join(pending)
        pending = None
    return docs


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def _default(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def values_table(text: str) -> str:
    """The markdown table for the values.yaml ``text``."""
    values = yaml.safe_load(text)
    docs = value_docs(text)
    rows = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for path, description in docs.items():
        value = _lookup(values, path)
        is_section = isinstance(value, dict) and any(other.startswith(path + ".") for other in docs)
        default = "" if is_section else _default(value)
        rows.append(f"| `{path}` | {_cell(default)} | {_cell(description)} |")
    return "\n".join(rows) + "\n"


def values_examples() -> str:
    """Each file of charts/llmfleet/ci/ as a titled YAML block."""
    blocks = []
    for path in sorted((CHART / "ci").glob("*.yaml")):
        rel = path.relative_to(REPO)
        blocks.append(f"`{rel}` (`helm install llmfleet charts/llmfleet -n llmfleet-system -f {rel}`):\n\n"
                      f"```yaml\n{path.read_text(encoding='utf-8').rstrip()}\n```\n")
    return "\n".join(blocks)


def between(text: str, start_marker: str, end_marker: str, body: str, where: Path) -> str:
    """``text`` with what stands between the markers replaced by ``body``."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{where} needs the markers {start_marker} and {end_marker}")
    return text[: start + len(start_marker)] + "\n" + body + text[end:]


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the values-table markers replaced by ``table``."""
    return between(readme, START, END, table, README)


def expected_files() -> dict[Path, str]:
    table = values_table(VALUES.read_text(encoding="utf-8"))
    top = between(TOP_README.read_text(encoding="utf-8"), START, END, table, TOP_README)
    return {README: with_table(README.read_text(encoding="utf-8"), table),
            TOP_README: between(top, EXAMPLES_START, EXAMPLES_END, values_examples(), TOP_README)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff if stale")
    args = parser.parse_args(argv)
    stale = False
    for path, expected in expected_files().items():
        current = path.read_text(encoding="utf-8")
        if current == expected:
            continue
        if args.check:
            sys.stderr.writelines(difflib.unified_diff(current.splitlines(keepends=True),
                                                       expected.splitlines(keepends=True),
                                                       fromfile=str(path), tofile=f"{path} (generated)"))
            sys.stderr.write(f"\nThe values documentation in {path.relative_to(REPO)} is stale; run `{COMMAND}`.\n")
            stale = True
        else:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote the values documentation in {path.relative_to(REPO)}")
    if args.check and not stale:
        print("The values documentation is up to date.")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
