"""An OpenAI-compatible endpoint as a client sees it: ``llmfleet models``.

``llmfleet models --endpoint URL`` lists the models the endpoint serves (GET
``{URL}/models``), one id per line, and exits 1 with a one-line reason when it cannot:
unreachable, a non-200 answer, a body that is not an OpenAI model list, or a model
named with ``--expect`` missing. The chart's ``helm test`` pod runs it against the Envoy
ingress; it works the same against a single model server (vLLM, SGLang, ``llmfleet sim``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx


class EndpointError(Exception):
    """The endpoint did not answer with an OpenAI model list; the message says why."""


def served_models(endpoint: str, *, timeout: float = 10.0, api_key: str | None = None,
                  transport: httpx.BaseTransport | None = None) -> list[str]:
    """The model ids ``GET {endpoint}/models`` lists, in the order it lists them.

    ``endpoint`` is the API base URL, e.g. ``http://llmfleet-ingress.ns.svc/v1``.
    """
    url = endpoint.rstrip("/") + "/models"
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            headers = {"Accept": "application/json"}
            if api_key:
                headers["Authorization"] = f"Bearer {api_key}"
            response = client.get(url, headers=headers)
    except httpx.TimeoutException as exc:
        raise EndpointError(f"GET {url}: no answer within {timeout:g} s ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise EndpointError(f"GET {url}: cannot connect: {exc or type(exc).__name__}") from exc
    if response.status_code == 401 and not api_key:
        raise EndpointError(f"GET {url}: HTTP 401: the endpoint asks for an API key (behind llmfleet's ingress: "
                            "Tenants exist); pass --api-key or set OPENAI_API_KEY")
    if response.status_code != 200:
        raise EndpointError(f"GET {url}: HTTP {response.status_code}: {_snippet(response.text)}")
    try:
        body: Any = response.json()
    except ValueError as exc:
        raise EndpointError(f"GET {url}: the body is not JSON: {_snippet(response.text)}") from exc
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise EndpointError(f'GET {url}: not an OpenAI model list ({{"object": "list", "data": [{{"id": ...}}]}}): '
                            f"{_snippet(response.text)}")
    return [m["id"] for m in data]


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def build_parser(prog: str = "llmfleet models") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="List the models an OpenAI-compatible endpoint serves "
                                "(GET {endpoint}/models), one id per line; exit 1 if it cannot.")
    p.add_argument("--endpoint", required=True,
                   help="API base URL, e.g. http://llmfleet-ingress.llmfleet-system.svc/v1")
    p.add_argument("--expect", action="append", default=[], metavar="MODEL",
                   help="fail unless this model id is listed (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="sent as Authorization: Bearer (default: $OPENAI_API_KEY)")
    return p


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        models = served_models(args.endpoint, timeout=args.timeout, api_key=args.api_key, transport=transport)
    except EndpointError as exc:
        print(f"llmfleet models: {exc}", file=sys.stderr)
        return 1
    for model in models:
        print(model)
    if missing := [m for m in args.expect if m not in models]:
        print(f"llmfleet models: not served by {args.endpoint}: {', '.join(missing)}", file=sys.stderr)
        return 1
    if not models:
        print(f"llmfleet models: {args.endpoint} lists no models (behind llmfleet's ingress: no RoutePolicy yet)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
