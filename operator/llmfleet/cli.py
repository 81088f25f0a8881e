"""The `llmfleet` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmfleet", description="Kubernetes operator for LLM inference fleets")
    sub = parser.add_subparsers(dest="command", required=True)

    from .config import add_arguments

    run = sub.add_parser("run", help="run the operator")
    add_arguments(run)
    run.set_defaults(func=_run_operator)

    # Commands whose modules take their own argv are dispatched without importing them here.
    for name, help_text in (
        ("sim", "run the simulated OpenAI-compatible model server"),
        ("crds", "write the CRD YAML generated from the API models"),
        ("envoy-bootstrap", "print the Envoy bootstrap that points Envoy at the operator's xDS server"),
        ("models", "list the models an OpenAI-compatible endpoint serves (the chart's helm test)"),
        ("usage", "requests, tokens and cost by tenant and model (from Prometheus or the operator's /metrics)"),
    ):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    for name, entry in _plugin_commands().items():
        origin = entry.dist.name if entry.dist else entry.value
        p = sub.add_parser(name, help=f"added by {origin} (llmfleet {name} --help)", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _plugin_commands() -> dict[str, EntryPoint]:
    """Commands other distributions add (`llmfleet.commands` entry points: name -> main(argv) -> int),
    such as `dev-cluster` from tools/devcluster. Loaded only when called: the operator's image lacks them."""
    return {entry.name: entry for entry in entry_points(group="llmfleet.commands")}


def _run_operator(args: argparse.Namespace) -> int:
    from .config import OperatorOptions
    from .controller.operator import run

    run(OperatorOptions.from_args(args))
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
    if argv and argv[0] == "usage":
        from .usage_report import main as usage_main

        return usage_main(argv[1:])
    plugins = _plugin_commands()
    if argv and argv[0] in plugins:
        command: Callable[[list[str]], int] = plugins[argv[0]].load()
        return command(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
