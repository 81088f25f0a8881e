"""The OpenAI API's error body, the one shape every llmfleet component answers errors in
(Envoy's direct responses, the activator, the simulated engine)."""

from __future__ import annotations

from typing import Any


def error_body(message: str, err_type: str, *, param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``: what OpenAI clients parse into an APIError."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}
