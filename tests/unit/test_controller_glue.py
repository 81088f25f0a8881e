"""The controller glue against a store filled with test objects, not a cluster.

A fake client records every request; the tests check what a reconcile, an autoscaling
round and a route recompute write, and that an unchanged world writes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time

import httpx
import pytest

from llmfleet.controller.autoscaler import Autoscaler, load_moved, routed_demand
from llmfleet.controller.modeldeployment import ModelDeploymentReconciler
from llmfleet.controller.replicas import ReplicaWriter
from llmfleet.controller.routepolicy import (
    RECONNECT_GRACE_SECONDS,
    DataPlaneState,
    RoutePolicyReconciler,
    XdsPublisher,
)
from llmfleet.controller.traffic import WRITE_ROUNDS, TrafficReporter
from llmfleet.controller.waker import Waker
from llmfleet.kube.client import Conflict
from llmfleet.kube.store import Store
from llmfleet.kube.views import APPLIED_ANNOTATION, RoutePolicyView
from llmfleet.routing.table import RouteTable
from llmfleet.signals.values import ModelLoad

NS = "ai"


class FakeClient:
    """Records requests; an apply answers with the object, generation 1."""

    def __init__(self) -> None:
        self.requests: list[tuple] = []

    async def apply(self, body, field_manager, *, subresource=None):
        self.requests.append(("apply", body["kind"], body["metadata"]["name"], subresource, field_manager,
                              copy.deepcopy(body)))
        return {**body, "metadata": {**body["metadata"], "generation": 1}}

    async def scale(self, resource, namespace, name, replicas, field_manager, *, resource_version=None):
        self.requests.append(("scale", name, replicas, field_manager))

    async def event(self, involved, type_, reason, message, component):
        self.requests.append(("event", involved["metadata"]["name"], reason, message))

    def take(self) -> list[tuple]:
        out, self.requests = self.requests, []
        return out


def md_body(name="llm", replicas=1, autoscaling=None, status=None, generation=1):
    spec = {"model": {"uri": "hf://x/y"}, "engine": {"kind": "sim"}, "replicas": replicas}
    if autoscaling:
        spec["autoscaling"] = autoscaling
    return {"apiVersion": "llmfleet.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation,
                         "resourceVersion": "1"},
            "spec": spec, "status": status or {}}


def pod_body(md, index, ready=True):
    return {"metadata": {"name": f"{md}-{index}", "namespace": NS, "uid": f"{md}-{index}",
                         "labels": {"llmfleet.io/model-deployment": md},
                         "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {"containers": [{"name": "model-server", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"phase": "Running", "podIP": f"127.9.0.{index + 1}",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "lastTransitionTime": "2026-11-22T10:00:30Z"}]}}


def deployment_body(applied, replicas=1, ready=1, generation=1):
    return {"metadata": {"name": "llm", "namespace": NS, "generation": generation,
                         "annotations": {APPLIED_ANNOTATION: applied}},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas,
                       "observedGeneration": generation}}


def store_with(client, *, mds=(), pods=(), deployments=(), services=(), policies=()):
    store = Store(client)
    for informer, bodies in ((store.model_deployments, mds), (store.pods, pods), (store.deployments, deployments),
                             (store.services, services), (store.route_policies, policies)):
        for body in bodies:
            informer.put(body)
    for informer in store.informers:
        informer.synced.set()
    return store


def written_status(request):
    return request[5]["status"]


def test_a_reconcile_applies_the_children_and_the_reconcilers_status_then_an_unchanged_world_writes_nothing():
    client = FakeClient()
    store = store_with(client, mds=[md_body()], pods=[pod_body("llm", 0)])
    reconciler = ModelDeploymentReconciler(client, store)
    asyncio.run(reconciler.reconcile((NS, "llm")))
    first = client.take()
    applies = [(r[1], r[3], r[4]) for r in first if r[0] == "apply"]
    assert applies == [("Deployment", None, "llmfleet"), ("Service", None, "llmfleet"),
                       ("ModelDeployment", "status", "llmfleet")]
    deployment, service, _ = (r[5] for r in first if r[0] == "apply")
    assert set(written_status(next(r for r in first if r[3] == "status"))) == {
        "observedGeneration", "replicas", "readyReplicas", "selector", "desiredReplicas", "readyText",
        "conditions"}
    # The store catches up: the children as applied, the status as written.
    store.deployments.put(deployment_body(deployment["metadata"]["annotations"][APPLIED_ANNOTATION]))
    store.services.put({"metadata": {"name": "llm", "namespace": NS, "annotations":
                                     {APPLIED_ANNOTATION: service["metadata"]["annotations"][APPLIED_ANNOTATION]}}})
    asyncio.run(reconciler.reconcile((NS, "llm")))
    status_now = written_status(next(r for r in client.take() if r[3] == "status"))  # 1/1 ready now
    assert status_now["readyReplicas"] == 1
    store.model_deployments.put(md_body(status=status_now))
    asyncio.run(reconciler.reconcile((NS, "llm")))
    assert client.take() == []


def test_the_reconcilers_conditions_are_exported_for_alerts_and_leave_with_the_model():
    from llmfleet import telemetry

    def condition(type_: str) -> float | None:
        return telemetry.REGISTRY.get_sample_value("llmfleet_modeldeployment_condition",
                                                   {"namespace": NS, "name": "llm", "type": type_})

    client = FakeClient()
    store = store_with(client, mds=[md_body()], pods=[pod_body("llm", 0)])
    reconciler = ModelDeploymentReconciler(client, store)
    asyncio.run(reconciler.reconcile((NS, "llm")))
    assert (condition("Ready"), condition("Degraded")) == (0.0, 0.0)  # its pod is not ready yet
    store.model_deployments.delete(md_body())
    asyncio.run(reconciler.reconcile((NS, "llm")))
    assert condition("Ready") is None and condition("Degraded") is None


def test_someone_elses_change_to_the_deployment_is_applied_over():
    client = FakeClient()
    store = store_with(client, mds=[md_body()])
    reconciler = ModelDeploymentReconciler(client, store)
    asyncio.run(reconciler.reconcile((NS, "llm")))
    first = client.take()
    applied = next(r[5] for r in first if r[1] == "Deployment")["metadata"]["annotations"][APPLIED_ANNOTATION]
    service = next(r[5] for r in first if r[1] == "Service")
    store.services.put({"metadata": {"name": "llm", "namespace": NS,
                                     "annotations": service["metadata"]["annotations"]}})
    store.deployments.put(deployment_body(applied, generation=1))
    asyncio.run(reconciler.reconcile((NS, "llm")))
    assert not [r for r in client.take() if r[1] == "Deployment"]
    store.deployments.put(deployment_body(applied, generation=2))  # e.g. `kubectl scale deploy/llm`
    asyncio.run(reconciler.reconcile((NS, "llm")))
    assert [r[1] for r in client.take() if r[0] == "apply" and r[3] is None] == ["Deployment"]


def test_a_status_written_but_not_yet_seen_is_not_written_again():
    client = FakeClient()
    store = store_with(client, mds=[md_body()], pods=[pod_body("llm", 0, ready=False)])
    reconciler = ModelDeploymentReconciler(client, store)
    asyncio.run(reconciler.reconcile((NS, "llm")))
    assert [r for r in client.take() if r[3] == "status"]
    asyncio.run(reconciler.reconcile((NS, "llm")))  # a pod event before our write came back
    assert not [r for r in client.take() if r[3] == "status" or r[0] == "event"]


AUTOSCALING = {"minReplicas": 1, "maxReplicas": 4, "metric": "queueDepth", "target": 2}


def load(queue, replicas=1):
    return ModelLoad(time=0.0, sampled_replicas=replicas, failed_replicas=0, queue_depth=queue,
                     running_requests=2.0, kv_cache_utilization=0.5, tokens_per_second=100.0,
                     requests_per_second=1.0)


def autoscaler(client, store, loads):
    scaler = Autoscaler(client, store, ReplicaWriter(client), interval=1.0)

    async def scrape(targets):
        return {key: loads[key] for key in targets if key in loads}

    scaler.scraper.round = scrape  # no HTTP: the loads as if scraped
    return scaler


def test_an_autoscaling_round_scales_through_the_one_writer_and_applies_its_own_status_fields():
    client = FakeClient()
    store = store_with(client, mds=[md_body(autoscaling=AUTOSCALING)], pods=[pod_body("llm", 0)])
    scaler = autoscaler(client, store, {(NS, "llm"): load(queue=8.0)})
    asyncio.run(scaler.round())
    requests = client.take()
    assert ("scale", "llm", 4, "llmfleet-autoscaler") in requests
    assert any(r[0] == "event" and r[2] == "ScaledUp" for r in requests)
    (status,) = [r for r in requests if r[3] == "status"]
    assert status[4] == "llmfleet-autoscaler"
    owned = written_status(status)
    assert set(owned) == {"load", "scaleReason", "lastScaleTime", "conditions"}
    assert [c["type"] for c in owned["conditions"]] == ["ScalingLimited"]
    assert owned["load"]["queueDepth"] == 8.0
    from llmfleet import telemetry

    assert telemetry.REGISTRY.get_sample_value("llmfleet_modeldeployment_queued_requests",
                                               {"namespace": NS, "name": "llm"}) == 8.0
    telemetry.clear_leader_series()  # a follower exports none of it
    assert telemetry.REGISTRY.get_sample_value("llmfleet_modeldeployment_queued_requests",
                                               {"namespace": NS, "name": "llm"}) is None


def test_a_steady_load_is_not_rewritten_every_round():
    client = FakeClient()
    store = store_with(client, mds=[md_body(autoscaling={**AUTOSCALING, "target": 100})],
                       pods=[pod_body("llm", 0)])
    loads = {(NS, "llm"): load(queue=10.0)}
    scaler = autoscaler(client, store, loads)
    asyncio.run(scaler.round())
    (first,) = [r for r in client.take() if r[3] == "status"]
    store.model_deployments.put(md_body(autoscaling={**AUTOSCALING, "target": 100}, status=written_status(first)))
    loads[(NS, "llm")] = load(queue=10.4)  # a 4 % wobble
    asyncio.run(scaler.round())
    assert not [r for r in client.take() if r[3] == "status"]
    loads[(NS, "llm")] = load(queue=14.0)  # a real move
    asyncio.run(scaler.round())
    assert [written_status(r)["load"]["queueDepth"] for r in client.take() if r[3] == "status"] == [14.0]


def test_the_learned_capacity_is_written_with_the_load_and_survives_a_restart_under_light_load():
    auto = {"minReplicas": 1, "maxReplicas": 4, "metric": "runningRequests", "target": 4}
    client = FakeClient()
    store = store_with(client, mds=[md_body(autoscaling=auto)], pods=[pod_body("llm", 0)])
    # 2 running of a target of 4 at 100 tokens/s: 200 tokens/s at the target.
    asyncio.run(autoscaler(client, store, {(NS, "llm"): load(queue=0.0)}).round())
    (first,) = [r for r in client.take() if r[3] == "status"]
    assert written_status(first)["load"]["capacityTokensPerSecond"] == 200.0
    # A new operator (nothing in memory) under a load too light to measure keeps it.
    store.model_deployments.put(md_body(autoscaling=auto, status=written_status(first)))
    light = ModelLoad(time=0.0, sampled_replicas=1, failed_replicas=0, queue_depth=0.0, running_requests=0.5,
                      kv_cache_utilization=0.1, tokens_per_second=30.0, requests_per_second=0.5)
    asyncio.run(autoscaler(client, store, {(NS, "llm"): light}).round())
    (second,) = [r for r in client.take() if r[3] == "status"]
    assert written_status(second)["load"]["capacityTokensPerSecond"] == 200.0


def test_cost_routings_demand_reaches_the_autoscaler_of_each_backend_summed_over_policies():
    def policy(name, rows):
        return RoutePolicyView.from_body({"metadata": {"name": name, "namespace": NS, "generation": 1},
                                          "spec": {"model": name, "backends": [{"modelDeployment": "llm"}]},
                                          "status": {"backends": rows}})
    demand = routed_demand([policy("a", [{"modelDeployment": "llm", "weight": 30, "demandTokensPerSecond": 300}]),
                            policy("b", [{"modelDeployment": "llm", "weight": 100, "demandTokensPerSecond": 120},
                                         {"modelDeployment": "other", "weight": 0}])])
    assert demand == {(NS, "llm"): 420.0}


def test_load_moves_by_relative_change_ignoring_sample_time():
    old = {"queueDepth": 10.0, "sampleTime": "T1", "sampledReplicas": 2}
    assert not load_moved(old, {"queueDepth": 10.9, "sampleTime": "T2", "sampledReplicas": 2})
    assert load_moved(old, {"queueDepth": 11.5, "sampleTime": "T2", "sampledReplicas": 2})
    assert load_moved(old, {"queueDepth": 10.0, "sampledReplicas": 3})
    assert load_moved(old, {"queueDepth": 10.0, "sampledReplicas": 2, "ttftP95Seconds": 0.2})
    assert not load_moved({"queueDepth": 0.0}, {"queueDepth": 0.02})
    assert load_moved(None, {"queueDepth": 0.0})


class FakePublisher:
    def __init__(self) -> None:
        self.tables: list[RouteTable] = []
        self.synced = True

    def publish(self, table):
        if not self.tables or self.tables[-1] != table:
            self.tables.append(table)
        return str(len(self.tables))

    def state(self, version):
        if self.synced or int(version) < len(self.tables):
            return DataPlaneState(True, "Programmed", "every connected Envoy serves the route")
        return DataPlaneState(False, "Pending", "waiting for the connected Envoys to take the route")


def policy_body(name, model, backends):
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {"model": model, "backends": [{"modelDeployment": b} for b in backends]}}


def route_reconciler(client, store, publisher):
    return RoutePolicyReconciler(client, store, publisher)


def test_a_route_recompute_publishes_the_table_and_writes_each_changed_policy_once():
    client = FakeClient()
    store = store_with(client, mds=[md_body("a"), md_body("b")], pods=[pod_body("a", 0)],
                       policies=[policy_body("pa", "model-a", ["a"]), policy_body("pb", "model-b", ["b"])])
    publisher = FakePublisher()
    reconciler = route_reconciler(client, store, publisher)
    asyncio.run(reconciler.reconcile("routes"))
    assert {r.model for r in publisher.tables[-1].routes} == {"model-a", "model-b"}
    writes = {r[2]: written_status(r) for r in client.take() if r[3] == "status"}
    assert set(writes) == {"pa", "pb"}
    for name, status in writes.items():
        store.route_policies.put({**policy_body(name, f"model-{name[1]}", [name[1]]), "status": status})
    # b's replica becomes ready while Envoy has not yet taken the new table:
    # only pb's status changes, and pa stays Programmed.
    publisher.synced = False
    store.pods.put(pod_body("b", 0))
    asyncio.run(reconciler.reconcile("routes"))
    rewritten = {r[2]: written_status(r) for r in client.take() if r[3] == "status"}
    assert set(rewritten) == {"pb"}
    assert rewritten["pb"]["backends"][0]["readyReplicas"] == 1


@pytest.mark.parametrize("synced", [False, True])
def test_routes_are_never_published_from_a_store_that_has_not_listed_everything(synced):
    client = FakeClient()
    store = store_with(client, mds=[md_body("a")], policies=[policy_body("pa", "model-a", ["a"])])
    if not synced:
        store.pods.synced.clear()
    publisher = FakePublisher()
    asyncio.run(route_reconciler(client, store, publisher).reconcile("routes"))
    assert bool(publisher.tables) is synced


class FakeXdsServer:
    """What XdsPublisher reads of the xDS server: who is connected and what they run."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.envoys: list[str] = []
        self.syncing: set[str] = set()  # connected, first sync not done ("" as version)
        self.last_nack = None
        self.version: str | None = None

    def update(self, table):
        self.version = str(hash(table))
        return self.version

    def node_versions(self):
        return {e: "" if e in self.syncing else self.version for e in self.envoys}

    def generation(self, version):
        return 1 if version == self.version else None


