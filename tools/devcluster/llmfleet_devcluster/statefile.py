"""The JSON files in which the dev cluster's kubelets (the system node's, the sim fleet's)
publish what they run, for tests and benchmarks to read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` at once: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def read_state(path: Path) -> dict[str, Any]:
    """What ``path`` holds; empty before the first write."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
