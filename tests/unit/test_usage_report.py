"""`llmfleet usage`: rows by tenant and model from Prometheus or the operators' /metrics."""

from __future__ import annotations

import httpx
import pytest

from llmfleet.usage_report import from_metrics_text, main

REPLICA_1 = """\
llmfleet_usage_requests_total{tenant="ai/a",model="chat",backend="ai/small",code="200"} 10
llmfleet_usage_requests_total{tenant="ai/a",model="chat",backend="ai/small",code="429"} 2
llmfleet_usage_tokens_total{tenant="ai/a",model="chat",backend="ai/small",kind="prompt"} 300
llmfleet_usage_tokens_total{tenant="ai/a",model="chat",backend="ai/small",kind="completion"} 100
llmfleet_usage_cost_total{tenant="ai/a",model="chat",backend="ai/small"} 0.5
"""
REPLICA_2 = """\
llmfleet_usage_requests_total{tenant="ai/a",model="chat",backend="ai/big",code="200"} 5
llmfleet_usage_cost_total{tenant="ai/a",model="chat",backend="ai/big"} 1.25
llmfleet_usage_requests_total{tenant="",model="embed",backend="ai/e",code="200"} 7
"""


def test_replicas_and_backends_are_summed_per_tenant_and_model() -> None:
    rows = from_metrics_text([REPLICA_1, REPLICA_2])
    a = rows[("ai/a", "chat")]
    assert (a.requests, a.errors, a.prompt, a.completion, a.cost) == (17, 2, 300, 100, 1.75)
    assert rows[("", "embed")].requests == 7


def test_the_table_reads_from_prometheus(capsys: pytest.CaptureFixture[str]) -> None:
    answers = {
        "llmfleet_usage_requests_total": [({"tenant": "ai/a", "model": "chat", "code": "200"}, "12")],
        "llmfleet_usage_tokens_total": [({"tenant": "ai/a", "model": "chat", "kind": "completion"}, "40")],
        "llmfleet_usage_cost_total": [({"tenant": "ai/a", "model": "chat"}, "0.25")],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        assert "[6h]" in query
        name = next(n for n in answers if n in query)
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": m, "value": [0, v]} for m, v in answers[name]]}})

    assert main(["--prometheus", "http://prom:9090", "--window", "6h"], transport=httpx.MockTransport(handler)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "usage over the last 6h (Prometheus http://prom:9090)"
    assert out[1].split() == ["TENANT", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "TOKENS", "COMPLETION", "TOKENS",
                              "COST"]
    assert out[2].split() == ["ai/a", "chat", "12", "0", "0", "40", "0.2500"]
    assert out[3].split() == ["TOTAL", "12", "0", "0", "40", "0.2500"]


def test_an_unreachable_source_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    assert main(["--metrics", "http://op:8080/metrics"], transport=httpx.MockTransport(refuse)) == 1
    assert capsys.readouterr().err.startswith("llmfleet usage: connection refused")
