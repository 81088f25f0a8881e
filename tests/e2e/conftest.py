"""Tier 4: the dev cluster, the operator, a real Envoy and real sim replicas together."""

from __future__ import annotations

import pytest

from llmfleet.devcluster.cluster import free_port


def pytest_collection_modifyitems(items):
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def fleet(dev_cluster):
    """The dev cluster's sim fleet: a real `llmfleet sim` process behind every Running
    sim pod, which makes the pod Ready when it answers its health check."""
    from llmfleet.devcluster.simfleet import FleetView

    return FleetView(dev_cluster.logdir)


@pytest.fixture(scope="session")
def envoy(dev_cluster, operator, tmp_path_factory):
    """Envoy, bootstrapped to the operator's xDS server; `.url` is its OpenAI endpoint."""
    from llmfleet.envoy.bootstrap import bootstrap
    from llmfleet.envoy.process import EnvoyProcess

    admin_port = free_port()
    config = bootstrap("127.0.0.1", operator.xds_port, "ingress-e2e", admin_port)
    proc = EnvoyProcess(config, tmp_path_factory.mktemp("envoy"))
    proc.start()
    proc.wait_ready(timeout=60)
    proc.url = f"http://127.0.0.1:{operator.envoy_listener_port}"
    yield proc
    proc.stop()
