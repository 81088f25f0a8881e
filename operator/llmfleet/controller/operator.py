"""`llmfleet run`: the composition root, and kopf as the process around it.

:class:`Operator` builds every component once from :class:`OperatorOptions`: the API
client, the store (the only thing that watches the API server), the xDS server, the
activator, the work queues and their reconcilers, and the autoscaler. Changes in the
store enqueue what they affect: a ModelDeployment, its children or its pods enqueue
that ModelDeployment; anything routing reads enqueues the route table. Reconcilers
read the store and write only what changed.

kopf runs the process: login, start-up and clean-up, signals, the liveness endpoint.
It watches nothing itself (scanning off, no resource handlers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from .. import telemetry
from ..autoscale.scaler import Knobs
from ..config import LOG_LEVELS, OperatorOptions
from ..envoy.xds import XdsServer
from ..kube.client import KubeClient
from ..kube.store import Store
from ..kube.views import DeploymentView, ModelDeploymentView, PodView, RoutePolicyView, ServiceView
from ..routing.table import Endpoint
from .activator import Activator, ReadyEndpoints
from .autoscaler import Autoscaler
from .modeldeployment import ModelDeploymentReconciler
from .replicas import ReplicaWriter
from .routepolicy import ROUTES, NoDataPlane, Publisher, RoutePolicyReconciler, XdsPublisher
from .waker import Waker
from .workqueue import WorkQueue

log = logging.getLogger("llmfleet")
SYNC_LOG_SECONDS = 30.0  # say what the operator waits for when listing takes this long


class Operator:
    """Everything `llmfleet run` runs, built once from its options."""

    def __init__(self, options: OperatorOptions, client: KubeClient | None = None) -> None:
        self.options = options
        self.client = client or KubeClient.from_environment(options.kubeconfig)
        self.store = Store(self.client, options.namespaces)
        self.replicas = ReplicaWriter(self.client)
        self.waker = Waker(self.store, self.replicas)
        self.xds: XdsServer | None = None
        self.activator: Activator | None = None
        self.autoscaler: Autoscaler | None = None
        self.md_queue = WorkQueue(ModelDeploymentReconciler(self.client, self.store).reconcile,
                                  workers=options.workers)
        self.route_queue: WorkQueue | None = None
        self._wire_store()

    def _wire_store(self) -> None:
        """What each change in the store puts on which queue."""
        def routes(*_: Any) -> None:
            if self.route_queue is not None:
                self.route_queue.add(ROUTES)

        def model_deployment(old: ModelDeploymentView | None, new: ModelDeploymentView | None) -> None:
            view = new or old
            assert view is not None
            self.md_queue.add(view.ref)
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
            if (old.endpoint if old else None) != (new.endpoint if new else None):
                routes()  # serving replicas are the endpoints

        def route_policy(old: RoutePolicyView | None, new: RoutePolicyView | None) -> None:
            if old is None or new is None or old.routing_facets() != new.routing_facets():
                routes()

        self.store.model_deployments.listeners.append(model_deployment)
        self.store.route_policies.listeners.append(route_policy)
        self.store.deployments.listeners.append(child)
        self.store.services.listeners.append(child)
        self.store.pods.listeners.append(pod)

    async def start(self) -> None:
        options = self.options
        waiting = asyncio.create_task(self._report_sync())
        try:
            await self.store.start()
        finally:
            waiting.cancel()
        # Reconcile only once every list is in: what was enqueued while listing runs now.
        self.md_queue.start()
        log.info("store synced: %d ModelDeployments, %d RoutePolicies, %d pods, %d nodes",
                 len(self.store.model_deployments.items), len(self.store.route_policies.items),
                 len(self.store.pods.items), len(self.store.nodes.items))
        publisher: Publisher = NoDataPlane()
        if options.xds_port:
            queue = self._route_queue_later
            # Envoy's ACKs and NACKs change what Programmed says: recompute then.
            self.xds = XdsServer(listener_address=options.envoy_listener_address,
                                 listener_port=options.envoy_listener_port,
                                 on_nack=lambda nack: queue(), on_synced=lambda node_id, version: queue())
            await self.xds.start(options.xds_address, options.xds_port)
            publisher = XdsPublisher(self.xds)
        activator_endpoint, ready = None, None
        if options.activator_address and options.activator_port:
            ready = ReadyEndpoints(asyncio.get_running_loop())
            self.activator = Activator(self.waker.wake, ready, timeout=options.activator_timeout)
            await self.activator.start(options.activator_address, options.activator_port)
            activator_endpoint = Endpoint(options.activator_address, options.activator_port)
        # One key, one worker: the route table is recomputed as a whole.
        self.route_queue = WorkQueue(RoutePolicyReconciler(self.client, self.store, publisher,
                                                           activator=activator_endpoint, ready=ready).reconcile,
                                     workers=1)
        self.route_queue.start()
        self.route_queue.add(ROUTES)  # publish once even if the cluster has nothing to route yet
        if options.autoscale_interval > 0:
            knobs: Knobs = {"scale_up_period": options.scale_up_period, "max_signal_age": options.max_signal_age,
                            "trend_window": options.trend_window}
            self.autoscaler = Autoscaler(self.client, self.store, self.replicas,
                                         interval=options.autoscale_interval, waker=self.waker, knobs=knobs)
            self.autoscaler.start()
        log.info("llmfleet operator started; metrics on %s:%s", options.bind, options.metrics_port)

    def _route_queue_later(self) -> None:
        if self.route_queue is not None:
            self.route_queue.add(ROUTES)

    async def _report_sync(self) -> None:
        while True:
            await asyncio.sleep(SYNC_LOG_SECONDS)
            missing = [i.resource.plural for i in self.store.informers if not i.synced.is_set()]
            log.warning("still listing %s (no reconcile runs before every list is complete)", ", ".join(missing))

    async def stop(self) -> None:
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        for queue in (self.md_queue, self.route_queue):
            if queue is not None:
                await queue.stop()
        if self.xds is not None:
            await self.xds.stop()
        if self.activator is not None:
            await self.activator.stop()
        await self.store.stop()
        await self.client.close()


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
        standalone=True,  # one replica; see the chart's Recreate strategy
        clusterwide=not options.namespaces,
        namespaces=options.namespaces or (),
        liveness_endpoint=f"http://{options.bind}:{options.health_port}/healthz" if options.health_port else None,
        memo=kopf.Memo(operator=Operator(options)),
        # kopf would derive it from the user name, which a non-root uid without a
        # passwd entry (the image's 65532) does not have: getpwuid() fails at start-up.
        # (kopf types it as a NewType of str that it does not export.)
        identity=cast(Any, os.environ.get("POD_NAME") or socket.gethostname()),
    )
