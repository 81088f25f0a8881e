#!/usr/bin/env python3
"""Write the chart's Grafana dashboard, charts/llmfleet/dashboards/llmfleet.json.

The panels are declared here, once, and laid out on Grafana's 24-column grid;
tests/unit/test_chart.py checks the committed JSON is what this script writes, and the
e2e monitoring test runs every panel's query against a real Prometheus scraping the
fleet. Run after changing a panel:

    .venv/bin/python scripts/render-dashboard.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "charts" / "llmfleet" / "dashboards" / "llmfleet.json"
UID = "llmfleet-overview"

# Every query is scoped to one operator (the job its ServiceMonitor scrapes), then to the
# chosen public models and tenants.
USAGE = 'job="$job",model=~"$model",tenant=~"$tenant"'
RATE = "[$__rate_interval]"


def usage_rate(metric: str, by: str, extra: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{USAGE}{extra}}}{RATE}))"


def quantile(q: float, metric: str, by: str) -> str:
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{{{USAGE}}}{RATE})))"


@dataclass
class Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8
    stack: bool = False
    thresholds: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[Panel]


REQUESTS = "llmfleet_usage_requests_total"
FAILED = ',code=~"5..|0"'
NOT_REFUSED = ',code!~"4.."'
ERRORS = (
    f"(\n  {usage_rate(REQUESTS, 'model', FAILED)}\n  or\n  {usage_rate(REQUESTS, 'model')} * 0\n)\n/\n"
    f"{usage_rate(REQUESTS, 'model', NOT_REFUSED)}"
)
SHARE = (
    f"100 * {usage_rate(REQUESTS, 'model, backend')}\n"
    f"/ ignoring (backend) group_left\n{usage_rate(REQUESTS, 'model')}"
)

ROWS = [
    Row("Fleet overview", [
        Panel("Requests per second by model", "Requests through the ingress, per public model.",
              [(usage_rate(REQUESTS, "model"), "{{model}}")], unit="reqps"),
        Panel("Answers by status code", "Every answer of the selected models, by HTTP status (0: the "
              "stream was reset or timed out before an answer; 429: a limit or budget refused it).",
              [(usage_rate(REQUESTS, "code"), "{{code}}")], unit="reqps", stack=True),
        Panel("Error ratio by model", "Share of requests answered 5xx or not at all, among those not refused "
              "with a 4xx: what the availability SLO counts.",
              [(ERRORS, "{{model}}")], unit="percentunit", thresholds=[(0.005, "orange"), (0.05, "red")]),
        Panel("Time to first token (streams)", "Quantiles over the selected models' streamed requests, "
              "from the request reaching Envoy to its first token.",
              [(quantile(q, "llmfleet_usage_time_to_first_token_seconds", ""), f"p{round(q * 100)}")
               for q in (0.5, 0.95, 0.99)], unit="s"),
        Panel("Time to first token p95 by model", "Streams only.",
              [(quantile(0.95, "llmfleet_usage_time_to_first_token_seconds", "model"), "{{model}}")], unit="s"),
        Panel("Time per output token p95 by model", "Streams: generation time after the first token over "
              "the tokens generated.",
              [(quantile(0.95, "llmfleet_usage_time_per_output_token_seconds", "model"), "{{model}}")], unit="s"),
        Panel("Request duration p95 by model", "From the request to the last byte of its answer.",
              [(quantile(0.95, "llmfleet_usage_request_duration_seconds", "model"), "{{model}}")], unit="s"),
        Panel("Tokens per second by model", "Prompt and completion tokens of the answers (their usage).",
              [(usage_rate("llmfleet_usage_tokens_total", "model, kind"), "{{model}} {{kind}}")], stack=True),
        Panel("Tokens per second by tenant", "Prompt and completion tokens, per tenant (empty: no API key, "
              "the ingress has no Tenants).",
              [(usage_rate("llmfleet_usage_tokens_total", "tenant"), "{{tenant}}")], stack=True),
        Panel("Cost per hour by model", "Tokens at the answering backend's prices (cost.perMillion*Tokens, "
              "else perReplicaHour over its measured throughput), in the currency of the prices.",
              [(f"3600 * {usage_rate('llmfleet_usage_cost_total', 'model')}", "{{model}}")],
              unit="currencyUSD", stack=True),
        Panel("Cost per hour by tenant", "As above, per tenant.",
              [(f"3600 * {usage_rate('llmfleet_usage_cost_total', 'tenant')}", "{{tenant}}")],
              unit="currencyUSD", stack=True),
        Panel("Cost per hour by backend", "As above, per ModelDeployment that answered.",
              [(f"3600 * {usage_rate('llmfleet_usage_cost_total', 'backend')}", "{{backend}}")],
              unit="currencyUSD", stack=True),
    ]),
    Row("Tenants", [
        Panel("Budget used", "Share of each Tenant's and RoutePolicy's budget spent in its current period "
              "(1 = spent: then its action applies, refuse (429 insufficient_quota), downgrade (the cheapest "
              "backend) or notify).",
              [('max by (kind, name, period) (llmfleet_budget_used_ratio{job="$job"})',
                "{{kind}} {{name}} {{period}}")], unit="percentunit", thresholds=[(0.8, "orange"), (1, "red")],
              width=12),
        Panel("Rate-limit decisions", "Checks of the tenants' request and token limits by the leader's "
              "rate-limit service, allowed and refused (429).",
              [('sum by (tenant, limit, decision) (rate(llmfleet_ratelimit_decisions_total'
                '{job="$job",tenant=~"$tenant"}[$__rate_interval]))', "{{tenant}} {{limit}} {{decision}}")],
              unit="reqps", width=12),
    ]),
    Row("Autoscaling", [
        Panel("Replicas", "Per ModelDeployment: the spec's replicas, the ready ones, and what the autoscaler "
              "asks for.",
              [('max by (namespace, name, state) (llmfleet_modeldeployment_replicas{job="$job"})',
                "{{namespace}}/{{name}} {{state}}"),
               ('max by (namespace, name) (llmfleet_autoscaler_desired_replicas{job="$job"})',
                "{{namespace}}/{{name}} autoscaler")]),
        Panel("Queued and running requests", "Summed over each ModelDeployment's replicas, as the operator "
              "last scraped their engines.",
              [('max by (namespace, name) (llmfleet_modeldeployment_queued_requests{job="$job"})',
                "{{namespace}}/{{name}} queued"),
               ('max by (namespace, name) (llmfleet_modeldeployment_running_requests{job="$job"})',
                "{{namespace}}/{{name}} running")]),
        Panel("Models not Ready / Degraded", "ModelDeployments whose Ready condition is not True, and "
              "whose Degraded condition is True.",
              [('sum(1 - max by (namespace, name) (llmfleet_modeldeployment_condition{job="$job",type="Ready"}))',
                "not Ready"),
               ('sum(max by (namespace, name) (llmfleet_modeldeployment_condition{job="$job",type="Degraded"}))',
                "Degraded")], kind="stat", thresholds=[(1, "red")]),
    ]),
    Row("Routing", [
        Panel("Route weights", "The share of each public model's traffic (percent) the operator gives each "
              "backend cluster.",
              [('max by (model, cluster) (llmfleet_route_weight{job="$job",model=~"$model"})',
                "{{model}} → {{cluster}}")], unit="percent", width=12),
        Panel("Actual shares", "The share of each public model's requests (percent) each backend answered: "
              "compare with the weights.",
              [(SHARE, "{{model}} → {{backend}}")], unit="percent", width=12),
    ]),
    Row("Control plane", [
        Panel("Leader and connected Envoys", "Operator replicas leading (1 expected) and Envoy xDS streams "
              "connected to this operator's replicas.",
              [('sum(llmfleet_leader{job="$job"})', "leaders"),
               ('sum(llmfleet_xds_connected_envoys{job="$job"})', "Envoys")], kind="stat"),
        Panel("xDS pushes and rejections", "Configuration updates sent to Envoys, and those Envoy rejected "
              "(NACK: it keeps its previous configuration).",
              [('sum by (type) (rate(llmfleet_xds_pushes_total{job="$job"}[$__rate_interval]))', "{{type}} pushed"),
               ('sum by (type) (rate(llmfleet_xds_nacks_total{job="$job"}[$__rate_interval]))', "{{type}} rejected")],
              unit="ops"),
        Panel("Scrapes", "Targets Prometheus reaches (1) for this operator, and the operator's failed scrapes "
              "of the engines' /metrics by reason (autoscaling is blind to those replicas).",
              [('sum by (instance) (up{job="$job"})', "up {{instance}}"),
               ('sum by (reason) (rate(llmfleet_scrape_errors_total{job="$job"}[$__rate_interval]))',
                "engine scrape failed: {{reason}}")]),
        Panel("Reconciles", "Reconciles per second by kind and result (success, error, invalid, ...).",
              [('sum by (kind, result) (rate(llmfleet_reconcile_total{job="$job"}[$__rate_interval]))',
                "{{kind}} {{result}}")], unit="ops", width=12),
        Panel("Reconcile duration p95", "Time one reconcile takes, by kind.",
              [('histogram_quantile(0.95, sum by (le, kind) (rate(llmfleet_reconcile_duration_seconds_bucket'
                '{job="$job"}[$__rate_interval])))', "{{kind}}")], unit="s", width=12),
    ]),
]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _panel(panel: Panel, pid: int, x: int, y: int) -> dict:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in panel.thresholds]
    defaults: dict = {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}}
    options: dict = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "desc"}}
    if panel.kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10 if panel.stack else 0, "lineWidth": 1, "showPoints": "never",
                              "stacking": {"group": "A", "mode": "normal" if panel.stack else "none"},
                              "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"}}
    else:
        defaults["color"] = {"mode": "thresholds"}
        options = {"colorMode": "value", "graphMode": "none", "reduceOptions": {"calcs": ["lastNotNull"]},
                   "textMode": "value_and_name"}
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
        "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                    for i, (expr, legend) in enumerate(panel.targets)],
    }


def _variable(name: str, label: str, query: str, *, multi: bool) -> dict:
    variable = {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
                "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "sort": 1,
                "multi": multi, "includeAll": multi}
    if multi:
        variable["allValue"] = ".*"
        variable["current"] = {"text": "All", "value": "$__all"}
    return variable


def dashboard() -> dict:
    panels: list[dict] = []
    pid, y = 1, 0
    for row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, pid, x, y))
            pid, x = pid + 1, x + panel.width
        y += 8
    return {
        "uid": UID, "title": "llmfleet", "description": "Usage, latency, cost, tenants, autoscaling and routing "
        "of an llmfleet operator's models (the chart's dashboard).",
        "tags": ["llmfleet", "llm", "inference"], "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
        "timezone": "", "links": [], "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            _variable("job", "Operator", "label_values(llmfleet_leader, job)", multi=False),
            _variable("model", "Model", 'label_values(llmfleet_usage_requests_total{job="$job"}, model)', multi=True),
            _variable("tenant", "Tenant", 'label_values(llmfleet_usage_requests_total{job="$job"}, tenant)',
                      multi=True),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
