"""Typed views of the objects the operator watches, parsed once per watch event.

Each view keeps only what llmfleet reads, so the caches stay small at thousands of
objects, and equal views mean "nothing llmfleet cares about changed" (the store drops
such events). The one definition of a pod that serves (``PodView.serving``) lives here,
and the status, the autoscaler and the routes all use it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from ..api.models import (
    API_VERSION,
    DEFAULT_TARGETS,
    MODEL_DEPLOYMENT_KIND,
    ROUTE_POLICY_KIND,
    TENANT_KIND,
    AutoscalingMetric,
    ModelDeploymentSpec,
    RoutePolicySpec,
    SpecError,
    TenantSpec,
    parse_model_deployment_spec,
    parse_route_policy_spec,
    parse_tenant_spec,
)
from ..engines.base import CONTAINER_NAME, PORT, PORT_NAME
from ..render.deployment import SELECTOR_LABEL

APPLIED_ANNOTATION = "llmfleet.io/applied"  # hash of what the operator last applied to a child
# On a model server pod: the LoRA adapters the operator loaded into its container, as JSON
# {"restarts": RESTART_COUNT, "loaded": {NAME: PATH, ...}}; a container restart empties the
# engine, so the record holds only while the container's restartCount is the one written.
ADAPTERS_ANNOTATION = "llmfleet.io/adapters"
# Container waiting reasons that will not clear by themselves.
STUCK_WAITING_REASONS = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                                   "CreateContainerConfigError", "CreateContainerError"})

Ref = tuple[str, str]  # (namespace, name)


def _parsed_spec(body: dict[str, Any], previous: Any, parse: Callable[[dict[str, Any]], Any]) -> tuple[Any, str | None]:
    """(spec, None) or (None, why the spec is refused); parsed once per generation of an object."""
    meta = body["metadata"]
    if previous is not None and previous.generation == meta.get("generation", 0) and previous.uid == meta.get("uid"):
        return previous.spec, previous.invalid  # the spec is what that generation says
    try:
        return parse(body.get("spec") or {}), None
    except SpecError as exc:
        return None, str(exc)


def _time(text: str | None) -> float | None:
    """Seconds since the epoch of a Kubernetes timestamp, or None."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def adapters_record(restarts: int, loaded: dict[str, str]) -> str:
    """The ADAPTERS_ANNOTATION value for adapters ``loaded`` (name → path) into a container
    restarted ``restarts`` times."""
    return json.dumps({"restarts": restarts, "loaded": dict(sorted(loaded.items()))}, separators=(",", ":"))


def loaded_adapters(record: str | None, restarts: int) -> tuple[tuple[str, str], ...]:
    """The adapters (name, path) an ADAPTERS_ANNOTATION value says are loaded, if written
    for this container."""
    if not record:
        return ()
    try:
        value = json.loads(record)
        if value.get("restarts") != restarts:
            return ()
        return tuple(sorted((str(n), str(p)) for n, p in (value.get("loaded") or {}).items()))
    except (ValueError, AttributeError, TypeError):
        return ()


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    model_deployment: str | None  # the ModelDeployment whose replica this is
    phase: str
    ip: str | None
    port: int  # the model server's port: the container port named "http"
    ready: bool  # the Ready condition
    deleting: bool
    created: float | None
    ready_since: float | None  # when Ready last turned True
    unschedulable: str | None = None  # the scheduler's message while it cannot place the pod
    stuck: tuple[tuple[str, str], ...] = ()  # (reason, message) of containers that will not recover alone
    restarts: int = 0  # the model server container's restartCount
    adapters: tuple[tuple[str, str], ...] = ()  # LoRA adapters (name, path) in the container (ADAPTERS_ANNOTATION)

    @classmethod
    def from_body(cls, pod: dict[str, Any]) -> PodView:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = conditions.get("Ready", {})
        scheduled = conditions.get("PodScheduled", {})
        port = next((int(p["containerPort"]) for c in spec.get("containers") or [] for p in c.get("ports") or []
                     if p.get("name") == PORT_NAME), PORT)
        stuck = tuple(
            (w["reason"], w.get("message", ""))
            for cs in status.get("containerStatuses") or []
            if (w := (cs.get("state") or {}).get("waiting") or {}).get("reason") in STUCK_WAITING_REASONS)
        restarts = next((int(cs.get("restartCount") or 0) for cs in status.get("containerStatuses") or []
                         if cs.get("name") == CONTAINER_NAME), 0)
        return cls(
            namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
            model_deployment=(meta.get("labels") or {}).get(SELECTOR_LABEL),
            phase=status.get("phase", "Pending"), ip=status.get("podIP") or None, port=port,
            ready=ready.get("status") == "True", deleting=bool(meta.get("deletionTimestamp")),
            created=_time(meta.get("creationTimestamp")),
            ready_since=_time(ready.get("lastTransitionTime")) if ready.get("status") == "True" else None,
            unschedulable=scheduled.get("message", "") if scheduled.get("status") == "False"
            and scheduled.get("reason") == "Unschedulable" else None,
            stuck=stuck, restarts=restarts,
            adapters=loaded_adapters((meta.get("annotations") or {}).get(ADAPTERS_ANNOTATION), restarts),
        )

    @property
    def serving(self) -> bool:
        """The one definition of a replica that serves: running, ready, with an address,
        and not being deleted (a terminating pod drains; nothing new goes to it)."""
        return self.phase == "Running" and self.ready and self.ip is not None and not self.deleting

    @property
    def gone(self) -> bool:
        """Ended or ending: no longer counts as a replica, ready or starting."""
        return self.deleting or self.phase in ("Succeeded", "Failed")

    @property
    def starting(self) -> bool:
        return not self.gone and not self.serving

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """(address, port) where a serving replica answers; None for one that does not serve."""
        return (self.ip, self.port) if self.serving and self.ip else None

    @property
    def startup_seconds(self) -> float | None:
        """Creation to Ready, for a pod that is ready."""
        if self.ready_since is None or self.created is None:
            return None
        return max(0.0, self.ready_since - self.created)


