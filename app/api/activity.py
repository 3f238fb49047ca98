"""GET /api/router/activity: the last requests through the router (its control socket, app/router_client.py), for
the portal's Activity page. The router may be down or not built in: then an empty list and a note, never an error.

Each request as the router records it: `time` (epoch seconds it began), `model`, `instance`, `path`, `status` (HTTP
status; null when the client left first), `duration` and `ttft` (seconds; `ttft` null when nothing streamed),
`prompt_tokens` and `completion_tokens` (from the response's usage; null when it had none).
"""
from __future__ import annotations

import httpx
from fastapi import APIRouter, Query, Request

router = APIRouter(prefix="/api/router")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")


def status_matches(status, wanted: str) -> bool:
    """`wanted`: an HTTP status (`503`), a class (`5xx`), or `error` (4xx, 5xx or none: the client left)."""
    if wanted == "error":
        return not isinstance(status, int) or status >= 400
    if wanted in STATUS_CLASSES:
        return isinstance(status, int) and status // 100 == int(wanted[0])
    return str(status) == wanted


@router.get("/activity")
async def activity(request: Request, limit: int = Query(200, ge=1, le=1000), model: str | None = None,
                   status: str | None = Query(None, max_length=8, pattern=r"^(\d{3}|[2-5]xx|error)$")) -> dict:
    """Newest first; `model` and `status` filter. `models`: the models in the unfiltered list (for a filter menu)."""
    try:
        requests = await request.app.state.manager.router.activity(limit)
        if not isinstance(requests, list):
            raise ValueError("not a list")
        note = None
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        requests = []
        note = f"the router does not answer ({type(exc).__name__}): no requests to show"
    requests = [r for r in requests if isinstance(r, dict)]
    models = sorted({str(r["model"]) for r in requests if r.get("model")})
    shown = [r for r in requests if (not model or r.get("model") == model)
             and (not status or status_matches(r.get("status"), status))]
    return {"requests": shown, "models": models, "note": note}
