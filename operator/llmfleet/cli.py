"""The `llmfleet` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmfleet", description="Kubernetes operator for LLM inference fleets")
    sub = parser.add_subparsers(dest="command", required=True)

    from .devcluster.cli import add_parser as add_dev_cluster

    add_dev_cluster(sub)

    # Commands whose modules take their own argv are dispatched without importing them here.
    for name, help_text in (
        ("sim", "run the simulated OpenAI-compatible model server"),
        ("crds", "write the CRD YAML generated from the API models"),
    ):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim":
        from .sim.server import main as sim_main

        return sim_main(argv[1:])
    if argv and argv[0] == "crds":
        from .api.crd import main as crds_main

        return crds_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
