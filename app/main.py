"""The manager: a FastAPI app on 127.0.0.1, reached through Caddy on the portal port."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

app = FastAPI(title="vLLM appliance manager", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)


@app.get("/api/health")
def health() -> dict:
    return {"status": "ok"}


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> str:
    return "<!doctype html><title>vLLM appliance</title><h1>vLLM appliance</h1><p>The portal is coming soon.</p>"