def programmed(status):
    return next(c for c in status["conditions"] if c["type"] == "Programmed")


def test_a_restarted_operator_keeps_programmed_until_envoys_had_time_to_reconnect():
    client = FakeClient()
    store = store_with(client, mds=[md_body("a")], pods=[pod_body("a", 0)],
                       policies=[policy_body("pa", "model-a", ["a"])])
    asyncio.run(route_reconciler(client, store, FakePublisher()).reconcile("routes"))
    before = programmed(next(written_status(r) for r in client.take() if r[3] == "status"))
    assert before["status"] == "True"
    before = {**before, "lastTransitionTime": "2026-11-22T10:00:00Z"}
    store.route_policies.put({**policy_body("pa", "model-a", ["a"]),
                              "status": {"observedGeneration": 1, "conditions": [
                                  {"type": "Accepted", "status": "True", "reason": "Accepted",
                                   "message": 'routes model "model-a" with strategy weighted',
                                   "observedGeneration": 1, "lastTransitionTime": "2026-11-22T10:00:00Z"},
                                  before]}})

    # The operator restarts: a new xDS server no Envoy has reconnected to yet.
    server = FakeXdsServer()
    reconciler = route_reconciler(client, store, XdsPublisher(server))
    after = asyncio.run(reconciler.reconcile("routes"))
    kept = [programmed(written_status(r)) for r in client.take() if r[3] == "status"]
    assert all(c == before for c in kept)  # no write of Programmed, or the same condition
    assert after is not None  # and it looks again

    # An Envoy reconnects and has not synced yet (it serves what it had): unknown, kept.
    server.envoys, server.syncing = ["envoy-0"], {"envoy-0"}
    asyncio.run(reconciler.reconcile("routes"))
    assert all(programmed(written_status(r)) == before for r in client.take() if r[3] == "status")

    # The Envoys reconnect and take the table: still the same condition.
    server.envoys, server.syncing = ["envoy-0"], set()
    asyncio.run(reconciler.reconcile("routes"))
    assert all(programmed(written_status(r))["lastTransitionTime"] == before["lastTransitionTime"]
               for r in client.take() if r[3] == "status")

    # No Envoy at all after the grace period: that is news.
    server.envoys, server.started = [], time.monotonic() - RECONNECT_GRACE_SECONDS - 1
    asyncio.run(reconciler.reconcile("routes"))
    now = [programmed(written_status(r)) for r in client.take() if r[3] == "status"]
    assert [(c["status"], c["reason"]) for c in now] == [("False", "Pending")]


