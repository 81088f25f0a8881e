"""Tier 4: the dev cluster, the operator, a real Envoy and real sim replicas together."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def fleet(dev_cluster):
    """The dev cluster's sim fleet: a real `llmfleet sim` process behind every Running
    sim pod, which makes the pod Ready when it answers its health check."""
    from llmfleet_devcluster.simfleet import FleetView

    return FleetView(dev_cluster.logdir)


@pytest.fixture(scope="session")
def envoy(release):
    """The chart's Envoy ingress; `.url` is its OpenAI endpoint (the ingress Service)."""
    return SimpleNamespace(url=release.ingress_url)
