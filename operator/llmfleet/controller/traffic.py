"""The leader reads every Envoy's counters and writes each RoutePolicy's ``status.traffic``.

Every operator replica knows where its connected Envoys serve their counters (their
xDS node metadata names the port, and the pod's address or else their stream's is the
host: envoy/xds.py stats_url) and says so in
its xDS report (controller/xdsreports.py), so the leader reaches every Envoy whichever
replica it is connected to. Each round reads them all at once (admin's
``/stats/prometheus`` through each Envoy's ready listener, only the counters traffic
needs), and envoy/traffic.py turns the increases over the window into each policy's
requests, fallback share and cascade escalation rates. The result is written under
its own field manager, only when a number changed and at most every WRITE_ROUNDS
rounds per policy, so a busy fleet does not become a stream of status writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from ..envoy.bootstrap import STATS_PREFIX
from ..envoy.traffic import STATS_PARAMS, Counters, TrafficWindow, parse_counters, traffic_status
from ..kube.client import ApiError, KubeClient
from ..kube.store import Store
from ..kube.views import Ref
from .statuswriter import TRAFFIC as FIELD_MANAGER
from .statuswriter import StatusWriter

log = logging.getLogger(__name__)
WRITE_ROUNDS = 4  # a policy's status.traffic is rewritten at most every this many rounds
READ_TIMEOUT = 3.0  # seconds one Envoy may take to answer


async def read_counters(client: httpx.AsyncClient, urls: Mapping[str, str]) -> dict[str, Counters]:
    """Every Envoy's counters at once (node ID → counters); one that does not answer is
    left out, and its increase is counted when it answers again."""
    async def one(node: str, url: str) -> tuple[str, Counters | None]:
        try:
            response = await client.get(f"{url}{STATS_PREFIX}", params=STATS_PARAMS, timeout=READ_TIMEOUT)
            response.raise_for_status()
            return node, parse_counters(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("could not read the counters of Envoy %s at %s: %s", node, url, exc)
            return node, None
    done = await asyncio.gather(*(one(n, u) for n, u in urls.items()))
    return {node: counters for node, counters in done if counters is not None}


class TrafficReporter:
    """Reads the Envoys every ``interval`` and writes what their counters say (leader only)."""

    def __init__(self, client: KubeClient, store: Store, own_envoys: Callable[[], Mapping[str, str]], *,
                 interval: float) -> None:
        self.store = store
        self.own_envoys = own_envoys  # this replica's connected Envoys → stats URL
        self.interval = interval
        self.status = StatusWriter(client, FIELD_MANAGER)
        self.window = TrafficWindow()
        self._written: dict[Ref, tuple[int, dict[str, Any]]] = {}  # round, traffic without its time
        self._round = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading (on leading); what an earlier lead saw is not carried over: its
        last readings would put everything counted meanwhile into one round."""
        self.window = TrafficWindow()
        self._written.clear()
        self._task = asyncio.create_task(self._run(), name="traffic")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def envoys(self) -> dict[str, str]:
        """Every Envoy's stats URL, from every replica's report and this replica's own."""
        urls: dict[str, str] = {}
        for report in self.store.xds_reports.values():
            urls.update(report.stats)
        urls.update(self.own_envoys())
        return urls

    async def _run(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            while True:
                started = time.monotonic()
                try:
                    await self.round(http)
                except Exception:  # one bad round must not end the reporting
                    log.exception("reading the Envoys' traffic counters failed")
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def round(self, http: httpx.AsyncClient) -> None:
        urls = self.envoys()
        readings = await read_counters(http, urls)
        now = time.monotonic()
        self.window.observe(now, readings, present=urls)
        self._round += 1
        totals, covered = self.window.totals(), self.window.covered(now)
        policies = self.store.route_policies.values()
        present = {p.ref for p in policies}
        for ref in [r for r in self._written if r not in present]:
            del self._written[ref]
        for policy in policies:
            if policy.spec is None:
                continue
            traffic = traffic_status(policy.namespace, policy.spec, totals, covered)
            last = self._written.get(policy.ref)
            if last is None and not traffic["requests"] and "traffic" not in policy.status:
                continue  # nothing to say yet
            if last is not None and (last[1] == traffic or self._round - last[0] < WRITE_ROUNDS):
                continue
            stamped = {**traffic, "sampleTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            try:
                await self.status.write(policy.involved(), policy.status, {"traffic": stamped}, fields=("traffic",))
            except ApiError as exc:
                log.warning("could not write the traffic of RoutePolicy %s/%s: %s", *policy.ref, exc)
                continue
            self._written[policy.ref] = (self._round, traffic)