def test_envoys_coming_and_going_do_not_rewrite_a_programmed_policy():
    client = FakeClient()
    store = store_with(client, mds=[md_body("a")], pods=[pod_body("a", 0)],
                       policies=[policy_body("pa", "model-a", ["a"])])
    server = FakeXdsServer()
    server.envoys = ["envoy-0"]
    reconciler = route_reconciler(client, store, XdsPublisher(server))
    asyncio.run(reconciler.reconcile("routes"))
    written = [written_status(r) for r in client.take() if r[3] == "status"]
    assert [programmed(w)["status"] for w in written] == ["True"]
    store.route_policies.put({**policy_body("pa", "model-a", ["a"]), "status": written[0]})
    for envoys in (["envoy-0", "envoy-1"], ["envoy-1"], ["envoy-1", "envoy-2", "envoy-3"]):
        server.envoys = envoys
        asyncio.run(reconciler.reconcile("routes"))
        assert [r for r in client.take() if r[3] == "status"] == [], envoys


def report(replica, envoys, nack=""):
    return {"metadata": {"name": f"llmfleet-operator-xds-{replica}", "namespace": "llmfleet"},
            "data": {"replica": replica, "envoys": json.dumps(envoys), "nack": nack}}


def test_a_follower_serves_the_route_table_and_writes_nothing():
    client = FakeClient()
    store = store_with(client, mds=[md_body("a")], pods=[pod_body("a", 0)],
                       policies=[policy_body("pa", "model-a", ["a"])])
    publisher = FakePublisher()
    follower = RoutePolicyReconciler(client, store, publisher, writes=False)
    asyncio.run(follower.reconcile("routes"))
    assert [r.model for r in publisher.tables[-1].routes] == ["model-a"]
    assert client.take() == []
    follower.writes = True  # it leads now
    asyncio.run(follower.reconcile("routes"))
    assert [(r[0], r[2], r[3]) for r in client.take() if r[0] == "apply"] == [("apply", "pa", "status")]


