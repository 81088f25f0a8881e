"""Shared fixtures: the dev cluster (or any cluster) and per-test namespaces."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Property tests: a developer's run draws new examples (and keeps failing ones in
# .hypothesis/); CI draws the same ones every run, so a counterexample found by chance
# fails someone's local run, never a landing.
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None)
    settings.load_profile("ci")

CLUSTER_FIXTURES = {"dev_cluster", "k8s", "namespace", "release", "operator"}


@pytest.fixture(scope="session")
def dev_cluster():
    """A running cluster for the whole session.

    The real control plane built from upstream (see README), or, when
    LLMFLEET_TEST_KUBECONFIG is set, that cluster plus fake GPU nodes run by a local KWOK.
    """
    from llmfleet_devcluster.cluster import DevCluster, node_pools_from_env

    cluster = DevCluster(node_pools_from_env(), external_kubeconfig=os.environ.get("LLMFLEET_TEST_KUBECONFIG"))
    cluster.start()
    print(f"\ndev cluster ready in {cluster.timings['ready']:.1f} s, logs in {cluster.logdir}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def k8s(dev_cluster):
    """A kubernetes.client.ApiClient for the cluster."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace(dev_cluster, k8s, request):
    """A fresh namespace with its default ServiceAccount, deleted afterwards."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(k8s)
    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    core.create_namespace({"metadata": {"name": name, "labels": {"llmfleet.io/test": "true"}}})
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def crds(dev_cluster):
    """The generated CRDs from crds/, applied with kubectl and Established."""
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    dev_cluster.wait_established("modeldeployments.llmfleet.io", "routepolicies.llmfleet.io")
    return REPO / "crds"


@pytest.fixture(scope="session")
def release(dev_cluster, crds):
    """llmfleet installed with its own Helm chart: the operator and the Envoy ingress run
    on the dev cluster's system node from the chart's pod specs, under the chart's RBAC.
    Only the autoscaling and traffic intervals are shortened, so tests see decisions and
    status.traffic sooner."""
    from llmfleet_devcluster.release import Release

    yield Release(dev_cluster, values={"operator.autoscaleInterval": "1", "operator.trafficInterval": "1"}).install()


@pytest.fixture(scope="session")
def operator(release):
    """The chart's operator: start/stop/restart act on its Deployment."""
    return release.operator


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed cluster test, attach the tail of every component log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        cluster = item.funcargs.get("dev_cluster") if hasattr(item, "funcargs") else None
        if cluster is None:
            return
        for name, tail in cluster.log_tails().items():
            report.sections.append((f"dev cluster log: {name}", tail))
