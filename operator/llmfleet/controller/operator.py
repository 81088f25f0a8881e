"""kopf wiring: watches turn into work-queue keys; workers reconcile level-based.

kopf's change-detecting handlers (on.create/update/resume) keep progress and "last
handled" annotations on every object, which would rewrite idle objects on each
operator restart. Event handlers store nothing, so every watch event (including the
initial listing at start-up) just enqueues the owning ModelDeployment, and the
reconciler computes the desired state from the whole current state each time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import kopf
from prometheus_client import start_http_server

from . import metrics
from .kube import GROUP, VERSION, Kube, Ref
from .modeldeployment import ModelDeploymentReconciler
from .routepolicy import ROUTES, NoDataPlane, RoutePolicyReconciler, XdsPublisher
from .activator import Activator, ReadyEndpoints
from .autoscaler import Autoscaler
from ..autoscale.scaler import ScalingPolicy
from .waker import Waker
from ..envoy.xds import XdsServer
from ..routing.table import Endpoint
from .workqueue import WorkQueue
from ..render.deployment import SELECTOR_LABEL as MD_LABEL

log = logging.getLogger("llmfleet")


@dataclass
class OperatorOptions:
    """`llmfleet run`'s flags (see cli.py for what each one means)."""

    kubeconfig: str | None = None
    namespaces: list[str] | None = None
    bind: str = "0.0.0.0"
    metrics_port: int = 8080
    health_port: int = 8081
    workers: int = 4
    xds_address: str = "0.0.0.0"
    xds_port: int = 18000
    envoy_listener_address: str = "0.0.0.0"
    envoy_listener_port: int = 8080
    activator_address: str | None = None  # how Envoy reaches the operator (an IP)
    activator_port: int = 18001
    activator_timeout: float = 600.0
    autoscale_interval: float = 5.0
    # The scaler's own knobs (autoscale.scaler.ScalingPolicy), the same for every model.
    scale_up_period: float = ScalingPolicy.scale_up_period
    max_signal_age: float = ScalingPolicy.max_signal_age
    trend_window: float = ScalingPolicy.trend_window
    log_level: str = "info"


