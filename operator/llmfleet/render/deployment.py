"""ModelDeployment -> apps/v1 Deployment and v1 Service, as plain dicts.

Pure functions of the ModelDeployment object: no API calls, no clock. The
results are complete manifests for server-side apply (field manager
``llmfleet``), owned by the ModelDeployment through a controller
ownerReference so garbage collection removes them with it.

Rollout strategy: a replica whose pods request GPUs rolls with ``maxSurge: 0,
maxUnavailable: 1``. A surge pod would need a free GPU set on some node; on a
full cluster it stays Pending and the rollout never progresses. Taking one old
replica down first frees exactly the GPUs its replacement needs, at the cost of
one replica's capacity during the rollout (and a short outage for a
single-replica deployment, as Recreate would). Replicas without GPUs (``sim``)
surge one pod at a time and never drop below the desired count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmfleet.api.models import API_VERSION, MODEL_DEPLOYMENT_KIND, ModelDeploymentSpec
from llmfleet.engines import get_engine
from llmfleet.engines.base import PORT, PORT_NAME

SELECTOR_LABEL = "llmfleet.io/model-deployment"
MANAGED_BY = "llmfleet"
COMPONENT = "model-server"
# Slack on top of the startup probe's budget before a rollout counts as stalled.
PROGRESS_DEADLINE_MARGIN_SECONDS = 300


def selector_labels(name: str) -> dict[str, str]:
    """The label that selects a ModelDeployment's pods (Deployment and Service selector)."""
    return {SELECTOR_LABEL: name}


def selector_string(name: str) -> str:
    """The label selector as a string, for ``status.selector`` (read by the scale subresource)."""
    return f"{SELECTOR_LABEL}={name}"


def object_labels(name: str, engine_kind: str) -> dict[str, str]:
    """Labels of everything rendered for ModelDeployment ``name``."""
    return {
        "app.kubernetes.io/name": engine_kind,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(name),
    }


def owner_reference(md: Mapping[str, Any]) -> dict[str, Any]:
    """The controller ownerReference pointing at ModelDeployment ``md``."""
    meta = md["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": MODEL_DEPLOYMENT_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _spec(md: Mapping[str, Any]) -> ModelDeploymentSpec:
    spec = md["spec"]
    if isinstance(spec, ModelDeploymentSpec):
        return spec
    return ModelDeploymentSpec.model_validate(spec)


def _metadata(md: Mapping[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    meta = md["metadata"]
    out: dict[str, Any] = {"name": meta["name"]}
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    out["labels"] = object_labels(meta["name"], spec.engine.kind.value)
    out["ownerReferences"] = [owner_reference(md)]
    return out


def _strategy(spec: ModelDeploymentSpec) -> dict[str, Any]:
    if spec.gpus_per_replica > 0:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def render_deployment(md: Mapping[str, Any]) -> dict[str, Any]:
    """The Deployment running ModelDeployment ``md``'s replicas.

    ``md`` is the ModelDeployment object: ``metadata`` with name, namespace and
    uid, and ``spec`` as a dict or an already parsed
    :class:`~llmfleet.api.models.ModelDeploymentSpec`. A dict spec is validated
    here, raising pydantic's ValidationError when invalid.
    """
    spec = _spec(md)
    name = md["metadata"]["name"]
    engine = get_engine(spec.engine.kind)
    labels = object_labels(name, spec.engine.kind.value)
    pod_annotations = {
        # For clusters whose Prometheus discovers pods by annotation.
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": engine.metrics_path,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, spec),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": _strategy(spec),
            # Model loading may legitimately take as long as the startup probe allows.
            "progressDeadlineSeconds": engine.startup_budget_seconds + PROGRESS_DEADLINE_MARGIN_SECONDS,
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": engine.pod_spec(spec, name),
            },
        },
    }


def render_service(md: Mapping[str, Any]) -> dict[str, Any]:
    """The ClusterIP Service in front of ModelDeployment ``md``'s replicas (port 8000, "http")."""
    spec = _spec(md)
    name = md["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
