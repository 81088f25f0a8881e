"""``llmfleet usage``: requests, tokens and cost by tenant and model, at a glance.

From Prometheus (``--prometheus URL``): the increase of the operator's usage counters
over ``--window``, summed over every operator replica. Without Prometheus
(``--metrics URL``, repeatable: each operator replica's /metrics): the totals since
each replica started. One row per tenant and public model, dearest first, and a total.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str]  # (tenant, model)


@dataclass
class Row:
    requests: float = 0.0
    errors: float = 0.0  # answers other than 2xx (refusals included)
    prompt: float = 0.0
    completion: float = 0.0
    cost: float = 0.0


def add_sample(rows: dict[Key, Row], name: str, labels: dict[str, str], value: float) -> None:
    """One sample of an llmfleet_usage_* counter into the rows."""
    row = rows.setdefault((labels.get("tenant", ""), labels.get("model", "")), Row())
    if name == "llmfleet_usage_requests_total":
        row.requests += value
        if not labels.get("code", "").startswith("2"):
            row.errors += value
    elif name == "llmfleet_usage_tokens_total":
        if labels.get("kind") == "prompt":
            row.prompt += value
        else:
            row.completion += value
    elif name == "llmfleet_usage_cost_total":
        row.cost += value


def from_metrics_text(texts: Iterable[str]) -> dict[Key, Row]:
    """Totals from operator replicas' /metrics texts."""
    rows: dict[Key, Row] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("llmfleet_usage_") and sample.name.endswith("_total"):
                    add_sample(rows, sample.name, sample.labels, sample.value)
    return rows


QUERIES = {
    "llmfleet_usage_requests_total": "sum by (tenant, model, code) (increase(llmfleet_usage_requests_total[{w}]))",
    "llmfleet_usage_tokens_total": "sum by (tenant, model, kind) (increase(llmfleet_usage_tokens_total[{w}]))",
    "llmfleet_usage_cost_total": "sum by (tenant, model) (increase(llmfleet_usage_cost_total[{w}]))",
}


def from_prometheus(url: str, window: str, *, transport: httpx.BaseTransport | None = None) -> dict[Key, Row]:
    """The increases over ``window`` (a PromQL duration, e.g. 1h) from Prometheus's HTTP API."""
    rows: dict[Key, Row] = {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=30, transport=transport) as client:
        for name, query in QUERIES.items():
            response = client.get("/api/v1/query", params={"query": query.format(w=window)})
            response.raise_for_status()
            body = response.json()
            if body.get("status") != "success":
                raise ValueError(f"Prometheus refused {query.format(w=window)!r}: {body.get('error')}")
            for result in body["data"]["result"]:
                add_sample(rows, name, result["metric"], float(result["value"][1]))
    return rows


def table(rows: dict[Key, Row]) -> str:
    header = ("TENANT", "MODEL", "REQUESTS", "ERRORS", "PROMPT TOKENS", "COMPLETION TOKENS", "COST")
    total = Row()
    lines = []
    for (tenant, model), row in sorted(rows.items(), key=lambda kv: (-kv[1].cost, -kv[1].requests, kv[0])):
        if not row.requests:
            continue
        for attr in ("requests", "errors", "prompt", "completion", "cost"):
            setattr(total, attr, getattr(total, attr) + getattr(row, attr))
        lines.append((tenant or "-", model or "-", f"{row.requests:.0f}", f"{row.errors:.0f}", f"{row.prompt:.0f}",
                      f"{row.completion:.0f}", f"{row.cost:.4f}"))
    lines.append(("TOTAL", "", f"{total.requests:.0f}", f"{total.errors:.0f}", f"{total.prompt:.0f}",
                  f"{total.completion:.0f}", f"{total.cost:.4f}"))
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in (header, *lines))


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    p = argparse.ArgumentParser(prog="llmfleet usage", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus that scrapes the operator replicas")
    source.add_argument("--metrics", metavar="URL", action="append",
                        help="an operator replica's /metrics (repeat for each): totals since it started")
    p.add_argument("--window", default="1h", help="with --prometheus: a PromQL duration (default 1h)")
    args = p.parse_args(argv)
    try:
        if args.prometheus:
            rows = from_prometheus(args.prometheus, args.window, transport=transport)
            print(f"usage over the last {args.window} (Prometheus {args.prometheus})")
        else:
            texts = []
            with httpx.Client(timeout=10, transport=transport) as client:
                for url in args.metrics:
                    response = client.get(url)
                    response.raise_for_status()
                    texts.append(response.text)
            rows = from_metrics_text(texts)
            print(f"usage since each of {len(texts)} operator replica(s) started")
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"llmfleet usage: {exc}", file=sys.stderr)
        return 1
    print(table(rows))
    return 0