def test_programmed_covers_the_envoys_of_every_replica():
    client = FakeClient()
    store = store_with(client, mds=[md_body("a")], pods=[pod_body("a", 0)],
                       policies=[policy_body("pa", "model-a", ["a"])])
    server = FakeXdsServer()
    server.envoys = ["envoy-0"]
    leader = RoutePolicyReconciler(client, store, XdsPublisher(server, store.xds_reports.values, "leader"))

    def state():
        asyncio.run(leader.reconcile("routes"))
        return leader.publisher.state(server.version)

    assert state().programmed
    # An Envoy of the other replica still runs a version the leader never served.
    store.xds_reports.put(report("follower", {"envoy-1": "00000000deadbeef"}))
    assert (state().programmed, state().reason) == (False, "Pending")
    store.xds_reports.put(report("follower", {"envoy-1": server.version}))
    assert state().programmed
    # The leader's own report is not news about anyone else.
    store.xds_reports.put(report("leader", {"envoy-0": "00000000deadbeef"}))
    assert state().programmed
    store.xds_reports.put(report("follower", {"envoy-1": server.version}, nack="Envoy envoy-1 rejected CDS"))
    assert (state().programmed, state().message) == (False, "Envoy envoy-1 rejected CDS")


class FakeEnvoys:
    """Answers the traffic reporter's reads: each Envoy's stats URL → its counters."""

    def __init__(self) -> None:
        self.completed: dict[str, int] = {}

    async def get(self, url, *, params, timeout):
        base = url.removesuffix("/stats/prometheus")
        if base not in self.completed:
            raise httpx.ConnectError("refused")
        text = (f'envoy_vhost_route_upstream_rq_completed{{envoy_virtual_host="llmfleet",envoy_route="model-a"}} '
                f"{self.completed[base]}\n")
        return httpx.Response(200, text=text, request=httpx.Request("GET", url))


