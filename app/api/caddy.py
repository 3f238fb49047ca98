"""POST /api/caddy/reload: apply an edit of portal.yaml or /etc/environment without restarting anything."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import caddy_config

router = APIRouter(prefix="/api")


@router.post("/caddy/reload")
async def reload_caddy(request: Request):
    """Render Caddy's configuration from portal.yaml and the current settings; if Caddy accepts it, reload Caddy
    gracefully (open connections and streams go on). 422 with the reason when it is not used (the previous
    configuration keeps serving)."""
    settings = request.app.state.settings
    changed, problem = await asyncio.to_thread(caddy_config.refresh, settings, lambda line: print(
        f"manager: caddy config: {line}", flush=True))
    if problem:
        print(f"manager: caddy config: ERROR: {problem}; Caddy keeps the previous configuration", flush=True)
        return JSONResponse({"detail": f"{problem}; the previous configuration keeps serving"}, status_code=422)
    if not changed:
        return {"result": "unchanged"}
    failed = await asyncio.to_thread(caddy_config.reload, settings)
    if failed:
        return JSONResponse({"detail": f"caddy reload failed: {failed}"}, status_code=500)
    return {"result": "reloaded"}
