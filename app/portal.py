"""The web portal: server-rendered pages (portal/templates) that update themselves from /api with a little JS."""
from __future__ import annotations

import socket

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app import portal_config
from app.settings import get_settings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(get_settings().home / "portal" / "templates"))
PAGES = {"overview": "Overview", "models": "Models", "logs": "Logs", "services": "Services", "apps": "Apps"}


def page(request: Request, name: str) -> HTMLResponse:
    settings = request.app.state.settings
    _, apps = portal_config.load(settings.portal_yaml) if settings.portal_yaml.exists() else ("", [])
    api = portal_config.find(apps, "vLLM")
    return templates.TemplateResponse(request, f"{name}.html", {
        "page": name, "pages": PAGES, "box": socket.gethostname(), "apps": apps,
        "api_port": api.external_port if api else None, "https": settings.enable_https})


@router.get("/", response_class=HTMLResponse)
def overview(request: Request):
    return page(request, "overview")


@router.get("/{name}", response_class=HTMLResponse)
def other(request: Request, name: str):
    if name not in PAGES:
        return HTMLResponse("<h1>Not found</h1>", status_code=404)
    return page(request, name)