def test_traffic_is_read_from_every_replicas_envoys_and_written_rate_limited():
    client = FakeClient()
    store = store_with(client, mds=[md_body("a")], pods=[pod_body("a", 0)],
                       policies=[policy_body("pa", "model-a", ["a"])])
    # envoy-1 is connected to another replica, which says where it serves its counters.
    store.xds_reports.put({**report("follower", {"envoy-1": "v"}),
                           "data": {**report("follower", {"envoy-1": "v"})["data"],
                                    "stats": json.dumps({"envoy-1": "http://10.0.0.2:19001"})}})
    reporter = TrafficReporter(client, store, lambda: {"envoy-0": "http://10.0.0.1:19001"}, interval=1)
    envoys = FakeEnvoys()
    envoys.completed = {"http://10.0.0.1:19001": 100, "http://10.0.0.2:19001": 7}

    def round_(**completed):
        envoys.completed.update({f"http://10.0.0.{i}:19001": n for i, n in
                                 ((int(k[1:]), v) for k, v in completed.items())})
        asyncio.run(reporter.round(envoys))
        return [r[5]["status"]["traffic"] for r in client.take() if r[0] == "apply"]

    assert round_() == [], "baselines, and nothing to say yet"
    (written,) = round_(e1=110, e2=12)
    assert (written["requests"], "fallbackShare" in written) == (15, False)
    assert WRITE_ROUNDS == 4
    assert round_(e1=111) == [], "at most one write per WRITE_ROUNDS rounds"
    del envoys.completed["http://10.0.0.2:19001"]  # envoy-1 does not answer: its requests count later
    assert round_() == []
    envoys.completed["http://10.0.0.2:19001"] = 20
    assert round_() == []  # the third round since the last write
    (written,) = round_()
    assert written["requests"] == 15 + 1 + 8
    assert [round_() for _ in range(WRITE_ROUNDS + 1)] == [[]] * (WRITE_ROUNDS + 1), "unchanged: not rewritten"


