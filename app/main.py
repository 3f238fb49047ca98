"""The manager: a FastAPI app on 127.0.0.1, reached through Caddy on the portal port."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from app import gpu
from app.api import instances, v2
from app.api import provisioning as provisioning_api
from app.instances import Manager
from app.settings import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.settings = get_settings()
    app.state.manager = Manager(app.state.settings)
    app.state.sampler = gpu.Sampler().start()
    monitor = asyncio.create_task(app.state.manager.monitor())
    yield
    monitor.cancel()


app = FastAPI(title="vLLM appliance manager", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None,
              lifespan=lifespan)
app.include_router(instances.router)
app.include_router(v2.router)
app.include_router(provisioning_api.router)


@app.get("/api/health")
def health() -> dict:
    return {"status": "ok"}


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> str:
    return "<!doctype html><title>vLLM appliance</title><h1>vLLM appliance</h1><p>The portal is coming soon.</p>"
