"""Spec -> Kubernetes objects, as pure functions on plain data."""

from llmfleet.render.deployment import (
    SELECTOR_LABEL,
    object_labels,
    owner_reference,
    render_deployment,
    render_service,
    selector_labels,
    selector_string,
)

__all__ = [
    "SELECTOR_LABEL",
    "object_labels",
    "owner_reference",
    "render_deployment",
    "render_service",
    "selector_labels",
    "selector_string",
]
