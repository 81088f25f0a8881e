"""`llmfleet run`'s options: the only home of their defaults and of what each one means.

The command line is derived from :class:`OperatorOptions` (see :func:`add_arguments`),
so a flag, its default and its help text cannot drift apart from what the operator is
built with (controller/operator.py takes an ``OperatorOptions``).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .autoscale.scaler import ScalingPolicy

LOG_LEVELS = ("debug", "info", "warning", "error")


def _option(default: Any, help: str, *, flags: tuple[str, ...] = (), **argparse_kwargs: Any) -> Any:
    """A dataclass field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, "flags": flags, "argparse": argparse_kwargs})


@dataclass(frozen=True)
class OperatorOptions:
    kubeconfig: str | None = _option(None, "kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    namespaces: tuple[str, ...] | None = _option(
        None, "watch only this namespace (repeatable); default: all namespaces",
        flags=("--namespace", "-n"), action="append")
    bind: str = _option("0.0.0.0", "address the metrics and health ports listen on")
    metrics_port: int = _option(8080, "Prometheus metrics port (0 = off)")
    health_port: int = _option(8081, "liveness endpoint port, /healthz (0 = off)")
    workers: int = _option(4, "objects reconciled concurrently")
    xds_address: str = _option("0.0.0.0", "address the xDS (ADS) server and the activator listen on")
    xds_port: int = _option(18000, "xDS (ADS) port Envoy connects to (0 = off)")
    envoy_listener_address: str = _option("0.0.0.0", "address of the listener the operator configures in Envoy")
    envoy_listener_port: int = _option(
        8080, "port of the listener the operator configures in Envoy (the OpenAI endpoint)")
    activator_address: str | None = _option(
        None, "IP or name at which Envoy reaches the activator (in a cluster: the operator Service's name, "
              "resolved once at start, so every replica publishes the same address); "
              "without it, models scaled to zero answer 503 until scaled up")
    activator_port: int = _option(18001, "activator port")
    no_usage_accounting: bool = _option(
        False, "leave usage accounting out of Envoy's config (the usage Lua on every response, each request's "
               "log entry to the operator): no llmfleet_usage_* metrics, and token limits and budgets count "
               "nothing; saves Envoy ~65 us of CPU per request", action="store_true")
    advertise_address: str | None = _option(
        None, "IP at which Envoy reaches this replica's rate-limit service (on the xDS port) when it leads "
              "(default: $POD_IP, else the xDS address when it is one, else 127.0.0.1)")
    activator_timeout: float = _option(
        600.0, "seconds a request waits for a scaled-to-zero model to get a ready replica")
    autoscale_interval: float = _option(
        5.0, "seconds between scrapes of the replicas' /metrics and autoscaling decisions (0 = off)")
    traffic_interval: float = _option(
        15.0, "seconds between reads of every Envoy's counters for the RoutePolicies' status.traffic "
              "(requests, fallback share, cascade escalations; rewritten at most every 4 reads); 0 = off")
    # The scaler's own knobs (autoscale.scaler.ScalingPolicy), the same for every model.
    scale_up_period: float = _option(
        ScalingPolicy.scale_up_period,
        "seconds over which replicas grow at most to max(2 x n, n + 4) (the HPA's default policy)")
    max_signal_age: float = _option(
        ScalingPolicy.max_signal_age,
        "seconds after which a load sample is stale: it may raise replicas, never lower them")
    trend_window: float = _option(
        ScalingPolicy.trend_window,
        "seconds of load history the scaler sizes for (their mean + 1 s.d.; on a fall, the fitted line's "
        "value now + 1 s.d. around it) and whose rise it projects one replica startup time ahead")
    panic_threshold: float = _option(
        ScalingPolicy.panic_threshold,
        "a load sample this many times what the replicas hold at their target is answered at once "
        "(panic), and holds off scale-down for one trend window")
    leader_elect: bool = _option(
        False, "run as one of several replicas: a Lease elects the one that writes (children, status, scale, "
               "Events); every replica serves xDS and the activator", action="store_true")
    leader_election_namespace: str | None = _option(
        None, "namespace of the Lease and of the replicas' xDS reports (default: $POD_NAMESPACE)")
    leader_election_id: str = _option("llmfleet-operator", "name of the Lease")
    identity: str | None = _option(None, "this replica's name in the Lease (default: $POD_NAME, else the host name)")
    log_level: str = _option("info", "level of the operator's (and kopf's) logs; kopf's per-object lines need debug",
                             choices=LOG_LEVELS)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OperatorOptions:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        if values["namespaces"] is not None:
            values["namespaces"] = tuple(values["namespaces"])
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option, with the option's default and help."""
    for option in fields(OperatorOptions):
        assert option.default is not MISSING
        meta = option.metadata
        flags = meta["flags"] or ("--" + option.name.replace("_", "-"),)
        kwargs: dict[str, Any] = {"dest": option.name, "default": option.default, "help": meta["help"],
                                  **meta["argparse"]}
        if "action" not in kwargs and option.default is not None:
            kwargs["type"] = type(option.default)
        parser.add_argument(*flags, **kwargs)
