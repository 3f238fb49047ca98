"""GET /metrics: Prometheus text format (app/metrics.py), behind the portal port's auth like every route."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from app import metrics, stats
from app.instance import Phase

router = APIRouter()


@router.get("/metrics", response_class=Response)
async def get_metrics(request: Request) -> Response:
    manager = request.app.state.manager
    views = [manager.view(c) for c in manager.store.instances.values()]
    ready = {v["id"]: v["port"] for v in views if v["state"] == Phase.READY}
    texts = await metrics.scrape(manager.fx.http, ready)
    snapshot = await asyncio.to_thread(stats.snapshot, request.app.state.settings.workspace, request.app.state.sampler,
                                       manager.engine_pids(), manager.gpu_holders())
    body = await asyncio.to_thread(metrics.render, texts, views, snapshot)
    return Response(body + await metrics.router_metrics(manager.router), media_type=metrics.CONTENT_TYPE)
