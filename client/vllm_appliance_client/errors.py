"""Typed errors, each carrying the server's own message."""
from __future__ import annotations

import httpx


class ApplianceError(Exception):
    """An answer the appliance (or an engine behind it) gave instead of a result.

    `status` is the HTTP status (None when no answer came), `message` the server's own words, `index` the position
    of the batch item that failed (None outside a batch)."""

    def __init__(self, message: str, status: int | None = None, *, index: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message, self.status, self.index, self.retry_after = message, status, index, retry_after

    def __str__(self) -> str:
        where = f" (item {self.index})" if self.index is not None else ""
        return f"{self.status or 'no answer'}{where}: {self.message}"


class AuthenticationError(ApplianceError):
    """401/403: the token is wrong, or the route is not open to it."""


class NotFoundError(ApplianceError):
    """404: no such instance, model or adapter."""


class BadRequestError(ApplianceError):
    """400/422: the request was refused as invalid (the message names the field)."""


class ConflictError(ApplianceError):
    """409: a GPU or port is taken, or the instance is not in a state for this."""


class UnavailableError(ApplianceError):
    """503 (or 429) after every retry: the model is busy, starting or its queue is full."""


class ServerError(ApplianceError):
    """5xx, or no answer at all."""


class StartupError(ApplianceError):
    """An instance `serve` started failed or did not become ready in time; `last_log` holds its engine's last lines."""

    def __init__(self, message: str, *, instance: str, last_log: list[str] | None = None):
        super().__init__(message, None)
        self.instance, self.last_log = instance, list(last_log or [])

    def __str__(self) -> str:
        tail = "\n".join(self.last_log[-20:])
        return f"{self.message}" + (f"\n--- last lines of {self.instance}'s log ---\n{tail}" if tail else "")


_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 403: AuthenticationError, 404: NotFoundError,
              409: ConflictError, 422: BadRequestError, 429: UnavailableError, 503: UnavailableError}


def message_of(response: httpx.Response) -> str:
    """The server's message: OpenAI's `error.message`, FastAPI's `detail`, or the body as text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:2000] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):  # FastAPI's validation errors
                return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail
                                 if isinstance(d, dict)) or str(detail)
            return str(detail)
    return str(body)[:2000]


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number; an HTTP date is taken as 1 s)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def error_for(response: httpx.Response, index: int | None = None) -> ApplianceError:
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApplianceError)
    return kind(message_of(response), status, index=index, retry_after=retry_after(response))


def check(response: httpx.Response, index: int | None = None) -> httpx.Response:
    if response.status_code >= 400:
        raise error_for(response, index)
    return response
