"""Small helpers shared by the test tiers."""

from __future__ import annotations

import json
import time


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    """Poll until `predicate()` is truthy and return it; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def kubectl_json(cluster, *args: str):
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)