class Conflicting(FakeClient):
    """A scale with a resourceVersion precondition conflicts until ``conflicts`` runs out;
    a GET answers ``current``."""

    def __init__(self, current, conflicts=1):
        super().__init__()
        self.current, self.conflicts = current, conflicts

    async def scale(self, resource, namespace, name, replicas, field_manager, *, resource_version=None):
        if resource_version is not None and self.conflicts:
            self.conflicts -= 1
            raise Conflict(409, "the object has been modified")
        await super().scale(resource, namespace, name, replicas, field_manager)

    async def get(self, resource, name, namespace=None):
        return self.current


def test_a_wake_is_conditional_so_two_replicas_waking_one_model_make_one_change():
    sleepy = md_body("sleepy", replicas=0)
    client = Conflicting(sleepy)  # a status write moved its resourceVersion: read again, still at 0
    store = store_with(client, mds=[sleepy])
    asyncio.run(Waker(store, ReplicaWriter(client)).wake(NS, "sleepy"))
    assert [r[0] for r in client.take()] == ["scale", "event"]

    # Another replica woke it first: the re-read shows 1 replica, nothing is written.
    client = Conflicting(md_body("sleepy", replicas=1, generation=2))
    store = store_with(client, mds=[sleepy])
    asyncio.run(Waker(store, ReplicaWriter(client)).wake(NS, "sleepy"))
    assert client.take() == []


# --------------------------------------------------------------------------- budgets


