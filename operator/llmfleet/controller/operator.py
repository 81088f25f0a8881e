"""`llmfleet run`: the composition root, and kopf as the process around it.

:class:`Operator` builds every component once from :class:`OperatorOptions`: the API
client, the store (the only thing that watches the API server), the xDS server, the
activator, the work queues and their reconcilers, and the autoscaler. Changes in the
store enqueue what they affect: a ModelDeployment, its children or its pods enqueue
that ModelDeployment; anything routing reads enqueues the route table. Reconcilers
read the store and write only what changed.

With ``--leader-elect`` the operator runs as one of several replicas. Every replica
keeps its own store, computes the same route table from it (xDS versions are content
hashes) and serves xDS and the activator, so an Envoy is served by whichever replica
it reaches. Only the replica holding the Lease writes: it runs the ModelDeployment
work queue, the autoscaler and the RoutePolicy status writes; the others compute and
serve. Each replica reports what its Envoys run and where they serve their counters
(controller/xdsreports.py), so the leader's ``Programmed`` covers every Envoy and its
traffic reporter (controller/traffic.py) reads them all.

kopf runs the process: login, start-up and clean-up, signals, the liveness endpoint.
It watches nothing itself (scanning off, no resource handlers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from .. import telemetry
from ..autoscale.scaler import Knobs
from ..config import LOG_LEVELS, OperatorOptions
from ..envoy.resources import DataPlaneSettings
from ..envoy.xds import XdsServer
from ..kube.client import ApiError, KubeClient
from ..kube.lease import LeaderElector
from ..kube.resources import PODS, REPLICA_SETS
from ..kube.store import Store
from ..kube.views import DeploymentView, ModelDeploymentView, PodView, RoutePolicyView, ServiceView, TenantView
from ..routing.table import Endpoint
from .activator import Activator, ReadyEndpoints
from .adapters import AdapterLoader
from .autoscaler import Autoscaler
from .budgets import BudgetReporter
from .modeldeployment import ModelDeploymentReconciler
from .replicas import ReplicaWriter
from .routepolicy import ROUTES, NoDataPlane, Publisher, RoutePolicyReconciler, XdsPublisher
from .traffic import TrafficReporter
from .waker import Waker
from .workqueue import WorkQueue
from .xdsreports import ReportWriter

log = logging.getLogger("llmfleet")
SYNC_LOG_SECONDS = 30.0  # say what the operator waits for when listing takes this long
ADAPTER_INTERVAL = 1.0  # seconds between the leader's checks that every replica has its LoRA adapters
BUDGET_INTERVAL = 2.0  # seconds between the leader's writes of the tenants' budget spend


class Operator:
    """Everything `llmfleet run` runs, built once from its options."""

    def __init__(self, options: OperatorOptions, client: KubeClient | None = None) -> None:
        self.options = options
        self.client = client or KubeClient.from_environment(options.kubeconfig)
        self.identity = replica_identity(options)
        self.elector: LeaderElector | None = None
        self.lease_namespace = options.leader_election_namespace or os.environ.get("POD_NAMESPACE")
        if options.leader_elect:
            if not self.lease_namespace:
                raise SystemExit("llmfleet run: --leader-elect needs --leader-election-namespace (or $POD_NAMESPACE)")
            self.elector = LeaderElector(self.client, self.lease_namespace, options.leader_election_id,
                                         self.identity, on_started=self._lead, on_stopped=self._follow,
                                         address=f"{advertised_address(options)}:{options.xds_port}"
                                         if options.xds_port else None,
                                         on_holder=self._route_queue_later)
        self.store = Store(self.client, options.namespaces,
                           replicas_namespace=self.lease_namespace if self.elector else None)
        self.replicas = ReplicaWriter(self.client)
        self.waker = Waker(self.store, self.replicas)
        self.xds: XdsServer | None = None
        self.activator: Activator | None = None
        self.autoscaler: Autoscaler | None = None
        self.traffic: TrafficReporter | None = None
        self.budgets: BudgetReporter | None = None
        self.adapters = AdapterLoader(self.client, self.store, interval=ADAPTER_INTERVAL)
        self.md_queue = WorkQueue(ModelDeploymentReconciler(self.client, self.store).reconcile,
                                  workers=options.workers)
        self.route_queue: WorkQueue | None = None
        self.routes: RoutePolicyReconciler | None = None
        self.reports: ReportWriter | None = None
        self._election: asyncio.Task[None] | None = None
        self._wire_store()

    def _wire_store(self) -> None:
        """What each change in the store puts on which queue."""
        def routes(*_: Any) -> None:
            self._route_queue_later()

        def model_deployment(old: ModelDeploymentView | None, new: ModelDeploymentView | None) -> None:
            view = new or old
            assert view is not None
            self.md_queue.add(view.ref)
            if old and new and old.spec and new.spec and old.spec.replicas == 0 < new.spec.replicas:
                self.waker.saw_wake(new.ref)
            if old is None or new is None or old.routing_facets() != new.routing_facets():
                routes()

        def child(old: DeploymentView | ServiceView | None, new: DeploymentView | ServiceView | None) -> None:
            view = new or old
            assert view is not None
            self.md_queue.add((view.namespace, view.name))  # children are named after their ModelDeployment

        def pod(old: PodView | None, new: PodView | None) -> None:
            view = new or old
            assert view is not None
            if view.model_deployment:
                self.md_queue.add((view.namespace, view.model_deployment))
            if (old.endpoint if old else None, old.adapters if old else ()) \
                    != (new.endpoint if new else None, new.adapters if new else ()):
                routes()  # serving replicas are the endpoints, of their adapters too

        def route_policy(old: RoutePolicyView | None, new: RoutePolicyView | None) -> None:
            if old is None or new is None or old.routing_facets() != new.routing_facets():
                routes()

        self.store.model_deployments.listeners.append(model_deployment)
        self.store.route_policies.listeners.append(route_policy)
        self.store.deployments.listeners.append(child)
        self.store.services.listeners.append(child)
        self.store.pods.listeners.append(pod)
        self.store.xds_reports.listeners.append(routes)  # what other replicas' Envoys run: Programmed

        def tenant(old: TenantView | None, new: TenantView | None) -> None:
            if old is None or new is None or old.routing_facets() != new.routing_facets():
                routes()

        self.store.tenants.listeners.append(tenant)
        self.store.api_keys.listeners.append(routes)  # a key added, rotated or removed

    async def start(self) -> None:
        options = self.options
        waiting = asyncio.create_task(self._report_sync())
        try:
            await self.store.start()
        finally:
            waiting.cancel()
        log.info("store synced: %d ModelDeployments, %d RoutePolicies, %d pods, %d nodes",
                 len(self.store.model_deployments.items), len(self.store.route_policies.items),
                 len(self.store.pods.items), len(self.store.nodes.items))
        publisher: Publisher = NoDataPlane()
        if options.xds_port:
            queue = self._route_queue_later
            # Envoy's ACKs and NACKs change what Programmed says: recompute then.
            self.xds = XdsServer(listener_address=options.envoy_listener_address,
                                 listener_port=options.envoy_listener_port, settings=data_plane_settings(options),
                                 on_nack=lambda _: queue(), on_synced=lambda *_: queue())
            await self.xds.start(options.xds_address, options.xds_port)
            publisher = XdsPublisher(self.xds, self.store.xds_reports.values, self.identity)
        activator_endpoint, ready = None, None
        if options.activator_address and options.activator_port:
            ready = ReadyEndpoints(asyncio.get_running_loop())
            self.activator = Activator(self.waker.wake, ready, timeout=options.activator_timeout)
            await self.activator.start(options.xds_address, options.activator_port)
            activator_endpoint = Endpoint(await resolve(options.activator_address), options.activator_port)
        # One key, one worker: the route table is recomputed as a whole. Every replica
        # computes and serves it; only the leader writes the policies' status.
        self.routes = RoutePolicyReconciler(self.client, self.store, publisher, activator=activator_endpoint,
                                            ready=ready, writes=self.elector is None,
                                            rate_limit_service=self._rate_limit_service)
        self.route_queue = WorkQueue(self.routes.reconcile, workers=1)
        self.route_queue.start()
        self.route_queue.add(ROUTES)  # publish once even if the cluster has nothing to route yet
        if options.autoscale_interval > 0:
            knobs: Knobs = {"scale_up_period": options.scale_up_period, "max_signal_age": options.max_signal_age,
                            "trend_window": options.trend_window, "panic_threshold": options.panic_threshold}
            self.autoscaler = Autoscaler(self.client, self.store, self.replicas,
                                         interval=options.autoscale_interval, waker=self.waker, knobs=knobs)
        if self.xds is not None:
            self.budgets = BudgetReporter(self.client, self.store, self.xds.rate_limits, interval=BUDGET_INTERVAL)
        if options.traffic_interval > 0 and self.xds is not None:
            self.traffic = TrafficReporter(self.client, self.store, self.xds.stats_urls,
                                           interval=options.traffic_interval)
        if self.elector is None:
            await self._lead()
        else:
            assert self.lease_namespace is not None
            pod, deployment = await self._owners()
            self.elector.owner = deployment  # uninstalling the operator removes its Lease
            if self.xds is not None:
                self.reports = ReportWriter(self.client, self.xds, self.lease_namespace,
                                            f"{options.leader_election_id}-xds-{self.identity}", self.identity,
                                            pod)  # the report goes with the replica's pod
                self.reports.start()
            telemetry.LEADER.set(0)
            self._election = asyncio.create_task(self.elector.run(), name="leader election")
        log.info("llmfleet operator started; metrics on %s:%s", options.bind, options.metrics_port)

    async def _lead(self) -> None:
        """Become the writer: reconcile every ModelDeployment, autoscale, write route status."""
        telemetry.LEADER.set(1)
        self.md_queue.start()
        for md in self.store.model_deployments.values():
            self.md_queue.add(md.ref)  # what changed while following, and everything else once
        if self.autoscaler is not None:
            self.autoscaler.start()
        if self.traffic is not None:
            self.traffic.start()
        if self.budgets is not None:
            self.budgets.start()
        self.adapters.start()
        if self.routes is not None:
            self.routes.writes = True
            self._route_queue_later()

    async def _follow(self) -> None:
        """Stop writing (the Lease is lost); keep computing and serving routes."""
        telemetry.LEADER.set(0)
        telemetry.clear_leader_series()
        if self.routes is not None:
            self.routes.writes = False
        await self.md_queue.stop()
        for component in (self.autoscaler, self.traffic, self.budgets, self.adapters):
            if component is not None:
                await component.stop()

    async def _owners(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """This replica's pod and the operator's Deployment, as ownerReferences (None
        outside a pod, or when they cannot be read)."""
        name = os.environ.get("POD_NAME")
        if not name or not self.lease_namespace:
            return None, None
        try:
            pod = await self.client.get(PODS, name, self.lease_namespace)
            replica_set = _controller(pod)
            deployment = None
            if replica_set is not None and replica_set["kind"] == "ReplicaSet":
                deployment = _controller(await self.client.get(REPLICA_SETS, replica_set["name"],
                                                               self.lease_namespace))
        except ApiError as exc:
            log.warning("cannot read this replica's pod or Deployment (%s): its Lease and xDS report will "
                        "outlive them", exc)
            return None, None
        return _reference(pod), deployment

    def _rate_limit_service(self) -> Endpoint | None:
        """Where Envoys ask for tenants' rate limits: the leader's (one count for every Envoy)."""
        if self.xds is None or self.xds.port is None:
            return None
        if self.elector is None:
            return Endpoint(advertised_address(self.options), self.xds.port)
        return parse_endpoint(self.elector.holder_address)

    def _route_queue_later(self) -> None:
        if self.route_queue is not None:
            self.route_queue.add(ROUTES)

    async def _report_sync(self) -> None:
        while True:
            await asyncio.sleep(SYNC_LOG_SECONDS)
            missing = [i.resource.plural for i in self.store.informers if not i.synced.is_set()]
            log.warning("still listing %s (no reconcile runs before every list is complete)", ", ".join(missing))

    async def stop(self) -> None:
        if self._election is not None:
            self._election.cancel()
            await asyncio.gather(self._election, return_exceptions=True)
        for component in (self.autoscaler, self.traffic, self.budgets, self.adapters):
            if component is not None:
                await component.stop()
        for queue in (self.md_queue, self.route_queue):
            if queue is not None:
                await queue.stop()
        if self.elector is not None:
            await self.elector.release()  # writes have stopped: another replica may lead at once
        if self.reports is not None:
            await self.reports.stop()
        if self.xds is not None:
            await self.xds.stop()
        if self.activator is not None:
            await self.activator.stop()
        await self.store.stop()
        await self.client.close()


def _controller(body: dict[str, Any]) -> dict[str, Any] | None:
    """``body``'s controller as a plain ownerReference (not a controller, blocking nothing:
    that would need more rights), or None."""
    owner = next((o for o in body["metadata"].get("ownerReferences") or [] if o.get("controller")), None)
    return {k: owner[k] for k in ("apiVersion", "kind", "name", "uid")} if owner else None


def _reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", "v1"), "kind": body.get("kind", "Pod"), "name": meta["name"],
            "uid": meta["uid"]}


def data_plane_settings(options: OperatorOptions) -> DataPlaneSettings:
    """The knobs of the Envoy config the options set (every replica must be given the same)."""
    return DataPlaneSettings(usage_accounting=not options.no_usage_accounting)


def advertised_address(options: OperatorOptions) -> str:
    """The IP at which Envoy reaches this replica."""
    if options.advertise_address:
        return options.advertise_address
    if os.environ.get("POD_IP"):
        return os.environ["POD_IP"]
    try:
        address = ipaddress.ip_address(options.xds_address)
    except ValueError:
        return "127.0.0.1"
    return "127.0.0.1" if address.is_unspecified else str(address)


def parse_endpoint(text: str | None) -> Endpoint | None:
    """"10.1.2.3:18000" (or "[fd00::1]:18000") as an Endpoint; None when it is not one."""
    host, _, port = (text or "").rpartition(":")
    try:
        return Endpoint(str(ipaddress.ip_address(host.strip("[]"))), int(port))
    except ValueError:
        return None


def replica_identity(options: OperatorOptions) -> str:
    return options.identity or os.environ.get("POD_NAME") or socket.gethostname()


async def resolve(address: str) -> str:
    """An IP for ``address`` (itself when it is one): Envoy's endpoints are IPs."""
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(address, None, type=socket.SOCK_STREAM)
    if not infos:
        raise SystemExit(f"llmfleet run: --activator-address {address!r} resolves to no address")
    return str(infos[0][4][0])


