"""The `llmfleet` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmfleet", description="Kubernetes operator for LLM inference fleets")
    sub = parser.add_subparsers(dest="command", required=True)

    from .devcluster.cli import add_parser as add_dev_cluster

    add_dev_cluster(sub)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument(
        "--namespace", "-n", action="append", dest="namespaces",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port (0 = off)")
    run.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port, /healthz (0 = off)")
    run.add_argument("--bind", default="0.0.0.0", help="address the metrics and health ports listen on")
    run.add_argument("--workers", type=int, default=4, help="objects reconciled concurrently")
    run.add_argument("--xds-address", default="0.0.0.0", help="address the xDS (ADS) server listens on")
    run.add_argument("--xds-port", type=int, default=18000, help="xDS (ADS) port Envoy connects to (0 = off)")
    run.add_argument("--envoy-listener-address", default="0.0.0.0",
                     help="address of the listener the operator configures in Envoy")
    run.add_argument("--envoy-listener-port", type=int, default=8080,
                     help="port of the listener the operator configures in Envoy (the OpenAI endpoint)")
    run.add_argument("--activator-address",
                     help="IP at which Envoy reaches this operator's activator (in a pod: its pod IP); "
                          "without it, models scaled to zero answer 503 until scaled up")
    run.add_argument("--activator-port", type=int, default=18001, help="activator port")
    run.add_argument("--autoscale-interval", type=float, default=5.0,
                     help="seconds between scrapes of the replicas' /metrics and autoscaling decisions (0 = off)")
    run.add_argument("--scale-up-period", type=float, default=15.0,
                     help="seconds over which replicas grow at most to max(2 x n, n + 4) (the HPA's default policy)")
    run.add_argument("--max-signal-age", type=float, default=60.0,
                     help="seconds after which a load sample is stale: it may raise replicas, never lower them")
    run.add_argument("--trend-window", type=float, default=60.0,
                     help="seconds of load history whose rise the scaler projects one replica startup time ahead")
    run.add_argument("--activator-timeout", type=float, default=600.0,
                     help="seconds a request waits for a scaled-to-zero model to get a ready replica")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                     help="level of the operator's (and kopf's) logs; kopf's per-object lines need debug")
    run.set_defaults(func=_run_operator)

    # Commands whose modules take their own argv are dispatched without importing them here.
    for name, help_text in (
        ("sim", "run the simulated OpenAI-compatible model server"),
        ("crds", "write the CRD YAML generated from the API models"),
        ("envoy-bootstrap", "print the Envoy bootstrap that points Envoy at the operator's xDS server"),
        ("models", "list the models an OpenAI-compatible endpoint serves (the chart's helm test)"),
    ):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _run_operator(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .controller.operator import OperatorOptions, run

    run(OperatorOptions(**{f.name: getattr(args, f.name) for f in fields(OperatorOptions)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim":
        from .sim.server import main as sim_main

        return sim_main(argv[1:])
    if argv and argv[0] == "crds":
        from .api.crd import main as crds_main

        return crds_main(argv[1:])
    if argv and argv[0] == "envoy-bootstrap":
        from .envoy.bootstrap import main as bootstrap_main

        return bootstrap_main(argv[1:])
    if argv and argv[0] == "models":
        from .openai_endpoint import main as models_main

        return models_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
