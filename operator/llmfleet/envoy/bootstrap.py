"""Envoy's bootstrap: who it is, where the operator's xDS server is, admin on loopback.

Everything else (the OpenAI listener, routes, clusters, endpoints) comes over ADS.
Printed by ``llmfleet envoy-bootstrap``; the Helm chart renders the same into its
``<release>-ingress-bootstrap`` ConfigMap (tests/unit/test_chart.py compares the two).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

XDS_CLUSTER = "llmfleet_xds"
# The optional static listener that exposes admin's /ready and /stats/prometheus, and the
# cluster through which it reaches the admin interface on loopback.
READY_LISTENER = "ready"
ADMIN_CLUSTER = "envoy_admin"
READY_PATH = "/ready"
STATS_PREFIX = "/stats/prometheus"
# Node metadata: where the operator reads this Envoy's counters. The port is the ready
# listener's (in the bootstrap); the address is the pod's (the chart merges it in with
# --config-yaml), else the address the xDS stream comes from.
STATS_PORT_KEY = "llmfleet_stats_port"
STATS_ADDRESS_KEY = "llmfleet_stats_address"


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def bootstrap(
    xds_address: str,
    xds_port: int,
    node_id: str,
    admin_port: int,
    *,
    node_cluster: str = "llmfleet-ingress",
    admin_address: str = "127.0.0.1",
    xds_retry_base_seconds: float = 0.5,
    xds_retry_max_seconds: float = 10.0,
    xds_keepalive_seconds: float = 10.0,
    max_downstream_connections: int = 50_000,
    ready_port: int | None = None,
) -> dict[str, Any]:
    """The bootstrap dict (Envoy's JSON/YAML shape).

    The admin interface can change Envoy's state (``/quitquitquit``, log levels), so it
    listens on loopback only. With ``ready_port``, a static listener on
    ``0.0.0.0:ready_port`` forwards exactly ``/ready`` (the kubelet's probe) and
    ``/stats/prometheus`` (scrapes) to the admin interface and answers 404 to anything
    else, as Envoy Gateway does. Envoy re-dials the xDS server with exponential
    back-off between ``xds_retry_base_seconds`` and ``xds_retry_max_seconds`` and keeps
    its last good configuration meanwhile.
    """
    if not 0 < xds_port < 65536 or not 0 <= admin_port < 65536:
        raise ValueError("ports must be within 1..65535 (admin may be 0)")
    if ready_port is not None:
        if not 0 < ready_port < 65536:
            raise ValueError("ready_port must be within 1..65535")
        if admin_port == 0:
            raise ValueError("the ready listener needs a fixed admin_port (not 0)")
        if ready_port == admin_port:
            raise ValueError("ready_port and admin_port must differ")
    if not node_id:
        raise ValueError("node_id must not be empty")
    ads = {"ads": {}, "resource_api_version": "V3"}
    config: dict[str, Any] = {
        "node": {"id": node_id, "cluster": node_cluster},
        # In-process listeners: a fallback's saturation gates (envoy/resources.py).
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{
                    "envoy_grpc": {
                        "cluster_name": XDS_CLUSTER,
                        "retry_policy": {"retry_back_off": {
                            "base_interval": _duration(xds_retry_base_seconds),
                            "max_interval": _duration(xds_retry_max_seconds),
                        }},
                    },
                }],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                # A Service name in the cluster, an IP in tests.
                "type": "STATIC" if _is_ip(xds_address) else "LOGICAL_DNS",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": xds_address, "port_value": xds_port}}}}]}],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            # Notice a vanished operator pod within seconds, not at TCP timeout.
                            "connection_keepalive": {"interval": _duration(xds_keepalive_seconds),
                                                     "timeout": "5s"},
                        }},
                    },
                },
            }],
        },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                             "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_downstream_connections,
                },
            }],
        },
    }
    if ready_port is not None:
        config["node"]["metadata"] = {STATS_PORT_KEY: ready_port}
        static = config["static_resources"]
        static["listeners"] = [_ready_listener(ready_port)]
        static["clusters"].append(_admin_cluster(admin_address, admin_port))
    return config


def _ready_listener(port: int) -> dict[str, Any]:
    """Admin's /ready and /stats/prometheus on every address, and nothing else of admin's."""
    to_admin = {"cluster": ADMIN_CLUSTER}
    return {
        "name": READY_LISTENER,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        # Probes and scrapes get through even when clients hold every allowed connection.
        "ignore_global_conn_limit": True,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": READY_LISTENER,
                # "/stats/prometheus/../quitquitquit" becomes "/quitquitquit" before routing.
                "normalize_path": True,
                "merge_slashes": True,
                "route_config": {
                    "name": READY_LISTENER,
                    "virtual_hosts": [{
                        "name": READY_LISTENER,
                        "domains": ["*"],
                        "routes": [
                            {"match": {"path": READY_PATH}, "route": to_admin},
                            {"match": {"prefix": STATS_PREFIX}, "route": to_admin},
                            {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                        ],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def _admin_cluster(admin_address: str, admin_port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": admin_address, "port_value": admin_port}}}}]}],
        },
    }


_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", ""}
_YAML_NUMBER = re.compile(
    r"[-+]?(\.?[0-9][0-9_]*\.?[0-9_]*(e[-+]?[0-9]+)?|0x[0-9a-f_]+|0o?[0-7_]+|\.inf|\.nan"
    r"|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)")


def _ambiguous_in_yaml(text: str) -> bool:
    """Whether some YAML reader could take ``text`` for a bool, null or number.

    Envoy reads YAML 1.1, where a bare ``n`` is false (a node id "n" broke Envoy's
    start-up); PyYAML quotes yes/no/on/off but not y/n or ``1e3``. Quote them all.
    """
    lowered = text.lower()
    return lowered in _YAML_WORDS or _YAML_NUMBER.fullmatch(lowered) is not None


def render(config: dict[str, Any], fmt: str = "yaml") -> str:
    """The bootstrap as YAML or JSON text."""
    if fmt == "json":
        return json.dumps(config, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        class Dumper(yaml.SafeDumper):
            def ignore_aliases(self, data: Any) -> bool:
                return True  # no &id001 anchors for repeated sub-dicts

        def represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
            style = '"' if _ambiguous_in_yaml(data) else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

        Dumper.add_representer(str, represent_str)
        return yaml.dump(config, Dumper=Dumper, sort_keys=False)
    raise ValueError(f"unknown format {fmt!r} (yaml or json)")


def build_parser(prog: str = "llmfleet envoy-bootstrap") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Print the Envoy bootstrap that points Envoy "
                                "at the llmfleet operator's xDS server.")
    p.add_argument("--xds-address", required=True, help="operator's xDS address (Service DNS name or IP)")
    p.add_argument("--xds-port", type=int, default=18000, help="operator's xDS port (default 18000)")
    p.add_argument("--node-id", required=True, help="this Envoy's node id (e.g. the pod name)")
    p.add_argument("--node-cluster", default="llmfleet-ingress", help="node cluster (default llmfleet-ingress)")
    p.add_argument("--admin-port", type=int, default=9901, help="admin port, on 127.0.0.1 (default 9901)")
    p.add_argument("--ready-port", type=int,
                   help="also serve admin's /ready and /stats/prometheus (only those) on 0.0.0.0 at this port, "
                        "for kubelet probes and Prometheus")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = bootstrap(args.xds_address, args.xds_port, args.node_id, args.admin_port,
                           node_cluster=args.node_cluster, ready_port=args.ready_port)
    except ValueError as exc:
        print(f"envoy-bootstrap: {exc}", file=sys.stderr)
        return 2
    text = render(config, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
