"""Leader election against the real API server: one leader at a time, a clean stop
hands over at once, a leader that stops renewing is replaced after the lease's
duration, and one cut off from the API server steps down before that."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmfleet.kube.client import KubeClient
from llmfleet.kube.lease import LeaderElector, LeaseTimings
from llmfleet.kube.resources import LEASES

FAST = LeaseTimings(duration=3.0, renew_deadline=2.0, retry_period=0.3)


class Candidate:
    def __init__(self, client: KubeClient, namespace: str, identity: str, log: list) -> None:
        async def started() -> None:
            log.append(("started", identity, time.monotonic()))

        async def stopped() -> None:
            log.append(("stopped", identity, time.monotonic()))

        self.holders: list[str | None] = []  # the leader's address, each time it changed
        self.elector = LeaderElector(client, namespace, "llmfleet-leader", identity,
                                     on_started=started, on_stopped=stopped, timings=FAST,
                                     address=f"10.0.0.{identity[-1]}:18000",
                                     on_holder=lambda: self.holders.append(self.elector.holder_address))
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self, release: bool) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if release:
            await self.elector.release()


async def until(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def leaders(candidates: list[Candidate]) -> list[str]:
    return [c.elector.identity for c in candidates if c.elector.leading]


@pytest.fixture
def client(dev_cluster):
    return lambda: KubeClient.from_environment(str(dev_cluster.kubeconfig))


def test_one_leader_and_a_clean_stop_hands_over_at_once(client, namespace):
    async def scenario() -> None:
        log: list = []
        kube = client()
        candidates = [Candidate(kube, namespace, f"replica-{i}", log) for i in range(3)]
        try:
            await until(lambda: len(leaders(candidates)) == 1, 10, "a leader")
            await asyncio.sleep(FAST.duration * 2)  # renewals go on; nobody else takes over
            assert len(leaders(candidates)) == 1 and [e for e in log if e[0] == "started"] == log[:1]
            first = next(c for c in candidates if c.elector.leading)
            lease = await kube.get(LEASES, "llmfleet-leader", namespace)
            assert lease["spec"]["holderIdentity"] == first.elector.identity

            # Every replica knows where the leader serves (its rate-limit service).
            await until(lambda: all(c.elector.holder_address == first.elector.address for c in candidates), 5,
                        "every candidate to read the leader's address from the Lease")

            await first.stop(release=True)
            rest = [c for c in candidates if c is not first]
            took = await until(lambda: len(leaders(rest)) == 1, 10, "a new leader")
            second = next(c for c in rest if c.elector.leading)
            await until(lambda: all(c.elector.holder_address == second.elector.address for c in rest), 5,
                        "the new leader's address")
            assert all(c.holders[-1] == second.elector.address for c in rest)
            assert took < FAST.duration, f"a released Lease was taken over after {took:.1f} s"
            lease = await kube.get(LEASES, "llmfleet-leader", namespace)
            assert lease["spec"]["holderIdentity"] == leaders(rest)[0]
            assert lease["spec"]["leaseTransitions"] == 1
            for c in rest:
                await c.stop(release=False)
        finally:
            for c in candidates:
                c.task.cancel()
            await kube.close()

    asyncio.run(scenario())


def test_a_leader_that_stops_renewing_is_replaced_after_the_lease_duration(client, namespace):
    async def scenario() -> None:
        log: list = []
        kube = client()
        a = Candidate(kube, namespace, "replica-a", log)
        try:
            await until(lambda: a.elector.leading, 10, "replica-a to lead")
            b = Candidate(kube, namespace, "replica-b", log)
            await asyncio.sleep(1.0)
            await a.stop(release=False)  # as if SIGKILLed: the Lease stays held
            killed = time.monotonic()
            await until(lambda: b.elector.leading, 10, "replica-b to take over")
            took = time.monotonic() - killed
            assert FAST.duration - 1.0 <= took <= FAST.duration + 2 * FAST.retry_period + 1.0, took
            await b.stop(release=True)
        finally:
            a.task.cancel()
            await kube.close()

    asyncio.run(scenario())


class CutOff(KubeClient):
    """A client whose requests hang once ``cut`` is set, as when the API server is unreachable."""

    cut = False

    async def request(self, *args, **kwargs):
        if self.cut:
            await asyncio.sleep(3600)
        return await super().request(*args, **kwargs)


def test_a_leader_cut_off_from_the_api_server_steps_down_before_another_may_lead(dev_cluster, namespace):
    async def scenario() -> None:
        log: list = []
        cut = CutOff.from_environment(str(dev_cluster.kubeconfig))
        kube = KubeClient.from_environment(str(dev_cluster.kubeconfig))
        a = Candidate(cut, namespace, "replica-a", log)
        try:
            await until(lambda: a.elector.leading, 10, "replica-a to lead")
            b = Candidate(kube, namespace, "replica-b", log)
            cut.cut = True
            await until(lambda: b.elector.leading, 15, "replica-b to take over")
            stopped = next(t for kind, who, t in log if kind == "stopped" and who == "replica-a")
            started = next(t for kind, who, t in log if kind == "started" and who == "replica-b")
            assert stopped < started, "two replicas led at once"
            await b.stop(release=True)
        finally:
            a.task.cancel()
            await cut.close()
            await kube.close()

    asyncio.run(scenario())
