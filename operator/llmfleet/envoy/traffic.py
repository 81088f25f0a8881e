"""What each RoutePolicy's traffic did, from its Envoys' own counters. Pure.

Every Envoy counts, per public model (its routes' ``stat_prefix``), the requests its
router completed. A policy's fallback tiers and cascade stages are its own copies of
their clusters (envoy/resources.py), so Envoy counts each one's requests for that
policy alone: a fallback tier takes the attempts the backend before it failed (or
all of them while that backend is ejected or saturated), and cascade stage k+1 takes
what stage k escalated. The leader reads every Envoy's counters
(controller/traffic.py), keeps the increases of the last WINDOW_SECONDS here and
writes the result as the policy's ``status.traffic``, which ``kubectl describe``
shows.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..api.models import RoutePolicySpec, RouteStrategy
from ..routing.table import cluster_name
from .resources import (
    CASCADE_PREFIX,
    FALLBACK_COPY_PREFIX,
    VIRTUAL_HOST,
    cascade_cluster,
    fallback_cluster,
    route_stat_prefix,
    stat_name,
)

WINDOW_SECONDS = 300.0  # the span status.traffic covers
# What the leader asks each Envoy for (admin's /stats/prometheus, through its ready listener).
_COPIES = tuple(stat_name(prefix) for prefix in (CASCADE_PREFIX, FALLBACK_COPY_PREFIX))  # "cascade_", ...
STATS_PARAMS = {"usedonly": "",
                "filter": rf"^(vhost\.{VIRTUAL_HOST}\.route\.|cluster\.({'|'.join(_COPIES)})|server\.uptime$)"}
COMPLETED, REQUESTS = "upstream_rq_completed", "upstream_rq_total"
_ROUTE_SAMPLE, _CLUSTER_SAMPLE = f"envoy_vhost_route_{COMPLETED}", f"envoy_cluster_{REQUESTS}"
UPTIME = ("server", "uptime")  # seconds since the Envoy started (a gauge, not traffic)

# (route stat prefix or cluster stat name, counter) → value
Counters = dict[tuple[str, str], float]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_counters(text: str) -> Counters:
    """The counters traffic reads from one Envoy's Prometheus text: per route, requests
    completed; per policy's copy of a cluster, requests; and the Envoy's uptime."""
    out: Counters = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue  # a comment or a blank line
        name, labels_text, value = match.groups()
        labels = dict(_LABEL.findall(labels_text or ""))
        if name == _ROUTE_SAMPLE and labels.get("envoy_virtual_host") == VIRTUAL_HOST:
            out[(labels.get("envoy_route", ""), COMPLETED)] = float(value)
        elif name == _CLUSTER_SAMPLE and labels.get("envoy_cluster_name", "").startswith(_COPIES):
            out[(labels["envoy_cluster_name"], REQUESTS)] = float(value)
        elif name == "envoy_server_uptime":
            out[UPTIME] = float(value)
    return out


@dataclass
class _Round:
    at: float
    increase: Counters


class TrafficWindow:
    """Counter increases over all Envoys for the last ``seconds``.

    An Envoy's first reading is its baseline (what it counted before is outside any
    window known here), unless it started after the first round: then all it counted
    is new. A counter that went down means that Envoy restarted, and its new value is
    the increase. An Envoy that could not be read this round keeps its last
    reading, so the next round counts what it missed.
    """

    def __init__(self, seconds: float = WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._last: dict[str, Counters] = {}
        self._rounds: collections.deque[_Round] = collections.deque()
        self._started: float | None = None

    def observe(self, now: float, readings: Mapping[str, Counters], present: Iterable[str]) -> None:
        """One round: ``readings`` per Envoy read now; ``present``: every Envoy there is
        (those read and those that failed), the others are forgotten."""
        if self._started is None:
            self._started = now
        increase: Counters = {}
        for node, counters in readings.items():
            before = self._last.get(node)
            if before is None and counters.get(UPTIME, math.inf) < now - self._started:
                before = {}  # it started since we began: everything it counted is new
            if before is not None:
                for key, value in counters.items():
                    if key == UPTIME:
                        continue
                    previous = before.get(key, 0.0)
                    delta = value - previous if value >= previous else value
                    if delta:
                        increase[key] = increase.get(key, 0.0) + delta
            self._last[node] = dict(counters)
        keep = set(present) | set(readings)
        for node in [n for n in self._last if n not in keep]:
            del self._last[node]
        self._rounds.append(_Round(now, increase))
        while self._rounds and self._rounds[0].at <= now - self.seconds:
            self._rounds.popleft()

    def covered(self, now: float) -> float:
        """The seconds the totals span (less than the window until it has filled)."""
        return 0.0 if self._started is None else min(self.seconds, now - self._started)

    def totals(self) -> Counters:
        out: Counters = {}
        for r in self._rounds:
            for key, value in r.increase.items():
                out[key] = out.get(key, 0.0) + value
        return out


def _share(part: float, whole: float) -> float:
    """A share to three decimals (what describe shows)."""
    return round(part / whole, 3)


def traffic_status(namespace: str, spec: RoutePolicySpec, totals: Counters, covered: float) -> dict[str, Any]:
    """``status.traffic`` of one policy: its requests over the window, the share its
    fallback tier answered, and per cascade stage the requests it took and the share
    it escalated to the next stage that took any."""
    prefix = route_stat_prefix(spec.model)
    routed = totals.get((prefix, COMPLETED), 0.0)  # through the router: the split, its rules
    out: dict[str, Any] = {"windowSeconds": int(covered), "requests": int(routed)}
    if spec.fallback is not None and routed:
        fallen = sum(totals.get((copy_stat(fallback_cluster, spec.model, namespace, b.key), REQUESTS), 0)
                     for b in spec.fallback.backends)
        out["fallbackShare"] = _share(min(fallen, routed), routed)
    if spec.strategy is RouteStrategy.CASCADE:
        stages: list[dict[str, Any]] = [
            {"modelDeployment": b.model_deployment,
             "requests": int(totals.get((copy_stat(cascade_cluster, spec.model, namespace, b.key),
                                         REQUESTS), 0))}
            for b in spec.backends]
        taken = [s for s in stages if s["requests"]]  # a stage that was not ready took none
        for i, stage in enumerate(taken):
            if stage is not stages[-1]:  # the last stage has nowhere to escalate to
                after = taken[i + 1]["requests"] if i + 1 < len(taken) else 0
                stage["escalatedShare"] = _share(after, stage["requests"])
        out["requests"] += taken[0]["requests"] if taken else 0
        out["cascade"] = stages
    return out


def copy_stat(copy: Callable[[str, str], str], model: str, namespace: str, backend: str) -> str:
    """The stat name of a policy's copy (``copy``: cascade_cluster or fallback_cluster)
    of a backend's cluster; ``backend`` is its key, "MODELDEPLOYMENT" or "MODELDEPLOYMENT/ADAPTER")."""
    return stat_name(copy(model, cluster_name(namespace, backend)))