OPTIONS = OperatorOptions()
LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str) -> None:
    """Set the llmfleet and kopf loggers to ``level`` (one of LOG_LEVELS).

    kopf.objects logs one INFO line per watch event, which drowns everything else, so
    it stays at WARNING (or quieter) unless the level is debug. kopf.configure() has
    already installed the handler on the root logger; records below the root's level
    still reach it from loggers set lower.
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    number = getattr(logging, level.upper())
    for name in ("llmfleet", "kopf"):
        logging.getLogger(name).setLevel(number)
    quiet = number if level == "debug" else max(number, logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(quiet)
    logging.getLogger("aiohttp.access").setLevel(quiet)


@kopf.on.login()
def login(**kwargs) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, the kubeconfig ($KUBECONFIG or --kubeconfig)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # kopf's defaults are a 300 s request timeout and endless watch streams.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.posting.enabled = False  # we write our own Events, with our own reasons
    settings.persistence.finalizer = "llmfleet.io/kopf"  # never added: no change handlers
    # Only our pods and Deployments, filtered by the API server, not in memory.
    settings.watching.label_selectors[("v1", "pods")] = MD_LABEL
    settings.watching.label_selectors[("apps", "v1", "deployments")] = MD_LABEL

    kube = await asyncio.to_thread(Kube.from_environment, OPTIONS.kubeconfig, OPTIONS.namespaces or ())
    memo.kube = kube
    memo.md_queue = WorkQueue(ModelDeploymentReconciler(kube).reconcile, workers=OPTIONS.workers)
    publisher = NoDataPlane()
    if OPTIONS.xds_port:
        # Envoy's ACKs and NACKs change what Programmed says: recompute then.
        memo.xds = XdsServer(
            listener_address=OPTIONS.envoy_listener_address,
            listener_port=OPTIONS.envoy_listener_port,
            on_nack=lambda nack: memo.route_queue.add(ROUTES),
            on_synced=lambda node_id, version: memo.route_queue.add(ROUTES),
        )
        await memo.xds.start(OPTIONS.xds_address, OPTIONS.xds_port)
        publisher = XdsPublisher(memo.xds)
    activator_endpoint, ready = None, None
    if OPTIONS.activator_address and OPTIONS.activator_port:
        ready = ReadyEndpoints(asyncio.get_running_loop())
        memo.waker = Waker(kube)
        memo.activator = Activator(memo.waker.wake, ready, timeout=OPTIONS.activator_timeout)
        await memo.activator.start(OPTIONS.activator_address, OPTIONS.activator_port)
        activator_endpoint = Endpoint(OPTIONS.activator_address, OPTIONS.activator_port)
    # One key, one worker: the route table is recomputed as a whole.
    memo.route_queue = WorkQueue(
        RoutePolicyReconciler(kube, publisher, activator=activator_endpoint, ready=ready).reconcile, workers=1
    )
    memo.md_queue.start()
    memo.route_queue.start()
    if OPTIONS.autoscale_interval > 0:
        knobs = {"scale_up_period": OPTIONS.scale_up_period, "max_signal_age": OPTIONS.max_signal_age,
                 "trend_window": OPTIONS.trend_window}
        memo.autoscaler = Autoscaler(kube, interval=OPTIONS.autoscale_interval, waker=getattr(memo, "waker", None),
                                     knobs=knobs)
        memo.autoscaler.start()
    memo.route_queue.add(ROUTES)  # publish once even if the cluster has nothing to watch yet
    log.info("llmfleet operator started; metrics on %s:%s", OPTIONS.bind, OPTIONS.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    if autoscaler := getattr(memo, "autoscaler", None):
        await autoscaler.stop()
    for name in ("md_queue", "route_queue"):
        if queue := getattr(memo, name, None):
            await queue.stop()
    if xds := getattr(memo, "xds", None):
        await xds.stop()
    if activator := getattr(memo, "activator", None):
        await activator.stop()
    if kube := getattr(memo, "kube", None):
        kube.api.close()


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def model_deployment_event(name: str, namespace: str, memo: kopf.Memo, **_) -> None:
    memo.md_queue.add(Ref(namespace, name))
    memo.route_queue.add(ROUTES)  # existence and served name feed the route table


@kopf.on.event("apps", "v1", "deployments", labels={MD_LABEL: kopf.PRESENT})
async def deployment_event(namespace: str, labels: dict, memo: kopf.Memo, **_) -> None:
    memo.md_queue.add(Ref(namespace, labels[MD_LABEL]))


@kopf.on.event("", "v1", "pods", labels={MD_LABEL: kopf.PRESENT})
async def pod_event(namespace: str, labels: dict, memo: kopf.Memo, **_) -> None:
    memo.md_queue.add(Ref(namespace, labels[MD_LABEL]))
    memo.route_queue.add(ROUTES)  # ready pods are the endpoints


@kopf.on.event(GROUP, VERSION, "routepolicies")
async def route_policy_event(memo: kopf.Memo, **_) -> None:
    memo.route_queue.add(ROUTES)


def run(options: OperatorOptions) -> None:
    """Run the operator until SIGINT/SIGTERM."""
    global OPTIONS
    OPTIONS = options
    if options.kubeconfig:
        os.environ["KUBECONFIG"] = options.kubeconfig  # for kopf's own login
    if options.metrics_port:
        # Bound before kopf starts, so a taken port stops the process at once with a
        # clear error instead of leaving a live-looking operator that does nothing.
        try:
            start_http_server(options.metrics_port, addr=options.bind, registry=metrics.REGISTRY)
        except OSError as exc:
            raise SystemExit(f"llmfleet run: cannot serve metrics on {options.bind}:{options.metrics_port}: {exc}") from exc
    kopf.configure(verbose=False)
    configure_logging(options.log_level)
    kopf.run(
        standalone=True,  # one replica; see the chart's Recreate strategy
        clusterwide=not options.namespaces,
        namespaces=options.namespaces or (),
        liveness_endpoint=f"http://{options.bind}:{options.health_port}/healthz" if options.health_port else None,
        memo=kopf.Memo(),
        # kopf would derive it from the user name, which a non-root uid without a
        # passwd entry (the image's 65532) does not have: getpwuid() fails at start-up.
        identity=os.environ.get("POD_NAME") or socket.gethostname(),
    )
