"""What status.traffic says comes from a real Envoy's counters and matches what clients
saw: the share a fallback tier answered and the share a cascade stage escalated."""

from __future__ import annotations

import asyncio
import collections

import httpx

from llmfleet.api.models import RoutePolicySpec
from llmfleet.controller.traffic import read_counters
from llmfleet.envoy.traffic import TrafficWindow, traffic_status
from llmfleet.routing.table import Fallback, Route
from tests.dataplane.conftest import DataPlane, SimFactory, post_many, split, table_for
from tests.dataplane.test_cascade import PROMPTS, ask, cascade_table


class Counted:
    """The Envoy's counters before and after some traffic, as the leader reads them."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.urls = {"envoy": dataplane.envoy.admin_url}
        self.window = TrafficWindow()

    async def read(self, at: float) -> None:
        async with httpx.AsyncClient() as http:
            readings = await read_counters(http, self.urls)
        assert set(readings) == {"envoy"}
        self.window.observe(at, readings, present=self.urls)

    def status(self, spec: dict) -> dict:
        return traffic_status("ai", RoutePolicySpec.model_validate(spec), self.window.totals(), self.window.covered(1))


async def test_the_fallback_share_is_the_share_of_answers_that_came_from_the_fallback(
        dataplane: DataPlane, sims: SimFactory) -> None:
    (flaky,) = sims.start("model-a", args=("--error-rate", "0.3"))
    (steady,) = sims.start("model-b")
    route = Route("flaky-chat", split(("ai/flaky", 1)), fallback=Fallback(("ai/steady",)))
    await asyncio.to_thread(dataplane.apply, table_for([route], {"ai/flaky": [flaky], "ai/steady": [steady]}))
    counted = Counted(dataplane)
    await counted.read(0)
    result = await post_many(dataplane.url, 200, concurrency=4, body={"model": "flaky-chat"})
    await counted.read(1)
    assert result.statuses == {200: 200}, result.errors[:3]
    assert 0 < result.models["model-b"] < 200, result.models  # some errors, some answers
    status = counted.status({"model": "flaky-chat", "backends": [{"modelDeployment": "flaky"}],
                             "fallback": {"backends": [{"modelDeployment": "steady"}]}})
    assert status == {"windowSeconds": 1, "requests": 200, "fallbackShare": round(result.models["model-b"] / 200, 3)}


async def test_a_cascades_escalated_share_is_the_share_the_next_stage_answered(
        dataplane: DataPlane, module_sims: SimFactory) -> None:
    (weak,) = module_sims.start("model-weak", args=("--output-tokens", "8", "--accuracy", "0.64"))
    (strong,) = module_sims.start("model-strong", args=("--output-tokens", "8", "--accuracy", "0.86"))
    await asyncio.to_thread(dataplane.apply, cascade_table(weak, strong))
    counted = Counted(dataplane)
    await counted.read(0)
    answered = collections.Counter()
    for prompt in PROMPTS:
        r = await ask(dataplane, prompt)
        assert r.status_code == 200, r.text
        answered[r.headers["x-llmfleet-cascade-stage"]] += 1
    await counted.read(1)
    assert answered["weak"] and answered["strong"], answered
    status = counted.status({"model": "chat", "strategy": "cascade",
                             "backends": [{"modelDeployment": "weak"}, {"modelDeployment": "strong"}]})
    n = len(PROMPTS)
    assert status == {"windowSeconds": 1, "requests": n, "cascade": [
        {"modelDeployment": "weak", "requests": n, "escalatedShare": round(answered["strong"] / n, 3)},
        {"modelDeployment": "strong", "requests": answered["strong"]}]}