def configure_logging(level: str) -> None:
    """Set the llmfleet and kopf loggers to ``level`` (one of LOG_LEVELS).

    kopf.configure() has already installed the handler on the root logger; records
    below the root's level still reach it from loggers set lower.
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    number = getattr(logging, level.upper())
    for name in ("llmfleet", "kopf"):
        logging.getLogger(name).setLevel(number)
    quiet = number if level == "debug" else max(number, logging.WARNING)
    for name in ("kopf.objects", "aiohttp.access", "httpx"):
        logging.getLogger(name).setLevel(quiet)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, the kubeconfig ($KUBECONFIG or --kubeconfig)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # we write our own Events, with our own reasons
    # The store watches what llmfleet reads; kopf needs no CRD or namespace listing.
    settings.scanning.disabled = True
    await memo.operator.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.stop()


def run(options: OperatorOptions) -> None:
    """Run the operator until SIGINT/SIGTERM."""
    if options.kubeconfig:
        os.environ["KUBECONFIG"] = options.kubeconfig  # for kopf's own login
    if options.metrics_port:
        # Bound before kopf starts, so a taken port stops the process at once with a
        # clear error instead of leaving a live-looking operator that does nothing.
        try:
            start_http_server(options.metrics_port, addr=options.bind, registry=telemetry.REGISTRY)
        except OSError as exc:
            where = f"{options.bind}:{options.metrics_port}"
            raise SystemExit(f"llmfleet run: cannot serve metrics on {where}: {exc}") from exc
    kopf.configure(verbose=False)
    configure_logging(options.log_level)
    kopf.run(
        standalone=True,  # no kopf peering: replicas coordinate through llmfleet's own Lease
        clusterwide=not options.namespaces,
        namespaces=options.namespaces or (),
        liveness_endpoint=f"http://{options.bind}:{options.health_port}/healthz" if options.health_port else None,
        memo=kopf.Memo(operator=Operator(options)),
        # kopf would derive it from the user name, which a non-root uid without a
        # passwd entry (the image's 65532) does not have: getpwuid() fails at start-up.
        # (kopf types it as a NewType of str that it does not export.)
        identity=cast(Any, replica_identity(options)),
    )
