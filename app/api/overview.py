"""GET /api/overview/models: each instance's state and figures (app/overview.py) with the last minutes' history.

The engines are scraped when the portal asks (the overview polls every 2 s), at most once per MIN_INTERVAL whoever
asks: the history covers the time some page was watching. Only ready engines are asked, as /metrics does.
"""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Query, Request

from app import metrics, overview
from app.instance import Phase

router = APIRouter(prefix="/api/overview")


class Watch:
    """The tracker and the lock that keeps two requests from scraping at once."""

    def __init__(self) -> None:
        self.tracker = overview.Tracker()
        self.lock = asyncio.Lock()


def watch(request: Request) -> Watch:
    state = request.app.state
    if getattr(state, "overview", None) is None:
        state.overview = Watch()
    return state.overview


@router.get("/models")
async def models(request: Request, since: float | None = Query(None, ge=0)) -> dict:
    """Per instance: `state`, `figures` (latest rates and gauges; null unless ready and answering) and `history`
    (columns for the charts, the last `window` seconds; with `since`, only the points after it: pass the `time` of
    the previous answer)."""
    manager, w = request.app.state.manager, watch(request)
    views = [manager.view(c) for c in manager.known().values()]
    async with w.lock:
        now = time.time()
        if now - w.tracker.last >= overview.MIN_INTERVAL:
            ready = {v["id"]: v["port"] for v in views if v["state"] == Phase.READY}
            texts = await metrics.scrape(manager.fx.http, ready)
            await asyncio.to_thread(w.tracker.add, time.time(), texts)
        scraped = w.tracker.last
    return {"window": w.tracker.window, "time": scraped, "models": [
        {"id": v["id"], "state": v["state"], "model": v["model"], "served_model_name": v["served_model_name"],
         "in_flight": v.get("in_flight"), "queued": v.get("queued"),
         "figures": w.tracker.figures(v["id"], scraped) if v["state"] == Phase.READY else None,
         "history": w.tracker.history(v["id"], since)} for v in views]}