def test_budget_spend_is_written_once_per_change_and_seeds_the_next_leader() -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    from llmfleet.controller.budgets import BudgetReporter
    from llmfleet.envoy.ratelimit import RateLimitService
    from llmfleet.routing.table import BudgetLimit, TenantAccess

    def service() -> RateLimitService:
        registry = CollectorRegistry()
        rls = RateLimitService(PromCounter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                               PromCounter("t", "t", ["tenant"], registry=registry))
        rls.configure(RouteTable(tenants=(TenantAccess(f"{NS}/team", ("k",), ("*",),
                                                       budgets=(BudgetLimit("day", tokens=100),)),)))
        return rls

    client = FakeClient()
    store = Store(client)
    tenant = {"metadata": {"name": "team", "namespace": NS, "generation": 1, "uid": "u"},
              "spec": {"apiKeys": {"secretName": "k"}, "models": ["*"], "budgets": [{"period": "day", "tokens": 100}]}}
    store.tenants.put(tenant)
    rls = service()
    reporter = BudgetReporter(client, store, rls, interval=1)
    rls.limiter.charge(f"{NS}/team", 0.0, 120, time.time())
    asyncio.run(reporter.round())
    writes = client.take()
    (apply,) = [w for w in writes if w[0] == "apply"]
    status = apply[5]["status"]
    assert apply[4] == "llmfleet-budgets" and status["budgets"][0]["spentTokens"] == 120
    assert status["conditions"][0]["type"] == "BudgetExceeded" and status["conditions"][0]["status"] == "True"
    assert [w[2] for w in writes if w[0] == "event"] == ["BudgetExceeded"]
    from llmfleet import telemetry

    labels = {"kind": "Tenant", "name": f"{NS}/team", "period": "day"}
    assert telemetry.REGISTRY.get_sample_value("llmfleet_budget_used_ratio", labels) == 1.2
    assert telemetry.REGISTRY.get_sample_value("llmfleet_budget_warn_ratio", labels) == 0.8
    asyncio.run(reporter.round())
    assert client.take() == [], "nothing changed: nothing written"

    # A new leader (its own service, nothing counted) starts from the status.
    store.tenants.put({**tenant, "status": status})
    successor = service()
    BudgetReporter(client, store, successor, interval=1).seed()
    assert not successor.limiter.check_budgets(f"{NS}/team", time.time()).allowed


def test_a_route_policys_budget_is_written_to_its_own_status_beside_a_tenant_of_the_same_name() -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    from llmfleet import telemetry
    from llmfleet.controller.budgets import BudgetReporter
    from llmfleet.envoy.ratelimit import RateLimitService
    from llmfleet.routing.table import BudgetLimit, Route

    registry = CollectorRegistry()
    rls = RateLimitService(PromCounter("d", "d", ["tenant", "limit", "decision"], registry=registry),
                           PromCounter("t", "t", ["tenant"], registry=registry))
    budget = BudgetLimit("hour", dollars=2.0, action="downgrade")
    rls.configure(RouteTable(routes=(Route("chat", (), budgets=(budget,), budget_subject=f"routepolicy:{NS}/chat"),)))
    client = FakeClient()
    store = Store(client)
    store.route_policies.put({"metadata": {"name": "chat", "namespace": NS, "generation": 1, "uid": "p"},
                              "spec": {"model": "chat", "backends": [{"modelDeployment": "llm"}],
                                       "budgets": [{"period": "hour", "dollars": 2, "action": "downgrade"}]}})
    store.tenants.put({"metadata": {"name": "chat", "namespace": NS, "generation": 1, "uid": "t"},
                       "spec": {"apiKeys": {"secretName": "k"}, "models": ["*"]}})
    rls.limiter.charge(f"routepolicy:{NS}/chat", 3.0, 1000, time.time())
    asyncio.run(BudgetReporter(client, store, rls, interval=1).round())
    writes = client.take()
    (apply,) = [w for w in writes if w[0] == "apply"]
    assert (apply[1], apply[4]) == ("RoutePolicy", "llmfleet-budgets")
    status = apply[5]["status"]
    assert status["budgets"][0]["usedPercent"] == 150.0
    assert "requests go to the cheapest backend" in status["conditions"][0]["message"]
    assert [(w[1], w[2]) for w in writes if w[0] == "event"] == [("chat", "BudgetExceeded")]
    assert telemetry.REGISTRY.get_sample_value(
        "llmfleet_budget_used_ratio", {"kind": "RoutePolicy", "name": f"{NS}/chat", "period": "hour"}) == 1.5
