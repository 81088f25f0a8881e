"""Envoy's bootstrap and the ``llmfleet envoy-bootstrap`` command."""

from __future__ import annotations

import json

import pytest
import yaml

from llmfleet.envoy.bootstrap import ADMIN_CLUSTER, READY_LISTENER, XDS_CLUSTER, bootstrap, main, render


def test_bootstrap_points_envoy_at_ads_with_admin_on_loopback() -> None:
    config = bootstrap("llmfleet-xds.llmfleet-system.svc", 18000, "envoy-abc", 9901)
    assert config["node"] == {"id": "envoy-abc", "cluster": "llmfleet-ingress"}
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    dynamic = config["dynamic_resources"]
    ads = dynamic["ads_config"]
    assert ads["api_type"] == "GRPC" and ads["transport_api_version"] == "V3"
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    assert ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"] == {
        "base_interval": "0.5s", "max_interval": "10s"}
    assert dynamic["cds_config"] == dynamic["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    (xds,) = config["static_resources"]["clusters"]
    assert xds["name"] == XDS_CLUSTER
    assert xds["type"] == "LOGICAL_DNS"  # a Service name
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "llmfleet-xds.llmfleet-system.svc", "port_value": 18000}
    options = xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC needs HTTP/2


def test_ip_address_uses_a_static_cluster() -> None:
    config = bootstrap("127.0.0.1", 18000, "n", 0, xds_retry_base_seconds=0.1, xds_retry_max_seconds=0.5)
    assert config["static_resources"]["clusters"][0]["type"] == "STATIC"
    backoff = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["retry_policy"]
    assert backoff["retry_back_off"] == {"base_interval": "0.1s", "max_interval": "0.5s"}


@pytest.mark.parametrize("kwargs", [{"xds_port": 0}, {"xds_port": 70000}, {"admin_port": -1}, {"node_id": ""}])
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    args = {"xds_address": "x", "xds_port": 18000, "node_id": "n", "admin_port": 9901, **kwargs}
    with pytest.raises(ValueError):
        bootstrap(**args)


def test_cli_prints_yaml_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--xds-address", "10.1.2.3", "--xds-port", "18001", "--node-id", "pod-1", "--admin-port", "9902"]
    assert main(argv) == 0
    from_yaml = yaml.safe_load(capsys.readouterr().out)
    assert main([*argv, "--format", "json"]) == 0
    from_json = json.loads(capsys.readouterr().out)
    assert from_yaml == from_json == bootstrap("10.1.2.3", 18001, "pod-1", 9902)


def test_cli_writes_a_file_and_reports_bad_input(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "envoy.yaml"
    assert main(["--xds-address", "x", "--node-id", "n", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["node"]["id"] == "n"
    assert main(["--xds-address", "x", "--node-id", "n", "--xds-port", "0"]) == 2
    assert "ports must be" in capsys.readouterr().err


@pytest.mark.parametrize("node_id", ["n", "Y", "no", "on", "true", "null", "1e3", "0x10"])
def test_yaml_keeps_ambiguous_strings_strings(node_id: str) -> None:
    text = render(bootstrap("x", 18000, node_id, 9901), "yaml")
    assert yaml.safe_load(text)["node"]["id"] == node_id
    assert f'id: "{node_id}"' in text or f"id: '{node_id}'" in text


def test_no_ready_listener_unless_asked() -> None:
    config = bootstrap("x", 18000, "n", 9901)
    assert "listeners" not in config["static_resources"]
    assert [c["name"] for c in config["static_resources"]["clusters"]] == [XDS_CLUSTER]


def test_ready_listener_exposes_only_ready_and_stats_from_admin() -> None:
    config = bootstrap("x", 18000, "n", 19000, ready_port=19001)
    (listener,) = config["static_resources"]["listeners"]
    assert listener["name"] == READY_LISTENER
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 19001}
    assert listener["ignore_global_conn_limit"] is True  # probes pass even at the connection limit
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    manager = hcm["typed_config"]
    assert manager["normalize_path"] is True and manager["merge_slashes"] is True
    (vhost,) = manager["route_config"]["virtual_hosts"]
    assert [(r["match"], r.get("route"), r.get("direct_response")) for r in vhost["routes"]] == [
        ({"path": "/ready"}, {"cluster": ADMIN_CLUSTER}, None),
        ({"prefix": "/stats/prometheus"}, {"cluster": ADMIN_CLUSTER}, None),
        ({"prefix": "/"}, None, {"status": 404}),
    ]
    admin = config["static_resources"]["clusters"][1]
    assert admin["name"] == ADMIN_CLUSTER and admin["type"] == "STATIC"
    endpoint = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    # The cluster reaches admin where admin listens: loopback, never the pod address.
    assert endpoint["address"]["socket_address"] == config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 19000}


@pytest.mark.parametrize("kwargs, message", [
    ({"ready_port": 0}, "ready_port must be within"),
    ({"ready_port": 65536}, "ready_port must be within"),
    ({"ready_port": 9901}, "must differ"),
    ({"ready_port": 9902, "admin_port": 0}, "fixed admin_port"),
])
def test_bad_ready_ports_are_refused(kwargs: dict, message: str) -> None:
    args = {"xds_address": "x", "xds_port": 18000, "node_id": "n", "admin_port": 9901, **kwargs}
    with pytest.raises(ValueError, match=message):
        bootstrap(**args)


def test_cli_ready_port(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--xds-address", "llmfleet-operator.ns.svc", "--node-id", "pod-1", "--admin-port", "19000",
            "--node-cluster", "llmfleet-ingress", "--ready-port", "19001"]
    assert main(argv) == 0
    assert yaml.safe_load(capsys.readouterr().out) == bootstrap(
        "llmfleet-operator.ns.svc", 18000, "pod-1", 19000, node_cluster="llmfleet-ingress", ready_port=19001)
    assert main([*argv[:-1], "19000"]) == 2
    assert "must differ" in capsys.readouterr().err
