"""Scaling down costs no stream: the removed replicas finish what they are serving.

The pod spec's preStop sleep keeps a deleted replica serving while the operator takes
it out of Envoy's endpoints; then SIGTERM starts the sim's drain, and the grace
period bounds it. The sim fleet plays the kubelet's part (scaled by --time-scale).
"""

from __future__ import annotations

import asyncio
import copy
import time

import httpx
import openai

from tests.helpers import kubectl_json, wait_for
from tests.integration.test_modeldeployment import EXAMPLES, apply, load_md

TIME_SCALE = 0.5  # preStop 2 s -> 1 s, drain at most 10 s -> 5 s, grace 15 s -> 7.5 s
TOKENS = 120  # of 40 model ms at time-scale 0.5: about 2.4 s per stream
FIRST_WAVE = 12  # in flight on every replica when the scale-down starts
SECOND_WAVE = 6  # started while the replicas are being removed
ID_PREFIX = len("chatcmpl-") + 12  # the sim's ids start with a per-process random prefix


def fixed_md(name: str, replicas: int) -> dict:
    md = copy.deepcopy(load_md(EXAMPLES / "sim-quickstart.yaml"))
    md["metadata"] = {"name": name}
    md["spec"]["model"]["servedName"] = f"{name}-model"
    md["spec"]["engine"]["extraArgs"] += ["--time-scale", str(TIME_SCALE), "--decode-step-ms", "40"]
    md["spec"].pop("autoscaling")
    md["spec"]["replicas"] = replicas
    return md


class Stream:
    """One streamed chat completion through Envoy: who served it, its tokens, how it ended."""

    def __init__(self) -> None:
        self.started = asyncio.get_running_loop().create_future()
        self.replica = ""
        self.tokens = 0
        self.finish: str | None = None
        self.error: str | None = None

    async def run(self, sdk: openai.AsyncOpenAI, model: str) -> None:
        try:
            stream = await sdk.chat.completions.create(
                model=model, max_tokens=TOKENS, stream=True, messages=[{"role": "user", "content": "go"}])
            async for chunk in stream:
                self.replica = chunk.id[:ID_PREFIX]
                if not self.started.done():
                    self.started.set_result(None)
                for choice in chunk.choices:
                    self.tokens += 1 if choice.delta.content else 0
                    self.finish = choice.finish_reason or self.finish
        except (openai.APIError, httpx.HTTPError) as exc:  # a cut stream raises httpx's errors
            self.error = repr(exc)
        finally:
            if not self.started.done():
                self.started.set_result(None)

    @property
    def complete(self) -> bool:
        return self.error is None and self.tokens == TOKENS and self.finish == "length"


def test_scale_down_while_streaming_loses_no_stream(dev_cluster, operator, fleet, envoy, namespace):
    ns, name = namespace, "shrink"
    assert apply(dev_cluster, ns, fixed_md(name, 3)).returncode == 0
    apply(dev_cluster, ns, {"apiVersion": "llmfleet.io/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": name},
                            "spec": {"model": f"{name}-e2e", "backends": [{"modelDeployment": name}]}})
    fleet.wait_ready(3, ns, timeout=60)
    wait_for(lambda: (kubectl_json(dev_cluster, "get", "rp", name, "-n", ns).get("status", {}).get("backends")
                      or [{}])[0].get("readyReplicas") == 3, what="the route to include all 3 replicas")

    async def scenario() -> tuple[list[Stream], list[Stream], list[str], bool]:
        sdk = openai.AsyncOpenAI(base_url=f"{envoy.url}/v1", api_key="unused", max_retries=0, timeout=60)
        first = [Stream() for _ in range(FIRST_WAVE)]
        tasks = [asyncio.create_task(s.run(sdk, f"{name}-e2e")) for s in first]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(s.started for s in first))
                await asyncio.to_thread(dev_cluster.kubectl, "scale", "md", name, "-n", ns, "--replicas=1")
                second = [Stream() for _ in range(SECOND_WAVE)]
                tasks += [asyncio.create_task(s.run(sdk, f"{name}-e2e")) for s in second]
                # The two removed replicas are terminating while the first wave still streams.
                terminating = await asyncio.to_thread(
                    wait_for, lambda: len(t := fleet.terminating(ns)) == 2 and t, timeout=10,
                    interval=0.05, what="two replicas terminating")
                in_flight = not all(t.done() for t in tasks[:FIRST_WAVE])
                await asyncio.gather(*tasks)
        finally:
            await sdk.close()
        return first, second, terminating, in_flight

    started = time.monotonic()
    first, second, terminating, in_flight = asyncio.run(scenario())
    print(f"\n{FIRST_WAVE + SECOND_WAVE} streams across a 3 -> 1 scale-down in {time.monotonic() - started:.1f} s; "
          f"terminating: {terminating}")

    assert in_flight, "the streams ended before the replicas were terminating; nothing tested"
    # 3 replicas served the first wave and only 1 stays: some streams were on removed ones.
    assert len({s.replica for s in first}) >= 2, [s.replica for s in first]
    failed = [(s.replica, s.tokens, s.finish, s.error) for s in first + second if not s.complete]
    assert failed == [], failed
    # And the removed replicas' processes are gone in time, the survivor still serving.
    wait_for(lambda: not fleet.terminating(ns), timeout=15, what="the removed replicas' processes to end")
    assert len(fleet.ready(ns)) == 1 and len([k for k in fleet.replicas() if k.startswith(f"{ns}/")]) == 1
