"""Every answer the router makes itself is an OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`,
so an OpenAI client raises its usual exception with the message in it."""
from __future__ import annotations

import json

from aiohttp import web

REASON = web.ResponseKey("reason", str)  # why the router answered itself (its 503 metrics count by it)


def error(status: int, message: str, kind: str, code: str, *, retry_after: float | None = None) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    response = web.Response(status=status, text=body, content_type="application/json", headers=headers)
    response[REASON] = code
    return response


def model_not_found(model: str | None, known: list[str]) -> web.Response:
    names = ", ".join(known) if known else "none (no instance is configured)"
    what = f"The model `{model}` does not exist" if model is not None else \
        "The request names no model and there is no default instance"
    return error(404, f"{what}. Models here: {names}.", "NotFoundError", "model_not_found")


def instance_not_found(instance: str, known: list[str]) -> web.Response:
    ids = ", ".join(known) if known else "none"
    return error(404, f"The instance `{instance}` does not exist (/instances/<id>/...). Instances here: {ids}.",
                 "NotFoundError", "instance_not_found")


def unavailable(message: str, retry_after: float, code: str = "model_unavailable") -> web.Response:
    return error(503, message, "ServiceUnavailableError", code, retry_after=retry_after)


def too_large(limit: int) -> web.Response:
    return error(413, f"The request body is larger than the router accepts ({limit} bytes; ROUTER_MAX_BODY_MB).",
                 "BadRequestError", "request_too_large")


def bad_gateway(message: str) -> web.Response:
    return error(502, message, "BadGatewayError", "upstream_error")