@dataclass(frozen=True)
class DeploymentView:
    namespace: str
    name: str
    generation: int
    observed: bool  # the Deployment controller has seen the latest spec
    replicas: int
    ready_replicas: int
    updated_replicas: int
    deadline_exceeded: str | None  # the Progressing condition's message once the rollout stalled
    applied: str | None  # APPLIED_ANNOTATION

    @classmethod
    def from_body(cls, deployment: dict[str, Any]) -> DeploymentView:
        meta, status = deployment["metadata"], deployment.get("status") or {}
        generation = meta.get("generation", 0)
        deadline = next((c.get("message", "") for c in status.get("conditions") or []
                         if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"), None)
        return cls(meta["namespace"], meta["name"], generation, status.get("observedGeneration", 0) >= generation,
                   status.get("replicas") or 0, status.get("readyReplicas") or 0, status.get("updatedReplicas") or 0,
                   deadline, (meta.get("annotations") or {}).get(APPLIED_ANNOTATION))


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    applied: str | None

    @classmethod
    def from_body(cls, service: dict[str, Any]) -> ServiceView:
        meta = service["metadata"]
        return cls(meta["namespace"], meta["name"], (meta.get("annotations") or {}).get(APPLIED_ANNOTATION))


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: tuple[tuple[str, str], ...]
    allocatable: tuple[tuple[str, str], ...]

    @classmethod
    def from_body(cls, node: dict[str, Any]) -> NodeView:
        meta, status = node["metadata"], node.get("status") or {}
        return cls(meta["name"], tuple(sorted((meta.get("labels") or {}).items())),
                   tuple(sorted((status.get("allocatable") or {}).items())))

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def allocatable_count(self, resource: str) -> int:
        try:
            return int(dict(self.allocatable).get(resource, "0"))
        except ValueError:
            return 0


@dataclass(frozen=True)
class _ResourceView:
    """What every view of an llmfleet resource holds: identity, generation, and the
    reference an Event names it by."""

    KIND: ClassVar[str]
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str = field(compare=False)  # changes with every write; says nothing by itself

    @property
    def ref(self) -> Ref:
        return (self.namespace, self.name)

    def involved(self) -> dict[str, Any]:
        """What an Event names as its object."""
        return {"apiVersion": API_VERSION, "kind": self.KIND,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                             "resourceVersion": self.resource_version}}


@dataclass(frozen=True)
class ModelDeploymentView(_ResourceView):
    KIND: ClassVar[str] = MODEL_DEPLOYMENT_KIND
    deleting: bool = False
    spec: ModelDeploymentSpec | None = None  # None when the spec is refused: see `invalid`
    invalid: str | None = None
    status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, md: dict[str, Any], previous: ModelDeploymentView | None = None) -> ModelDeploymentView:
        meta = md["metadata"]
        generation = meta.get("generation", 0)
        spec, invalid = _parsed_spec(md, previous, parse_model_deployment_spec)
        return cls(meta["namespace"], meta["name"], meta.get("uid", ""), generation, meta.get("resourceVersion", ""),
                   bool(meta.get("deletionTimestamp")), spec, invalid, md.get("status") or {})

    def manifest(self) -> dict[str, Any]:
        """The object as the renderers take it: metadata and the parsed spec."""
        return {"apiVersion": API_VERSION, "kind": MODEL_DEPLOYMENT_KIND,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}, "spec": self.spec}

    # What routing reads of a backend.
    @property
    def served_model(self) -> str:
        return self.spec.served_name_for(self.name) if self.spec else self.name

    @property
    def cost_per_replica_hour(self) -> float | None:
        return self.spec.cost.per_replica_hour if self.spec and self.spec.cost else None

    @property
    def declared_prices(self) -> tuple[float | None, float | None]:
        """(input, output) price per million tokens, where the spec declares them."""
        cost = self.spec.cost if self.spec else None
        return (cost.per_million_input_tokens, cost.per_million_output_tokens) if cost else (None, None)

    @property
    def load(self) -> dict[str, Any] | None:
        return self.status.get("load")

    @property
    def metric(self) -> str:
        auto = self.spec.autoscaling if self.spec else None
        return (auto.metric if auto else AutoscalingMetric.QUEUE_DEPTH).value

    @property
    def target(self) -> float | None:
        auto = self.spec.autoscaling if self.spec else None
        return auto.effective_target if auto else DEFAULT_TARGETS[AutoscalingMetric.QUEUE_DEPTH]

    @property
    def max_replicas(self) -> int:
        """The most replicas it may have: autoscaling's bound, else the replicas asked for."""
        if self.spec is None:
            return 0
        auto = self.spec.autoscaling
        return auto.max_replicas if auto else self.spec.replicas

    @property
    def scale_to_zero(self) -> bool:
        auto = self.spec.autoscaling if self.spec else None
        return bool(auto and auto.scale_to_zero and auto.scale_to_zero.idle_seconds)

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the LoRA adapters it declares."""
        return tuple(a.name for a in self.spec.adapters) if self.spec else ()

    def routing_facets(self) -> tuple:
        """What routing reads: a change elsewhere (conditions, ready counts) needs no recompute."""
        return (self.served_model, self.cost_per_replica_hour, self.declared_prices, self.metric, self.target,
                self.max_replicas,
                self.scale_to_zero, str(self.load), self.invalid, self.adapters)


@dataclass(frozen=True)
class _SpecView(_ResourceView):
    """A resource whose spec routing reads whole (a RoutePolicy, a Tenant), parsed once per generation."""

    created: str = ""
    spec: Any = None  # None when the spec is refused: see `invalid`
    invalid: str | None = None
    status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any], previous: Any = None) -> Self:
        meta = body["metadata"]
        spec, invalid = _parsed_spec(body, previous, cls.parse)
        return cls(meta["namespace"], meta["name"], meta.get("uid", ""), meta.get("generation", 0),
                   meta.get("resourceVersion", ""), meta.get("creationTimestamp") or "", spec, invalid,
                   body.get("status") or {})

    @staticmethod
    def parse(spec: dict[str, Any]) -> Any:
        """The spec, validated (raises SpecError)."""
        raise NotImplementedError

    def routing_facets(self) -> tuple[Any, ...]:
        """What routing reads, but the status it writes itself (its own write needs no recompute):
        of the status, only which budget periods are spent (a budget that downgrades reroutes)."""
        spent = tuple((row.get("period"), row.get("windowStart")) for row in self.status.get("budgets") or []
                      if float(row.get("usedPercent") or 0) >= 100)
        return (self.generation, self.uid, self.created, self.spec, self.invalid, spent)


@dataclass(frozen=True)
class RoutePolicyView(_SpecView):
    KIND: ClassVar[str] = ROUTE_POLICY_KIND
    spec: RoutePolicySpec | None = None

    @staticmethod
    def parse(spec: dict[str, Any]) -> RoutePolicySpec:
        return parse_route_policy_spec(spec)


@dataclass(frozen=True)
class TenantView(_SpecView):
    KIND: ClassVar[str] = TENANT_KIND
    spec: TenantSpec | None = None

    @staticmethod
    def parse(spec: dict[str, Any]) -> TenantSpec:
        return parse_tenant_spec(spec)


@dataclass(frozen=True)
class SecretView:
    """A Secret of API keys: its values, decoded. They never appear in a repr, a log or a status."""

    namespace: str
    name: str
    keys: tuple[tuple[str, str], ...] = field(repr=False)  # (the data key, the API key), by data key
    undecodable: tuple[str, ...] = ()  # data keys whose value is not UTF-8 text

    @property
    def ref(self) -> Ref:
        return (self.namespace, self.name)

    @classmethod
    def from_body(cls, secret: dict[str, Any]) -> SecretView:
        meta = secret["metadata"]
        keys, undecodable = [], []
        for name, encoded in sorted((secret.get("data") or {}).items()):
            try:
                value = base64.b64decode(encoded or "", validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                undecodable.append(name)
                continue
            keys.append((name, value.strip()))  # a trailing newline from `echo key > file` is not part of it
        return cls(meta["namespace"], meta["name"], tuple(keys), tuple(undecodable))


XDS_REPORT_LABEL = "llmfleet.io/xds-report"  # on each operator replica's report ConfigMap


@dataclass(frozen=True)
class XdsReportView:
    """What one operator replica says its connected Envoys run (its report ConfigMap)."""

    replica: str
    envoys: tuple[tuple[str, str], ...]  # (Envoy node ID, the version it runs in full, "" before its first)
    nack: str  # the last rejection an Envoy of that replica has not got past ("" when none)
    stats: tuple[tuple[str, str], ...] = ()  # (Envoy node ID, the URL where it serves its counters)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> XdsReportView:
        data = body.get("data") or {}
        return cls(data.get("replica") or body["metadata"]["name"], _json_pairs(data.get("envoys")),
                   data.get("nack") or "", _json_pairs(data.get("stats")))


def _json_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """A report's JSON object of strings as sorted pairs (nothing when it is not one)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in value.items())) if isinstance(value, dict) else ()
